"""bridge.replies (the SMTP reply table) and bridge.policy (who may send, who hears back)."""

from __future__ import annotations

import ipaddress

import pytest

from bridge import policy, replies
from bridge.replies import Reply

# --- replies ------------------------------------------------------------------------------

# The contract from issue 3: each refusal has exactly this code and enhanced code.
EXPECTED = {
    "QUEUED": (250, "2.0.0"),
    "ALREADY_QUEUED": (250, "2.0.0"),
    "RELAY_DENIED": (550, "5.7.1"),
    "PEER_NOT_TRUSTED": (550, "5.7.1"),
    "SENDER_NOT_ALLOWED": (550, "5.7.1"),
    "NULL_SENDER": (550, "5.7.1"),
    "BAD_NUMBER": (553, "5.1.3"),
    "TOO_MANY_RECIPIENTS": (452, "4.5.3"),
    "UNSUPPORTED_ATTACHMENT": (554, "5.6.1"),
    "BAD_PDF": (554, "5.6.1"),
    "ENCRYPTED_PDF": (554, "5.6.1"),
    "DAMAGED_ATTACHMENT": (554, "5.6.1"),
    "NOTHING_TO_SEND": (554, "5.6.0"),
    "TOO_BIG": (552, "5.3.4"),
    "TEMPFAIL": (451, "4.3.0"),
    "TOO_MANY_CONNECTIONS": (421, "4.7.0"),
    "BARE_LINE_ENDING": (550, "5.5.2"),
    "NOT_A_MOBILE": (553, "5.1.3"),
    "BAD_SMS_NUMBER": (553, "5.1.3"),
    "EMPTY_SMS": (554, "5.6.0"),
    "SMS_TOO_LONG": (554, "5.6.0"),
}


@pytest.mark.parametrize(("name", "codes"), sorted(EXPECTED.items()))
def test_reply_codes(name: str, codes: tuple[int, str]) -> None:
    reply = getattr(replies, name)
    assert (reply.code, reply.enhanced) == codes


def test_every_reply_is_consistent() -> None:
    all_replies = [v for v in vars(replies).values() if isinstance(v, Reply)]
    assert len(all_replies) >= len(EXPECTED)
    for reply in all_replies:
        assert str(reply.code)[0] == reply.enhanced[0]
        line = reply.format(**{f: "x" for f in reply.fields})
        assert line.startswith(f"{reply.code} {reply.enhanced} ")
        assert reply.matches(reply.code, line.split(" ", 1)[1])


def test_reply_values_cannot_inject_lines() -> None:
    line = replies.UNSUPPORTED_ATTACHMENT.format(
        filename="evil\r\n250 OK\r\nx.exe", detail="type application/x-msdownload", accepted="PDF")
    assert "\r" not in line and "\n" not in line
    assert line.isascii() and line.isprintable()
    assert "evil??250 OK??x.exe" in line


def test_reply_values_are_folded_to_ascii_and_capped() -> None:
    line = replies.BAD_PDF.format(filename="Rechnung März 日本.pdf", detail="x")
    assert "Rechnung Marz ??.pdf" in line
    long = replies.BAD_PDF.format(filename="a" * 5000, detail="b" * 5000)
    assert len(long) <= 500
    assert "a" * 117 + "..." in long


def test_str_of_a_template_reply_needs_values() -> None:
    assert str(replies.TEMPFAIL).startswith("451 4.3.0 ")
    with pytest.raises(ValueError, match="filename"):
        str(replies.BAD_PDF)


def test_matches() -> None:
    line = replies.BAD_NUMBER.format(reason="0299 is too short")
    code, _, text = line.partition(" ")
    assert replies.BAD_NUMBER.matches(int(code), text.encode())
    assert not replies.BAD_NUMBER.matches(550, text)
    assert not replies.RELAY_DENIED.matches(553, text)
    assert not replies.BAD_NUMBER.matches(553, "5.1.1 something else")


def test_refused_carries_the_reply() -> None:
    exc = replies.Refused(str(replies.NULL_SENDER))
    assert exc.reply == str(exc) == str(replies.NULL_SENDER)


# --- senders ------------------------------------------------------------------------------

