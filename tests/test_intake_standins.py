"""The long-base64 shortcut of :func:`bridge.intake.message.parse_bytes` changes nothing observable.

``parse_bytes`` hands the stdlib parser a mail whose long base64 runs are one-line tokens
(``StandIns.take``), gives every part its text back afterwards except attachments, and
``payload_bytes`` decodes those from the original bytes with ``decode_base64`` (which has a fast
path for clean base64). Everything here is held against the plain stdlib parse
(``email.message_from_bytes(raw, policy=email.policy.default)``):

- ``decode_base64`` against ``decode_b`` (what ``get_payload(decode=True)`` runs): same value,
  same defect types, for generated near-valid and junk base64 and for hand-picked cases, alone
  and as ``data[start:end]`` of a larger buffer;
- the whole parse, part by part (structure, headers, defects, preamble and epilogue, payloads,
  decoded bytes and the defects decoding records, text content), for generated and hand-built
  mails with long attachments, odd line widths, broken padding, garbage, nested and forwarded
  parts and broken structure;
- a mail quoting something shaped like a token is read exactly as written;
- a long run in a multipart's preamble or epilogue reads as written there too;
- ``build_mail`` on a 2 MB PDF: byte-identical document; one damaged base64 character: refused
  as damaged, as the stdlib flags it.
"""

from __future__ import annotations

import base64
import email
import email.policy
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email import errors as email_errors
from email._encoded_words import decode_b
from email.message import EmailMessage, Message

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import replies
from bridge.config import FaxConfig, defaults
from bridge.intake import message as intake_message
from bridge.intake.addresses import parse_recipient
from bridge.intake.message import (
    StandIns,
    build_mail,
    decode_base64,
    has_bare_line_ending,
    parse_bytes,
    payload_bytes,
)
from bridge.replies import Refused
from tools.harness import fax_message, make_pdf

ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
JUNK = (b"!", b" ", b"\xff", b"-")


def defect_types(defects: Sequence[object]) -> list[str]:
    return [type(d).__name__ for d in defects]


def stdlib_decode(encoded: bytes) -> tuple[bytes, list[str]]:
    """Exactly what ``Message.get_payload(decode=True)`` does with a base64 body."""
    value, defects = decode_b(b"".join(encoded.splitlines()))
    return value, defect_types(defects)


# Bytes around a body given to decode_base64 as data[start:end]: CR, LF, padding and junk at the
# edges must not leak in.
AROUND = [b"", b"\r", b"\n", b"\r\n", b"=", b"==", b"QQ", b"!", b"\xff"]


def assert_decodes_like_stdlib(encoded: bytes, before: bytes = b"\n", after: bytes = b"\r") -> None:
    expected = stdlib_decode(encoded)
    value, defects = decode_base64(encoded)
    assert (value, defect_types(defects)) == expected, encoded
    # The same body as a stretch of a larger buffer (payload_bytes decodes from the mail's bytes).
    value, defects = decode_base64(before + encoded + after, len(before), len(before) + len(encoded))
    assert (value, defect_types(defects)) == expected, (before, encoded, after)


# --- 1. decode_base64 == decode_b ---------------------------------------------------------------

HAND_PICKED = [
    b"", b"\r\n", b"QQ==", b"QQ=", b"QUJD", b"QUJ", b"Q===", b"QQ==QQ==", b"Q", b"QQ", b"=", b"==",
    b"====", b"QUI=", b"QR==", b"QUJ=", b"QUJD=", b"QUJD==", b"QUJDQQ==", b"QUJDQUI=", b"=QUJ",
    b"QUJD====", b"QQ==\r\nQUJD", b"QUJD\r\n\r\nQUJD", b"QQ\r\n==", b"QQ=\r\n=", b"QUJ\r\n=",
    b"Q\r\n===", b"QU\r\nJD\r\n", b"\r\nQUJD\r\n", b"QUJD\r\n\r\n", b"QUJDQQ==\r\n", b"QUJD!",
    b"QU!JD", b"QQ==!", b"!QUJD", b"QU JD", b"QU\xffJD", b"QU-JD", b"QUJD\r\n-\r\n", b"QUJ=QUJD",
    b"QUJD\r\nQUJ", b"QUJD\r\nQU==\r\n", b"QQ==\r\n\r\n", b"QUJD\rQUJD", b"QUJD\nQUJD", b"QUJD\n\r",
]


