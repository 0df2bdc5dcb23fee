"""A mail → what to fax: documents in order, an optional cover page, subject, dedupe keys. Pure.

This is the core of intake, with no sockets and no store: :func:`build_mail` takes the raw DATA
bytes and the envelope and returns the :class:`~bridge.store.NewMail` to commit, or raises
:class:`~bridge.replies.Refused` carrying the exact SMTP reply. It is CPU work on untrusted input
(MIME parsing, pypdf, fpdf2), so the SMTP handler runs it in a worker thread.

How a MIME tree is read:

- ``multipart/mixed`` / ``related`` and others: every child, in order.
- ``multipart/alternative``: the body text comes from the ``text/plain`` alternative when there
  is one (a fax wants text, not layout), else from the HTML; attachments come from the richest
  (last) multipart alternative, where clients such as Apple Mail put them.
- ``multipart/signed``: the signed content only; the signature part is not a document.
- A text/plain or text/html part with neither a file name nor ``Content-Disposition:
  attachment`` is body text. A ``text/plain`` part *with* a file name is a ``.txt`` document.
- A part whose Content-ID is referenced from an HTML body (``<img src="cid:…">``: signature
  logos, pasted images) is part of the body's layout and is not faxed.
- Key and vCard attachments that mail clients add by themselves (OpenPGP keys, S/MIME
  signatures, the sender's vCard) are ignored; every other attachment must be faxable or the
  whole mail is refused, naming the file: faxing half of what someone sent is worse than a
  bounce that says why.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email import errors as email_errors
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import make_msgid, parsedate_to_datetime
from pathlib import Path
from typing import cast

from bridge import dmarc, policy, replies
from bridge.config import Config
from bridge.intake.addresses import Recipient, unique_by_number
from bridge.intake.cover import CoverFields, make_cover
from bridge.intake.documents import ACCEPTED, classify, display_filename, pdf_pages, safe_filename
from bridge.replies import Refused
from bridge.sms_text import count_parts, extract_sms_text, html_to_text
from bridge.store import NewDocument, NewJob, NewMail

__all__ = [
    "DEFAULT_LIMITS",
    "Limits",
    "MailContent",
    "body_hash",
    "build_mail",
    "cover_body",
    "dedupe_key",
    "extract",
    "has_bare_line_ending",
    "header_bytes",
    "html_to_text",
    "parse_bytes",
    "sms_job",
    "template_dirs",
]


@dataclass(frozen=True)
class Limits:
    """Bounds on what a mail may make the parser do (``[smtp] max_mime_parts``,
    ``max_mime_depth``, ``max_header_bytes``): hostile structure is refused before it costs."""

    max_parts: int = 100
    max_depth: int = 10
    # Body text beyond this is not looked at (the cover page shows far less anyway).
    max_body_chars: int = 1_000_000
    # The top-level header section (the stdlib header parser has had quadratic-time bugs).
    max_header_bytes: int = 65_536

    @classmethod
    def from_config(cls, config: Config) -> Limits:
        smtp = config.smtp
        return cls(max_parts=smtp.max_mime_parts, max_depth=smtp.max_mime_depth,
                   max_header_bytes=smtp.max_header_bytes)


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class MailContent:
    """What :func:`extract` found in a mail."""

    message_id: str           # "<…>", the mail's own or one we made
    has_message_id: bool      # False when we generated message_id
    subject: str              # one line, may be ""
    header_from: str          # the From: header as written (decoded, one line)
    from_addresses: tuple[str, ...]
    date: str                 # for the cover page
    date_header: str          # the Date: header as written ("" when missing)
    auto_submitted: str
    body_text: str            # "\n" line ends; signature not yet removed
    documents: tuple[NewDocument, ...]  # the attachments, in order (no cover)


# --- raw bytes --------------------------------------------------------------------------------



def has_bare_line_ending(raw: bytes) -> bool:
    """A CR or LF that is not part of CRLF (aiosmtpd only splits DATA at CRLF, so a bare LF
    inside a line, ``Subject: x<LF>Bcc: y``, reaches us and ``email`` reads two headers)."""
    # Counting is ~10x faster than a regex search over a whole mail: every LF and every CR
    # must belong to a CRLF, so all three counts agree exactly when there is none bare.
    crlf = raw.count(b"\r\n")
    return raw.count(b"\n") != crlf or raw.count(b"\r") != crlf


def header_bytes(raw: bytes) -> int:
    """The size of the header section, up to and including the blank line (all of ``raw`` when
    there is no blank line: then everything is header)."""
    end = raw.find(b"\r\n\r\n")
    return len(raw) if end < 0 else end + 4


def body_hash(raw: bytes) -> str:
    """SHA-256 of the message body (after the blank line that ends the headers).

    The body, not the whole message: an MTA re-sending after a lost 250 may add or change trace
    headers, but it does not change the body.
    """
    _, sep, body = raw.partition(b"\r\n\r\n")
    return hashlib.sha256(body if sep else b"").hexdigest()


def parse_bytes(raw: bytes) -> EmailMessage:
    # email.policy.default gives EmailMessage (get_content, iter_parts); the default compat32
    # policy would not. The parser never raises: problems end up in .defects.
    return cast(EmailMessage, message_from_bytes(raw, policy=email_policy.default))


# --- headers ----------------------------------------------------------------------------------

def _one_line(value: object, limit: int) -> str:
    """A header value as one line without control characters (it ends up in notice headers)."""
    text = " ".join(str(value or "").split())
    text = "".join(c for c in text if c >= " " and c != "\x7f")
    return text[:limit]


def _header(msg: EmailMessage, name: str, limit: int = 998) -> str:
    try:
        return _one_line(msg.get(name, ""), limit)
    except Exception:  # a malformed header must not fail the mail; it is just unreadable
        return ""


def _from_addresses(msg: EmailMessage) -> tuple[str, ...]:
    try:
        header = msg.get("from")
        return tuple(a.addr_spec for a in getattr(header, "addresses", ()) if a.addr_spec)
    except Exception:
        return ()


def _cover_date(msg: EmailMessage, now: datetime) -> str:
    raw = _header(msg, "date", 200)
    try:
        when = parsedate_to_datetime(raw) if raw else now
    except (TypeError, ValueError, IndexError):
        return raw
    return when.strftime("%a %d %b %Y %H:%M %z").strip()


# --- bodies -----------------------------------------------------------------------------------

_CID = re.compile(r"""cid:([^"'\s>)]+)""", re.IGNORECASE)


def _html_cids(html: str) -> set[str]:
    return {urllib.parse.unquote(m).strip("<>").lower() for m in _CID.findall(html)}


def _content_id(part: EmailMessage) -> str:
    return _header(part, "content-id", 500).strip().strip("<>").strip().lower()


def _text_of(part: EmailMessage, limit: int) -> str:
    """A text part's content as str with "\\n" line ends (SMTP bytes keep CRLF in text parts)."""
    try:
        text = part.get_content()
    except (LookupError, UnicodeError, ValueError, AssertionError):
        # An unknown or lying charset: read it as UTF-8, visibly replacing what does not fit.
        payload = part.get_payload(decode=True)
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    if not isinstance(text, str):
        return ""
    text = text[:limit]
    return text.replace("\r\n", "\n").replace("\r", "\n")


def cover_body(body: str) -> str:
    """The body text as the cover page shows it: the signature (from a ``-- `` line on; many
    clients drop its trailing space) and surrounding whitespace removed."""
    lines = body.replace("\r\n", "\n").split("\n")
    for i, line in enumerate(lines):
        if line.rstrip(" ") == "--":
            lines = lines[:i]
            break
    return "\n".join(line.rstrip() for line in lines).strip("\n").strip()


# --- the MIME walk ----------------------------------------------------------------------------

# Added by mail clients on their own; faxing them would only refuse the mail.
_IGNORED_TYPES = frozenset({
    "application/pgp-signature", "application/pgp-keys", "application/pkcs7-signature",
    "application/x-pkcs7-signature", "text/vcard", "text/x-vcard", "text/directory",
})

# Defects on a multipart container that mean its parts may be cut short or misplaced.
_CONTAINER_DEFECTS = (
    email_errors.StartBoundaryNotFoundDefect,
    email_errors.CloseBoundaryNotFoundDefect,
    email_errors.MultipartInvariantViolationDefect,
    email_errors.NoBoundaryInMultipartDefect,
)


def _defect_text(defect: Exception) -> str:
    """``InvalidBase64PaddingDefect()`` → "invalid base64 padding"."""
    name = type(defect).__name__.removesuffix("Defect")
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name).lower()


