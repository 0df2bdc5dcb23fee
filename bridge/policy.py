"""Who may send through the bridge, and who hears back: pure functions, no I/O.

Three questions, asked at different moments of an SMTP session:

1. At MAIL FROM, *may this client submit at all?* (:func:`check_client`): the peer's address is
   in ``[smtp] trusted_networks``, or the session authenticated with SMTP AUTH. With
   ``[smtp] require_auth`` the refusal says "authenticate first" (530) instead of "not trusted".
2. At MAIL FROM, *is the envelope sender allowed?* (:func:`check_envelope_sender`): it matches
   ``[smtp] allowed_senders``, and it is not the null sender. An authenticated user must also
   be sending as one of *their* addresses (:func:`check_auth_sender`).
3. At DATA, *is the header From: allowed?* (:func:`check_header_from`): every From: address
   matches the same allow-list (and, for an authenticated user, their addresses). Checking only
   the envelope would let a trusted host relay a mail whose visible author is someone else;
   checking only the header would notify a forged address. With ``[smtp] require_dmarc`` an
   unauthenticated mail's From: must also be vouched for by the trusted MTA
   (:mod:`bridge.dmarc`).

Each check returns a :class:`Decision` whose ``reason`` is a sentence for the SMTP reply, so a
refused person learns *why* (``sender bob@evil.com is not in [smtp] allowed_senders``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "Decision",
    "check_auth_sender",
    "check_client",
    "check_envelope_sender",
    "check_header_from",
    "is_auto_reply",
    "peer_trusted",
    "sender_allowed",
    "should_notify",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""
    # A refusal that SMTP AUTH would lift (answer 530 "authenticate first", not 550).
    auth_required: bool = False

    def __bool__(self) -> bool:
        return self.allowed


ALLOWED = Decision(True)


# --- senders --------------------------------------------------------------------------------

def _split(address: str) -> tuple[str, str]:
    """(local part, domain), both lower case; the domain loses a trailing dot (FQDN form)."""
    local, _, domain = address.strip().rpartition("@")
    return local.lower(), domain.lower().rstrip(".")


def sender_allowed(address: str, patterns: Iterable[str]) -> bool:
    """Whether ``address`` matches one of ``patterns``: ``"*"``, ``"*@example.com"`` or an
    exact address. Case-insensitive (local parts are case-sensitive in theory, never in
    practice). ``*@example.com`` is that domain only, not its subdomains: an allow-list entry
    should not grow when someone creates ``mail.example.com``. The null sender matches only
    ``"*"`` (and :func:`check_envelope_sender` refuses it anyway)."""
    local, domain = _split(address)
    for pattern in patterns:
        pattern = pattern.strip()
        if pattern == "*":
            return True
        if not address or not local or not domain:
            continue
        p_local, p_domain = _split(pattern)
        if p_domain != domain:
            continue
        if p_local == "*" or p_local == local:
            return True
    return False


def check_envelope_sender(mail_from: str, patterns: Iterable[str]) -> Decision:
    """MAIL FROM. The null sender is refused: a fax costs money and ends in a notice, and a
    mail from ``<>`` (a bounce) has no one to tell the result to."""
    if not mail_from or mail_from == "<>":
        return Decision(False, "a fax request needs a sender; the null sender <> is refused")
    if not sender_allowed(mail_from, patterns):
        return Decision(False, f"sender {mail_from} is not in [smtp] allowed_senders")
    return ALLOWED


def check_header_from(addresses: Iterable[str], patterns: Iterable[str]) -> Decision:
    """The header From: (at DATA). Every address in it must be allowed. A mail without a
    From: address passes only an allow-list of ``"*"``: with a real allow-list, "no author"
    is not an allowed author."""
    patterns = tuple(patterns)
    found = [a for a in addresses if a]
    if not found:
        if "*" in (p.strip() for p in patterns):
            return ALLOWED
        return Decision(False, "the mail has no From: address, so it cannot match "
                               "[smtp] allowed_senders")
    for address in found:
        if not sender_allowed(address, patterns):
            return Decision(False, f"From: {address} is not in [smtp] allowed_senders")
    return ALLOWED


# --- clients --------------------------------------------------------------------------------

@lru_cache(maxsize=64)
def _networks(networks: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def peer_trusted(ip: str | None, networks: Iterable[str | IPNetwork]) -> bool:
    """Whether the client's IP address is inside one of ``networks``.

    An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``, what a dual-stack socket reports) is
    judged as the IPv4 address it is. Anything that is not an IP address (a Unix socket, no
    peer) is not trusted.
    """
    if not ip:
        return False
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    strings = tuple(n for n in networks if isinstance(n, str))
    parsed = _networks(strings) + tuple(n for n in networks if not isinstance(n, str))
    return any(addr.version == net.version and addr in net for net in parsed)


def check_client(ip: str | None, networks: Iterable[str], *, auth_user: str | None = None,
                 require_auth: bool = False) -> Decision:
    """MAIL FROM: may this client submit mail at all?

    A session that authenticated (``auth_user``) may, from anywhere; so may a client inside
    ``networks`` (``[smtp] trusted_networks``) without authenticating. Everyone else is refused.
    ``require_auth`` does not change *who* gets in, only what the refusal says: "authenticate
    first" (``auth_required``, answered 530) rather than "not trusted" (550), for a bridge that
    is meant to be used with SMTP AUTH from outside.
    """
    if auth_user:
        return ALLOWED
    if peer_trusted(ip, networks):
        return ALLOWED
    if require_auth:
        return Decision(False, "authentication required", auth_required=True)
    return Decision(False, f"{ip or 'this client'} may not send through this bridge "
                           "(not in [smtp] trusted_networks)")


def check_auth_sender(address: str, user: str, addresses: Iterable[str]) -> Decision:
    """An authenticated ``user`` may send only as the ``addresses`` assigned to them in the users
    file (exact addresses or ``*@domain``): a password lets a person spend money, and the notice
    for that spending must go to them, not to whoever they claim to be."""
    if sender_allowed(address, tuple(a for a in addresses if a.strip() != "*")):
        return ALLOWED
    return Decision(False, f"{address or '<>'} is not an address user {user} may send as")


# --- loops and notices ----------------------------------------------------------------------

def is_auto_reply(auto_submitted: str | None) -> bool:
    """``Auto-Submitted: auto-replied``: an autoresponder answering some mail.

    Such a mail is refused rather than faxed. It can only reach a fax address by answering a
    mail that carried one (a received fax with a fax Reply-To, say), and an autoresponder never
    means to spend money on a fax. Other auto-submitted mail (``auto-generated``: scanners,
    copiers, scheduled reports) is exactly what a fax gateway is for, and is faxed.
    """
    value = str(auto_submitted or "")
    return value.split(";", 1)[0].strip().lower() == "auto-replied"


def should_notify(mail_from: str) -> bool:
    """Whether the result of a fax is reported to the envelope sender.

    A fax notice is a *delivery report* for a request the sender made, like a DSN (RFC 3464),
    not an automatic *reply* in the sense of RFC 3834. RFC 3834's "do not answer auto-submitted
    or list mail" exists to stop responders from talking to each other; a delivery report goes
    to the envelope return path, which is the address that asked for such reports, and the only
    address it must never go to is the null sender (that would be a report about a report).

    So: notify unless the envelope sender is null. In particular an ``Auto-Submitted:
    auto-generated`` or ``Precedence: bulk`` mail from a scanner or a reporting system *is*
    notified: a scanner's mailbox is precisely who must learn that the fax failed. Loops are
    prevented on the sending side (notices carry ``Auto-Submitted: auto-replied``, and
    auto-replies are refused at intake, see :func:`is_auto_reply`). The null sender is refused
    at MAIL FROM anyway, so this is a second line of defence.
    """
    return bool(mail_from) and mail_from != "<>"