def crlf_variants(case: bytes) -> Iterator[bytes]:
    """The case, with CRLF after it, and with CRLF between every two characters."""
    yield case
    yield case + b"\r\n"
    yield b"\r\n".join(case[i:i + 1] for i in range(len(case)))


@pytest.mark.parametrize("case", HAND_PICKED, ids=repr)
def test_decode_base64_matches_the_stdlib_on_hand_picked_cases(case: bytes) -> None:
    for variant in crlf_variants(case):
        for before in AROUND:
            for after in AROUND:
                assert_decodes_like_stdlib(variant, before, after)


def test_decode_base64_hand_picked_values() -> None:
    """Not only the same as decode_b: the values themselves, so a change to both shows."""
    assert decode_base64(b"QUJD\r\nQUJD") == (b"ABCABC", [])
    assert decode_base64(b"\nQUJD\r\nQUJD\r", 1, 11) == (b"ABCABC", [])
    assert decode_base64(b"QQ==")[0] == b"A"
    assert defect_types(decode_base64(b"QQ=")[1]) == ["InvalidBase64PaddingDefect"]
    assert defect_types(decode_base64(b"QU!JD")[1]) == ["InvalidBase64CharactersDefect"]
    assert defect_types(decode_base64(b"Q")[1]) == ["InvalidBase64LengthDefect"]


@st.composite
def near_valid_base64(draw: st.DrawFn) -> bytes:
    """Real base64 (maybe cut and padded anyhow), with a few insertions (padding or junk in the middle) and
    deletions, cut into CRLF lines of any width, with blank lines now and then."""
    text = bytearray(base64.b64encode(draw(st.binary(max_size=120))))
    if draw(st.booleans()):  # cut anywhere (any length mod 4), then padded right or wrong
        text = text.rstrip(b"=")[: draw(st.integers(0, len(text)))]
        text += draw(st.sampled_from([b"", b"=", b"==", b"==="]))
    for pos, piece in draw(st.lists(st.tuples(st.one_of(st.integers(0, 500), st.just(-1)),
                                              st.sampled_from([b"=", b"==", b"===", b"A", b"QQ==",
                                                               *JUNK, b""])), max_size=3)):
        at = len(text) if pos < 0 else pos % (len(text) + 1)  # -1: at the very end
        if piece:
            text[at:at] = piece
        else:
            del text[at:at + 1]
    width = draw(st.integers(1, 80))
    lines = [bytes(text[i:i + width]) for i in range(0, len(text), width)]
    for pos in draw(st.lists(st.integers(0, 100), max_size=2)):
        lines.insert(pos % (len(lines) + 1), b"")
    # Mostly CRLF, as build_mail lets through; now and then a bare CR or LF.
    eol = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r"]))
    return eol.join(lines) + (eol if draw(st.booleans()) else b"")


SOUP = st.lists(st.one_of(st.sampled_from([bytes([c]) for c in ALPHABET]),
                          st.sampled_from([b"=", b"==", b"\r\n", b"\r\n", b"\r", b"\n", *JUNK])),
                max_size=40).map(b"".join)


@given(st.one_of(near_valid_base64(), SOUP), st.sampled_from(AROUND), st.sampled_from(AROUND))
@settings(max_examples=800, deadline=None)
def test_decode_base64_matches_the_stdlib(encoded: bytes, before: bytes, after: bytes) -> None:
    assert_decodes_like_stdlib(encoded, before, after)