def _ctype(part: EmailMessage) -> str:
    """The part's content type, parsed once. ``EmailMessage`` re-parses the header on every
    ``get_content_type()``, and the walk asks many times per part: on a hostile mail with many
    parts that was half of the intake's CPU time."""
    cached = part.__dict__.get("_faxbridge_ctype")
    if cached is None:
        cached = part.__dict__["_faxbridge_ctype"] = part.get_content_type()
    return str(cached)


def _maintype(part: EmailMessage) -> str:
    return _ctype(part).partition("/")[0]


def _is_attachment(part: EmailMessage) -> bool:
    return part.get_content_disposition() == "attachment" or bool(part.get_filename())


@dataclass
class _Found:
    bodies: list[str]
    attachments: list[tuple[EmailMessage, tuple[Exception, ...]]]  # part, inherited defects


class _Walker:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.count = 0
        self.found = _Found([], [])
        self.cids: set[str] = set()

    def _enter(self, depth: int) -> None:
        self.count += 1
        if self.count > self.limits.max_parts:
            raise Refused(replies.TOO_COMPLEX.format(
                detail=f"more than {self.limits.max_parts} MIME parts"))
        if depth > self.limits.max_depth:
            raise Refused(replies.TOO_COMPLEX.format(
                detail=f"MIME parts nested more than {self.limits.max_depth} deep"))

    def scan_cids(self, msg: EmailMessage) -> None:
        """First pass (bounded, iterative): the Content-IDs the HTML bodies show inline."""
        stack: list[tuple[EmailMessage, int]] = [(msg, 0)]
        while stack:
            part, depth = stack.pop()
            self._enter(depth)
            if _maintype(part) == "message":
                continue
            if part.is_multipart():
                stack.extend((cast(EmailMessage, p), depth + 1) for p in part.iter_parts())
            elif _ctype(part) == "text/html":
                self.cids |= _html_cids(_text_of(part, self.limits.max_body_chars))
        self.count = 0

    def visit(self, part: EmailMessage, depth: int, inherited: tuple[Exception, ...],
              want_text: bool = True) -> None:
        self._enter(depth)
        ctype = _ctype(part)
        if _maintype(part) == "message":
            # A forwarded mail (message/rfc822) and friends: not a document GoFax converts.
            self.found.attachments.append((part, inherited))
            return
        if part.is_multipart():
            bad = tuple(d for d in part.defects if isinstance(d, _CONTAINER_DEFECTS))
            inherited = inherited + bad
            children = [cast(EmailMessage, p) for p in part.iter_parts()]
            subtype = ctype.partition("/")[2]
            if subtype == "alternative":
                self._alternative(children, depth, inherited, want_text)
            elif subtype == "signed":
                if children:
                    self.visit(children[0], depth + 1, inherited, want_text)
            else:
                for child in children:
                    self.visit(child, depth + 1, inherited, want_text)
            return
        cid = _content_id(part)
        if cid and cid in self.cids:
            return  # shown inside the HTML body: a logo, not a document
        if ctype in _IGNORED_TYPES:
            return
        if ctype in ("text/plain", "text/html") and not _is_attachment(part):
            if want_text:
                text = _text_of(part, self.limits.max_body_chars)
                self.found.bodies.append(html_to_text(text) if ctype == "text/html" else text)
            return
        self.found.attachments.append((part, inherited))

    def _alternative(self, children: list[EmailMessage], depth: int,
                     inherited: tuple[Exception, ...], want_text: bool) -> None:
        plain = next((c for c in children if _ctype(c) == "text/plain"
                      and not _is_attachment(c)), None)
        rich = next((c for c in reversed(children) if c.is_multipart()), None)
        if plain is not None:
            self.visit(plain, depth + 1, inherited, want_text)
            if rich is not None:
                self.visit(rich, depth + 1, inherited, want_text=False)
        elif rich is not None:
            self.visit(rich, depth + 1, inherited, want_text)
        else:
            html = next((c for c in reversed(children) if _ctype(c) == "text/html"),
                        None)
            if html is not None:
                self.visit(html, depth + 1, inherited, want_text)


