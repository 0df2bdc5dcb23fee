"""Every SMTP reply the intake gives, in one place, with its enhanced status code (RFC 3463).

Code and tests use the same constants, so a test asserts the exact reply the code gives without
repeating its text (in the style of aiosmtpd's ``testing/statuscodes.py``)::

    raise Refused(replies.BAD_NUMBER.format(reason="0299 is too short"))
    ...
    assert replies.BAD_NUMBER.matches(code, message)

The text after the codes is what the sending person reads in their bounce, so it says what was
wrong and what to do. Values put into a reply may come from the sender (file names, numbers,
addresses); :meth:`Reply.format` makes them one printable ASCII line of bounded length, because a
CR or LF in a reply would let a hostile file name inject extra SMTP reply lines.

Conventions: 4xx means "try again later" (the sending MTA keeps the mail and retries); 5xx means
"this will never work" (the MTA bounces it to the person). An unexpected error is always
``TEMPFAIL`` (451), never a 5xx: we must not bounce a mail because of our own bug or a full disk.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass
from typing import Any

__all__ = ["Refused", "Reply"]

# RFC 5321 4.5.3.1.5: a reply line is at most 512 octets including the code and CRLF.
_MAX_REPLY_CHARS = 500
# One value (a file name, an address) is cut to this many characters in a reply.
_MAX_VALUE_CHARS = 120


def _printable_ascii(value: str) -> str:
    """One line of printable ASCII: accents are folded (März → Marz), the rest becomes '?'."""
    out = []
    for ch in value:
        if " " <= ch <= "~":
            out.append(ch)
            continue
        folded = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode("ascii")
        folded = "".join(c for c in folded if " " <= c <= "~")
        out.append(folded or "?")
    return "".join(out)


def clean_value(value: Any) -> str:
    """A sender-controlled value made safe to put in a reply line."""
    text = _printable_ascii(str(value))
    if len(text) > _MAX_VALUE_CHARS:
        text = text[: _MAX_VALUE_CHARS - 3] + "..."
    return text


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: ``code`` (250), ``enhanced`` status ("2.0.0") and ``text`` template."""

    code: int
    enhanced: str
    text: str  # str.format template; placeholders are filled by format()

    def __post_init__(self) -> None:
        # The class of the enhanced code must agree with the reply code (2xx ↔ 2.x.x).
        assert str(self.code)[0] == self.enhanced[0], self

    def format(self, **values: Any) -> str:
        """The reply line, with every value cleaned (see :func:`clean_value`)."""
        text = self.text.format(**{k: clean_value(v) for k, v in values.items()})
        line = f"{self.code} {self.enhanced} {text}"
        return line if len(line) <= _MAX_REPLY_CHARS else line[: _MAX_REPLY_CHARS - 3] + "..."

    def __str__(self) -> str:
        """The reply line, for replies without placeholders."""
        if self.fields:
            raise ValueError(f"reply {self.text!r} needs values: {', '.join(self.fields)}")
        return self.format()

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(name for _, name, _, _ in string.Formatter().parse(self.text) if name)

    @property
    def pattern(self) -> re.Pattern[str]:
        """Matches the text after the reply code (what smtplib returns as the message)."""
        parts = [re.escape(f"{self.enhanced} ")]
        for literal, name, _, _ in string.Formatter().parse(self.text):
            parts.append(re.escape(literal))
            if name:
                parts.append(".*?")
        return re.compile("".join(parts) + r"\Z", re.DOTALL)

    def matches(self, code: int, message: bytes | str) -> bool:
        """Whether an answer (e.g. smtplib's ``(code, message)``) is this reply."""
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        return code == self.code and bool(self.pattern.match(message))


