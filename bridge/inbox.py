"""The receiver's SQL: received faxes and SMS replies in the store, as plain functions.

Each function takes a :class:`~bridge.store.Store` and runs on the store's one thread (call it
with ``await astore.call(fn, astore.sync, ...)``). Every write that matters is ONE transaction:

- a fax is recorded as ``listed`` *before* its document is downloaded, so a download that GoFax
  counted (the fax leaves ``UnretrievedFaxes``) but whose answer or storage we lost is still
  known here and fetched again from this table;
- its document and the mails that carry it (one per routed mailbox) are written together
  (:func:`store_document`): once the document is stored, its mails exist, and vice versa;
- an SMS reply and its mail are written together (:func:`record_reply`); the reply's GoFax id is
  the primary key, so a reply polled twice is stored and mailed once.

Received fax states: ``listed`` (known, document not stored) → ``fetched`` (document stored,
mails queued) → ``delivered`` (every mail accepted by the smarthost); or ``parked`` (the download
kept failing, or the document is not a usable PDF/TIFF: kept for the operator, who was told).
SMS reply states: ``stored`` → ``delivered``; ``skipped`` (old replies found on the very first
poll of a number and not mailed, see :mod:`bridge.receiver`).

"Delivered" is derived from the outbox: a received fax's mails are the outbox rows of kind
``fax_in`` whose ref starts with ``fax:<gofax id>:`` (the refs ``Notices.received_fax`` makes);
SMS replies likewise with ``sms_in`` / ``sms:<id>:``. :func:`store_document` and
:func:`record_reply` check that contract so that a change to the refs fails loudly.
"""

# Only module constants and "?" placeholders are ever interpolated into SQL here:

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from bridge.gofax.models import ReceivedFax, SmsReply
from bridge.store import Job, NewOutgoing, OutgoingMail, Store

FAX_MAIL_KIND = "fax_in"
SMS_MAIL_KIND = "sms_in"
ALERT_KIND = "alert"

LISTED, FETCHED, DELIVERED, PARKED = "listed", "fetched", "delivered", "parked"
STORED, SKIPPED = "stored", "skipped"

# A reply cannot answer an SMS created after it arrived; allow this much clock skew.
REPLY_CLOCK_SKEW_SECONDS = 300.0


def fax_ref_prefix(gofax_id: int) -> str:
    return f"fax:{gofax_id}:"


def sms_ref_prefix(gofax_id: int) -> str:
    return f"sms:{gofax_id}:"


def _ref_range(prefix: str) -> tuple[str, str]:
    """[low, high) bounds of every ref starting with ``prefix`` (which ends with ":"), so the
    outbox's UNIQUE (kind, ref) index serves the lookup (LIKE could not use it)."""
    return prefix, prefix[:-1] + ";"  # ";" sorts right after ":"


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S") if value else None