@pytest.mark.parametrize(("address", "patterns", "allowed"), [
    ("alice@example.com", ["alice@example.com"], True),
    ("Alice@Example.COM", ["alice@example.com"], True),
    ("alice@example.com", ["ALICE@EXAMPLE.COM"], True),
    ("bob@example.com", ["alice@example.com"], False),
    ("bob@example.com", ["*@example.com"], True),
    ("bob@EXAMPLE.com.", ["*@example.com"], True),           # FQDN form
    ("bob@mail.example.com", ["*@example.com"], False),      # not a suffix match
    ("bob@example.com.evil.com", ["*@example.com"], False),
    ("bob@evilexample.com", ["*@example.com"], False),
    ('"bob@example.com"@evil.com', ["*@example.com"], False),  # quoted local part
    ("anyone@anywhere.net", ["*"], True),
    ("anyone@anywhere.net", [], False),
    ("anyone@anywhere.net", ["a@b.com", "*@c.com"], False),
    ("x@c.com", ["a@b.com", "*@c.com"], True),
    ("", ["*@example.com"], False),
    ("nodomain", ["*@example.com"], False),
])
def test_sender_allowed(address: str, patterns: list[str], allowed: bool) -> None:
    assert policy.sender_allowed(address, patterns) is allowed


def test_envelope_sender_reasons() -> None:
    assert policy.check_envelope_sender("alice@example.com", ["*@example.com"])
    refused = policy.check_envelope_sender("bob@evil.com", ["*@example.com"])
    assert not refused
    assert refused.reason == "sender bob@evil.com is not in [smtp] allowed_senders"
    null = policy.check_envelope_sender("<>", ["*"])
    assert not null and "null sender" in null.reason
    assert not policy.check_envelope_sender("", ["*"])


def test_header_from() -> None:
    allow = ["*@example.com"]
    assert policy.check_header_from(["a@example.com"], allow)
    assert policy.check_header_from(["a@example.com", "b@example.com"], allow)
    mixed = policy.check_header_from(["a@example.com", "eve@evil.com"], allow)
    assert not mixed and mixed.reason == "From: eve@evil.com is not in [smtp] allowed_senders"
    missing = policy.check_header_from([], allow)
    assert not missing and "no From:" in missing.reason
    assert policy.check_header_from([], ["*"])


# --- clients ------------------------------------------------------------------------------

@pytest.mark.parametrize(("ip", "trusted"), [
    ("127.0.0.1", True),
    ("127.8.9.10", True),
    ("::1", True),
    ("::ffff:127.0.0.1", True),      # v4-mapped, as a dual-stack socket reports it
    ("192.0.2.7", True),
    ("192.0.2.255", True),
    ("192.0.3.1", False),
    ("2001:db8::5", True),
    ("2001:db9::5", False),
    ("fe80::1%eth0", False),
    ("not an ip", False),
    ("", False),
    (None, False),
])
def test_peer_trusted(ip: str | None, trusted: bool) -> None:
    networks = ["127.0.0.0/8", "::1/128", "192.0.2.0/24", "2001:db8::/32"]
    assert policy.peer_trusted(ip, networks) is trusted


def test_peer_trusted_accepts_network_objects() -> None:
    assert policy.peer_trusted("10.1.2.3", [ipaddress.ip_network("10.0.0.0/8")])
    assert not policy.peer_trusted("10.1.2.3", [])


def test_check_client_and_the_auth_seam() -> None:
    nets = ["127.0.0.0/8"]
    assert policy.check_client("127.0.0.1", nets)
    outside = policy.check_client("203.0.113.9", nets)
    assert not outside and "203.0.113.9" in outside.reason and "trusted_networks" in outside.reason
    # Issue 6: an authenticated session may submit from anywhere.
    assert policy.check_client("203.0.113.9", nets, auth_user="alice")


# --- loops and notices --------------------------------------------------------------------

def test_notify_unless_null_sender() -> None:
    assert policy.should_notify("scanner@example.com")
    assert not policy.should_notify("")
    assert not policy.should_notify("<>")


@pytest.mark.parametrize(("value", "auto_reply"), [
    ("auto-replied", True),
    ("Auto-Replied; owner-email=x@y", True),
    ("auto-generated", False),
    ("no", False),
    ("", False),
    (None, False),
])
def test_is_auto_reply(value: str | None, auto_reply: bool) -> None:
    assert policy.is_auto_reply(value) is auto_reply
