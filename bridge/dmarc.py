"""``[smtp] require_dmarc``: is the From: domain vouched for by our own MTA? Pure, no I/O.

The allow-list (``[smtp] allowed_senders``) matches the From: header, which anyone can write.
With ``require_dmarc = true`` it is honoured only when the upstream MTA that the operator trusts
(identified by ``[smtp] trusted_authserv_id``) checked the mail and wrote its verdict in an
``Authentication-Results`` header (RFC 8601) that says

- ``dmarc=pass`` (and, when the result names it, ``header.from`` is the From: domain), or
- ``dkim=pass`` with a signing domain (``header.d``, else the domain of ``header.i``) aligned with
  the From: domain, or
- ``spf=pass`` with an envelope domain (``smtp.mailfrom``) aligned with the From: domain.

An explicit ``dmarc=fail`` refuses even when some other method passed. Anything else (no header
from the trusted MTA, one we cannot parse, no From: domain or several) refuses: **fail closed**.

Which headers count (the rule SECURITY.md states)
-------------------------------------------------
Anybody can write an ``Authentication-Results`` header that names our MTA. MTAs *prepend* trace
headers, so the MTA's own verdict sits above everything the sender wrote. We honour only **the
topmost run of consecutive Authentication-Results headers that carry the trusted authserv-id**:
scanning from the top, the first such header and the ones directly below it that also carry it.
Anything further down (after any other header, such as the MTA's ``Received:``) is ignored, so a
forged ``dmarc=pass`` written by the sender cannot outvote the real verdict above it.
Headers of other authserv-ids are ignored wherever they are. A header that carries the trusted id
but cannot be parsed fails closed. The MTA must still remove headers that carry its id from
incoming mail (RFC 8601 §5): if it adds no verdict at all, a forged one would be the topmost.

Alignment is *relaxed* and decided without the Public Suffix List: the two domains are equal, or
one is a subdomain of the other (``mail.example.com`` ~ ``example.com``). That is stricter than
DMARC's organisational-domain rule for siblings (``a.example.com`` and ``b.example.com`` do not
align here) and never looser: a pass for ``com.au`` would need control of ``com.au`` itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "AuthResults",
    "ParseError",
    "Result",
    "Verdict",
    "aligned",
    "honoured",
    "parse",
    "verify",
]

HEADER = "authentication-results"
# Far more than any real header; a bound on the work a hostile header can cause.
MAX_HEADER_CHARS = 16_384


class ParseError(ValueError):
    """Not an RFC 8601 Authentication-Results value."""


@dataclass(frozen=True)
class Result:
    """One ``method=result ptype.property=value …`` of a header."""

    method: str                     # "dmarc", "spf", "dkim" (lower case, version dropped)
    result: str                     # "pass", "fail", "none", … (lower case)
    props: dict[str, str] = field(default_factory=dict)  # "header.d" → "example.com"


@dataclass(frozen=True)
class AuthResults:
    authserv_id: str
    results: tuple[Result, ...]


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str  # why it passed or failed, for the log and the SMTP reply


# --- parsing ------------------------------------------------------------------------------

_SPECIALS = frozenset(';="()')


def _tokens(value: str) -> list[str]:
    """Words, quoted strings (as ``"…`` so they stay one value) and ``;`` / ``=``. Comments
    ``( … )``, nested and with ``\\`` escapes, are dropped (they carry no meaning in RFC 8601)."""
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        ch = value[i]
        if ch.isspace():
            i += 1
        elif ch == "(":
            depth = 0
            while i < n:
                c = value[i]
                if c == "\\":
                    i += 2
                    continue
                depth += (c == "(") - (c == ")")
                i += 1
                if depth == 0:
                    break
            else:
                if depth:
                    raise ParseError("unterminated comment")
        elif ch == ")":
            raise ParseError("unbalanced ')'")
        elif ch == '"':
            i += 1
            text = []
            while i < n and value[i] != '"':
                if value[i] == "\\" and i + 1 < n:
                    i += 1
                text.append(value[i])
                i += 1
            if i >= n:
                raise ParseError("unterminated quoted string")
            i += 1
            out.append('"' + "".join(text))
        elif ch in ";=":
            out.append(ch)
            i += 1
        else:
            start = i
            while i < n and not value[i].isspace() and value[i] not in _SPECIALS:
                i += 1
            out.append(value[start:i])
    return out


def _value(token: str) -> str:
    return token[1:] if token.startswith('"') else token


def _split(tokens: list[str]) -> list[list[str]]:
    pieces: list[list[str]] = [[]]
    for word in tokens:
        if word == ";":
            pieces.append([])
        else:
            pieces[-1].append(word)
    return pieces


def _resinfo(piece: list[str]) -> Result:
    """``method[/version] = result [reason = value] [ptype.property = value]…``"""
    if len(piece) < 3 or piece[1] != "=" or piece[0].startswith('"'):
        raise ParseError(f"expected method=result, got {' '.join(piece)[:60]!r}")
    method = piece[0].split("/", 1)[0].lower()
    result = _value(piece[2]).lower()
    if not method or not result:
        raise ParseError("empty method or result")
    props: dict[str, str] = {}
    rest = piece[3:]
    if len(rest) % 3:
        raise ParseError(f"expected name=value pairs after {method}={result}")
    for i in range(0, len(rest), 3):
        name, eq, value = rest[i:i + 3]
        if eq != "=" or name.startswith('"') or name == "=" or value == "=":
            raise ParseError(f"expected name=value after {method}={result}")
        # Only the first value of a property counts; a repeat cannot override it.
        props.setdefault(name.lower(), _value(value))
    return Result(method, result, props)


def parse(value: str) -> AuthResults:
    """One header value → :class:`AuthResults`; raises :class:`ParseError`."""
    if len(value) > MAX_HEADER_CHARS:
        raise ParseError("header too long")
    pieces = _split(_tokens(value))
    head = pieces[0]
    # authserv-id, optionally followed by a version number (RFC 8601 §2.2).
    if not head or len(head) > 2 or head[0] == "=" or (len(head) == 2 and not head[1].isdigit()):
        raise ParseError("expected the authserv-id before the first ';'")
    authserv_id = _value(head[0])
    if not authserv_id:
        raise ParseError("empty authserv-id")
    infos = [p for p in pieces[1:] if p]
    if len(pieces) == 1 or infos == [["none"]]:
        return AuthResults(authserv_id, ())  # "no-result": nothing was checked
    return AuthResults(authserv_id, tuple(_resinfo(p) for p in infos))


def _authserv_id_leniently(value: str) -> str:
    """The authserv-id of a header we could not parse, to decide whether it is ours."""
    try:
        head = _split(_tokens(value[:MAX_HEADER_CHARS]))[0]
        return _value(head[0]) if head else ""
    except ParseError:
        return value.split(";", 1)[0].strip().split(" ", 1)[0]


# --- which headers count ------------------------------------------------------------------

def _unfold(value: str) -> str:
    return value.replace("\r\n", "").replace("\n", "").replace("\r", "")


def honoured(headers: Sequence[tuple[str, str]], trusted_id: str) -> list[AuthResults]:
    """The trusted MTA's verdicts: the topmost run of consecutive Authentication-Results headers
    carrying ``trusted_id`` (see the module docstring). ``headers`` are (name, raw value) in
    order, top first, e.g. ``EmailMessage.raw_items()``. Raises :class:`ParseError` when one of
    them carries the trusted id but cannot be parsed."""
    trusted = trusted_id.strip().lower()
    run: list[AuthResults] = []
    for name, raw in headers:
        value = _unfold(str(raw))
        ours = name.strip().lower() == HEADER and \
            _authserv_id_leniently(value).lower() == trusted
        if not ours:
            if run:
                break  # the run ended: anything further down may be the sender's
            continue
        try:
            parsed = parse(value)
        except ParseError as exc:
            raise ParseError(f"the Authentication-Results header of {trusted_id} is "
                             f"unreadable ({exc})") from None
        if parsed.authserv_id.lower() != trusted:
            if run:
                break
            continue
        run.append(parsed)
    return run


# --- the decision -------------------------------------------------------------------------

def _domain_of(value: str) -> str:
    return value.rpartition("@")[2].strip().strip("<>").rstrip(".").lower()


def aligned(domain: str, from_domain: str) -> bool:
    """Relaxed alignment without the Public Suffix List (see the module docstring)."""
    d, f = domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    if not d or not f:
        return False
    return d == f or f.endswith("." + d) or d.endswith("." + f)


def _passes(result: Result, from_domain: str) -> str | None:
    """Why this result vouches for ``from_domain`` (a reason text), or None."""
    if result.result != "pass":
        return None
    if result.method == "dmarc":
        claimed = result.props.get("header.from", "")
        if claimed and _domain_of(claimed) != from_domain:
            return None
        return "dmarc=pass"
    if result.method == "dkim":
        d = result.props.get("header.d") or _domain_of(result.props.get("header.i", ""))
        return f"dkim=pass for {d}" if d and aligned(d, from_domain) else None
    if result.method == "spf":
        d = _domain_of(result.props.get("smtp.mailfrom", ""))
        return f"spf=pass for {d}" if d and aligned(d, from_domain) else None
    return None


def verify(headers: Sequence[tuple[str, str]], from_addresses: Iterable[str],
           trusted_id: str) -> Verdict:
    """Whether the trusted MTA vouches for the mail's From: domain."""
    if not trusted_id.strip():
        return Verdict(False, "no [smtp] trusted_authserv_id is configured")
    domains = {_domain_of(a) for a in from_addresses if a and "@" in a}
    domains.discard("")
    if len(domains) != 1:
        return Verdict(False, "the From: header must name exactly one domain "
                              f"(it names {len(domains)})")
    (from_domain,) = domains
    try:
        verdicts = honoured(headers, trusted_id)
    except ParseError as exc:
        return Verdict(False, str(exc))
    if not verdicts:
        return Verdict(False, f"no Authentication-Results header from {trusted_id}")
    results = [r for v in verdicts for r in v.results]
    for r in results:
        if r.method == "dmarc" and r.result == "fail":
            return Verdict(False, f"{trusted_id} says dmarc=fail for {from_domain}")
    for r in results:
        why = _passes(r, from_domain)
        if why:
            return Verdict(True, f"{trusted_id}: {why}")
    seen = ", ".join(f"{r.method}={r.result}" for r in results) or "no results"
    return Verdict(False, f"{trusted_id} found no dmarc=pass or aligned spf/dkim pass for "
                          f"{from_domain} ({seen})")