# --- mails, built by hand: CRLF only -------------------------------------------------------------

@dataclass(frozen=True)
class Style:
    """How a base64 body is written."""

    width: int = 76
    strip_padding: bool = False
    junk: tuple[tuple[int, bytes], ...] = ()        # (position in the text, bytes inserted)
    junk_lines: tuple[tuple[int, bytes], ...] = ()  # (line index, a whole line inserted)
    trailing_blank: bool = False


def b64_body(data: bytes, style: Style = Style()) -> bytes:
    text = bytearray(base64.b64encode(data))
    if style.strip_padding:
        text = bytearray(text.rstrip(b"="))
    for pos, junk in style.junk:
        at = pos % (len(text) + 1)
        text[at:at] = junk
    lines = [bytes(text[i:i + style.width]) for i in range(0, len(text), style.width)]
    for pos, line in style.junk_lines:
        lines.insert(pos % (len(lines) + 1), line)
    return b"".join(line + b"\r\n" for line in lines) + (b"\r\n" if style.trailing_blank else b"")


def part(headers: Sequence[str], body: bytes, *, blank: bool = True) -> bytes:
    """A MIME entity; ``blank=False`` leaves out the blank line between headers and body."""
    head = "".join(f"{h}\r\n" for h in headers).encode()
    return head + (b"\r\n" if blank else b"") + body


def multipart(subtype: str, boundary: str, parts: Sequence[bytes], *, headers: Sequence[str] = (),
              preamble: bytes = b"", epilogue: bytes = b"", close: bool = True,
              declared: str | None = None) -> bytes:
    """Each child is expected to end with CRLF (it then belongs to the delimiter)."""
    ctype = declared if declared is not None else f'multipart/{subtype}; boundary="{boundary}"'
    out = [part([f"Content-Type: {ctype}", *headers], preamble)]
    out += [f"--{boundary}\r\n".encode() + p for p in parts]
    if close:
        out.append(f"--{boundary}--\r\n".encode() + epilogue)
    return b"".join(out)


TOP = ["From: Alice <alice@example.com>", "To: 0298765432@fax.local", "Subject: a fax",
       "Message-ID: <standins@example.com>", "Date: Mon, 01 Jan 2024 10:00:00 +0000",
       "MIME-Version: 1.0"]


def attachment(data: bytes, style: Style = Style(), *, ctype: str = "application/octet-stream",
               name: str = "file.bin", cte: str = "base64", blank: bool = True,
               extra: Sequence[str] = ()) -> bytes:
    return part([f'Content-Type: {ctype}; name="{name}"',
                 f'Content-Disposition: attachment; filename="{name}"',
                 f"Content-Transfer-Encoding: {cte}", *extra], b64_body(data, style), blank=blank)


def text_plain(text: str = "Hello,\r\nplease fax this.\r\n") -> bytes:
    return part(["Content-Type: text/plain; charset=utf-8"], text.encode())


def text_b64(text: str, style: Style = Style(), *, headers: Sequence[str] = ()) -> bytes:
    return part([*headers, "Content-Type: text/plain; charset=utf-8",
                 "Content-Transfer-Encoding: base64"], b64_body(text.encode(), style))


def html_related(image: bytes) -> bytes:
    html = part(["Content-Type: text/html; charset=utf-8"],
                b'<p>Hello <img src="cid:logo@x"></p>\r\n')
    img = part(['Content-Type: image/png; name="logo.png"', "Content-ID: <logo@x>",
                "Content-Transfer-Encoding: base64"], b64_body(image))
    return multipart("related", "rel-b", [html, img])


def forwarded(inner_attachment: bytes) -> bytes:
    """A message/rfc822 part: a whole mail with a base64 attachment inside."""
    inner = part(["From: bob@example.com", "Subject: inner"],
                 b"")[:-2] + multipart("mixed", "inner-b", [text_plain("inner text\r\n"),
                                                             inner_attachment])
    return part(['Content-Type: message/rfc822; name="fwd.eml"'], inner)