def parse_utc(value: str | None) -> datetime | None:
    """The stored ``received_utc`` text back as an aware UTC datetime."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


# --- received faxes ------------------------------------------------------------------------------

@dataclass(frozen=True)
class StoredFax:
    """A row of ``received_faxes`` without the document bytes."""

    gofax_id: int
    from_number: str
    to_number: str
    csid: str
    pages: int | None
    received_utc: datetime | None
    state: str
    attempts: int
    next_attempt_at: float
    last_error: str
    filename: str | None
    content_type: str | None
    size: int | None
    created_at: float
    updated_at: float


_FAX_COLUMNS = ("gofax_id, from_number, to_number, csid, pages, received_utc, state, attempts,"
                " next_attempt_at, last_error, filename, content_type, length(document),"
                " created_at, updated_at")


def _stored_fax(row: sqlite3.Row | tuple[object, ...]) -> StoredFax:
    values = list(row)
    values[5] = parse_utc(values[5])  # type: ignore[arg-type]
    return StoredFax(*values)  # type: ignore[arg-type]


def record_listed(store: Store, faxes: Sequence[ReceivedFax], *, now: float) -> list[int]:
    """Remembers faxes GoFax listed, before anything is downloaded. Returns the ids new to us;
    a fax already known (in any state) is left as it is."""
    new: list[int] = []
    with store.tx() as db:
        for fax in faxes:
            cur = db.execute(
                "INSERT OR IGNORE INTO received_faxes (gofax_id, from_number, to_number, csid,"
                " pages, received_utc, state, next_attempt_at, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                (fax.id, fax.from_number or "", fax.to_number or "", fax.csid or "", fax.pages,
                 _iso(fax.received_utc), LISTED, now, now, now))
            if cur.rowcount == 1:
                new.append(fax.id)
    return new


def due_faxes(store: Store, *, now: float, limit: int = 20) -> list[StoredFax]:
    """Listed faxes whose document should be fetched now (new ones and due retries)."""
    rows = store.db.execute(
        f"SELECT {_FAX_COLUMNS} FROM received_faxes WHERE state = ? AND next_attempt_at <= ?"
        " ORDER BY next_attempt_at, gofax_id LIMIT ?", (LISTED, now, limit))
    return [_stored_fax(r) for r in rows]


def next_fax_due_at(store: Store) -> float | None:
    return store.db.execute("SELECT MIN(next_attempt_at) FROM received_faxes WHERE state = ?",
                            (LISTED,)).fetchone()[0]


def get_fax(store: Store, gofax_id: int) -> StoredFax | None:
    row = store.db.execute(f"SELECT {_FAX_COLUMNS} FROM received_faxes WHERE gofax_id = ?",
                           (gofax_id,)).fetchone()
    return _stored_fax(row) if row else None


def fax_document(store: Store, gofax_id: int) -> tuple[str, str, bytes] | None:
    """(filename, content type, bytes) of a stored document, for the operator."""
    row = store.db.execute("SELECT filename, content_type, document FROM received_faxes"
                           " WHERE gofax_id = ? AND document IS NOT NULL", (gofax_id,)).fetchone()
    return (row[0] or "", row[1] or "", bytes(row[2])) if row else None


def known_fax_ids(store: Store, ids: Sequence[int]) -> set[int]:
    if not ids:
        return set()
    marks = ",".join("?" * len(ids))
    return {r[0] for r in store.db.execute(
        f"SELECT gofax_id FROM received_faxes WHERE gofax_id IN ({marks})", list(ids))}


def seen_fax_numbers(store: Store) -> list[str]:
    """Our numbers that have received faxes (for reconciliation beyond the routed ones)."""
    return [r[0] for r in store.db.execute(
        "SELECT DISTINCT to_number FROM received_faxes WHERE to_number != '' ORDER BY 1")]


def _check_refs(mails: Sequence[NewOutgoing], kind: str, prefix: str) -> None:
    for mail in mails:
        if mail.kind != kind or not mail.ref.startswith(prefix):
            raise ValueError(f"outbox mail ({mail.kind}, {mail.ref}) does not follow the "
                             f"({kind}, {prefix}…) convention that delivery tracking relies on")


def _alert(db: sqlite3.Connection, store: Store, alert: tuple[str, NewOutgoing | None] | None,
           now: float) -> bool:
    """Store.alert_once inside the caller's transaction."""
    if alert is None:
        return False
    key, mail = alert
    cur = db.execute("INSERT OR IGNORE INTO alerts VALUES (?, ?)", (key, now))
    if cur.rowcount != 1:
        return False
    if mail is not None:
        store._queue(db, mail, now)
    return True


def store_document(store: Store, gofax_id: int, filename: str, content_type: str, data: bytes,
                   mails: Sequence[NewOutgoing], *, now: float, pages: int | None = None,
                   park_reason: str = "",
                   alert: tuple[str, NewOutgoing | None] | None = None) -> bool:
    """Stores a downloaded document AND queues its mails in one transaction.

    With ``park_reason`` the fax is parked instead (document kept for the operator, no mail but
    the optional ``alert``, raised once per key). Returns False when the fax was no longer
    ``listed`` (someone stored it first): then nothing is written and nothing queued.
    """
    _check_refs(mails, FAX_MAIL_KIND, fax_ref_prefix(gofax_id))
    with store.tx() as db:
        cur = db.execute(
            "UPDATE received_faxes SET state = ?, filename = ?, content_type = ?, document = ?,"
            " pages = COALESCE(pages, ?), last_error = ?, updated_at = ?"
            " WHERE gofax_id = ? AND state = ?",
            (PARKED if park_reason else FETCHED, filename, content_type, data, pages,
             park_reason[:2000], now, gofax_id, LISTED))
        if cur.rowcount != 1:
            return False
        for mail in mails:
            store._queue(db, mail, now)
        _alert(db, store, alert, now)
        return True