def _document(part: EmailMessage, inherited: tuple[Exception, ...], index: int) -> NewDocument:
    """One attachment → a document, or Refused naming it."""
    raw_name = part.get_filename()
    shown = display_filename(raw_name) or f"attachment-{index}"
    ctype = _ctype(part)
    if _maintype(part) == "message":
        raise Refused(replies.UNSUPPORTED_ATTACHMENT.format(
            filename=shown if raw_name else f"(forwarded message {index})",
            detail=f"type {ctype}", accepted=ACCEPTED))
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    # Decoding records defects such as broken base64 on the part, so check after it. With
    # broken base64, get_payload even returns the undecoded text: never fax that.
    defects = (*inherited, *part.defects)
    if defects:
        raise Refused(replies.DAMAGED_ATTACHMENT.format(
            filename=shown, detail=_defect_text(defects[0])))
    if not data.strip():
        raise Refused(replies.DAMAGED_ATTACHMENT.format(filename=shown, detail="it is empty"))
    doc_type = classify(shown, ctype, data)
    pages = None
    if doc_type.ext == "pdf":
        pages = pdf_pages(data, shown)
    elif doc_type.ext == "txt":
        # One encoding for GoFax's text converter, whatever the sender's charset was. A part
        # that is not text/* but named .txt has no charset to honour: its bytes are read as
        # UTF-8 (the fuzzer found such a part stored as an empty document).
        text = _text_of(part, len(data) + 1) if _maintype(part) == "text" else ""
        if not text:
            text = data.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
        data = text.replace("\n", "\r\n").encode("utf-8")
        if not data.strip():
            raise Refused(replies.DAMAGED_ATTACHMENT.format(filename=shown, detail="it is empty"))
    return NewDocument(filename=safe_filename(raw_name, doc_type, index),
                       content_type=doc_type.content_type, data=data, pages=pages)


