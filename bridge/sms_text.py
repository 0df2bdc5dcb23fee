"""The text of an SMS from a mail, and what it costs: pure functions, no I/O.

``extract_sms_text`` turns a parsed mail into the words the sender meant to text: the plain-text
body (or the HTML body rendered to text), without the quoted message it replies to, the
signature and the "Sent from my iPhone" footer. ``count_parts`` says how many SMS parts that
text takes, after ``to_gsm7_friendly`` has replaced the typographic characters that would
otherwise force the whole message into UCS-2 (70 characters a part instead of 160).

The caller decides what to do with an empty result (fall back to the subject) and with too many
parts (refuse); nothing here raises on odd input, because a mail can hold anything.
"""

from __future__ import annotations

import email.message
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser

__all__ = [
    "GSM7_BASIC",
    "GSM7_EXTENSION",
    "SmsParts",
    "count_parts",
    "extract_sms_text",
    "html_to_text",
    "is_gsm7",
    "strip_reply_and_signature",
    "to_gsm7_friendly",
]

# --- GSM-7 (3GPP TS 23.038, 6.2.1) ----------------------------------------------------------

# The default alphabet in code order 0x00..0x7F, so that it can be checked against the table in
# the spec line by line. 0x1B is the escape to the extension table, not a character: it is
# removed from the set below so that a literal ESC in a mail never counts as sendable.
GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
# The extension table (6.2.1.1): each is sent as ESC + code, so it costs two septets. Form feed
# (0x0A, "page break") is in the table too; the rest is what people actually type.
GSM7_EXTENSION = "\f^{}\\[~]|€"

_BASIC_SET = frozenset(GSM7_BASIC) - {"\x1b"}
_EXTENSION_SET = frozenset(GSM7_EXTENSION)

# Capacity of one part. A concatenated part loses 7 septets (6 octets of UDH) to the header
# that reassembles it, hence 153/67 rather than 160/70.
_GSM7_SINGLE, _GSM7_MULTI = 160, 153
_UCS2_SINGLE, _UCS2_MULTI = 70, 67

GSM7 = "GSM-7"
UCS2 = "UCS-2"


@dataclass(frozen=True)
class SmsParts:
    text: str  # what will be sent: to_gsm7_friendly(text) when that is GSM-7, else the input as is
    encoding: str  # "GSM-7" | "UCS-2"
    parts: int  # SMS parts it takes (an empty text still makes one, empty, SMS)
    units: int  # GSM-7 septets (extension chars count 2) or UTF-16 code units (astral chars count 2)


def is_gsm7(text: str) -> bool:
    """True when every character is in the GSM-7 default alphabet or its extension table."""
    return all(ch in _BASIC_SET or ch in _EXTENSION_SET for ch in text)


# --- Typographic characters → GSM-7 ---------------------------------------------------------

