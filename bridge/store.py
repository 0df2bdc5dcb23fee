"""The durable store: accepted mails, jobs, documents, outgoing mail, received faxes, replies.

SQLite in WAL mode with ``synchronous=FULL``: when a method returns, its transaction is on disk.
Every job transition is one transaction and a compare-and-set on the state the caller saw, so it
is applied at most once. A final transition and the notice it produces are written in the same
transaction, and the outbox has one row per (kind, ref): a notice cannot be lost between the
two, nor queued twice.

:class:`Store` is synchronous and owned by one thread; :class:`AsyncStore` runs every call on a
single dedicated thread so that the event loop never blocks on the disk and there is one writer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from bridge.states import FINAL, State, after_restart, check_move

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

-- One accepted SMTP message. Its documents are shared by the fax jobs it made.
CREATE TABLE IF NOT EXISTS mails (
    id INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    mail_from TEXT NOT NULL,           -- envelope sender; '' for the null sender
    header_from TEXT NOT NULL,
    message_id TEXT NOT NULL,          -- for threading notices
    subject TEXT NOT NULL,
    notify INTEGER NOT NULL,           -- 0: never notify (null sender, auto-submitted mail)
    auth_user TEXT NOT NULL DEFAULT '',
    peer TEXT NOT NULL DEFAULT ''
);

CREATE TABLE IF NOT EXISTS documents (
    mail_id INTEGER NOT NULL REFERENCES mails(id),
    seq INTEGER NOT NULL,
    filename TEXT NOT NULL,
    content_type TEXT NOT NULL,
    data BLOB NOT NULL,
    pages INTEGER,                     -- known for PDFs, else NULL
    is_cover INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (mail_id, seq)
);

CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    mail_id INTEGER NOT NULL REFERENCES mails(id),
    kind TEXT NOT NULL CHECK (kind IN ('fax', 'sms')),
    to_number TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    gofax_id INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,     -- when the sender may submit (queued) or poll (submitted)
    first_attempt_at REAL,
    final_at REAL,
    last_error TEXT NOT NULL DEFAULT '',
    result TEXT NOT NULL DEFAULT '',   -- GoFax's final message ("Busy", "Fax successfully sent")
    pages INTEGER,
    sms_text TEXT,
    sms_parts INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS jobs_gofax ON jobs (kind, gofax_id);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);  -- quotas: usage in the last day

CREATE TABLE IF NOT EXISTS job_events (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    at REAL NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);

-- Intake dedupe: a mail re-sent after a lost 250 must not fax twice.
CREATE TABLE IF NOT EXISTS dedupe (
    key TEXT PRIMARY KEY,
    mail_id INTEGER NOT NULL,
    created_at REAL NOT NULL
);

-- Every outgoing mail (notices, received faxes, SMS replies). One row per (kind, ref).
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    ref TEXT NOT NULL,
    mail_from TEXT NOT NULL,
    rcpt_to TEXT NOT NULL,             -- JSON list
    message BLOB NOT NULL,             -- serialised with CRLF line ends
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'parked')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    sent_at REAL,
    UNIQUE (kind, ref)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at);

CREATE TABLE IF NOT EXISTS received_faxes (
    gofax_id INTEGER PRIMARY KEY,
    from_number TEXT NOT NULL,
    to_number TEXT NOT NULL,
    csid TEXT NOT NULL,
    pages INTEGER,
    received_utc TEXT,
    state TEXT NOT NULL,               -- listed | fetched | delivered | parked
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    filename TEXT,
    content_type TEXT,
    document BLOB,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS sms_replies (
    gofax_id INTEGER PRIMARY KEY,
    reply_number TEXT NOT NULL,
    message_id INTEGER,
    from_number TEXT NOT NULL,
    to_number TEXT NOT NULL,
    message TEXT NOT NULL,
    received_utc TEXT,
    job_id INTEGER,                    -- the SMS job it answers, when matched
    state TEXT NOT NULL,               -- stored | delivered
    created_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS cursors (name TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE IF NOT EXISTS alerts (
    key TEXT PRIMARY KEY,              -- an operator alert is sent once per key
    created_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class NewDocument:
    filename: str
    content_type: str
    data: bytes
    pages: int | None = None
    is_cover: bool = False


@dataclass(frozen=True)
class NewJob:
    kind: str                      # "fax" | "sms"
    to_number: str                 # GoFax digits
    dedupe_key: str                # unique per (Message-ID, envelope recipient, body hash)
    sms_text: str | None = None
    sms_parts: int | None = None


@dataclass(frozen=True)
class NewMail:
    mail_from: str
    header_from: str
    message_id: str
    subject: str
    notify: bool
    jobs: Sequence[NewJob]
    documents: Sequence[NewDocument] = ()
    auth_user: str = ""
    peer: str = ""


@dataclass(frozen=True)
class Job:
    id: int
    mail_id: int
    kind: str
    to_number: str
    state: State
    attempts: int
    gofax_id: int | None
    created_at: float
    updated_at: float
    next_attempt_at: float
    first_attempt_at: float | None
    final_at: float | None
    last_error: str
    result: str
    pages: int | None
    sms_text: str | None
    sms_parts: int | None
    # From the mail:
    mail_from: str
    header_from: str
    message_id: str
    subject: str
    notify: bool


@dataclass(frozen=True)
class Document:
    seq: int
    filename: str
    content_type: str
    data: bytes
    pages: int | None
    is_cover: bool


@dataclass(frozen=True)
class OutgoingMail:
    id: int
    kind: str
    ref: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    message: bytes
    state: str
    attempts: int
    next_attempt_at: float
    last_error: str
    created_at: float


@dataclass(frozen=True)
class NewOutgoing:
    kind: str
    ref: str
    mail_from: str
    rcpt_to: Sequence[str]
    message: bytes


@dataclass(frozen=True)
class AcceptResult:
    mail_id: int
    job_ids: tuple[int, ...]
    duplicates: tuple[str, ...] = field(default=())  # dedupe keys already seen


class StaleState(Exception):
    """The job was no longer in the state the caller saw: someone else moved it first."""


_JOB_SELECT = """
SELECT j.id, j.mail_id, j.kind, j.to_number, j.state, j.attempts, j.gofax_id, j.created_at,
       j.updated_at, j.next_attempt_at, j.first_attempt_at, j.final_at, j.last_error, j.result,
       j.pages, j.sms_text, j.sms_parts,
       m.mail_from, m.header_from, m.message_id, m.subject, m.notify
