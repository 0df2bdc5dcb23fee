"""Every outgoing email is built here: job notices, received faxes, SMS replies, operator alerts.

Two rules, because both have cost mail systems dearly:

- **Headers are built by** :class:`email.message.EmailMessage`, **never by a template.** Text that
  a sender controls (their subject, their Message-ID, a caller's CSID) goes through
  :func:`clean_header_text` first. ``EmailMessage`` refuses a CR or LF in a header value, but it
  *decodes* RFC 2047 encoded words in the values it is given and writes the decoded text out raw:
  a subject of ``=?utf-8?q?=0D=0ABcc:_x@evil?=`` would become a real ``Bcc:`` header. So
  encoded-word openers are defused too, and every built message is re-parsed to check that it
  has exactly the headers we set (:meth:`Notices._serialise`).
- **Bodies come from Jinja templates** with autoescape for the HTML ones and ``StrictUndefined``
  so that a typo in an operator's override template fails loudly instead of mailing a blank.

The result of each builder is a :class:`~bridge.store.NewOutgoing` for the outbox (``None`` when
nobody may be notified), with the message already serialised with CRLF line ends.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import mimetypes
import re
import textwrap
import time
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from typing import Any

import jinja2
import structlog

from bridge.config import Config
from bridge.numbers import display_number
from bridge.redact import redact
from bridge.states import State
from bridge.store import Document, Job, NewOutgoing

log = structlog.get_logger(__name__)

# The shipped templates: templates/ at the repository root (what an editable install runs from),
# else bridge/templates/ (where a packaged build would have to put them).
_PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_TEMPLATE_DIRS: tuple[Path, ...] = (_PACKAGE_DIR.parent / "templates",
                                          _PACKAGE_DIR / "templates")

EVENTS: tuple[str, ...] = ("fax_sent", "fax_failed", "fax_uncertain", "sms_sent", "sms_failed",
                           "sms_uncertain", "fax_received", "sms_received", "alert")
TEMPLATE_NAMES: tuple[str, ...] = tuple(f"{event}.{fmt}.j2" for event in EVENTS
                                        for fmt in ("txt", "html"))

# Building with 7bit makes set_content choose quoted-printable/base64 for non-ASCII text, so the
# bytes pass any smarthost without 8BITMIME. SMTP's linesep makes every part CRLF from the start.
_BUILD_POLICY = email.policy.SMTP.clone(cte_type="7bit")

SUBJECT_LIMIT = 200        # their subject, inside ours
REASON_LIMIT = 100         # GoFax's reason inside a subject
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
# A msg-id as RFC 5322 writes it: printable ASCII without "<", ">" or spaces. clean_message_id
# also refuses "=?", so that the header parser cannot decode an encoded word out of it.
_MSG_ID = re.compile(r"<[!-;=?-~]{1,900}>")


SMS_TEXT_LIMIT = 5000


class NoticeError(Exception):
    """A notice could not be built: a template is missing, broken or uses an unknown variable."""


@dataclass(frozen=True)
class IncomingFax:
    """A received fax whose document is already stored (the receiver's side of the contract)."""

    gofax_id: int
    from_number: str             # GoFax digits; "" when the caller id is withheld
    to_number: str               # our number that received it
    csid: str                    # the sending machine's id; may be ""
    pages: int | None
    received_utc: datetime | None  # naive values are taken as UTC
    filename: str                # GoFax's name for the document ("9001.pdf")
    data: bytes


@dataclass(frozen=True)
class IncomingSms:
    gofax_id: int
    from_number: str
    to_number: str
    message: str
    received_utc: datetime | None


# --- pure helpers -----------------------------------------------------------------------------

def clean_header_text(text: str | None, limit: int = SUBJECT_LIMIT) -> str:
    """Makes sender-controlled text safe and tidy for a header: one line, no control characters,
    no RFC 2047 encoded-word opener, at most ``limit`` characters (cut with "…")."""
    text = _CONTROL.sub(" ", text or "")
    # "=?" would let EmailMessage decode a CR/LF out of an encoded word; "= ?" reads the same.
    text = text.replace("=?", "= ?")
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def clean_message_id(value: str | None) -> str | None:
    """The Message-ID to thread under, or None when it is missing or not a plain msg-id."""
    value = (value or "").strip()
    return value if _MSG_ID.fullmatch(value) and "=?" not in value else None


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# Keyword rules over GoFax's own wording ("Busy", "No answer", "The destination mobile number is
# invalid", …). First match wins; the key selects a paragraph of advice in the *_failed template.
_ADVICE_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("account", ("credit", "unverified", "account", "unauthori", "token", "suspended")),
    # faxbridge's own wording when the retry lifetime ran out (bridge/sender.py).
    ("gave_up", ("gave up", "giving up", "never reported")),
    ("busy", ("busy", "engaged")),
    ("no_answer", ("no answer", "not answer", "no response", "unanswered", "no ring")),
    ("not_fax", ("not a fax", "no fax", "voice", "fax tone", "handshake")),
    ("document", ("document", "file", "attachment", "convert", "pdf", "extension")),
    ("number", ("invalid number", "not in service", "disconnected", "unallocated", "invalid",
                "sendto", "destination")),
    ("unreachable", ("not delivered in allowable", "expired", "switched off", "out of coverage")),
)


