"""Envelope recipients → fax/SMS numbers, or the exact SMTP refusal. Pure.

Only ``<number>@<fax_domain>`` and ``<number>@<sms_domain>`` are ours; every other address is
relaying and refused ``550 5.7.1``. The domain must match exactly (case-insensitively, but never
after Unicode normalisation: ``ｆａｘ.local`` and a Cyrillic ``fаx.local`` are other domains): not
as a suffix (``fax.local.evil.com``), not as a parent (``evil.fax.local``), not with a trailing
dot, not an address literal. A local part that carries another routing (``%``-hack
``0298765432%evil.com``, bang path ``evil!0298765432``, a quoted ``"x@evil.com"``) is refused as
relaying too, before the number check would call it a bad number: what it is, is an attempt to
route mail elsewhere. Source routes (``<@a:b@c>``) are refused by the SMTP session
(:mod:`bridge.intake.server`), because aiosmtpd strips them before our hook sees the address.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bridge import replies
from bridge.numbers import NumberError, PhoneNumber, parse_number
from bridge.replies import Refused

__all__ = ["Recipient", "parse_recipient", "unique_by_number"]

Kind = Literal["fax", "sms"]


@dataclass(frozen=True)
class Recipient:
    kind: Kind
    address: str  # as given in RCPT TO
    number: PhoneNumber


def _unquote(local: str) -> str:
    """``"02 9876 5432"`` → ``02 9876 5432`` (RFC 5321 quoted-string, with backslash escapes)."""
    if len(local) >= 2 and local[0] == local[-1] == '"':
        inner, out, escaped = local[1:-1], [], False
        for ch in inner:
            if escaped or ch != "\\":
                out.append(ch)
                escaped = False
            else:
                escaped = True
        return "".join(out)
    return local


def parse_recipient(address: str, *, fax_domain: str, sms_domain: str, region: str = "AU",
                    allow_premium: bool = False) -> Recipient:
    """Reads one RCPT TO address; raises :class:`Refused` with the reply to give."""
    local, at, domain = address.rpartition("@")
    domain = domain.lower()
    kind: Kind
    if at and local and domain == fax_domain.lower():
        kind = "fax"
    elif at and local and domain == sms_domain.lower():
        kind = "sms"
    else:
        raise Refused(replies.RELAY_DENIED.format(fax_domain=fax_domain))
    try:
        number = parse_number(_unquote(local), region=region, allow_premium=allow_premium)
    except NumberError as exc:
        bad = replies.BAD_NUMBER if kind == "fax" else replies.BAD_SMS_NUMBER
        raise Refused(bad.format(reason=str(exc))) from None
    if kind == "sms" and not number.is_mobile:
        raise Refused(replies.NOT_A_MOBILE.format(number=number.display))
    return Recipient(kind, address, number)


def unique_by_number(recipients: list[Recipient]) -> list[Recipient]:
    """Drops repeats of the same (kind, number), keeping the first: ``0298765432@fax.local`` and
    ``+61298765432@fax.local`` are one fax, not two (and one dedupe key)."""
    seen: set[tuple[str, str]] = set()
    out = []
    for r in recipients:
        key = (r.kind, r.number.digits)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out
