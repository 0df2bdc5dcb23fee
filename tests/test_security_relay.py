"""Never an open relay: every way of asking the bridge to pass mail on elsewhere is refused,
and nothing at all reaches the store.

Each attempt is one real SMTP session with a raw socket (smtplib would rewrite the odd
addresses), then a DATA is tried anyway; the store must stay empty. The pure recipient parser is
checked with the same addresses.
"""

from __future__ import annotations

import pytest
from test_intake_message import make_mail
from test_intake_smtp import Answer, Intake, IntakeFactory, Raw

from bridge import replies
from bridge.intake.addresses import parse_recipient
from bridge.replies import Refused

RELAY = "relay"      # refused as relaying: 550 5.7.1
NUMBER = "number"    # at our domain, but not a phone number: 553 5.1.3 (issue 3's contract)
MALFORMED = "553"    # aiosmtpd refused it as a malformed address before our hook

ATTEMPTS: list[tuple[str, str, str]] = [
    # (what, RCPT TO argument, expected)
    ("another domain", "<someone@example.com>", RELAY),
    ("a number at another domain", "<0298765432@evil.com>", RELAY),
    ("the %-hack", "<0298765432%evil.com@fax.local>", NUMBER),
    ("the %-hack to the sms domain", "<0412345678%evil.com@sms.local>", NUMBER),
    ("a bang path", "<evil.com!0298765432@fax.local>", NUMBER),
    ("a source route", "<@relay.example:0298765432@fax.local>", RELAY),
    ("a source route via us", "<@fax.local:someone@evil.com>", RELAY),
    ("a source route, several hops", "<@a.example,@b.example:0298765432@fax.local>", RELAY),
    ("a quoted local part with an address", '<"0298765432@evil.com"@fax.local>', NUMBER),
    ("a quoted local part with a %-hack", '<"0298765432%evil.com"@fax.local>', NUMBER),
    ("our domain as a prefix", "<0298765432@fax.local.evil.com>", RELAY),
    ("a subdomain of ours", "<0298765432@evil.fax.local>", RELAY),
    ("a look-alike domain", "<0298765432@fax-local.com>", RELAY),
    ("a digit for a letter", "<0298765432@fax.loca1>", RELAY),
    ("a Cyrillic а in the domain", "<0298765432@fаx.local>", RELAY),
    ("fullwidth letters (NFKC would make them ours)", "<0298765432@ｆａｘ.local>", RELAY),
    ("a punycode look-alike", "<0298765432@xn--fx-gkc.local>", RELAY),
    ("an address literal", "<0298765432@[127.0.0.1]>", RELAY),
    ("an IPv6 address literal", "<0298765432@[IPv6:::1]>", RELAY),
    ("no domain", "<postmaster>", RELAY),
    ("no angle brackets", "0298765432@evil.com", RELAY),
    ("a trailing dot", "<0298765432@fax.local.>", MALFORMED),
    ("two @", "<0298765432@fax.local@evil.com>", MALFORMED),
    ("an empty local part", "<@fax.local>", RELAY),
    ("an empty address", "<>", RELAY),
]


async def attempt(intake: Intake, rcpt: str) -> tuple[Answer, Answer]:
    """MAIL, RCPT with exactly these bytes, then DATA anyway; (RCPT answer, DATA answer)."""
    raw = await Raw.connect(intake.port)
    try:
        assert (await raw.reply()).code == 220
        assert (await raw.command(b"EHLO client.example.com")).code == 250
        utf8 = b" SMTPUTF8" if not rcpt.isascii() else b""
        assert (await raw.command(b"MAIL FROM:<alice@example.com>" + utf8)).code == 250
        rcpt_answer = await raw.command(b"RCPT TO:" + rcpt.encode("utf-8"))
        data_answer = await raw.command(b"DATA")
        if data_answer.code == 354:
            data_answer = await raw.command(make_mail(to="x@example.com") + b".")
        return rcpt_answer, data_answer
    finally:
        raw.close()