def record_fetch_failure(store: Store, gofax_id: int, error: str, *, now: float,
                         next_attempt_at: float, park: bool = False,
                         alert: tuple[str, NewOutgoing | None] | None = None) -> int:
    """Counts a failed download; parks the fax (and raises its alert once) when ``park``.
    Returns the number of attempts so far."""
    with store.tx() as db:
        db.execute(
            "UPDATE received_faxes SET attempts = attempts + 1, last_error = ?,"
            " next_attempt_at = ?, state = ?, updated_at = ? WHERE gofax_id = ? AND state = ?",
            (error[:2000], next_attempt_at, PARKED if park else LISTED, now, gofax_id, LISTED))
        if park:
            _alert(db, store, alert, now)
        row = db.execute("SELECT attempts FROM received_faxes WHERE gofax_id = ?",
                         (gofax_id,)).fetchone()
        return int(row[0]) if row else 0


def requeue_fax(store: Store, gofax_id: int, *, now: float) -> bool:
    """Operator: a parked fax is fetched again (download and checks from scratch). A document
    kept from before stays until a new download replaces it."""
    with store.tx() as db:
        cur = db.execute(
            "UPDATE received_faxes SET state = ?, attempts = 0, next_attempt_at = ?,"
            " updated_at = ? WHERE gofax_id = ? AND state = ?", (LISTED, now, now, gofax_id, PARKED))
        return cur.rowcount == 1


def report_unstored(store: Store, gofax_ids: Sequence[int], alert: NewOutgoing | None, *,
                    now: float) -> list[int]:
    """Records faxes GoFax says were retrieved but that we never stored, each once.

    Returns the ids not reported before; the ``alert`` (which should name exactly those — build
    it from :func:`unreported` first) is queued only when there are any. One transaction, so a
    fax is never marked reported without its alert.
    """
    with store.tx() as db:
        fresh = []
        for gofax_id in gofax_ids:
            cur = db.execute("INSERT OR IGNORE INTO alerts VALUES (?, ?)",
                             (f"fax-unstored:{gofax_id}", now))
            if cur.rowcount == 1:
                fresh.append(gofax_id)
        if fresh and alert is not None:
            store._queue(db, alert, now)
        return fresh


def unreported(store: Store, gofax_ids: Sequence[int]) -> list[int]:
    """The ids among ``gofax_ids`` not yet reported by :func:`report_unstored`."""
    if not gofax_ids:
        return []
    keys = [f"fax-unstored:{i}" for i in gofax_ids]
    seen = {r[0] for r in store.db.execute(
        f"SELECT key FROM alerts WHERE key IN ({','.join('?' * len(keys))})", keys)}
    return [i for i, k in zip(gofax_ids, keys, strict=True) if k not in seen]


# --- delivery state (from the outbox) -----------------------------------------------------------

def _all_sent_sql(table: str, kind: str, prefix: str) -> str:
    # The row's mails are those whose ref lies in [prefix<id>:, prefix<id>;).
    return (f"NOT EXISTS (SELECT 1 FROM outbox o WHERE o.kind = '{kind}'"
            f" AND o.ref >= '{prefix}' || {table}.gofax_id || ':'"
            f" AND o.ref < '{prefix}' || {table}.gofax_id || ';' AND o.state != 'sent')")


def settle_delivered(store: Store, *, now: float) -> tuple[list[int], list[int]]:
    """Marks fetched faxes / stored replies whose every mail was accepted as delivered.

    Returns (fax ids, reply ids) moved. Idempotent; the receiver runs it every pass, and the
    outbox's sent hooks (:func:`fax_mail_sent`, :func:`sms_mail_sent`) do the same at once.
    """
    with store.tx() as db:
        faxes = [r[0] for r in db.execute(
            "UPDATE received_faxes SET state = ?, updated_at = ? WHERE state = ? AND "
            + _all_sent_sql("received_faxes", FAX_MAIL_KIND, "fax:") + " RETURNING gofax_id",
            (DELIVERED, now, FETCHED))]
        replies = [r[0] for r in db.execute(
            "UPDATE sms_replies SET state = ? WHERE state = ? AND "
            + _all_sent_sql("sms_replies", SMS_MAIL_KIND, "sms:") + " RETURNING gofax_id",
            (DELIVERED, STORED))]
    return sorted(faxes), sorted(replies)


