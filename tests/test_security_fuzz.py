"""Property-based fuzzing of the SMTP intake: hostile mail never breaks it, and only a 250 stores.

Hypothesis generates mails (random MIME trees, broken transfer encodings and base64, malformed
and 8-bit headers, odd and lying charsets, nested message/rfc822, empty and giant parts, long
lines, the occasional bare CR or LF) and envelopes (allowed and refused senders, fax, SMS,
invalid and relay recipients). They go through real SMTP sessions to the intake, which runs
in **separate processes** (one per core, at most 4, each with its own real store): one
connection per batch of 20 mails, RSET between them. After each batch the store is read
directly and these must hold:

- the server still answers (a crash or hang would fail the next connection);
- every reply is 250, 354 (to DATA) or 4xx/5xx, and never our generic ``451 4.3.0`` (which
  means an unexpected exception);
- every ``250 … queued as job(s) N`` names jobs that exist, with their mail (envelope sender as
  given) and, for a fax, its documents (non-empty, safe names), for an SMS its text;
- nothing else is in the store: exactly those jobs and mails, no stray documents.

By default 10,000 mails, about 30–40 s on 2 cores (``FAXBRIDGE_FUZZ_MESSAGES=100000`` for a
long run); ``pytest -s`` shows how many mails went through, how long it took and how they were
answered. Cover pages (fpdf2, ~50 ms each) are off in the big run so it stays fast, and fuzzed
separately with ``FAXBRIDGE_FUZZ_COVER_MESSAGES`` (default 250). Generating a batch (here) and
serving the previous ones (there) overlap; see :class:`Pipeline` for what that means for
failure reports.
"""

from __future__ import annotations

import base64
import contextlib
import email.header
import json
import os
import quopri
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st
from test_intake_message import encrypted_pdf, make_pdf

from bridge import replies

MESSAGES = int(os.environ.get("FAXBRIDGE_FUZZ_MESSAGES", "10000"))
BATCH = 20  # mails per connection: 20 x 4 RCPT = the per-session RCPT budget with max_recipients = 3
MAX_MESSAGE_BYTES = 300_000      # small, so that giant parts cross it
COVER_MESSAGES = int(os.environ.get("FAXBRIDGE_FUZZ_COVER_MESSAGES", "250"))

# The intake, in its own process: python -c SERVER <store> <json config> → prints its port.
SERVER = r"""
import asyncio, json, signal, sys
from bridge import log
from bridge.config import FaxConfig, LimitsConfig, SmtpConfig, defaults
from bridge.intake.server import SmtpIntake
from bridge.store import AsyncStore

async def main():
    log.setup("warning", "json", stream=sys.stderr)  # errors only: they are what we look for
    settings = json.loads(sys.argv[2])
    config = defaults(smtp=SmtpConfig(**settings["smtp"]), fax=FaxConfig(cover=settings["cover"]),
                      limits=LimitsConfig(**settings["limits"]))
    store = AsyncStore.open(sys.argv[1])
    intake = SmtpIntake(config, store)
    await intake.start()
    print("PORT", intake.port, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await intake.stop(grace_seconds=1)
    store.close()

asyncio.run(main())
"""


# --- the server and a raw client --------------------------------------------------------------------

@dataclass
class Server:
    port: int
    db_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    seen_jobs: set[int] = field(default_factory=set)
    seen_mails: int = 0
    sent: int = 0
    answers: Counter[str] = field(default_factory=Counter)  # "250 queued", "554", …

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