@pytest.mark.parametrize(("what", "rcpt", "expected"), ATTEMPTS, ids=[a[0] for a in ATTEMPTS])
async def test_relay_attempt_is_refused_and_nothing_queued(start_intake: IntakeFactory, what: str,
                                                           rcpt: str, expected: str) -> None:
    intake = await start_intake()
    rcpt_answer, data_answer = await attempt(intake, rcpt)
    if expected == RELAY:
        assert rcpt_answer.is_(replies.RELAY_DENIED), rcpt_answer
    elif expected == NUMBER:
        assert rcpt_answer.is_(replies.BAD_NUMBER) or rcpt_answer.is_(replies.BAD_SMS_NUMBER), \
            rcpt_answer
    else:
        assert rcpt_answer.code == 553, rcpt_answer
    assert data_answer.code == 503  # "need RCPT": no recipient was accepted
    intake.assert_empty()


@pytest.mark.parametrize("rcpt", ["<0298765432@FAX.LOCAL>", "<0298765432@Fax.Local>",
                                  '<"02 9876 5432"@fax.local>'])
async def test_our_own_domain_in_any_case_is_ours(start_intake: IntakeFactory, rcpt: str) -> None:
    """Domains are case-insensitive: upper case is the same domain, not a relay (and a quoted
    local part that is only a number is just a number)."""
    intake = await start_intake()
    rcpt_answer, data_answer = await attempt(intake, rcpt)
    assert rcpt_answer.is_(replies.RECIPIENT_OK)
    assert data_answer.is_(replies.QUEUED)
    [job] = intake.jobs()
    assert job.to_number == "61298765432"


async def test_a_relay_attempt_beside_a_real_recipient_queues_only_the_real_one(
        start_intake: IntakeFactory) -> None:
    intake = await start_intake()
    raw = await Raw.connect(intake.port)
    try:
        assert (await raw.reply()).code == 220
        assert (await raw.command(b"EHLO x")).code == 250
        assert (await raw.command(b"MAIL FROM:<alice@example.com>")).code == 250
        assert (await raw.command(b"RCPT TO:<victim@example.com>")).is_(replies.RELAY_DENIED)
        assert (await raw.command(b"RCPT TO:<0298765432%victim.example@fax.local>")).is_(
            replies.BAD_NUMBER)
        assert (await raw.command(b"RCPT TO:<@relay.example:victim@example.com>")).is_(
            replies.RELAY_DENIED)
        assert (await raw.command(b"RCPT TO:<0298765432@fax.local>")).is_(replies.RECIPIENT_OK)
        assert (await raw.command(b"DATA")).code == 354
        assert (await raw.command(make_mail() + b".")).is_(replies.QUEUED)
    finally:
        raw.close()
    assert [j.to_number for j in intake.jobs()] == ["61298765432"]
    assert intake.mail_count() == 1


async def test_an_untrusted_client_cannot_even_reach_rcpt(start_intake: IntakeFactory) -> None:
    intake = await start_intake(trusted_networks=("192.0.2.0/24",))
    raw = await Raw.connect(intake.port)
    try:
        assert (await raw.reply()).code == 220
        assert (await raw.command(b"EHLO x")).code == 250
        assert (await raw.command(b"MAIL FROM:<alice@example.com>")).is_(replies.PEER_NOT_TRUSTED)
        assert (await raw.command(b"RCPT TO:<0298765432@fax.local>")).code == 503  # need MAIL
    finally:
        raw.close()
    intake.assert_empty()


def _parser_case(attempt: tuple[str, str, str]) -> bool:
    # Malformed addresses never reach the parser, and source routes are refused by the session.
    address = attempt[1].strip("<>")
    return attempt[2] != MALFORMED and not (address.startswith("@") and ":" in address)


PARSER_CASES = [a for a in ATTEMPTS if _parser_case(a)]


@pytest.mark.parametrize(("what", "rcpt", "expected"), PARSER_CASES, ids=[a[0] for a in PARSER_CASES])
def test_the_pure_parser_refuses_the_same(what: str, rcpt: str, expected: str) -> None:
    address = rcpt.strip("<>")
    with pytest.raises(Refused) as info:
        parse_recipient(address, fax_domain="fax.local", sms_domain="sms.local")
    code, _, text = info.value.reply.partition(" ")
    wanted = [replies.RELAY_DENIED] if expected == RELAY else [replies.BAD_NUMBER, replies.BAD_SMS_NUMBER]
    assert any(w.matches(int(code), text) for w in wanted), info.value.reply