def _id_from_ref(ref: str) -> int | None:
    parts = ref.split(":", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def fax_mail_sent(db: sqlite3.Connection, mail: OutgoingMail) -> None:
    """Outbox sent hook for kind ``fax_in``: runs inside the transaction that marks ``mail``
    sent, and marks its fax delivered when that was its last unsent mail."""
    gofax_id = _id_from_ref(mail.ref)
    if gofax_id is not None:
        db.execute("UPDATE received_faxes SET state = ? WHERE gofax_id = ? AND state = ? AND "
                   + _all_sent_sql("received_faxes", FAX_MAIL_KIND, "fax:"),
                   (DELIVERED, gofax_id, FETCHED))


def sms_mail_sent(db: sqlite3.Connection, mail: OutgoingMail) -> None:
    """Outbox sent hook for kind ``sms_in`` (see :func:`fax_mail_sent`)."""
    gofax_id = _id_from_ref(mail.ref)
    if gofax_id is not None:
        db.execute("UPDATE sms_replies SET state = ? WHERE gofax_id = ? AND state = ? AND "
                   + _all_sent_sql("sms_replies", SMS_MAIL_KIND, "sms:"),
                   (DELIVERED, gofax_id, STORED))


@dataclass(frozen=True)
class Delivery:
    """One outgoing mail of a received fax or reply: to whom, and how far it got."""

    rcpt: str
    state: str           # pending | sent | parked (the outbox row's state)
    attempts: int
    last_error: str


def deliveries(store: Store, kind: str, prefix: str) -> list[Delivery]:
    low, high = _ref_range(prefix)
    rows = store.db.execute(
        "SELECT rcpt_to, state, attempts, last_error FROM outbox WHERE kind = ? AND ref >= ?"
        " AND ref < ? ORDER BY id", (kind, low, high))
    out = []
    for rcpt_json, state, attempts, error in rows:
        out.append(Delivery(", ".join(json.loads(rcpt_json)), state, attempts, error))
    return out


# --- SMS replies ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class StoredReply:
    gofax_id: int
    reply_number: str
    message_id: int | None
    from_number: str
    to_number: str
    message: str
    received_utc: datetime | None
    job_id: int | None
    state: str
    created_at: float


def known_reply_ids(store: Store, ids: Sequence[int]) -> set[int]:
    if not ids:
        return set()
    return {r[0] for r in store.db.execute(
        f"SELECT gofax_id FROM sms_replies WHERE gofax_id IN ({','.join('?' * len(ids))})",
        list(ids))}


def find_sms_job_for_reply(store: Store, message_id: int | None, from_number: str, *,
                           received_at: float | None = None) -> Job | None:
    """The SMS job a reply answers: the one GoFax names (``MessageID``), else the most recent
    SMS we submitted to that mobile (not one created after the reply arrived)."""
    if message_id is not None:
        job = store.job_by_gofax_id("sms", message_id)
        if job is not None:
            return job
    if not from_number:
        return None
    sql = ("SELECT id FROM jobs WHERE kind = 'sms' AND to_number = ? AND gofax_id IS NOT NULL")
    args: list[object] = [from_number]
    if received_at is not None:
        sql += " AND created_at <= ?"
        args.append(received_at + REPLY_CLOCK_SKEW_SECONDS)
    row = store.db.execute(sql + " ORDER BY created_at DESC, id DESC LIMIT 1", args).fetchone()
    return store.job(row[0]) if row else None


def record_reply(store: Store, reply: SmsReply, reply_number: str, job_id: int | None,
                 mails: Sequence[NewOutgoing], *, now: float, state: str = STORED) -> bool:
    """Stores a reply AND queues its mails in one transaction; also advances the number's
    cursor. Returns False (nothing written or queued) when the reply was stored before."""
    _check_refs(mails, SMS_MAIL_KIND, sms_ref_prefix(reply.id))
    with store.tx() as db:
        cur = db.execute(
            "INSERT OR IGNORE INTO sms_replies (gofax_id, reply_number, message_id, from_number,"
            " to_number, message, received_utc, job_id, state, created_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?)",
            (reply.id, reply_number, reply.message_id, reply.from_number, reply.to_number,
             reply.message, _iso(reply.received_utc), job_id, state, now))
        if cur.rowcount != 1:
            return False
        for mail in mails:
            store._queue(db, mail, now)
        _advance_cursor(db, reply_cursor(reply_number), reply.id)
        return True


def reply_cursor(reply_number: str) -> str:
    return f"sms_replies:{reply_number}"


def _advance_cursor(db: sqlite3.Connection, name: str, seen_id: int) -> None:
    # The highest reply id seen. Dedupe is by id (the primary key), never by "id > cursor": GoFax
    # does not promise increasing ids. The cursor says "this number was polled before".
    db.execute("INSERT INTO cursors VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value ="
               " CAST(MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER)) AS TEXT)",
               (name, str(seen_id)))


def mark_polled(store: Store, reply_number: str, max_id: int) -> None:
    """Records that a number's replies were polled completely (ends its first run)."""
    with store.tx() as db:
        _advance_cursor(db, reply_cursor(reply_number), max_id)


def get_reply(store: Store, gofax_id: int) -> StoredReply | None:
    row = store.db.execute(f"SELECT {_REPLY_COLUMNS} FROM sms_replies WHERE gofax_id = ?",
                           (gofax_id,)).fetchone()
    return _stored_reply(row) if row else None


_REPLY_COLUMNS = ("gofax_id, reply_number, message_id, from_number, to_number, message,"
                  " received_utc, job_id, state, created_at")


def _stored_reply(row: sqlite3.Row | tuple[object, ...]) -> StoredReply:
    values = list(row)
    values[6] = parse_utc(values[6])  # type: ignore[arg-type]
    return StoredReply(*values)  # type: ignore[arg-type]


# --- listings (faxbridge inbox) ------------------------------------------------------------------

def list_faxes(store: Store, *, limit: int = 50) -> list[tuple[StoredFax, list[Delivery]]]:
    """Received faxes, parked ones (the fax or one of its mails) first, then newest first."""
    rows = store.db.execute(
        f"SELECT {_FAX_COLUMNS} FROM received_faxes f ORDER BY"
        " (f.state = 'parked' OR EXISTS (SELECT 1 FROM outbox o WHERE o.kind = ? AND"
        " o.ref >= 'fax:' || f.gofax_id || ':' AND o.ref < 'fax:' || f.gofax_id || ';'"
        " AND o.state = 'parked')) DESC, f.created_at DESC, f.gofax_id DESC LIMIT ?",
        (FAX_MAIL_KIND, limit))
    faxes = [_stored_fax(r) for r in rows]
    return [(f, deliveries(store, FAX_MAIL_KIND, fax_ref_prefix(f.gofax_id))) for f in faxes]


def list_replies(store: Store, *, limit: int = 50) -> list[tuple[StoredReply, list[Delivery]]]:
    """SMS replies, those with a parked mail first, then newest first."""
    rows = store.db.execute(
        f"SELECT {_REPLY_COLUMNS} FROM sms_replies r ORDER BY"
        " EXISTS (SELECT 1 FROM outbox o WHERE o.kind = ? AND"
        " o.ref >= 'sms:' || r.gofax_id || ':' AND o.ref < 'sms:' || r.gofax_id || ';'"
        " AND o.state = 'parked') DESC, r.created_at DESC, r.gofax_id DESC LIMIT ?",
        (SMS_MAIL_KIND, limit))
    replies = [_stored_reply(r) for r in rows]
    return [(r, deliveries(store, SMS_MAIL_KIND, sms_ref_prefix(r.gofax_id))) for r in replies]


__all__ = [
    "DELIVERED", "FETCHED", "LISTED", "PARKED", "SKIPPED", "STORED", "Delivery", "StoredFax",
    "StoredReply", "due_faxes", "fax_document", "fax_mail_sent", "find_sms_job_for_reply",
    "get_fax", "get_reply", "known_fax_ids", "known_reply_ids", "list_faxes", "list_replies",
    "mark_polled", "next_fax_due_at", "record_fetch_failure", "record_listed", "record_reply",
    "report_unstored", "requeue_fax", "settle_delivered", "sms_mail_sent", "store_document",
    "unreported",
]