class Refused(Exception):
    """The mail (or one command) is refused; ``reply`` is the full SMTP reply line."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


# --- success ------------------------------------------------------------------------------

SENDER_OK = Reply(250, "2.1.0", "sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "{kind} to {number} OK")
QUEUED = Reply(250, "2.0.0", "OK: queued as job(s) {ids}")
# A copy of a mail we already accepted (an MTA re-sending after a lost 250): answered as a
# success so the MTA stops, but nothing new is queued and nothing is faxed again.
ALREADY_QUEUED = Reply(250, "2.0.0", "OK: already queued as an earlier copy of this mail; not sent again")

# --- who may send (5.7.1: delivery not authorised) ----------------------------------------

RELAY_DENIED = Reply(550, "5.7.1", "relaying denied: only <number>@{fax_domain} is accepted here")
PEER_NOT_TRUSTED = Reply(550, "5.7.1", "{ip} may not send through this bridge "
                                       "(not in [smtp] trusted_networks)")
SENDER_NOT_ALLOWED = Reply(550, "5.7.1", "{reason}")
NULL_SENDER = Reply(550, "5.7.1", "a fax request needs a sender to report the result to; "
                                  "the null sender <> is refused")
# Autoresponders answer mail; they never mean to send a fax (and faxing costs money).
AUTO_REPLY = Reply(550, "5.7.1", "auto-replies (Auto-Submitted: auto-replied) are not faxed")

# --- SMTP AUTH and sender authentication (issue 6; see SECURITY.md) -----------------------

# require_auth: a client outside trusted_networks must authenticate first (RFC 4954 §6).
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required: log in (after STARTTLS) to send "
                                    "through this bridge")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
# Deliberately says nothing about which of user name and password was wrong.
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
# An authenticated user sending as an address that is not theirs (MAIL FROM or From:).
NOT_YOUR_ADDRESS = Reply(550, "5.7.1", "{address} is not an address user {user} may send as")
# [smtp] require_dmarc: no trusted Authentication-Results header vouches for the From: domain.
DMARC_FAILED = Reply(550, "5.7.1", "the sender could not be verified: {reason}")

# --- quotas ([limits], per envelope sender per rolling 24 hours) --------------------------

# Temporary: the sender has used their allowance; it frees up as the 24-hour window moves on,
# so the MTA keeps the mail and retries.
QUOTA_REACHED = Reply(452, "4.7.1", "daily quota reached for {sender}: {detail}; "
                                    "try again later")
# Permanent: this one mail needs more than the whole daily allowance; retrying cannot help.
QUOTA_EXCEEDED = Reply(550, "5.7.1", "this mail alone exceeds the daily quota for {sender}: "
                                     "{detail}")

# --- recipients ---------------------------------------------------------------------------

BAD_NUMBER = Reply(553, "5.1.3", "cannot fax this number: {reason}")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "too many recipients: at most {limit} per mail")
NOT_A_MOBILE = Reply(553, "5.1.3", "cannot send an SMS to {number}: it is not a mobile number")
BAD_SMS_NUMBER = Reply(553, "5.1.3", "cannot send an SMS to this number: {reason}")

# --- content ------------------------------------------------------------------------------

UNSUPPORTED_ATTACHMENT = Reply(554, "5.6.1", "cannot fax the attachment {filename} ({detail}); "
                                             "accepted: {accepted}")
BAD_PDF = Reply(554, "5.6.1", "cannot open the PDF {filename} ({detail}); nothing was faxed")
ENCRYPTED_PDF = Reply(554, "5.6.1", "the PDF {filename} is password-protected; "
                                    "send it without a password")
DAMAGED_ATTACHMENT = Reply(554, "5.6.1", "the attachment {filename} is damaged ({detail}); "
                                         "nothing was faxed")
NOTHING_TO_SEND = Reply(554, "5.6.0", "nothing to fax: {detail}")
EMPTY_SMS = Reply(554, "5.6.0", "nothing to send as SMS: the mail has no text and no subject")
# Cost guard: a long mail body must not silently become a dozen billed SMS parts.
SMS_TOO_LONG = Reply(554, "5.6.0", "the SMS would take {parts} parts ({units} {encoding} characters); "
                                   "the limit is {limit} parts ([sms] max_parts)")
TOO_COMPLEX = Reply(554, "5.6.0", "the message structure is too complex to fax ({detail})")
TOO_BIG = Reply(552, "5.3.4", "message too big: at most {limit} bytes")
# RFC 5321 4.5.3.1.6: a text line is at most 1000 octets; mail clients wrap or encode longer ones.
LINE_TOO_LONG = Reply(500, "5.5.2", "line too long: at most {limit} characters per line")
# [smtp] max_header_bytes: a huge header section is a parser attack, never a real fax request.
HEADERS_TOO_BIG = Reply(552, "5.3.4", "the message header section is too big: at most {limit} bytes")
# RFC 5321 2.3.8: lines end in CRLF. A lone CR or LF is how SMTP smuggling hides a second
# message or header (Subject: x<LF>Bcc: y) from one parser and shows it to the next.
BARE_LINE_ENDING = Reply(550, "5.5.2", "bare CR or LF in the message; lines must end with CRLF")

# --- our side -----------------------------------------------------------------------------

TEMPFAIL = Reply(451, "4.3.0", "temporary failure, the mail was not accepted; please try again later")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "too many connections, try again later")
SHUTTING_DOWN = Reply(421, "4.3.2", "shutting down, try again later")