def blob(size: int, seed: int | str) -> bytes:
    return random.Random(seed).randbytes(size)


def mail(*children: bytes, preamble: bytes = b"", epilogue: bytes = b"", close: bool = True) -> bytes:
    return multipart("mixed", "outer-b", children, headers=TOP, preamble=preamble,
                     epilogue=epilogue, close=close)


LONG_TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog. ÄÖÜ €\r\n"
                    for i in range(200))


# --- the comparison --------------------------------------------------------------------------------

def _content(msg: Message) -> object:
    try:
        return ("ok", cast_message(msg).get_content())
    except Exception as exc:  # the same failure is as good as the same value
        return ("raised", type(exc).__name__)


def cast_message(msg: Message) -> EmailMessage:
    assert isinstance(msg, EmailMessage)
    return msg


def parsed_headers(msg: Message) -> list[tuple[str, str]]:
    """The headers as policy.default parses them (the stdlib raises on some, e.g. an empty
    ``Message-ID: <>``: the same failure is as good as the same value)."""
    out = []
    for name, value in msg.raw_items():
        try:
            out.append((name, str(msg.policy.header_fetch_parse(name, value))))
        except Exception as exc:
            out.append((name, f"raised {type(exc).__name__}"))
    return out


def may_hold_aside(msg: Message) -> bool:
    """A leaf the shortcut may leave as tokens: base64 and neither text nor message."""
    return (not msg.is_multipart()
            and str(msg.get("content-transfer-encoding", "")).lower() == "base64"
            and msg.get_content_maintype() not in ("text", "message"))


def assert_same_parse(raw: bytes) -> int:
    """parse_bytes(raw) is the stdlib's parse, part by part. Returns how many leaves were held
    aside (their undecoded payload differs: tokens), so callers can check the shortcut ran."""
    assert not has_bare_line_ending(raw)
    new = parse_bytes(raw)
    old = email.message_from_bytes(raw, policy=email.policy.default)
    return _assert_same_part(new, old, "root")


def _assert_same_part(new: Message, old: Message, where: str) -> int:
    assert type(new) is type(old), where
    assert new.get_content_type() == old.get_content_type(), where
    assert new.get_default_type() == old.get_default_type(), where
    assert new.is_multipart() == old.is_multipart(), where
    assert list(new.raw_items()) == list(old.raw_items()), where
    assert parsed_headers(new) == parsed_headers(old), where
    assert new.get_unixfrom() == old.get_unixfrom(), where
    assert new.preamble == old.preamble, where
    assert new.epilogue == old.epilogue, where
    assert defect_types(new.defects) == defect_types(old.defects), where
    if old.is_multipart():
        new_parts, old_parts = new.get_payload(), old.get_payload()
        assert isinstance(new_parts, list) and isinstance(old_parts, list)
        assert len(new_parts) == len(old_parts), where
        return sum(_assert_same_part(n, o, f"{where}/{i}")
                   for i, (n, o) in enumerate(zip(new_parts, old_parts, strict=True)))
    # The one designed difference: an attachment whose base64 held a run keeps its tokens (so its
    # get_payload(), get_content() and as_bytes() are not the stdlib's: payload_bytes is the way).
    held = new._payload != old._payload
    assert not held or may_hold_aside(old), where
    expected = old.get_payload(decode=True)
    assert isinstance(expected, bytes)
    assert payload_bytes(cast_message(new)) == expected, where
    assert defect_types(new.defects) == defect_types(old.defects), f"{where}: after decoding"
    if not held:  # every text part, and attachments without a long run
        assert _content(new) == _content(old), where
        assert defect_types(new.defects) == defect_types(old.defects), f"{where}: after get_content"
    return int(held)


def runs_taken(raw: bytes) -> bool:
    return StandIns.take(raw)[1] is not None