FROM jobs j JOIN mails m ON m.id = j.mail_id
"""


def _job(row: sqlite3.Row) -> Job:
    values = dict(row)
    values["state"] = State(values["state"])
    values["notify"] = bool(values["notify"])
    return Job(**values)


def _outgoing(row: sqlite3.Row) -> OutgoingMail:
    values = dict(row)
    values["rcpt_to"] = tuple(json.loads(values["rcpt_to"]))
    values.pop("sent_at", None)
    return OutgoingMail(**values)


class Store:
    """Synchronous store; use from one thread (see :class:`AsyncStore`)."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = str(path)
        self.clock = clock
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                  timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(_SCHEMA)
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                        (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: all or nothing, durable on return."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- intake ------------------------------------------------------------------------------

    def accept(self, mail: NewMail) -> AcceptResult:
        """Commits a mail with its documents and jobs; jobs already seen (dedupe) are skipped.

        Returns the ids of the jobs made. When every job was a duplicate, nothing is written.
        """
        now = self.clock()
        with self.tx() as db:
            keys = [j.dedupe_key for j in mail.jobs]
            seen = {r[0] for r in db.execute(
                f"SELECT key FROM dedupe WHERE key IN ({','.join('?' * len(keys))})", keys)}
            fresh = [j for j in mail.jobs if j.dedupe_key not in seen]
            if not fresh:
                return AcceptResult(0, (), tuple(sorted(seen)))
            mail_id = db.execute(
                "INSERT INTO mails (received_at, mail_from, header_from, message_id, subject,"
                " notify, auth_user, peer) VALUES (?,?,?,?,?,?,?,?)",
                (now, mail.mail_from, mail.header_from, mail.message_id, mail.subject,
                 int(mail.notify), mail.auth_user, mail.peer)).lastrowid
            assert mail_id is not None
            if any(j.kind == "fax" for j in fresh):
                for i, d in enumerate(mail.documents):
                    # The bytes go in through a blob handle: bound as a parameter, sqlite
                    # would copy them, and the cached statement would keep that copy (20 MB
                    # for a 20 MB fax) until its next use.
                    rowid = db.execute(
                        "INSERT INTO documents VALUES (?,?,?,?,zeroblob(?),?,?)",
                        (mail_id, i, d.filename, d.content_type, len(d.data), d.pages,
                         int(d.is_cover))).lastrowid
                    assert rowid is not None
                    if d.data:
                        with db.blobopen("documents", "data", rowid) as blob:
                            blob.write(d.data)
            pages = sum(d.pages or 1 for d in mail.documents) if mail.documents else None
            ids = []
            for job in fresh:
                job_id = db.execute(
                    "INSERT INTO jobs (mail_id, kind, to_number, state, created_at, updated_at,"
                    " next_attempt_at, pages, sms_text, sms_parts) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (mail_id, job.kind, job.to_number, State.QUEUED, now, now, now,
                     pages if job.kind == "fax" else None, job.sms_text, job.sms_parts),
                ).lastrowid
                assert job_id is not None
                ids.append(job_id)
                db.execute("INSERT INTO dedupe VALUES (?,?,?)", (job.dedupe_key, mail_id, now))
                self._event(db, job_id, "", State.QUEUED, "accepted")
            return AcceptResult(mail_id, tuple(ids), tuple(sorted(seen)))

    def known_dedupe_keys(self, keys: Sequence[str]) -> set[str]:
        """The keys of ``keys`` already accepted (a re-sent copy of a mail)."""
        if not keys:
            return set()
        rows = self.db.execute(
            f"SELECT key FROM dedupe WHERE key IN ({','.join('?' * len(keys))})", list(keys))
        return {r[0] for r in rows}

    def forget_dedupe(self, older_than_seconds: float) -> int:
        with self.tx() as db:
            cur = db.execute("DELETE FROM dedupe WHERE created_at < ?",
                             (self.clock() - older_than_seconds,))
            return cur.rowcount

    # --- jobs --------------------------------------------------------------------------------

    @staticmethod
    def _event(db: sqlite3.Connection, job_id: int, old: str, new: str, detail: str) -> None:
        db.execute("INSERT INTO job_events (job_id, at, from_state, to_state, detail)"
                   " VALUES (?,?,?,?,?)", (job_id, time.time(), old, new, detail[:2000]))

    def job(self, job_id: int) -> Job | None:
        row = self.db.execute(_JOB_SELECT + " WHERE j.id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def job_by_gofax_id(self, kind: str, gofax_id: int) -> Job | None:
        row = self.db.execute(_JOB_SELECT + " WHERE j.kind = ? AND j.gofax_id = ?",
                              (kind, gofax_id)).fetchone()
        return _job(row) if row else None

    def jobs(self, *, states: Sequence[str] = (), limit: int = 200) -> list[Job]:
        sql, args = _JOB_SELECT, []
        if states:
            sql += f" WHERE j.state IN ({','.join('?' * len(states))})"
            args = list(states)
        rows = self.db.execute(sql + " ORDER BY j.id DESC LIMIT ?", (*args, limit))
        return [_job(r) for r in rows]

    def due_jobs(self, state: State, *, limit: int = 50, kind: str | None = None) -> list[Job]:
        sql = _JOB_SELECT + " WHERE j.state = ? AND j.next_attempt_at <= ?"
        args: list[Any] = [state, self.clock()]
        if kind:
            sql += " AND j.kind = ?"
            args.append(kind)
        rows = self.db.execute(sql + " ORDER BY j.next_attempt_at, j.id LIMIT ?", (*args, limit))
        return [_job(r) for r in rows]

    def next_due_at(self, states: Sequence[State], *, exclude: Sequence[int] = ()) -> float | None:
        """The earliest due time of a job in ``states``, leaving out the jobs ``exclude`` (those
        the sender is working on already)."""
        sql = f"SELECT MIN(next_attempt_at) FROM jobs WHERE state IN ({','.join('?' * len(states))})"
        if exclude:
            sql += f" AND id NOT IN ({','.join('?' * len(exclude))})"
        row = self.db.execute(sql, [*states, *exclude]).fetchone()
        return row[0]

    def documents(self, mail_id: int) -> list[Document]:
        rows = self.db.execute(
            "SELECT rowid, seq, filename, content_type, pages, is_cover FROM documents"
            " WHERE mail_id = ? ORDER BY seq", (mail_id,)).fetchall()
        documents = []
        for rowid, seq, filename, content_type, pages, is_cover in rows:
            # Read through a blob handle: one copy, where a SELECT of the column makes sqlite
            # assemble the value first and Python then copy it.
            with self.db.blobopen("documents", "data", rowid, readonly=True) as blob:
                data = blob.read()
            documents.append(Document(seq, filename, content_type, data, pages, bool(is_cover)))
        return documents

    def document_info(self, mail_id: int) -> list[Document]:
        """A mail's documents without their bytes (``data`` is empty): names and pages, for
        notices, without reading a 20 MB fax back into memory."""
        rows = self.db.execute(
            "SELECT seq, filename, content_type, pages, is_cover FROM documents"
            " WHERE mail_id = ? ORDER BY seq", (mail_id,))
        return [Document(r[0], r[1], r[2], b"", r[3], bool(r[4])) for r in rows]

    def events(self, job_id: int) -> list[tuple[float, str, str, str]]:
        return [tuple(r) for r in self.db.execute(  # type: ignore[misc]
            "SELECT at, from_state, to_state, detail FROM job_events WHERE job_id = ?"
            " ORDER BY id", (job_id,))]

    def move(self, job_id: int, expected: State, new: State, *, detail: str = "",
             operator: bool = False, notice: NewOutgoing | None = None,
             **columns: Any) -> Job:
        """Compare-and-set a job's state, update columns, queue its notice: one transaction.

        Raises :class:`StaleState` when the job is no longer in ``expected``.
        """
        check_move(expected, new, operator=operator)
        allowed = {"attempts", "gofax_id", "next_attempt_at", "first_attempt_at", "last_error",
                   "result", "pages"}
        unknown = set(columns) - allowed
        if unknown:
            raise ValueError(f"not job columns: {sorted(unknown)}")
        now = self.clock()
        sets = ["state = ?", "updated_at = ?"]
        args: list[Any] = [new, now]
        if new in FINAL:
            sets.append("final_at = ?")
            args.append(now)
        for name, value in columns.items():
            sets.append(f"{name} = ?")
            args.append(value)
        with self.tx() as db:
            cur = db.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND state = ?",
                             (*args, job_id, expected))
            if cur.rowcount != 1:
                raise StaleState(f"job {job_id} is not {expected}")
            self._event(db, job_id, expected, new, detail)
            if notice is not None:
                self._queue(db, notice, now)
        job = self.job(job_id)
        assert job is not None
        return job

    def update_job(self, job_id: int, expected: State, **columns: Any) -> bool:
        """Changes columns of a job that is still in ``expected`` (no state change)."""
        allowed = {"attempts", "next_attempt_at", "last_error", "result", "pages"}
        if set(columns) - allowed:
            raise ValueError(f"not updatable: {sorted(set(columns) - allowed)}")
        sets = ", ".join(f"{k} = ?" for k in columns)
        with self.tx() as db:
            cur = db.execute(f"UPDATE jobs SET {sets}, updated_at = ? WHERE id = ? AND state = ?",
                             (*columns.values(), self.clock(), job_id, expected))
            return cur.rowcount == 1

    def recover_after_restart(
            self, notice_for: Callable[[Job], NewOutgoing | None] = lambda _job: None,
    ) -> list[int]:
        """Jobs caught mid-submission become uncertain, each with its notice. Returns their ids."""
        moved = []
        error = "the daemon stopped while this submission was in flight"
        for job in self.jobs(states=[State.SUBMITTING], limit=100_000):
            new = after_restart(job.state)
            ended = dataclasses.replace(job, state=new, last_error=error)
            try:
                self.move(job.id, job.state, new, detail=error, last_error=error,
                          notice=notice_for(ended))
                moved.append(job.id)
            except StaleState:
                pass
        return moved

    def release_held(self) -> list[int]:
        """Held jobs go back to the queue (the token works again)."""
        ids = []
        for job in self.jobs(states=[State.HELD], limit=100_000):
            try:
                self.move(job.id, State.HELD, State.QUEUED, detail="token works again",
                          next_attempt_at=self.clock())
                ids.append(job.id)
            except StaleState:
                pass
        return ids

    def count_jobs(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.db.execute(
            "SELECT state, COUNT(*) FROM jobs GROUP BY state")}

    def sender_usage_since(self, sender: str, since: float) -> tuple[int, int, int]:
        """(faxes, fax pages, SMS parts) accepted from a sender since a time (for quotas)."""
        row = self.db.execute(
            "SELECT COALESCE(SUM(j.kind = 'fax'), 0),"
            " COALESCE(SUM(CASE WHEN j.kind = 'fax' THEN COALESCE(j.pages, 1) END), 0),"
            " COALESCE(SUM(CASE WHEN j.kind = 'sms' THEN COALESCE(j.sms_parts, 1) END), 0)"
            " FROM jobs j JOIN mails m ON m.id = j.mail_id"
            " WHERE lower(m.mail_from) = lower(?) AND j.created_at >= ?",
            (sender, since)).fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    # --- outbox ------------------------------------------------------------------------------

    def _queue(self, db: sqlite3.Connection, mail: NewOutgoing, now: float) -> bool:
        # ON CONFLICT, not OR IGNORE: only a repeat of (kind, ref) is skipped; any other
        # constraint failure must roll the whole transaction back.
        cur = db.execute(
            "INSERT INTO outbox (kind, ref, mail_from, rcpt_to, message,"
            " next_attempt_at, created_at) VALUES (?,?,?,?,?,?,?)"
            " ON CONFLICT (kind, ref) DO NOTHING",
            (mail.kind, mail.ref, mail.mail_from, json.dumps(list(mail.rcpt_to)), mail.message,
             now, now))
        return cur.rowcount == 1

    def queue_mail(self, mail: NewOutgoing) -> bool:
        """Queues an outgoing mail; False when (kind, ref) was queued before."""
        with self.tx() as db:
            return self._queue(db, mail, self.clock())

    def due_mail(self, limit: int = 20) -> list[OutgoingMail]:
        rows = self.db.execute(
            "SELECT id, kind, ref, mail_from, rcpt_to, message, state, attempts, next_attempt_at,"
            " last_error, created_at FROM outbox WHERE state = 'pending' AND next_attempt_at <= ?"
            " ORDER BY next_attempt_at, id LIMIT ?", (self.clock(), limit))
        return [_outgoing(r) for r in rows]

    def outbox(self, *, states: Sequence[str] = (), limit: int = 200) -> list[OutgoingMail]:
        sql = ("SELECT id, kind, ref, mail_from, rcpt_to, message, state, attempts,"
               " next_attempt_at, last_error, created_at FROM outbox")
        args: list[Any] = []
        if states:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            args = list(states)
        return [_outgoing(r) for r in self.db.execute(sql + " ORDER BY id DESC LIMIT ?",
                                                      (*args, limit))]

    def count_outbox(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.db.execute(
            "SELECT state, COUNT(*) FROM outbox GROUP BY state")}

    def next_mail_due_at(self) -> float | None:
        return self.db.execute(
            "SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'").fetchone()[0]

    def mail_sent(self, mail_id: int, *, on_sent: Callable[[sqlite3.Connection], None]
                  | None = None) -> None:
        """Marks an outgoing mail accepted by the next hop (and runs ``on_sent`` in the same
        transaction, e.g. to mark a received fax delivered)."""
        with self.tx() as db:
            db.execute("UPDATE outbox SET state = 'sent', sent_at = ?, attempts = attempts + 1,"
                       " last_error = '' WHERE id = ? AND state = 'pending'",
                       (self.clock(), mail_id))
            if on_sent:
                on_sent(db)

    def mail_retry(self, mail_id: int, error: str, next_attempt_at: float, *,
                   park: bool = False) -> None:
        with self.tx() as db:
            db.execute("UPDATE outbox SET attempts = attempts + 1, last_error = ?,"
                       " next_attempt_at = ?, state = ? WHERE id = ? AND state = 'pending'",
                       (error[:2000], next_attempt_at, "parked" if park else "pending", mail_id))

    def requeue_mail(self, mail_id: int) -> bool:
        with self.tx() as db:
            cur = db.execute("UPDATE outbox SET state = 'pending', next_attempt_at = ?"
                             " WHERE id = ? AND state = 'parked'", (self.clock(), mail_id))
            return cur.rowcount == 1

    # --- small shared things -----------------------------------------------------------------

    def cursor(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM cursors WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_cursor(self, name: str, value: str) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO cursors VALUES (?, ?) ON CONFLICT(name) DO UPDATE"
                       " SET value = excluded.value", (name, value))

    def alert_once(self, key: str, mail: NewOutgoing | None) -> bool:
        """Records an operator alert (and queues its mail) unless it was raised before."""
        with self.tx() as db:
            cur = db.execute("INSERT OR IGNORE INTO alerts VALUES (?, ?)", (key, self.clock()))
            if cur.rowcount != 1:
                return False
            if mail is not None:
                self._queue(db, mail, self.clock())
            return True


P = ParamSpec("P")
T = TypeVar("T")


class AsyncStore:
    """Runs every :class:`Store` call on one dedicated thread (one writer, loop never blocks)."""

    def __init__(self, store: Store) -> None:
        self.sync = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    @classmethod
    def open(cls, path: str | Path, **kw: Any) -> AsyncStore:
        return cls(Store(path, **kw))

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        # Shielded: once a write has started it finishes and commits even if the caller is
        # cancelled (a client disconnecting mid-DATA); the caller just never sees the result.
        return await asyncio.shield(loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs)))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        attr = getattr(self.sync, name)
        if not callable(attr):
            return attr

        async def run(*args: Any, **kwargs: Any) -> Any:
            return await self.call(attr, *args, **kwargs)

        return run

    def close(self) -> None:
        self._pool.submit(self.sync.close).result()
        self._pool.shutdown(wait=True)