@contextlib.contextmanager
def intake_process(cover: str) -> Iterator[Server]:
    # tmpfs when there is one: synchronous=FULL then costs no disk flush per accepted mail.
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=base, prefix="faxbridge-fuzz-") as folder:
        db = Path(folder) / "store.db"
        # Quotas on (their checks run for every accepted mail) but too high to refuse anything.
        settings = {"cover": cover, "limits": {"faxes_per_day": 0, "fax_pages_per_day": 0,
                                               "sms_parts_per_day": 0}, "smtp": {
            "listen": "127.0.0.1:0", "max_message_bytes": MAX_MESSAGE_BYTES,
            "allowed_senders": ["*@example.com"], "max_recipients": 3,
            "max_mime_parts": 30, "max_mime_depth": 6, "max_header_bytes": 8_000}}
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        log_path = Path(folder) / "intake.log"
        with log_path.open("wb") as errors:
            proc = subprocess.Popen([sys.executable, "-c", SERVER, str(db), json.dumps(settings)],
                                    stdout=subprocess.PIPE, stderr=errors, env=env)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            assert line.startswith("PORT "), line + log_path.read_text()
            yield Server(int(line.split()[1]), db, log_path, proc)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


class Client:
    """A blocking SMTP client that sends exactly the bytes it is given."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")
        greeting = self.reply()
        assert greeting[0] == 220, greeting
        assert self.command(b"EHLO fuzz.example.com")[0] == 250

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("the server closed the connection")
            lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            if line[3:4] != b"-":
                break
        return int(lines[-1][:3]), lines[-1][4:]

    def command(self, line: bytes) -> tuple[int, str]:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def data(self, raw: bytes) -> tuple[int, str]:
        stuffed = re.sub(rb"(?:^|(?<=\r\n))\.", b"..", raw)
        if not stuffed.endswith(b"\r\n"):
            stuffed += b"\r\n"
        self.sock.sendall(stuffed + b".\r\n")
        return self.reply()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.command(b"QUIT")
        self.file.close()
        self.sock.close()


# --- generating mails ---------------------------------------------------------------------------------
#
# Every strategy is built once, here: hypothesis validates and labels each strategy object it
# meets, and building them inside the composite functions made generation the slow half of the run.

PDFS = [make_pdf(1), make_pdf(3, "three"), make_pdf(2)[:400], encrypted_pdf(),
        b"%PDF-1.4\n" + bytes(range(256)) * 3, encrypted_pdf(user_password="")]
IMAGES = [(b"image/png", b"\x89PNG\r\n\x1a\n" + bytes(60)), (b"image/jpeg", b"\xff\xd8\xff\xe0" + bytes(60)),
          (b"image/tiff", b"II*\x00" + bytes(60)), (b"image/gif", b"GIF89a" + bytes(30))]
CHARSETS = ["utf-8", "us-ascii", "iso-8859-1", "windows-1252", "shift_jis", "utf-7", "x-unknown",
            "", "utf-16", "koi8-r", '"utf-8"', "utf-8; format=flowed"]
CTES = ["base64", "quoted-printable", "7bit", "8bit", "binary", "x-uuencode", "BASE64", None]
FILENAMES = ["report.pdf", "scan", "../../etc/passwd", "a\tb.pdf", "=?utf-8?q?Ber=C3=A4t.pdf?=",
             "x" * 300 + ".pdf", "CON.pdf", "invoice.PDF", "photo.jpg", "notes.txt", ".hidden",
             "résumé.docx", "\u202efdp.exe", "", None]
SENDERS = ["alice@example.com", "bob@example.com", "mallory@evil.com"]
FROMS = ["Alice <alice@example.com>", "alice@example.com", "=?utf-8?b?w4Vsw61jZQ==?= <alice@example.com>",
         "Mallory <mallory@evil.com>", "<<<>>>", "", "undisclosed-recipients:;",
         "alice@example.com, bob@example.com", '"Al, ice" <alice@example.com>', "Alice <alice@example.com"]
GOOD_RCPTS = ["0298765432@fax.local", "0398765432@fax.local", "+61298765432@fax.local",
              "0412345678@sms.local"]
RCPTS = [*GOOD_RCPTS, "0299@fax.local", "someone@evil.com", "0298765432%evil.com@fax.local",
         "0298765432@sms.local"]
HEADER_NAMES = ["X-Mailer", "Reply-To", "Auto-Submitted", "Precedence", "Content-Disposition",
                "X-Weird", "Received", "Authentication-Results", "Cc", "In-Reply-To"]
# Texts: short ones from hypothesis (any code point but surrogates), or canned hostile ones
# repeated (drawing hundreds of characters one by one would be slow).
CANNED = ["Please fax the attached.\n-- \nAlice", "Zürich – 東京 – 🦊 – Ελληνικά – עברית",
          "<script>alert(1)</script>&amp;&#0;", "\u202e\u200b\ufeff\x00\x07\x1b[31m",
          "=?utf-8?q?=0D=0ABcc:_x@evil?=", "line\r\nBcc: victim@evil.example", "\t \t",
          "A" * 120, "\ud7ff\ue000\U0010ffff", "> quoted\n>> more\nOn Tue, Bob wrote:"]
GOOD_ATTACHMENTS = [(PDFS[0], b"application/pdf", "report.pdf"),
                    (PDFS[1], b"application/pdf", "three.pdf"),
                    (IMAGES[0][1], b"image/png", "chart.png"), (IMAGES[2][1], b"image/tiff", "scan.tif"),
                    (b"Plain notes\r\n", b"text/plain", "notes.txt")]


def _pick(values: list[Any]) -> st.SearchStrategy[Any]:
    return st.sampled_from(values)


def _rare(n: int) -> st.SearchStrategy[bool]:
    """True about once in ``n``. (A middle value, not 0: hypothesis favours boundary values and
    zero-filled choices, which would make a "rare" case common.)"""
    return st.integers(0, n - 1).map(lambda x: x == n // 2)


_short = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
HEADER_TEXT = st.one_of(_short, _pick(CANNED))
BODY_TEXT = st.one_of(_short, st.tuples(_pick(CANNED), st.integers(1, 40)).map(lambda t: t[0] * t[1]))
S = {  # the building blocks
    "charset": _pick(CHARSETS), "cte": _pick(CTES), "filename": _pick(FILENAMES),
    "disposition": _pick(["attachment", "inline", "", "attachment; size=x", "bogus"]),
    "text_subtype": _pick([b"plain", b"html", b"enriched", b"calendar"]),
    "pdf": _pick(PDFS), "pdf_type": _pick([b"application/pdf", b"application/octet-stream",
                                            b"image/png", b""]),
    "image": _pick(IMAGES), "binary": st.binary(max_size=400),
    "binary_type": _pick([b"application/octet-stream", b"application/zip", b"application/msword",
                          b"text/plain", b"x/y", b"garbage"]),
    "empty_type": _pick([b"application/pdf", b"text/plain"]),
    "multipart_subtype": _pick([b"mixed", b"alternative", b"related", b"signed", b"report",
                                b"x-unknown", b"digest"]),
    "boundary": _pick([b"b1", b"=_b_=", b"with space", b"x" * 70, b"--"]),
    "giant": st.integers(200_000, 400_000), "kind": st.integers(0, 99), "how": st.integers(0, 9),
    "bool": st.booleans(), "rare20": _rare(20), "rare40": _rare(40), "quarter": st.integers(0, 3),
    "good": st.lists(_pick(GOOD_ATTACHMENTS), min_size=1, max_size=3), "index": st.integers(0, 3),
    "from": st.one_of(st.just(FROMS[0]), _pick([*FROMS, None])),
    "message_id": st.one_of(st.just("UNIQUE"), _pick(["<dup@fuzz.example>", "garbage", "<>", ""])),
    "date": _pick([b"Tue, 14 May 2024 10:32:00 +1000", b"yesterday",
                   b"Mon, 32 Foo 99999 99:99:99 +9999", b""]),
    "header_name": _pick(HEADER_NAMES), "extra_headers": st.integers(0, 3),
    "damage": st.integers(0, 59), "where": st.floats(0, 1),
    "sender": st.one_of(st.just(SENDERS[0]), _pick(SENDERS)),
    "rcpts": st.lists(st.one_of(_pick(GOOD_RCPTS), _pick(RCPTS)), min_size=1, max_size=4, unique=True),
}


def crlf(data: bytes) -> bytes:
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


def wrap(data: bytes, width: int) -> bytes:
    return b"\r\n".join(data[i:i + width] for i in range(0, len(data), width)) or b""


@dataclass
class Part:
    headers: list[tuple[str, bytes]]
    body: bytes

    def render(self) -> bytes:
        head = b"".join(name.encode() + b": " + value + b"\r\n" for name, value in self.headers)
        return head + b"\r\n" + self.body


def encode(draw: st.DrawFn, data: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """A transfer encoding for ``data``: right, wrong or lying."""
    cte = draw(S["cte"])
    headers = [("Content-Transfer-Encoding", cte.encode())] if cte else []
    how = draw(S["how"])
    if cte and cte.lower() == "base64":
        body = wrap(base64.b64encode(data), 76)
        if how == 4:
            body = body[: len(body) // 2 + 1]                 # cut mid-way, broken padding
        elif how == 5:
            body = body.replace(b"A", b"!", 3)                 # not base64 at all
        return headers, body
    if cte == "quoted-printable":
        body = crlf(quopri.encodestring(data)) if how != 4 else crlf(data.replace(b"=", b"=ZZ"))
    else:
        body = crlf(data)
    if not draw(S["rare40"]):  # now and then a line too long for SMTP (aiosmtpd: 500)
        body = b"\r\n".join(wrap(line, 900) for line in body.split(b"\r\n"))
    return headers, body


@st.composite
def leaf(draw: st.DrawFn) -> Part:
    kind = draw(S["kind"])
    filename = draw(S["filename"])
    disposition = draw(S["disposition"])

    def named(ctype: bytes) -> list[tuple[str, bytes]]:
        out = [("Content-Type", ctype + (f'; name="{filename}"'.encode() if filename else b""))]
        if disposition:
            out.append(("Content-Disposition", disposition.encode()
                        + (f'; filename="{filename}"'.encode() if filename else b"")))
        return out

    if kind < 30:      # text, in some charset, maybe lying about it
        charset = draw(S["charset"])
        text = draw(BODY_TEXT)
        try:
            data = text.encode(charset.split(";")[0].strip('"') or "utf-8")
        except (LookupError, UnicodeError):
            data = text.encode("utf-8", "surrogatepass")
        subtype = draw(S["text_subtype"])
        if subtype == b"html":
            data = b"<html><body><p>" + data + b"</p><img src=\"cid:logo\"></body></html>"
        param = f"; charset={charset}".encode() if charset else b""
        headers = named(b"text/" + subtype) if draw(S["bool"]) else [
            ("Content-Type", b"text/" + subtype + param)]
        cte_headers, body = encode(draw, data)
        return Part(headers + cte_headers, body)
    if kind < 55:      # a PDF (good, cut, encrypted, fake), declared right or wrong
        data = draw(S["pdf"])
        ctype = draw(S["pdf_type"])
        cte_headers, body = encode(draw, data)
        return Part(named(ctype or b"application/pdf") + cte_headers, body)
    if kind < 68:      # images
        ctype, data = draw(S["image"])
        cte_headers, body = encode(draw, data)
        return Part(named(ctype) + cte_headers, body)
    if kind < 82:      # random bytes with some declared type
        data = draw(S["binary"])
        cte_headers, body = encode(draw, data)
        return Part(named(draw(S["binary_type"])) + cte_headers, body)
    if kind != 95:     # empty
        return Part(named(draw(S["empty_type"])), b"")
    # giant (1 leaf in 100): around the size limit
    size = draw(S["giant"])
    return Part([*named(b"application/pdf"), ("Content-Transfer-Encoding", b"base64")],
                wrap(base64.b64encode(b"%PDF-1.4\n" + b"A" * size)[: size], 76))


def containers(children: st.SearchStrategy[Part]) -> st.SearchStrategy[Part]:
    """Multiparts (with broken boundaries now and then) and, less often, a forwarded
    message/rfc822. (st.recursive calls this a few times, when it builds the strategy.)"""
    parts_of = st.lists(children, max_size=4)

    @st.composite
    def multipart(draw: st.DrawFn) -> Part:
        subtype = draw(S["multipart_subtype"])
        parts = draw(parts_of)
        boundary = draw(S["boundary"])
        how = draw(S["how"])
        ctype = b"multipart/" + subtype + b'; boundary="' + boundary + b'"'
        if how == 4:
            ctype = b"multipart/" + subtype                    # no boundary at all
        body = b"preamble\r\n"
        for part in parts:
            body += b"--" + boundary + b"\r\n" + part.render() + b"\r\n"
        if how != 5:                                          # 5: no closing boundary
            body += b"--" + boundary + b"--\r\n"
        return Part([("Content-Type", ctype)], body)

    forwarded = children.map(lambda inner: Part(
        [("Content-Type", b"message/rfc822")],
        b"From: inner@example.com\r\nSubject: forwarded\r\n" + inner.render()))
    mp = multipart()
    return st.one_of(mp, mp, mp, mp, mp, mp, mp, mp, mp, forwarded)


TREES = st.recursive(leaf(), containers, max_leaves=6)


@st.composite
def plausible(draw: st.DrawFn) -> Part:
    """What a mail client sends: some text and a few good attachments, so that many mails are
    accepted and the "every 250 is a complete job" property is exercised, not just refusals."""
    text = draw(BODY_TEXT).encode("utf-8", "surrogatepass")
    parts = [Part([("Content-Type", b"text/plain; charset=utf-8"),
                   ("Content-Transfer-Encoding", b"base64")], wrap(base64.b64encode(text), 76))]
    for data, ctype, name in draw(S["good"]):
        parts.append(Part([("Content-Type", ctype), ("Content-Disposition",
                                                     f'attachment; filename="{name}"'.encode()),
                           ("Content-Transfer-Encoding", b"base64")], wrap(base64.b64encode(data), 76)))
    if draw(S["quarter"]) == 2:  # and sometimes one hostile part among the good ones
        parts.insert(min(draw(S["index"]), len(parts)), draw(TREES))
    body = b"".join(b"--pb\r\n" + p.render() + b"\r\n" for p in parts) + b"--pb--\r\n"
    return Part([("Content-Type", b'multipart/mixed; boundary="pb"')], body)


BODIES = st.one_of(plausible(), TREES)
UNIQUE_ID = b"<UNIQUE@fuzz.example>"


@dataclass
class Mail:
    mail_from: str
    rcpts: list[str]
    raw: bytes


@st.composite
def mails(draw: st.DrawFn) -> Mail:
    tree = draw(BODIES)
    headers: list[tuple[str, bytes]] = []
    from_ = draw(S["from"])
    if from_ is not None:
        headers.append(("From", from_.encode()))
    subject = draw(HEADER_TEXT)
    if draw(S["bool"]):
        headers.append(("Subject", email.header.Header(subject, "utf-8").encode(linesep="\r\n")
                        .encode()))
    else:
        headers.append(("Subject", subject.replace("\r", " ").replace("\n", " ")
                        .encode("utf-8", "surrogatepass")))
    # Mostly a Message-ID made unique when sent (UNIQUE_ID), else a repeated or broken one.
    message_id = draw(S["message_id"])
    if message_id:
        headers.append(("Message-ID", UNIQUE_ID if message_id == "UNIQUE" else message_id.encode()))
    headers.append(("Date", draw(S["date"])))
    if draw(S["bool"]):
        headers.append(("MIME-Version", b"1.0"))
    for _ in range(draw(S["extra_headers"])):
        headers.append((draw(S["header_name"]), draw(HEADER_TEXT).replace("\r", " ")
                        .replace("\n", " ").encode("utf-8", "surrogatepass")))
    if draw(S["rare20"]):                                     # a huge header section
        headers += [(f"X-Padding-{i}", b"p" * 80) for i in range(110)]
    raw = b"".join(n.encode() + b": " + v + b"\r\n" for n, v in headers) + tree.render()
    damage = draw(S["damage"])
    if damage in (29, 30):                                    # a bare LF or CR somewhere
        at = int(draw(S["where"]) * len(raw))
        raw = raw[:at] + (b"\n" if damage == 29 else b"\r") + raw[at:]
    elif damage == 31:                                        # a NUL
        raw = raw.replace(b"\r\n\r\n", b"\r\n\x00\r\n", 1)
    return Mail(draw(S["sender"]), draw(S["rcpts"]), raw)


# --- the properties ---------------------------------------------------------------------------------------

QUEUED_IDS = re.compile(r"queued as job\(s\) ([\d, ]+)$")


@dataclass
class Outcome:
    mail: Mail
    accepted_rcpts: list[str]
    final: tuple[int, str]


def run_batch(server: Server, batch: list[Mail]) -> list[Outcome]:
    """The batch over one connection. The envelope of each mail is sent in one write (RSET,
    MAIL, RCPT…, DATA; the server reads commands one by one, so this is the same dialogue with
    fewer round trips). A failure names the mail that caused it."""
    client = Client(server.port)
    outcomes = []
    try:
        for mail in batch:
            try:
                outcome = send_one(server, client, mail)
                outcomes.append(outcome)
                code, text = outcome.final
                server.answers["250 queued" if QUEUED_IDS.search(text) else
                               "250 duplicate" if "already queued" in text else str(code)] += 1
            except (AssertionError, OSError) as exc:
                raise AssertionError(f"{exc}\nwhile sending MAIL FROM:<{mail.mail_from}> RCPT "
                                     f"{mail.rcpts} and this message:\n{mail.raw[:3000]!r}\n"
                                     f"the intake's log:\n{server.log_tail()}") from exc
            server.sent += 1
    finally:
        client.close()
    return outcomes


def send_one(server: Server, client: Client, mail: Mail) -> Outcome:
    """One mail: the envelope in one write, the data if DATA was answered 354."""
    rcpts = [b"RCPT TO:<" + r.encode() + b">\r\n" for r in mail.rcpts]
    client.sock.sendall(b"RSET\r\nMAIL FROM:<" + mail.mail_from.encode() + b">\r\n"
                        + b"".join(rcpts) + b"DATA\r\n")
    assert client.reply()[0] == 250  # RSET
    answer = client.reply()
    check_code(answer)
    accepted: list[str] = []
    for rcpt in mail.rcpts:
        reply = client.reply()
        check_code(reply)
        if reply[0] == 250:
            accepted.append(rcpt)
    start = client.reply()
    if accepted:
        assert start[0] == 354, start
        answer = client.data(mail.raw.replace(
            UNIQUE_ID, f"<{server.sent}.{time.monotonic_ns()}@fuzz.example>".encode(), 1))
    else:
        assert start[0] == 503, start  # "need RCPT" (or MAIL): nothing to send
    check_code(answer)
    return Outcome(mail, accepted, answer)


def check_code(reply: tuple[int, str]) -> None:
    code, text = reply
    assert code == 250 or 400 <= code < 600, reply
    # Our generic 451 means an exception we did not expect: a bug, whatever the input.
    assert not replies.TEMPFAIL.matches(code, text), reply


def resync(server: Server) -> None:
    """What the store holds now (so that a failed example, or shrinking, starts clean)."""
    db = sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True)
    try:
        server.seen_jobs = {r[0] for r in db.execute("SELECT id FROM jobs")}
        server.seen_mails = db.execute("SELECT COUNT(*) FROM mails").fetchone()[0]
    finally:
        db.close()


def verify_store(server: Server, outcomes: list[Outcome]) -> None:
    expected: dict[int, Outcome] = {}
    queued = 0
    for outcome in outcomes:
        code, text = outcome.final
        if code == 250 and outcome.accepted_rcpts:
            match = QUEUED_IDS.search(text)
            if match:
                queued += 1
                for job_id in (int(x) for x in match.group(1).split(",")):
                    expected[job_id] = outcome
            else:
                assert replies.ALREADY_QUEUED.matches(code, text), outcome.final
    db = sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True)
    try:
        jobs = {r[0]: r for r in db.execute(
            "SELECT j.id, j.mail_id, j.kind, j.to_number, j.sms_text, j.sms_parts, m.mail_from"
            " FROM jobs j JOIN mails m ON m.id = j.mail_id")}
        new = set(jobs) - server.seen_jobs
        assert new == set(expected), f"store has jobs {sorted(new)}, replies named {sorted(expected)}"
        mails = db.execute("SELECT COUNT(*) FROM mails").fetchone()[0]
        assert mails == server.seen_mails + queued, "a mail without a 250"
        stray = db.execute("SELECT COUNT(*) FROM documents WHERE mail_id NOT IN"
                           " (SELECT mail_id FROM jobs WHERE kind = 'fax')").fetchone()[0]
        assert stray == 0, "documents of no fax job"
        for job_id in new:
            _, mail_id, kind, to_number, sms_text, sms_parts, mail_from = jobs[job_id]
            outcome = expected[job_id]
            why = f"job {job_id} ({kind} to {to_number}) of this mail: {outcome.mail!r}"[:4000]
            assert mail_from == outcome.mail.mail_from, why
            assert any(to_number[-9:] in r.replace("+61", "0") for r in outcome.accepted_rcpts), why
            if kind == "fax":
                docs = db.execute("SELECT filename, data FROM documents WHERE mail_id = ?",
                                  (mail_id,)).fetchall()
                assert docs, f"no documents for {why}"
                for filename, data in docs:
                    assert data and filename, f"empty document {filename!r} for {why}"
                    assert "/" not in filename and "\\" not in filename, why
                    assert filename.isprintable() and len(filename) <= 100, why
            else:
                assert sms_text and sms_text.strip() and sms_parts and sms_parts >= 1, \
                    f"empty SMS text {sms_text!r} for {why}"
        server.seen_jobs |= new
        server.seen_mails = mails
    finally:
        db.close()


class Pipeline:
    """Sends and checks batches on worker threads, one per intake process, while hypothesis
    generates the next batch: generating (this process) and serving (the intakes') share the
    cores. Each intake gets its batches one at a time (the store check counts on it).

    A failure is therefore seen an example or two late: it is kept, annotated with the mail
    that caused it, and raised by every later call (so hypothesis reports it consistently;
    shrinking is off for the same reason)."""

    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers
        self.pools = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"fuzz-sender-{i}")
                      for i in range(len(servers))]
        self.pending: list[Future[None] | None] = [None] * len(servers)
        self.next = 0
        self.failure: BaseException | None = None

    @staticmethod
    def _run(server: Server, batch: list[Mail]) -> None:
        assert server.alive(), "the intake process died:\n" + server.log_tail()
        resync(server)
        outcomes = run_batch(server, batch)
        verify_store(server, outcomes)
        assert server.alive(), "the intake process died:\n" + server.log_tail()

    def _wait(self, i: int) -> None:
        pending, self.pending[i] = self.pending[i], None
        if pending is not None:
            try:
                pending.result()
            except BaseException as exc:
                self.failure = self.failure or exc

    def submit(self, batch: list[Mail]) -> None:
        for i, pending in enumerate(self.pending):
            if pending is not None and pending.done():
                self._wait(i)
        if self.failure is not None:
            raise self.failure
        i, self.next = self.next, (self.next + 1) % len(self.servers)
        self._wait(i)  # that intake's previous batch must be finished and checked
        if self.failure is not None:
            raise self.failure
        self.pending[i] = self.pools[i].submit(self._run, self.servers[i], batch)

    def close(self) -> None:
        try:
            for i in range(len(self.servers)):
                self._wait(i)
            if self.failure is not None:
                raise self.failure
        finally:
            for pool in self.pools:
                pool.shutdown(wait=True)


def fuzz(servers: list[Server], count: int) -> None:
    pipeline = Pipeline(servers)

    # Quiet: the example hypothesis would print is a later batch, not the failing one (see
    # Pipeline); the error itself names the mail that failed.
    @settings(max_examples=max(1, count // BATCH), deadline=None, database=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck),
              verbosity=Verbosity.quiet)
    @given(st.lists(mails(), min_size=BATCH, max_size=BATCH))
    def property_(batch: list[Mail]) -> None:
        pipeline.submit(batch)

    try:
        property_()
    finally:
        pipeline.close()


# One intake process per core (at most 4): the intake is one process with one event loop in
# production too; several only make the fuzzing faster.
INTAKES = max(1, min(4, os.cpu_count() or 1))


def report(what: str, servers: list[Server], started: float) -> int:
    elapsed = time.monotonic() - started
    sent = sum(s.sent for s in servers)
    answers: Counter[str] = Counter()
    for s in servers:
        answers.update(s.answers)
    print(f"\n{what}: {sent} mails through SMTP to {len(servers)} intake process(es) in "
          f"{elapsed:.1f} s ({sent / elapsed:.0f}/s); {sum(len(s.seen_jobs) for s in servers)} jobs "
          "queued; answers: " + ", ".join(f"{k}: {v}" for k, v in answers.most_common()))
    return sent


@pytest.mark.timeout(600)
def test_fuzz_the_intake() -> None:
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(intake_process(cover="never")) for _ in range(INTAKES)]
        fuzz(servers, MESSAGES)
        assert report("fuzz", servers, started) >= MESSAGES // BATCH * BATCH
        for server in servers:  # and each still greets a new client
            Client(server.port).close()


@pytest.mark.timeout(300)
def test_fuzz_the_intake_with_cover_pages() -> None:
    """The same with cover pages from the (hostile) body text: fpdf2 must cope too."""
    started = time.monotonic()
    with intake_process(cover="auto") as server:
        fuzz([server], COVER_MESSAGES)
        assert report("fuzz (cover pages)", [server], started) >= COVER_MESSAGES // BATCH * BATCH


# --- what the fuzzer found ---------------------------------------------------------------------------

@pytest.mark.parametrize("body", ["\u200b", "\ufeff", "\u200b\ufeff\u200b"])
def test_found_an_sms_of_only_invisible_characters_is_empty(body: str) -> None:
    """A body of zero-width characters was queued as an SMS whose text normalised to "" (billed,
    and sent empty). It is refused as empty, unless the subject has words."""
    from test_intake_message import build, make_mail

    from bridge.replies import Refused

    with pytest.raises(Refused) as info:
        build(make_mail(body=body, subject="", to="0412345678@sms.local"),
              recipients=["0412345678@sms.local"])
    assert info.value.reply.startswith("554 5.6.0 nothing to send as SMS")
    mail = build(make_mail(body=body, subject="Call me", to="0412345678@sms.local"),
                 recipients=["0412345678@sms.local"])
    assert [j.sms_text for j in mail.jobs] == ["Call me"]


def test_found_a_non_text_part_named_txt_is_not_stored_empty() -> None:
    """A part declared image/png but named notes.txt (and not a PNG) was classified as text,
    then converted through a text-only path that gave b"": an empty document was queued."""
    from test_intake_message import build

    raw = (b"From: alice@example.com\r\nSubject: x\r\nMessage-ID: <txt@fuzz.example>\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: image/png; name=\"notes.txt\"\r\n"
           b"Content-Transfer-Encoding: x-uuencode\r\n\r\n\x89PNG\r\n\x1a\r\nsome bytes\r\n")
    [doc] = build(raw).documents
    assert doc.filename == "notes.txt" and doc.data.strip()
    assert b"some bytes" in doc.data