# --- 2a. hand-built mails --------------------------------------------------------------------------

BIG = blob(20_000, "big")
MID = blob(9_001, "mid")  # 9001 % 3 == 1: "==" padding
ODD = blob(7_000, "odd")  # 7000 % 3 == 1
EVEN = blob(6_002, "even")  # % 3 == 2: "=" padding

CASES: dict[str, tuple[bytes, int]] = {  # name → (raw, how many leaves must be held aside)
    "three attachments, 76 wide": (mail(text_plain(), attachment(BIG), attachment(MID),
                                        attachment(b"", name="empty.bin")), 2),
    "widths 64 and 72, short last line": (mail(
        text_plain(), attachment(MID, Style(width=64)), attachment(ODD, Style(width=72)),
        attachment(EVEN, Style(width=60))), 3),
    "padding stripped": (mail(attachment(MID, Style(strip_padding=True)),
                              attachment(EVEN, Style(strip_padding=True))), 2),
    "garbage in the base64": (mail(
        attachment(BIG, Style(junk=((4000, b"!"), (9000, b"\xff")))),
        attachment(MID, Style(junk=((100, b" "), (7000, b"-")))),
        attachment(ODD, Style(junk_lines=((40, b"!!!!"), (80, b""))))), 3),
    "padding in the middle": (mail(attachment(MID, Style(junk=((6000, b"=="),)))), 1),
    "padding line in the middle": (mail(attachment(BIG, Style(junk_lines=((100, b"QQ=="),)))), 1),
    "blank line after the base64": (mail(attachment(BIG, Style(trailing_blank=True))), 1),
    "text/plain base64 body": (mail(text_b64(LONG_TEXT), attachment(MID)), 1),
    "top-level text/plain base64": (text_b64(LONG_TEXT, headers=TOP), 0),
    "top-level text/plain base64, broken": (
        text_b64(LONG_TEXT, Style(junk=((5000, b"!"),)), headers=TOP), 0),
    "nested alternative and related": (mail(
        multipart("alternative", "alt-b", [text_plain(), html_related(MID)]), attachment(BIG)), 2),
    "alternative with a base64 text": (mail(
        multipart("alternative", "alt-b", [text_b64(LONG_TEXT), html_related(b"png")])), 0),
    "top-level application/pdf": (part([*TOP, 'Content-Type: application/pdf; name="a.pdf"',
                                        "Content-Transfer-Encoding: base64"], b64_body(BIG)), 1),
    "top-level application/pdf, garbage": (part(
        [*TOP, "Content-Type: application/pdf", "Content-Transfer-Encoding: base64"],
        b64_body(BIG, Style(junk=((12000, b"!"),), strip_padding=True))), 1),
    "forwarded mail with an attachment": (mail(text_plain(), forwarded(attachment(BIG))), 1),
    "forwarded mail, itself base64": (mail(part(["Content-Type: message/rfc822",
                                                 "Content-Transfer-Encoding: base64"],
                                                b64_body(BIG))), 0),
    "no closing boundary": (mail(text_plain(), attachment(BIG), attachment(MID), close=False), 2),
    "no closing boundary, inner": (mail(
        multipart("mixed", "in-b", [attachment(MID)], close=False), attachment(BIG)), 2),
    "base64 right after the headers": (mail(text_plain(), attachment(BIG, blank=False),
                                            attachment(MID)), 2),
    "top-level base64 right after the headers": (part(
        [*TOP, "Content-Type: image/png", "Content-Transfer-Encoding: base64"], b64_body(MID),
        blank=False), 1),
    "wrong boundary": (multipart("mixed", "nowhere", [attachment(BIG)], headers=TOP,
                                 declared='multipart/mixed; boundary="elsewhere"'), 0),
    "multipart without boundary, base64": (multipart(
        "mixed", "b", [], headers=[*TOP, "Content-Transfer-Encoding: base64"],
        declared="multipart/mixed", preamble=b64_body(MID), close=False), 1),
    "base64 pasted into a 7bit text": (mail(part(["Content-Type: text/plain"],
                                                 b"see:\r\n" + b64_body(BIG) + b"bye\r\n")), 0),
    "base64 body declared 7bit": (mail(attachment(BIG, cte="7bit")), 0),
    "base64 body declared quoted-printable": (mail(attachment(BIG, cte="quoted-printable")), 0),
    # Only "BASE64" is base64 to the stdlib: with a comment or a trailing space it is not decoded.
    "odd spellings of base64": (mail(attachment(MID, cte="BASE64"),
                                     attachment(ODD, cte="Base64 (a comment)"),
                                     attachment(EVEN, cte="base64 ")), 1),
    "image and audio": (mail(attachment(MID, ctype="image/jpeg", name="a.jpg"),
                             attachment(ODD, ctype="audio/wav", name="a.wav")), 2),
    "same content twice": (mail(attachment(MID), attachment(MID), attachment(MID)), 3),
    "lines of 998 and 999": (mail(attachment(blob(60_000, 1), Style(width=998)),
                                  attachment(blob(60_000, 2), Style(width=999))), 1),  # 999: no run
    "no final CRLF": (mail(attachment(BIG))[:-2], 1),
    "ends inside the base64, no CRLF": (mail(attachment(BIG), close=False)[:-2], 1),
    "8-bit junk around": (mail(part(["Content-Type: text/plain; charset=latin-1"],
                                    "Grüße\r\n".encode("latin-1")),
                               attachment(BIG, Style(junk_lines=((10, b"\xe9\xe9"),)))), 1),
}