def extract(msg: EmailMessage, *, hostname: str = "faxbridge.localhost",
            limits: Limits = DEFAULT_LIMITS, now: datetime | None = None) -> MailContent:
    """Reads a parsed mail. Raises :class:`Refused` for what cannot be faxed."""
    now = now or datetime.now().astimezone()
    walker = _Walker(limits)
    try:
        walker.scan_cids(msg)
        walker.visit(msg, 0, ())
    except RecursionError:
        raise Refused(replies.TOO_COMPLEX.format(detail="MIME parts nested too deep")) from None
    documents = tuple(_document(part, inherited, i)
                      for i, (part, inherited) in enumerate(walker.found.attachments, start=1))
    message_id = _header(msg, "message-id", 500)
    has_message_id = bool(message_id)
    if not has_message_id:
        # Notices are threaded under the original mail; without an id there is nothing to
        # thread under, so give it one (the notice then starts its own thread).
        message_id = make_msgid(domain=hostname)
    return MailContent(
        message_id=message_id,
        has_message_id=has_message_id,
        subject=_header(msg, "subject", 300),
        header_from=_header(msg, "from", 500),
        from_addresses=_from_addresses(msg),
        date=_cover_date(msg, now),
        date_header=_header(msg, "date", 200),
        auto_submitted=_header(msg, "auto-submitted", 100),
        body_text="\n\n".join(b.strip("\n") for b in walker.found.bodies if b.strip()),
        documents=documents,
    )


# --- jobs -------------------------------------------------------------------------------------

def dedupe_key(*, kind: str, digits: str, content: MailContent, mail_from: str, body_sha256: str) -> str:
    """Same mail, same recipient → same key, so a copy re-sent after a lost 250 is not faxed
    twice. With a Message-ID: (Message-ID, recipient, body hash). Without one (we made one up,
    so it differs per copy): sender, subject and date stand in for it."""
    parts = ["v1", kind, digits, body_sha256]
    if content.has_message_id:
        parts.append(content.message_id)
    else:
        parts += ["no-message-id", mail_from.lower(), content.subject, content.date_header]
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def sms_job(msg: EmailMessage, content: MailContent, recipient: Recipient, key: str,
            config: Config) -> NewJob:
    """The SMS job for one ``<mobile>@<sms_domain>`` recipient.

    The text is the mail's own words (quotes, signatures and mobile footers stripped), or the
    subject when that leaves nothing. Typographic punctuation is made GSM-7 where that keeps
    the whole text GSM-7, and the part count is fixed here, before anything is sent, so the
    cost is known and capped by ``[sms] max_parts``.
    """
    # "Nothing" is judged after normalisation: a body of only a zero-width space or a byte-order
    # mark counts as empty (the fuzzer found it queued as an empty, still billed, SMS).
    parts = None
    for text in (extract_sms_text(msg), content.subject.strip()):
        parts = count_parts(text) if text else None
        if parts is not None and parts.text.strip():
            break
    if parts is None or not parts.text.strip():
        raise Refused(str(replies.EMPTY_SMS))
    if parts.parts > config.sms.max_parts:
        raise Refused(replies.SMS_TOO_LONG.format(parts=parts.parts, units=parts.units,
                                                  encoding=parts.encoding,
                                                  limit=config.sms.max_parts))
    return NewJob(kind="sms", to_number=recipient.number.digits, dedupe_key=key,
                  sms_text=parts.text, sms_parts=parts.parts)


def template_dirs(config: Config) -> tuple[Path, ...]:
    """Where cover templates are looked up: the operator's override folder, if any."""
    return (config.path(config.notices.templates),) if config.notices.templates else ()