def advice_for(text: str) -> str:
    """Classifies a failure reason into an advice key: account, gave_up, busy, no_answer,
    not_fax, document, number, unreachable or other."""
    lowered = text.lower()
    for key, words in _ADVICE_RULES:
        if any(word in lowered for word in words):
            return key
    return "other"


def _media_type(fax: IncomingFax) -> tuple[str, str, str]:
    """(maintype, subtype, extension) of a received document, from its bytes first."""
    if fax.data.startswith(b"%PDF"):
        return "application", "pdf", "pdf"
    if fax.data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image", "tiff", "tif"
    guessed, _ = mimetypes.guess_type(fax.filename or "")
    if guessed and "/" in guessed:
        main, sub = guessed.split("/", 1)
        ext = (mimetypes.guess_extension(guessed) or ".bin").lstrip(".")
        return main, sub, ext
    return "application", "pdf", "pdf"  # the receiver only passes on what it checked as PDF


def _digits(number: str | None) -> str:
    return re.sub(r"\D", "", number or "")


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# --- the builder ------------------------------------------------------------------------------

class Notices:
    """Builds every outgoing mail. Cheap to call; safe to share (holds no mutable state)."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.tz = zoneinfo.ZoneInfo(config.receive.timezone)
        self.from_header = config.mail.from_
        self.from_address = parseaddr(config.mail.from_)[1]
        self.msgid_domain = self.from_address.rpartition("@")[2] or "faxbridge.localhost"
        self.env = make_environment(config)
        # Load (compile) every template now: a missing file or a syntax error in an override
        # stops the daemon at start-up rather than when the first fax fails.
        for name in TEMPLATE_NAMES:
            _load(self.env, name)

    # --- job outcomes ---------------------------------------------------------------------

    def job_outcome(self, job: Job, *, documents: Sequence[Document] = ()) -> NewOutgoing | None:
        """The notice for a job that reached sent / failed / uncertain, or None when its sender
        must not be told (null sender, auto-submitted mail, a success the config keeps quiet).

        Raises :class:`NoticeError` when a template cannot be rendered.
        """
        state = State(job.state)
        if state not in (State.SENT, State.FAILED, State.UNCERTAIN):
            raise ValueError(f"job {job.id} is {state}: only sent, failed and uncertain are notified")
        if not job.notify or not job.mail_from:
            return None
        if job.kind == "sms" and state is State.SENT and not self.config.sms.notify_success:
            return None
        try:
            rcpt = Address(addr_spec=job.mail_from)
        except (ValueError, IndexError, TypeError) as exc:
            # Intake accepted it, so this should not happen; a notice that cannot be addressed
            # is not worth failing the job's transition for.
            log.warning("notice_bad_address", job=job.id, mail_from=job.mail_from, error=str(exc))
            return None

        ctx = self._job_context(job, state, documents)
        event = f"{job.kind}_{state.value}"
        msg = self._message(subject=ctx["title"], to=[rcpt], auto_submitted="auto-replied",
                            in_reply_to=clean_message_id(job.message_id),
                            extra={"X-Faxbridge-Job": str(job.id)})
        self._bodies(msg, event, ctx)
        # One notice per outcome. The attempt count is part of the ref because an operator's
        # `faxbridge retry` can lead to the same state again (failed, retried, failed), and the
        # outbox keeps only the first mail per (kind, ref). Each submission increments attempts.
        return NewOutgoing(kind="notice", ref=f"job:{job.id}:{state.value}:{job.attempts}",
                           mail_from=self.from_address, rcpt_to=[job.mail_from],
                           message=self._serialise(msg))

    def _job_context(self, job: Job, state: State, documents: Sequence[Document]) -> dict[str, Any]:
        number = clean_header_text(display_number(job.to_number), 60)
        subject = clean_header_text(job.subject)
        result = clean_header_text(redact(job.result or ""), 500)
        # last_error may hold several lines (GoFax's ValidationErrors): keep them for the body.
        error = redact(job.last_error or "").strip()
        reason = clean_header_text(result or error or "no reason was given", REASON_LIMIT)
        finished = job.final_at or job.updated_at
        docs = [self._document_line(d) for d in documents]
        noun_id = "fax" if job.kind == "fax" else "message"

        if job.kind == "fax":
            pages = f" ({plural(job.pages, 'page')})" if job.pages else ""
            title = {State.SENT: f"Fax to {number} sent{pages}",
                     State.FAILED: f"Fax to {number} FAILED: {reason}",
                     State.UNCERTAIN: f"Fax to {number} may not have been sent (uncertain)",
                     }[state]
            if subject:
                title += f": {subject}"
        else:
            parts = f" ({plural(job.sms_parts, 'part')})" if job.sms_parts else ""
            title = {State.SENT: f"SMS to {number} delivered{parts}",
                     State.FAILED: f"SMS to {number} FAILED: {reason}",
                     State.UNCERTAIN: f"SMS to {number} may not have been sent (uncertain)",
                     }[state]

        facts: list[tuple[str, str]] = [("To", number)]
        if subject:
            facts.append(("Subject", subject))
        if job.kind == "fax":
            if job.pages:
                facts.append(("Pages", str(job.pages)))
            if docs:
                facts.append(("Documents", ", ".join(docs)))
        elif job.sms_parts:
            facts.append(("SMS parts", str(job.sms_parts)))
        facts.append(("Accepted", self.format_time(job.created_at)))
        facts.append(("Finished" if state is not State.UNCERTAIN else "Last known",
                      self.format_time(finished)))
        if result:
            facts.append(("GoFax says", result))
        facts.append(("Job", str(job.id)))
        facts.append((f"GoFax {noun_id} ID", str(job.gofax_id) if job.gofax_id else "unknown"))

        return {
            "title": title,
            "kind": job.kind,
            "state": state.value,
            "job_id": job.id,
            "gofax_id": job.gofax_id,
            "number": number,
            "digits": job.to_number,
            "subject": subject,
            "pages": job.pages,
            "parts": job.sms_parts,
            "sms_text": job.sms_text or "",
            "documents": docs,
            "result": result,
            "error": error,
            "reason": reason,
            "advice": advice_for(f"{result} {error}"),
            "accepted": self.format_time(job.created_at),
            "finished": self.format_time(finished),
            "retry_command": f"faxbridge retry {job.id}",
            "fax_domain": self.config.smtp.fax_domain,
            "sms_domain": self.config.smtp.sms_domain,
            "facts": facts,
        }

    @staticmethod
    def _document_line(doc: Document) -> str:
        name = "cover page" if doc.is_cover else clean_header_text(doc.filename, 80) or "(no name)"
        return f"{name} ({plural(doc.pages, 'page')})" if doc.pages else name

    # --- received faxes and SMS -----------------------------------------------------------

    def received_fax(self, fax: IncomingFax, rcpt: str) -> NewOutgoing:
        """The mail that carries a received fax to one mailbox (one mail per routed mailbox)."""
        when = _as_utc(fax.received_utc) or datetime.fromtimestamp(self.clock(), UTC)
        local = when.astimezone(self.tz)
        digits = _digits(fax.from_number)
        withheld = not digits
        number = "withheld number" if withheld else clean_header_text(display_number(digits), 60)
        csid = clean_header_text(fax.csid, 60)
        pages = f" ({plural(fax.pages, 'page')})" if fax.pages else ""
        maintype, subtype, ext = _media_type(fax)
        filename = f"fax-from-{digits or 'withheld'}-{local:%Y%m%d-%H%M}.{ext}"
        our_number = clean_header_text(display_number(fax.to_number), 60)

        title = f"Fax from {number}{pages}"
        facts = [("From", "withheld (no caller ID)" if withheld else number),
                 ("Sender's fax ID", csid or "none given"),
                 ("Pages", str(fax.pages) if fax.pages else "unknown"),
                 ("Received", self.format_time(when)),
                 ("Received on", our_number),
                 ("Attachment", filename),
                 ("GoFax fax ID", str(fax.gofax_id))]
        ctx = {"title": title, "number": number, "withheld": withheld, "csid": csid,
               "pages": fax.pages, "received": self.format_time(when), "to_number": our_number,
               "filename": filename, "gofax_id": fax.gofax_id, "facts": facts}
        msg = self._message(subject=title, to=[self._address(rcpt)], auto_submitted="auto-generated",
                            extra={"X-Faxbridge-Fax": str(fax.gofax_id)})
        self._bodies(msg, "fax_received", ctx)
        msg.add_attachment(fax.data, maintype=maintype, subtype=subtype, filename=filename)
        return NewOutgoing(kind="fax_in", ref=f"fax:{fax.gofax_id}:{rcpt.lower()}",
                           mail_from=self.from_address, rcpt_to=[rcpt], message=self._serialise(msg))

    def sms_reply(self, reply: IncomingSms, rcpt: str, *, in_reply_to: str | None = None,
                  sms_domain: str | None = None) -> NewOutgoing:
        """An SMS reply, threaded under the mail that sent the SMS; replying by mail answers it."""
        digits = _digits(reply.from_number)
        number = clean_header_text(display_number(digits), 60) if digits else "an unknown number"
        domain = sms_domain or self.config.smtp.sms_domain
        reply_to = f"{digits}@{domain}" if digits else None
        when = _as_utc(reply.received_utc) or datetime.fromtimestamp(self.clock(), UTC)
        title = f"SMS from {number}"
        facts = [("From", number), ("To", clean_header_text(display_number(reply.to_number), 60)),
                 ("Received", self.format_time(when)), ("GoFax reply ID", str(reply.gofax_id))]
        # A reply is at most a few concatenated parts; anything longer is not a real SMS.
        text = reply.message if len(reply.message) <= SMS_TEXT_LIMIT else (
            reply.message[:SMS_TEXT_LIMIT] + " [… cut: the text was longer]")
        ctx = {"title": title, "number": number, "message": text,
               "received": self.format_time(when), "reply_to": reply_to or "",
               "gofax_id": reply.gofax_id, "facts": facts}
        extra = {"X-Faxbridge-Sms": str(reply.gofax_id)}
        msg = self._message(subject=title, to=[self._address(rcpt)], auto_submitted="auto-generated",
                            in_reply_to=clean_message_id(in_reply_to), extra=extra,
                            reply_to=reply_to)
        self._bodies(msg, "sms_received", ctx)
        return NewOutgoing(kind="sms_in", ref=f"sms:{reply.gofax_id}:{rcpt.lower()}",
                           mail_from=self.from_address, rcpt_to=[rcpt], message=self._serialise(msg))

    def operator_alert(self, key: str, subject: str, text: str, rcpts: Sequence[str]) -> NewOutgoing:
        """A mail to the operator (postmaster); queue it with ``store.alert_once`` so it goes once."""
        title = clean_header_text(subject) or "faxbridge alert"
        ctx = {"title": title, "text": redact(text), "key": key, "facts": []}
        msg = self._message(subject=title, to=[self._address(r) for r in rcpts],
                            auto_submitted="auto-generated",
                            extra={"X-Faxbridge-Alert": clean_header_text(key, 100)})
        self._bodies(msg, "alert", ctx)
        return NewOutgoing(kind="alert", ref=key, mail_from=self.from_address, rcpt_to=list(rcpts),
                           message=self._serialise(msg))

    # --- shared machinery -------------------------------------------------------------------

    def format_time(self, when: float | datetime | None) -> str:
        """A timestamp as people read it, in [receive] timezone: "Fri 4 Dec 2026, 09:00 AEDT"."""
        if when is None:
            return "unknown"
        dt = datetime.fromtimestamp(when, UTC) if isinstance(when, int | float) else _as_utc(when)
        assert dt is not None
        local = dt.astimezone(self.tz)
        return f"{local:%a} {local.day} {local:%b %Y, %H:%M} {local.tzname()}"

    @staticmethod
    def _address(addr: str) -> Address:
        try:
            return Address(addr_spec=addr)
        except (ValueError, IndexError, TypeError) as exc:
            raise ValueError(f"not a mail address: {addr!r} ({exc})") from None

    def _message(self, *, subject: str, to: Sequence[Address], auto_submitted: str,
                 in_reply_to: str | None = None, reply_to: str | None = None,
                 extra: Mapping[str, str] | None = None) -> EmailMessage:
        msg = EmailMessage(policy=_BUILD_POLICY)
        msg["From"] = self.from_header
        msg["To"] = list(to)
        msg["Subject"] = subject
        msg["Date"] = format_datetime(datetime.fromtimestamp(self.clock(), self.tz))
        msg["Message-ID"] = make_msgid(idstring="faxbridge", domain=self.msgid_domain)
        if reply_to:
            msg["Reply-To"] = Address(addr_spec=reply_to)
        if in_reply_to:
            msg["In-Reply-To"] = in_reply_to
            msg["References"] = in_reply_to
        msg["Auto-Submitted"] = auto_submitted
        # Exchange/Outlook: no out-of-office or read receipts back to an automatic sender.
        msg["X-Auto-Response-Suppress"] = "All"
        for name, value in (extra or {}).items():
            msg[name] = value
        return msg

    def render(self, name: str, context: Mapping[str, Any]) -> str:
        """Renders one template; every failure becomes a :class:`NoticeError` naming it."""
        template = _load(self.env, name)
        try:
            return template.render(context)
        except jinja2.TemplateError as exc:
            where = getattr(template, "filename", None) or name
            raise NoticeError(f"notice template {where} failed: {type(exc).__name__}: {exc}") from exc

    def _bodies(self, msg: EmailMessage, event: str, context: Mapping[str, Any]) -> None:
        ctx = {"from_address": self.from_address, **context}
        msg.set_content(self.render(f"{event}.txt.j2", ctx))
        msg.add_alternative(self.render(f"{event}.html.j2", ctx), subtype="html")

    @staticmethod
    def _serialise(msg: EmailMessage) -> bytes:
        """CRLF bytes for SMTP, after checking the header structure survived intact."""
        data = msg.as_bytes(policy=email.policy.SMTP)
        # Defence in depth against header injection: re-parse and compare the header names.
        reparsed = email.message_from_bytes(data, policy=email.policy.default)
        if [k.lower() for k in reparsed] != [k.lower() for k in msg]:
            raise NoticeError(f"refusing a malformed notice: headers {list(msg)} came out as "
                              f"{list(reparsed)}")
        return data

    def self_test(self) -> None:
        """Renders every template with sample data (for ``faxbridge check``); raises NoticeError."""
        now = self.clock()
        base = Job(id=1, mail_id=1, kind="fax", to_number="61298765432", state=State.SENT,
                   attempts=1, gofax_id=41340078, created_at=now, updated_at=now,
                   next_attempt_at=now, first_attempt_at=now, final_at=now, last_error="",
                   result="Fax successfully sent", pages=2, sms_text="Hello", sms_parts=1,
                   mail_from="someone@example.com", header_from="someone@example.com",
                   message_id="<sample@example.com>", subject="Sample", notify=True)
        for kind in ("fax", "sms"):
            for state in (State.SENT, State.FAILED, State.UNCERTAIN):
                job = dataclasses.replace(base, kind=kind, state=state,
                                          result="" if state is State.UNCERTAIN else base.result)
                self.job_outcome(job)
        received = datetime.fromtimestamp(now, UTC)
        self.received_fax(IncomingFax(9001, "61733334444", "61298765432", "SAMPLE", 1,
                                      received, "9001.pdf", b"%PDF-1.4\n"), "someone@example.com")
        self.sms_reply(IncomingSms(555, "61412345678", "61400000000", "Sample", received),
                       "someone@example.com", in_reply_to="<sample@example.com>")
        self.operator_alert("sample", "Sample alert", "Sample text", ["postmaster@localhost"])


# --- the Jinja environment ---------------------------------------------------------------------

def _wrap(text: str, width: int = 72) -> str:
    """Reflows each line of plain text to ``width`` without breaking words or quoted lines."""
    out: list[str] = []
    for line in str(text).split("\n"):
        if len(line) <= width or line.startswith((">", " ")):
            out.append(line)
        else:
            out.extend(textwrap.wrap(line, width, break_long_words=False, break_on_hyphens=False))
    return "\n".join(out)


def template_dirs(config: Config) -> list[Path]:
    """The folders searched, override first. Raises NoticeError when one is missing."""
    dirs: list[Path] = []
    if config.notices.templates:
        override = config.path(config.notices.templates)
        if not override.is_dir():
            raise NoticeError(f"[notices] templates: {override} is not a folder")
        dirs.append(override)
    shipped = next((d for d in SHIPPED_TEMPLATE_DIRS if (d / "fax_sent.txt.j2").is_file()), None)
    if shipped is None:
        looked = ", ".join(str(d) for d in SHIPPED_TEMPLATE_DIRS)
        raise NoticeError(f"the shipped notice templates were not found (looked in {looked}); "
                          "install faxbridge from its source tree with 'pip install -e .', or "
                          "copy templates/ there and point [notices] templates at it")
    dirs.append(shipped)
    return dirs


def make_environment(config: Config) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in template_dirs(config)]),
        # select_autoescape compares the *end* of the name, so "x.html.j2" needs "html.j2" spelt
        # out: HTML/XML templates escape, text templates do not, strings (from_string) do.
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html", "htm", "xml", "html.j2", "htm.j2", "xml.j2"),
            disabled_extensions=("txt", "txt.j2"), default_for_string=True, default=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters["wrap"] = _wrap
    env.filters["plural"] = lambda n, word: plural(int(n), word)
    return env


def _load(env: jinja2.Environment, name: str) -> jinja2.Template:
    try:
        return env.get_template(name)
    except jinja2.TemplateNotFound as exc:
        raise NoticeError(f"notice template {exc.name} not found in "
                          f"{', '.join(getattr(env.loader, 'searchpath', []))}") from exc
    except jinja2.TemplateSyntaxError as exc:
        raise NoticeError(f"notice template {exc.filename or name} line {exc.lineno}: "
                          f"{exc.message}") from exc


__all__ = ["EVENTS", "IncomingFax", "IncomingSms", "NoticeError", "Notices", "advice_for",
           "clean_header_text", "clean_message_id", "make_environment", "template_dirs"]