@pytest.mark.parametrize(("raw", "held"), CASES.values(), ids=CASES.keys())
def test_parse_bytes_matches_the_stdlib_on_hand_built_mails(raw: bytes, held: int) -> None:
    assert runs_taken(raw)  # or the case tests nothing
    assert assert_same_parse(raw) == held


def test_parse_bytes_matches_the_stdlib_on_a_generated_mail() -> None:
    """What a mail client writes (email.generator with policy SMTP)."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "alice@example.com", "0298765432@fax.local", "gen"
    msg.set_content(LONG_TEXT, cte="base64")
    msg.add_alternative("<p>Hi</p>", subtype="html")
    for i, size in enumerate((0, 1, 2, 3, 5_000, 20_000)):
        msg.add_attachment(blob(size, i), maintype="application", subtype="octet-stream",
                           filename=f"f{i}.bin")
    inner = EmailMessage()
    inner["Subject"] = "inner"
    inner.set_content("inner")
    inner.add_attachment(BIG, maintype="application", subtype="pdf", filename="in.pdf")
    msg.add_attachment(inner)
    raw = msg.as_bytes(policy=email.policy.SMTP)
    assert runs_taken(raw)
    assert assert_same_parse(raw) == 3


# --- 2b. generated mails -----------------------------------------------------------------------------

@st.composite
def styles(draw: st.DrawFn) -> Style:
    # At most two junk edits: a 6 KB attachment (106+ lines) then keeps a run of 32 lines.
    junk = draw(st.lists(st.tuples(st.integers(0, 30_000), st.sampled_from(
        [*JUNK, b"=", b"==", b"!!"])), max_size=1))
    junk_lines = draw(st.lists(st.tuples(st.integers(0, 400), st.sampled_from(
        [b"", b"!!!!", b"QQ==", b"====", b"\xff\xfe", b"-x-", b"QUJD="])), max_size=1))
    return Style(width=draw(st.sampled_from([76, 76, 76, 64, 72, 60, 100])),
                 strip_padding=draw(st.booleans()), junk=tuple(junk), junk_lines=tuple(junk_lines),
                 trailing_blank=draw(st.booleans()))


@st.composite
def blobs(draw: st.DrawFn, min_size: int = 0) -> bytes:
    # Seeded, not st.binary: hypothesis cannot draw 20 KB of bytes per example.
    size = draw(st.one_of(st.integers(min_size, 20_000), st.sampled_from(
        [s for s in (0, 1, 2, 3, 4, 2_000, 6_000, 6_001, 6_002, 20_000) if s >= min_size])))
    return blob(size, draw(st.integers(0, 2**32 - 1)))


@st.composite
def attachments(draw: st.DrawFn, min_size: int = 0) -> bytes:
    data = draw(blobs(min_size))
    style = draw(styles())
    blank = draw(st.integers(0, 5)) != 0
    kind = draw(st.sampled_from(["octet", "pdf", "image", "text", "forwarded", "7bit"]))
    if kind == "text":
        text = data.decode("latin-1")
        return part(['Content-Type: text/plain; charset="utf-8"; name="t.txt"',
                     "Content-Transfer-Encoding: base64"], b64_body(text.encode(), style),
                    blank=blank)
    if kind == "forwarded":
        return forwarded(attachment(data, style, blank=blank))
    if kind == "7bit":
        return attachment(data, style, cte="7bit", blank=blank)
    ctype, name = {"octet": ("application/octet-stream", "f.bin"),
                   "pdf": ("application/pdf", "f.pdf"), "image": ("image/png", "f.png")}[kind]
    return attachment(data, style, ctype=ctype, name=name, blank=blank)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["plain", "alternative", "related", "pasted", "base64"]))
    if kind == "plain":
        return text_plain()
    if kind == "alternative":
        return multipart("alternative", "alt-b", [text_plain(), part(
            ["Content-Type: text/html"], b"<p>hi</p>\r\n")], close=draw(st.booleans()))
    if kind == "related":
        return multipart("alternative", "alt-b", [text_plain(), html_related(draw(blobs()))])
    if kind == "pasted":
        return part(["Content-Type: text/plain"], b"see:\r\n" + b64_body(draw(blobs())))
    return text_b64(LONG_TEXT[: draw(st.integers(0, len(LONG_TEXT)))], draw(styles()))


@st.composite
def mails(draw: st.DrawFn) -> bytes:
    shape = draw(st.sampled_from(["mixed", "mixed", "mixed", "pdf", "text"]))
    if shape == "pdf":
        return part([*TOP, 'Content-Type: application/pdf; name="a.pdf"',
                     "Content-Transfer-Encoding: base64"], b64_body(draw(blobs(6_000)), draw(styles())),
                    blank=draw(st.integers(0, 5)) != 0)
    if shape == "text":
        return text_b64(LONG_TEXT, draw(styles()), headers=TOP)
    children = [draw(bodies()), draw(attachments(min_size=6_000)),
                *draw(st.lists(attachments(), max_size=2))]
    return mail(*children, preamble=draw(st.sampled_from([b"", b"This is MIME.\r\n"])),
                epilogue=draw(st.sampled_from([b"", b"the end\r\n"])), close=draw(st.booleans()))


@given(mails())
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_parse_bytes_matches_the_stdlib_on_generated_mails(raw: bytes) -> None:
    assert runs_taken(raw)
    assert_same_parse(raw)


@pytest.mark.parametrize("where", ["preamble", "epilogue"])
def test_a_base64_run_in_the_preamble_or_epilogue_reads_as_written(where: str) -> None:
    run = b64_body(MID)
    raw = mail(text_plain(), **{where: run})
    assert runs_taken(raw)
    assert_same_parse(raw)


# --- 3. a mail that quotes a token ------------------------------------------------------------------

LOOKALIKE = "FAXBRIDGE0123456789abcdefR0Z"


def test_a_mail_quoting_a_token_reads_as_written() -> None:
    body = f"{LOOKALIKE}\r\nand {LOOKALIKE} again\r\n"
    junky = b64_body(MID) + b"-\r\n" + (LOOKALIKE.encode() + b"\r\n") * 3  # short: not a run
    raw = mail(text_plain(body), attachment(BIG),
               part(["Content-Type: application/octet-stream", "Content-Transfer-Encoding: base64"],
                    junky),
               part(["Content-Type: application/octet-stream", "Content-Transfer-Encoding: base64"],
                    (LOOKALIKE.encode() + b"\r\n") * 40))  # a run made of lookalikes
    assert runs_taken(raw)
    assert assert_same_parse(raw) == 3
    assert LOOKALIKE in cast_message(parse_bytes(raw).get_payload(0)).get_content()  # type: ignore[arg-type]


def test_a_mail_quoting_the_very_token_drawn_reads_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """The random prefix is drawn again when the mail already contains it."""
    drawn = iter(["0123456789abcdef", "0123456789abcdef", "fedcba9876543210"])
    calls: list[int] = []

    def token_hex(nbytes: int) -> str:
        calls.append(nbytes)
        return next(drawn)

    monkeypatch.setattr(intake_message.secrets, "token_hex", token_hex)
    raw = mail(text_plain(f"quoted: {LOOKALIKE}\r\n"),
               part(["Content-Type: text/plain"], f"{LOOKALIKE}\r\n".encode()),
               attachment(b"x" * 3000 + LOOKALIKE.encode()), attachment(BIG))
    assert assert_same_parse(raw) == 2
    assert len(calls) == 3  # two collisions, then a fresh prefix


# --- 4. through build_mail ---------------------------------------------------------------------------

PDF = make_pdf(2_000_000, "x")


def pdf_mail() -> bytes:
    return fax_message(sender="alice@example.com", to=["0298765432@fax.local"],
                       message_id="<standins-pdf@example.com>", subject="big",
                       attachments=[("big.pdf", PDF)])


def build(raw: bytes) -> list[bytes]:
    recipient = parse_recipient("0298765432@fax.local", fax_domain="fax.local", sms_domain="sms.local")
    new = build_mail(raw, mail_from="alice@example.com", recipients=[recipient],
                     config=defaults(fax=FaxConfig(cover="auto")))
    return [d.data for d in new.documents]


def damaged(raw: bytes) -> bytes:
    """One base64 character in the middle of the attachment replaced by '!'."""
    start = raw.index(b"\r\n\r\n", raw.index(b'filename="big.pdf"')) + 4
    end = raw.index(b"\r\n--", start)
    at = (start + end) // 2
    while raw[at:at + 1] in (b"\r", b"\n"):
        at += 1
    return raw[:at] + b"!" + raw[at + 1:]


def test_a_2mb_pdf_comes_out_byte_identical() -> None:
    raw = pdf_mail()
    assert runs_taken(raw)
    assert build(raw) == [PDF]


def test_a_damaged_2mb_pdf_is_refused_as_the_stdlib_flags_it() -> None:
    raw = damaged(pdf_mail())
    old = email.message_from_bytes(raw, policy=email.policy.default)
    old_part = old.get_payload(1)
    assert isinstance(old_part, Message)
    decoded = old_part.get_payload(decode=True)
    # A character short, so the stdlib pads too; the first defect is what the reply names.
    assert defect_types(old_part.defects) == ["InvalidBase64CharactersDefect",
                                              "InvalidBase64PaddingDefect"]
    assert isinstance(decoded, bytes) and decoded != PDF

    new_part = cast_message(parse_bytes(raw).get_payload(1))  # type: ignore[arg-type]
    assert payload_bytes(new_part) == decoded
    assert [type(d) for d in new_part.defects] == [email_errors.InvalidBase64CharactersDefect,
                                                   email_errors.InvalidBase64PaddingDefect]

    with pytest.raises(Refused) as info:
        build(raw)
    assert info.value.reply == replies.DAMAGED_ATTACHMENT.format(
        filename="big.pdf", detail="invalid base64 characters")
