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

import binascii
import hashlib
import re
import secrets
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email import errors as email_errors
from email import message_from_bytes
from email import policy as email_policy
from email._encoded_words import decode_b  # the stdlib's base64 body decoding, defects and all
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
    "payload_bytes",
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
    end = raw.find(b"\r\n\r\n")
    # A view, not a slice: a slice would copy the whole body (28 MB for a 20 MB fax).
    return hashlib.sha256(memoryview(raw)[end + 4:] if end >= 0 else b"").hexdigest()


def parse_bytes(raw: bytes) -> EmailMessage:
    """The stdlib's parse of ``raw``, with long base64 runs held aside (see :class:`StandIns`).

    email.policy.default gives EmailMessage (get_content, iter_parts); the default compat32
    policy would not. The parser never raises: problems end up in .defects.
    """
    reduced, stand_ins = StandIns.take(raw)
    msg = cast(EmailMessage, message_from_bytes(reduced, policy=email_policy.default))
    if stand_ins is not None:
        stand_ins.settle(msg)
    return msg


# --- long base64 runs: parsed by the stdlib without passing through it ------------------------

# Lines of base64 text without padding: the bulk of every attachment. None of them can be a
# header (no colon), a continuation (no leading space) or a boundary (no "--"), so a run of them
# can stand aside while the parser reads the structure around it.
# Possessive ({32,}+): a plain repeat keeps a backtracking record per line, ~50 MB for 28 MB.
_B64_RUN = re.compile(rb"^(?:[A-Za-z0-9+/]{1,998}\r\n){32,}+", re.MULTILINE)
_NOT_B64 = re.compile(rb"[^A-Za-z0-9+/\r\n]")


class StandIns:
    """The long base64 runs of a mail, each replaced by a one-line token for the parser.

    The stdlib parser keeps a part's body as a list of lines, then a str, and decodes from a
    copy of that: a 20 MB attachment cost ~220 MB and most of the intake's CPU time. With the
    runs aside it parses a few KB. Afterwards (:meth:`settle`) a part that will be decoded as an
    attachment (base64, not text) keeps its tokens and is decoded by :func:`payload_bytes` from
    the original bytes; every other part gets its text back, exactly as the parser had it.

    So for such a part only :func:`payload_bytes` gives the content: ``get_payload()``,
    ``get_content()`` and ``as_bytes()`` would see the token. ``tests/test_intake_standins.py``
    compares everything else with the stdlib's own parse.
    """

    def __init__(self, raw: bytes, spans: list[tuple[int, int]], prefix: str) -> None:
        self.raw = raw
        self.spans = spans  # raw[a:b]: a run without its last CRLF
        self.prefix = prefix
        self.token = re.compile(re.escape(prefix) + r"(\d+)Z")

    @classmethod
    def take(cls, raw: bytes) -> tuple[bytes, StandIns | None]:
        """``raw`` with every long run replaced by a token line, and the runs."""
        spans = [(m.start(), m.end() - 2) for m in _B64_RUN.finditer(raw)]
        if not spans:
            return raw, None
        prefix = f"FAXBRIDGE{secrets.token_hex(8)}R"
        while prefix.encode() in raw:  # a mail that quotes a token cannot be told from one
            prefix = f"FAXBRIDGE{secrets.token_hex(8)}R"
        view = memoryview(raw)
        pieces: list[bytes | memoryview] = []
        at = 0
        for i, (start, end) in enumerate(spans):
            pieces += [view[at:start], f"{prefix}{i}Z".encode()]
            at = end
        pieces.append(view[at:])
        return b"".join(pieces), cls(raw, spans, prefix)

    def settle(self, msg: EmailMessage) -> None:
        """Gives every part whose body held a token its text back, except attachments that
        :func:`payload_bytes` decodes from the runs themselves."""
        stack = [msg]
        while stack:
            part = stack.pop()
            payload = part._payload  # the parser's own attribute: get_payload() may decode
            if isinstance(payload, list):
                stack.extend(payload)
                # Nobody reads them, but a parsed mail should still be the mail as written.
                for side in ("preamble", "epilogue"):
                    text = getattr(part, side)
                    if isinstance(text, str) and self.prefix in text:
                        setattr(part, side, self.expand(text))
                continue
            if not isinstance(payload, str) or self.prefix not in payload:
                continue
            if (str(part.get("content-transfer-encoding", "")).lower() == "base64"
                    and _maintype(part) not in ("text", "message")):
                part.__dict__["_faxbridge_stand_ins"] = self
            else:
                part.set_payload(self.expand(payload))

    def expand(self, text: str) -> str:
        return self.token.sub(lambda m: self._run(m).decode("ascii"), text)

    def region(self, text: str) -> tuple[int, int, bool] | None:
        """Where ``text`` (a part's body with tokens) lies in the original mail, as
        ``raw[start:end]``, and whether that is clean base64 (CRLF line ends, padding only at the
        end, whole quanta). A body is one stretch of the mail, so this is found unless the
        parser changed the text around the runs; then None. Only the text between the runs is
        looked at: the runs themselves were matched as clean lines."""
        found = list(self.token.finditer(text))
        if not found:
            return None
        head = text[:found[0].start()].encode("ascii", "surrogateescape")
        start = self.spans[int(found[0].group(1))][0] - len(head)
        if start < 0 or self.raw[start:start + len(head)] != head:
            return None
        gaps = [head]
        quanta = 0  # base64 characters in the runs
        for i, m in enumerate(found):
            run_start, at = self.spans[int(m.group(1))]
            quanta += at - run_start - 2 * self.raw.count(b"\r\n", run_start, at)
            following = found[i + 1] if i + 1 < len(found) else None
            gap = text[m.end():following.start() if following else len(text)].encode(
                "ascii", "surrogateescape")
            if self.raw[at:at + len(gap)] != gap:
                return None
            gaps.append(gap)
            end = at + len(gap)
            if following is not None and self.spans[int(following.group(1))][0] != end:
                return None
        clean = True
        for i, gap in enumerate(gaps):
            lines = gap.count(b"\r\n")
            quanta += len(gap) - 2 * lines
            other = _NOT_B64.search(gap)
            clean = (clean and gap.count(b"\r") == lines == gap.count(b"\n")
                     and (other is None or (i == len(gaps) - 1 and gap[other.start():].replace(
                         b"\r\n", b"") in (b"=", b"=="))))
        return start, end, clean and quanta % 4 == 0

    def encoded(self, text: str) -> bytes:
        """``text`` as bytes, with its runs back from the original mail."""
        pieces: list[bytes | memoryview] = []
        at = 0
        for m in self.token.finditer(text):
            pieces += [text[at:m.start()].encode("ascii", "surrogateescape"),
                       memoryview(self.raw)[slice(*self.spans[int(m.group(1))])]]
            at = m.end()
        pieces.append(text[at:].encode("ascii", "surrogateescape"))
        return b"".join(pieces)

    def _run(self, m: re.Match[str]) -> bytes:
        start, end = self.spans[int(m.group(1))]
        return self.raw[start:end]