# Only characters whose GSM-7 stand-in a reader would not notice. Letters are never folded
# (ç is not c, ł is not l): a text with such letters goes out as UCS-2, as written.
_FRIENDLY: dict[str, str] = {
    # Single quotes, apostrophes and the accents people type as apostrophes ("don´t").
    **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u2039\u203a\u00b4`", "'"),
    # Double quotes, including guillemets and the double prime.
    **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb", '"'),
    # Hyphen, non-breaking hyphen, figure dash, en dash, em dash, horizontal bar, minus sign.
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212", "-"),
    "\u2026": "...",
    # No-break, narrow no-break, en/em/thin/hair and the other fixed-width spaces. Tab is not in
    # GSM-7 either, and a space is what it looks like on a phone.
    **dict.fromkeys(
        "\t\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000",
        " ",
    ),
    # Bullets: "-" reads as a list item on any phone.
    **dict.fromkeys("\u2022\u2023\u2043\u2219\u25e6", "-"),
    "\u00d7": "x",
    # Invisible characters (zero-width space/joiners, word joiner, BOM, soft hyphen) cost a whole
    # UCS-2 message while showing nothing. Joiners do matter inside emoji sequences, but a text
    # with emoji stays UCS-2 and count_parts then sends the original, joiners intact.
    **dict.fromkeys("\u200b\u200c\u200d\u2060\ufeff\u00ad", ""),
}
_FRIENDLY_TABLE = str.maketrans(_FRIENDLY)


def to_gsm7_friendly(text: str) -> str:
    """Replace typographic quotes, dashes, ellipses, odd spaces, bullets and × with GSM-7 ones.

    NFC first: "e" + combining acute is two UCS-2 characters, "é" is one GSM-7 character.
    Characters without an obvious equivalent (emoji, most accented letters) are left alone.
    """
    return unicodedata.normalize("NFC", text).translate(_FRIENDLY_TABLE)


# --- Counting parts -------------------------------------------------------------------------


def _pack(costs: Iterable[int], total: int, single: int, multi: int) -> int:
    """Parts needed when items of the given sizes are packed in order into parts of `multi`.

    Greedy, because an item never straddles two parts: a GSM-7 escape pair or a UTF-16
    surrogate pair that does not fit in what is left of a part starts the next one, so
    ceil(total / multi) can be one short.
    """
    if total <= single:
        return 1
    parts, used = 1, 0
    for cost in costs:
        if used + cost > multi:
            parts += 1
            used = 0
        used += cost
    return parts


_CONTROLS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


def count_parts(text: str) -> SmsParts:
    """Encoding, size and number of parts of `text`, after to_gsm7_friendly when that helps.

    Control characters other than line breaks are dropped first: they are invisible on a
    handset and an ESC would start a GSM-7 escape sequence of its own.
    """
    text = _CONTROLS.sub("", text)
    friendly = to_gsm7_friendly(text)
    if is_gsm7(friendly):
        costs = [2 if ch in _EXTENSION_SET else 1 for ch in friendly]
        units = sum(costs)
        return SmsParts(friendly, GSM7, _pack(costs, units, _GSM7_SINGLE, _GSM7_MULTI), units)
    # UCS-2 costs the same per BMP character whatever the quotes look like, so the sender's own
    # typography is kept. "UCS-2" is what the SMS world calls it; it is really UTF-16, and
    # characters beyond U+FFFF (emoji) take a surrogate pair.
    costs = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
    units = sum(costs)
    return SmsParts(text, UCS2, _pack(costs, units, _UCS2_SINGLE, _UCS2_MULTI), units)


# --- Reply, signature and footer stripping --------------------------------------------------

# "-- " is the RFC 3676 signature separator; "--" is what it becomes when something on the way
# strips trailing spaces, which many clients and list servers do.
_SIG_SEPARATOR = re.compile(r"--[ \t]?")

_QUOTED = re.compile(r"[ \t]*>")

# Outlook (-----Original Message-----), Outlook Express/Lotus (----- Original Message -----),
# Android and Thunderbird (-------- Original message --------), German and French Outlook.
_ORIGINAL_MESSAGE = re.compile(
    r"-{2,}\s*(?:original message|ursprüngliche nachricht|message d'origine)\s*-{2,}",
    re.IGNORECASE,
)

# Outlook's reply header block, also in German and French, with Gmail's "*From:*" bolding when
# an Outlook mail is quoted from HTML. French puts a (no-break) space before the colon.
_HDR = r"\*?(?:{names})\s?:\*?"
_HEADER_FROM = re.compile(_HDR.format(names="from|von|de") + r"\s*\S", re.IGNORECASE)
_HEADER_DATE = re.compile(_HDR.format(names="sent|date|gesendet|datum|envoyé"), re.IGNORECASE)
_HEADER_OTHER = re.compile(_HDR.format(names="to|cc|subject|an|betreff|à|objet"), re.IGNORECASE)
# How many lines below "From:" the Sent/To/Subject lines may be (Outlook adds Cc and Importance).
_HEADER_BLOCK_LINES = 6
_UNDERSCORE_RULE = re.compile(r"_{10,}")

# "On <date>, <name> wrote:" (Gmail, Apple Mail, Thunderbird), "Am <date> schrieb <name>:",
# "Le <date>, <name> a écrit :". A date or time must be in it, so that a sentence such as
# "On second thought, here is what I wrote:" is not taken for the start of a quote.
_ATTRIBUTION = re.compile(r"(?:on\s.+\swrote|am\s.+\sschrieb(?:\s.+)?|le\s.+\sa\s+écrit)\s?:", re.IGNORECASE)
_HAS_DATE = re.compile(r"\d{1,2}:\d{2}|\b\d{4}\b|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}")
_ATTRIBUTION_START = re.compile(r"(?:on|am|le)\s", re.IGNORECASE)
# Gmail wraps a long attribution at ~78 columns, sometimes twice with a long display name.
_ATTRIBUTION_MAX_LINES = 3
_ATTRIBUTION_MAX_CHARS = 400

# Mobile and webmail footers, matched against a whole stripped line. Outlook mobile's plain
# part carries the link: "Get Outlook for iOS<https://aka.ms/o0ukef>".
_FOOTER = re.compile(
    r"(?:"
    r"sent from my \S[^\n]{0,60}"
    r"|sent (?:from|with|via|using) (?:outlook|mail|yahoo mail|gmail|proton ?mail|samsung|"
    r"blackberry|aol|spark|bluemail|the mail app)\b[^\n]{0,60}"
    r"|get outlook for (?:ios|android)[^\n]{0,80}"
    r"|envoyé de mon [\w .-]{1,40}"
    r"|von meinem [\w .-]{1,40} gesendet"
    r")\.?",
    re.IGNORECASE,
)
# "Near the end": a footer is one of the last few non-blank lines left after the cut.
_FOOTER_TAIL_LINES = 3


def _normalise_newlines(text: str) -> str:
    # Mail parsed from SMTP bytes keeps CRLF inside text parts, and "\n-- \n" must match.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _is_quoted(line: str) -> bool:
    return _QUOTED.match(line) is not None


def _is_blank(line: str) -> bool:
    return not line.strip()


def _attribution_lines(lines: Sequence[str], i: int) -> int:
    """How many lines from `i` form an "On … wrote:" attribution (0 when they do not)."""
    if not _ATTRIBUTION_START.match(lines[i].lstrip()):
        return 0
    joined = ""
    for n in range(_ATTRIBUTION_MAX_LINES):
        if i + n >= len(lines) or _is_blank(lines[i + n]) or _is_quoted(lines[i + n]):
            return 0
        joined = f"{joined} {lines[i + n].strip()}".strip()
        if len(joined) > _ATTRIBUTION_MAX_CHARS:
            return 0
        if _ATTRIBUTION.fullmatch(joined):
            # A date says it is an attribution; so does a quote right below it
            # ("On Fri, Bob wrote:" + "> ..."), which no sentence of the reply would have.
            dated = _HAS_DATE.search(joined) is not None
            return n + 1 if dated or _quote_follows(lines, i + n + 1) else 0
    return 0


def _quote_follows(lines: Sequence[str], i: int) -> bool:
    for line in lines[i:]:
        if not _is_blank(line):
            return _is_quoted(line)
    return False


def _is_outlook_header(lines: Sequence[str], i: int) -> bool:
    """A "From:" line followed by Sent/Date and To/Subject lines, without a blank line between."""
    if not _HEADER_FROM.match(lines[i].strip()):
        return False
    has_date = has_other = False
    for line in lines[i + 1 : i + 1 + _HEADER_BLOCK_LINES]:
        stripped = line.strip()
        if not stripped:
            break
        has_date = has_date or _HEADER_DATE.match(stripped) is not None
        has_other = has_other or _HEADER_OTHER.match(stripped) is not None
    return has_date and has_other


def _hard_cut_at(lines: Sequence[str], i: int) -> int | None:
    """Where to cut when line `i` starts a signature or a quoted original; None when it does not.

    The attribution line is not handled here because it is not always a cut: see _scan.
    """
    line = lines[i]
    if _SIG_SEPARATOR.fullmatch(line) or _ORIGINAL_MESSAGE.fullmatch(line.strip()):
        return i
    if _is_outlook_header(lines, i):
        # Outlook (desktop and web) draws a rule of underscores above the block; take it too.
        above = i - 1
        while above >= 0 and _is_blank(lines[above]):
            above -= 1
        if above >= 0 and _UNDERSCORE_RULE.fullmatch(lines[above].strip()):
            return above
        return i
    return None


def _is_inline_reply(lines: Sequence[str], start: int) -> bool:
    """True when the quote that follows an attribution is answered between its lines.

    Cutting at the attribution would then throw away every answer. It is an inline reply when
    the attribution is followed by quoted lines and, after some of them, by unquoted text that
    is not itself a signature, another quote header or a footer.
    """
    k = start
    while k < len(lines) and _is_blank(lines[k]):
        k += 1
    if k >= len(lines) or not _is_quoted(lines[k]):
        return False
    for j in range(k + 1, len(lines)):
        line = lines[j]
        if _is_quoted(line) or _is_blank(line):
            continue
        if _hard_cut_at(lines, j) is not None or _attribution_lines(lines, j):
            return False
        return not _FOOTER.fullmatch(line.strip())
    return False


def _scan(lines: Sequence[str]) -> tuple[int, set[int]]:
    """Index of the first line to drop with everything after it, and single lines to drop."""
    dropped: set[int] = set()
    i = 0
    while i < len(lines):
        if _is_quoted(lines[i]):
            i += 1
            continue
        cut = _hard_cut_at(lines, i)
        if cut is not None:
            return cut, dropped
        n = _attribution_lines(lines, i)
        if n:
            if not _is_inline_reply(lines, i + n):
                return i, dropped
            dropped.update(range(i, i + n))
            i += n
            continue
        i += 1
    return len(lines), dropped


def _drop_footers(lines: list[str]) -> list[str]:
    """Remove footer lines among the last few non-blank lines; only the footer line goes."""
    seen = 0
    for idx in range(len(lines) - 1, -1, -1):
        if _is_blank(lines[idx]):
            continue
        if _FOOTER.fullmatch(lines[idx].strip()):
            del lines[idx]
        seen += 1
        if seen >= _FOOTER_TAIL_LINES:
            break
    return lines


def strip_reply_and_signature(text: str) -> str:
    """Drop the signature, the quoted original a reply carries, quoted lines and mobile footers.

    Cuts at the first signature separator ("-- " or "--"), "-----Original Message-----",
    Outlook's From/Sent/To/Subject block (with the underscore rule above it), or an
    "On <date>, <name> wrote:" line (also wrapped, German, French) unless the reply is written
    between the quoted lines. Lines starting with ">" are removed wherever they are. Whitespace
    is left for the caller to tidy.
    """
    lines = _normalise_newlines(text).split("\n")
    cut, dropped = _scan(lines)
    kept = [line for idx, line in enumerate(lines[:cut]) if idx not in dropped and not _is_quoted(line)]
    return "\n".join(_drop_footers(kept))


# --- HTML → text ----------------------------------------------------------------------------

# Content that is never shown in the body.
_SKIP_TAGS = frozenset({"head", "script", "style", "title", "template"})
# Elements that start on a line of their own. <br> is a line break in its own right.
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "caption", "center", "dd", "div", "dl",
        "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5",
        "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "tbody",
        "tfoot", "thead", "tr", "ul",
    }
)  # fmt: skip
_CELL_TAGS = frozenset({"td", "th"})
_COLLAPSIBLE = re.compile(r"\s+")


class _HtmlToText(HTMLParser):
    """Renders mail HTML to lines of text, with blockquotes turned into "> " quoted lines.

    Quoting blockquotes (Gmail, Apple Mail and Thunderbird quote the original in one) lets the
    same stripping rules handle HTML-only replies.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # entities arrive already unescaped
        self._lines: list[str] = []
        self._current: list[str] = []
        self._current_depth = 0
        self._current_pre = False
        self._current_has_text = False  # tracked, not recomputed: one line can hold 100k <span>s
        self._skipping: list[str] = []
        self._quote_depth = 0
        self._pre_depth = 0

    def _end_line(self) -> None:
        text = "".join(self._current)
        if not self._current_pre:
            # HTML source whitespace (including newlines) is one space when rendered.
            text = _COLLAPSIBLE.sub(" ", text).strip()
        if self._current_depth and text:
            text = f"{'>' * self._current_depth} {text}"
        self._lines.append(text)
        self._current = []
        self._current_pre = False
        self._current_has_text = False

    def _block_boundary(self) -> None:
        # A block starts and ends on its own line, but empty blocks add no blank lines:
        # Outlook wraps every line in <p>, Gmail every line in <div>.
        if self._current_has_text:
            self._end_line()
        else:
            self._current = []

    def _append(self, text: str) -> None:
        if not self._current_has_text:
            self._current_depth = self._quote_depth
        self._current_has_text = self._current_has_text or bool(text.strip())
        self._current_pre = self._current_pre or self._pre_depth > 0
        self._current.append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self._skipping.clear()  # a <head> left open ends where the body starts
            return
        if tag in _SKIP_TAGS:
            self._skipping.append(tag)
            return
        if self._skipping:
            return
        if tag == "br":
            self._end_line()
        elif tag in _BLOCK_TAGS:
            self._block_boundary()
            if tag == "blockquote":
                self._quote_depth += 1
            elif tag == "pre":
                self._pre_depth += 1
            elif tag == "li":
                self._append("- ")
        elif tag in _CELL_TAGS:
            self._append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            if tag in self._skipping:
                del self._skipping[self._skipping.index(tag) :]
            return
        if self._skipping:
            return
        if tag in _BLOCK_TAGS:
            self._block_boundary()
            if tag == "blockquote":
                self._quote_depth = max(0, self._quote_depth - 1)
            elif tag == "pre":
                self._pre_depth = max(0, self._pre_depth - 1)
        elif tag in _CELL_TAGS:
            self._append(" ")

    def handle_data(self, data: str) -> None:
        if self._skipping:
            return
        if self._pre_depth:
            first, *rest = _normalise_newlines(data).split("\n")
            self._append(first)
            for line in rest:
                self._end_line()
                self._append(line)
        else:
            self._append(data)

    def text(self) -> str:
        self.close()
        if self._current:
            self._end_line()
        return "\n".join(self._lines)


def html_to_text(html: str) -> str:
    """Visible text of an HTML body: line breaks from <br> and blocks, entities unescaped."""
    parser = _HtmlToText()
    try:
        parser.feed(html)
    except Exception:  # html.parser is lenient, but odd markup must never fail a mail
        return re.sub(r"<[^>]*>", " ", html)
    return parser.text()


# --- Mail → SMS text ------------------------------------------------------------------------

_BLANK_RUN = re.compile(r"\n{3,}")


def _part_text(part: email.message.EmailMessage) -> str:
    try:
        content = part.get_content()
    except (LookupError, UnicodeError):
        # An unknown or lying charset: the bytes are still more useful than nothing.
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else ""


def _unflow(text: str, delsp: bool) -> str:
    """Undo RFC 3676 format=flowed: a line ending in a space continues on the next one.

    Without this a Thunderbird or Apple Mail paragraph would be sent with a line break every
    ~72 characters. Quote depth is kept so that quoted lines are still recognised.
    """
    out: list[str] = []
    para = ""
    para_depth = -1
    flowing = False
    for line in text.split("\n"):
        stripped = line.lstrip(">")
        depth = len(line) - len(stripped)
        if stripped.startswith(" "):
            stripped = stripped[1:]  # space-stuffing
        if flowing and depth == para_depth:
            para += stripped
        else:
            if para_depth >= 0:
                out.append(f"{'>' * para_depth} {para}" if para_depth else para)
            para, para_depth = stripped, depth
        # The signature separator is never flowed, although it ends in a space.
        flowing = stripped.endswith(" ") and stripped != "-- "
        if flowing and delsp:
            para = para[:-1]
    if para_depth >= 0:
        out.append(f"{'>' * para_depth} {para}" if para_depth else para)
    return "\n".join(out)


def _body_text(msg: email.message.EmailMessage) -> str:
    plain = msg.get_body(preferencelist=("plain",))
    if isinstance(plain, email.message.EmailMessage):
        text = _normalise_newlines(_part_text(plain))
        if text.strip():
            if str(plain.get_param("format", "")).lower() == "flowed":
                text = _unflow(text, str(plain.get_param("delsp", "")).lower() == "yes")
            return text
    # Only HTML, or a blank plain part next to an HTML one (some clients send that).
    html = msg.get_body(preferencelist=("html",))
    if isinstance(html, email.message.EmailMessage):
        return html_to_text(_normalise_newlines(_part_text(html)))
    return ""


def extract_sms_text(msg: email.message.EmailMessage) -> str:
    """The SMS body of a mail parsed with policy=email.policy.default; "" when there is none.

    Does not fall back to the subject: the caller does, so that it can tell the two apart.
    """
    text = strip_reply_and_signature(_body_text(msg))
    # Trailing spaces are invisible on a phone but each costs a septet.
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _BLANK_RUN.sub("\n\n", text.strip())