def _known_pages(documents: Sequence[NewDocument]) -> int | None:
    if any(d.pages is None for d in documents):
        return None
    return sum(d.pages or 0 for d in documents)


def build_mail(raw: bytes, *, mail_from: str, recipients: Sequence[Recipient], config: Config,
               peer: str = "", auth_user: str = "", auth_addresses: Sequence[str] | None = None,
               dmarc_authserv_id: str = "", limits: Limits = DEFAULT_LIMITS,
               now: datetime | None = None) -> NewMail:
    """The whole of DATA, minus I/O: raw message → the NewMail to commit, or Refused.

    Assumes the envelope checks passed (client, MAIL FROM, each RCPT). ``auth_addresses`` are
    the addresses the authenticated ``auth_user`` may send as (None: not authenticated);
    ``dmarc_authserv_id``, when set, requires that MTA's Authentication-Results to vouch for
    the From: domain (``[smtp] require_dmarc``, see :mod:`bridge.dmarc`).
    """
    if len(raw) > config.smtp.max_message_bytes:
        raise Refused(replies.TOO_BIG.format(limit=config.smtp.max_message_bytes))
    if has_bare_line_ending(raw):
        raise Refused(str(replies.BARE_LINE_ENDING))
    if header_bytes(raw) > limits.max_header_bytes:
        raise Refused(replies.HEADERS_TOO_BIG.format(limit=limits.max_header_bytes))
    msg = parse_bytes(raw)

    # Who before what: an unauthorised sender learns nothing about their attachments.
    from_addresses = _from_addresses(msg)
    from_ok = policy.check_header_from(from_addresses, config.smtp.allowed_senders)
    if not from_ok:
        raise Refused(replies.SENDER_NOT_ALLOWED.format(reason=from_ok.reason))
    if auth_addresses is not None:
        for address in from_addresses:
            if not policy.check_auth_sender(address, auth_user, auth_addresses):
                raise Refused(replies.NOT_YOUR_ADDRESS.format(address=address, user=auth_user))
    if dmarc_authserv_id:
        verdict = dmarc.verify(list(msg.raw_items()), from_addresses, dmarc_authserv_id)
        if not verdict.ok:
            raise Refused(replies.DMARC_FAILED.format(reason=verdict.reason))
    if policy.is_auto_reply(_header(msg, "auto-submitted", 100)):
        raise Refused(str(replies.AUTO_REPLY))

    content = extract(msg, hostname=config.smtp.hostname, limits=limits, now=now)
    recipients = unique_by_number(list(recipients))
    fax_to = [r for r in recipients if r.kind == "fax"]
    documents: list[NewDocument] = []
    if fax_to:
        documents = _fax_documents(content, fax_to, config, sender=content.header_from or mail_from)
    digest = body_hash(raw)
    jobs = []
    for r in recipients:
        key = dedupe_key(kind=r.kind, digits=r.number.digits, content=content,
                         mail_from=mail_from, body_sha256=digest)
        if r.kind == "fax":
            jobs.append(NewJob(kind="fax", to_number=r.number.digits, dedupe_key=key))
        else:
            jobs.append(sms_job(msg, content, r, key, config))
    return NewMail(
        mail_from=mail_from,
        header_from=content.header_from,
        message_id=content.message_id,
        subject=content.subject,
        notify=policy.should_notify(mail_from),
        jobs=jobs,
        documents=documents,
        auth_user=auth_user,
        peer=peer,
    )


def _fax_documents(content: MailContent, fax_to: Sequence[Recipient], config: Config, *,
                   sender: str) -> list[NewDocument]:
    """Cover page (by ``[fax] cover``) first, then the attachments in order."""
    attachments = list(content.documents)
    text = cover_body(content.body_text)
    mode = config.fax.cover
    if not attachments:
        if not text:
            raise Refused(replies.NOTHING_TO_SEND.format(
                detail="the mail has no attachment and no text"))
        if mode == "never":
            raise Refused(replies.NOTHING_TO_SEND.format(
                detail='the mail has no attachment, and its text is not faxed ([fax] cover = "never")'))
    if mode == "always" or (mode == "auto" and text):
        cover = make_cover(
            CoverFields(to=", ".join(r.number.display for r in fax_to),
                        sender=sender, subject=content.subject,
                        date=content.date, pages=None, body=text),
            attachment_pages=_known_pages(attachments),
            template_dirs=template_dirs(config))
        attachments.insert(0, cover)
    return attachments