def decode_base64(data: bytes, start: int = 0, end: int | None = None
                  ) -> tuple[bytes, list[email_errors.MessageDefect]]:
    """What ``EmailMessage.get_payload(decode=True)`` makes of the base64 body ``data[start:end]``,
    defects included, without its copies: clean base64 (the usual case) is decoded in place."""
    end = len(data) if end is None else end
    lines = data.count(b"\r\n", start, end)
    if (data.count(b"\r", start, end) == lines == data.count(b"\n", start, end)
            and (end - start - 2 * lines) % 4 == 0):
        other = _NOT_B64.search(data, start, end)  # a search: translate() would copy it all
        tail = b"" if other is None else data[other.start():end].replace(b"\r\n", b"")
        if tail in (b"", b"=", b"=="):
            # Valid, and padded at the end only: a2b_base64 skips the CRLFs and gives what
            # b64decode(validate=True) gives for the joined lines.
            return binascii.a2b_base64(memoryview(data)[start:end]), []
    return decode_b(b"".join(data[start:end].splitlines()))


def payload_bytes(part: EmailMessage) -> bytes:
    """A leaf part's decoded content (``get_payload(decode=True)``), also for a part whose base64
    stands aside (:class:`StandIns`). Decoding defects are recorded on the part, as the stdlib
    does."""
    stand_ins: StandIns | None = part.__dict__.get("_faxbridge_stand_ins")
    if stand_ins is None:
        payload = part.get_payload(decode=True)
        return payload if isinstance(payload, bytes) else b""
    text = str(part._payload)  # get_payload() would re-decode it
    region = stand_ins.region(text)
    if region is not None and region[2]:
        # Clean: straight from the mail's bytes, as b64decode(validate=True) would.
        return binascii.a2b_base64(memoryview(stand_ins.raw)[region[0]:region[1]])
    if region is not None:
        value, defects = decode_base64(stand_ins.raw, region[0], region[1])
    else:
        value, defects = decode_base64(stand_ins.encoded(text))
    for defect in defects:
        part.policy.handle_defect(part, defect)
    return value


# --- headers ----------------------------------------------------------------------------------

def _one_line(value: object, limit: int) -> str:
    """A header value as one line without control characters (it ends up in notice headers)."""
    text = " ".join(str(value or "").split())
    text = "".join(c for c in text if c >= " " and c != "\x7f")
    return text[:limit]


def _get(msg: EmailMessage, name: str) -> object:
    """``msg.get(name)``, parsed once: EmailMessage parses a header again on every get, and
    From:, Date: and Auto-Submitted: are each read several times."""
    cache: dict[str, object] = msg.__dict__.setdefault("_faxbridge_headers", {})
    if name not in cache:
        cache[name] = msg.get(name, "")
    return cache[name]


def _header(msg: EmailMessage, name: str, limit: int = 998) -> str:
    try:
        return _one_line(_get(msg, name), limit)
    except Exception:  # a malformed header must not fail the mail; it is just unreadable
        return ""


def _from_addresses(msg: EmailMessage) -> tuple[str, ...]:
    try:
        header = _get(msg, "from")
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
    data = payload_bytes(part)
    # Decoding records defects such as broken base64 on the part, so check after it. With
    # broken base64, get_payload even returns the undecoded text: never fax that.
    defects = (*inherited, *part.defects)
    if defects:
        raise Refused(replies.DAMAGED_ATTACHMENT.format(
            filename=shown, detail=_defect_text(defects[0])))
    if not data or data.isspace():  # not strip(): that copies a 20 MB document
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
