"""[smtp] require_dmarc: the trusted MTA's Authentication-Results (RFC 8601) vouch for From:.

bridge.dmarc is pure: the parser, the "which headers count" rule and the decision are tested on
header lists; a few tests go through a real SMTP session to show the wiring and the reply.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import test_security_auth
from hypothesis import given, settings
from hypothesis import strategies as st
from test_intake_message import make_mail, make_pdf
from test_intake_smtp import IntakeFactory, send
from test_security_auth import ALICE, SecureFactory, login_and_send

from bridge import dmarc, replies
from bridge.dmarc import ParseError

# Fixtures shared with other modules.
secure_intake = test_security_auth.secure_intake
tls_files = test_security_auth.tls_files

MX = "mx.example.com"
AR = "Authentication-Results"


def verify(*values: str, from_: tuple[str, ...] = ("alice@example.com",),
           other: tuple[tuple[str, str], ...] = ()) -> dmarc.Verdict:
    headers = [(AR, v) for v in values] + list(other)
    return dmarc.verify(headers, from_, MX)


# --- parsing -------------------------------------------------------------------------------------

def test_parse_a_real_world_header() -> None:
    value = (f"{MX};\r\n\tdkim=pass (2048-bit key; unprotected) header.d=example.com "
             "header.i=@example.com header.b=\"AbC/12+x\";\r\n\tspf=pass (mx.example.com: domain of "
             "alice@example.com designates 192.0.2.1 as permitted sender) "
             "smtp.mailfrom=alice@example.com;\r\n\tdmarc=pass (p=REJECT sp=REJECT dis=NONE) "
             "header.from=example.com")
    parsed = dmarc.parse(value.replace("\r\n", ""))
    assert parsed.authserv_id == MX
    assert [(r.method, r.result) for r in parsed.results] == [
        ("dkim", "pass"), ("spf", "pass"), ("dmarc", "pass")]
    assert parsed.results[0].props == {"header.d": "example.com", "header.i": "@example.com",
                                       "header.b": "AbC/12+x"}
    assert parsed.results[1].props["smtp.mailfrom"] == "alice@example.com"


@pytest.mark.parametrize(("value", "authserv_id", "results"), [
    (f"{MX}; none", MX, []),
    (f"{MX} 1; spf=pass smtp.mailfrom=example.com", MX, [("spf", "pass")]),
    (f'"{MX}"; dkim/1=FAIL reason="bad sig" header.d=example.com', MX, [("dkim", "fail")]),
    (f"{MX} (our MTA); dmarc=pass action=none header.from=example.com", MX, [("dmarc", "pass")]),
    (f"{MX};dmarc=pass header.from=example.com;;", MX, [("dmarc", "pass")]),
    (f"{MX}", MX, []),
])
def test_parse_variants(value: str, authserv_id: str, results: list[tuple[str, str]]) -> None:
    parsed = dmarc.parse(value)
    assert parsed.authserv_id == authserv_id
    assert [(r.method, r.result) for r in parsed.results] == results


@pytest.mark.parametrize("value", [
    "", ";", "; dmarc=pass", f"{MX}; dmarc", f"{MX}; dmarc=", f"{MX}; =pass",
    f"{MX}; dmarc=pass header.from", f"{MX}; dmarc=pass (unclosed comment",
    f'{MX}; dmarc="pass', f"{MX} x y; dmarc=pass", f"{MX}; dmarc=pass ) header.from=x",
    "spf=pass smtp.mailfrom=example.com",   # Microsoft's style: no authserv-id
    "x" * 20_000,
])
def test_unparseable_values(value: str) -> None:
    with pytest.raises(ParseError):
        dmarc.parse(value)


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_the_parser_never_fails_otherwise(value: str) -> None:
    with contextlib.suppress(ParseError):
        dmarc.parse(value)


@given(st.lists(st.tuples(st.sampled_from([AR, "Received", "authentication-results", "X-Other"]),
                          st.text(max_size=120)), max_size=6),
       st.lists(st.text(max_size=40), max_size=3))
@settings(max_examples=300, deadline=None)
def test_verify_never_fails_on_hostile_headers(headers: list[tuple[str, str]], froms: list[str]) -> None:
    assert isinstance(dmarc.verify(headers, froms, MX), dmarc.Verdict)


# --- alignment -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("domain", "from_domain", "ok"), [
    ("example.com", "example.com", True),
    ("EXAMPLE.com.", "example.com", True),
    ("mail.example.com", "example.com", True),
    ("example.com", "news.example.com", True),
    ("a.example.com", "b.example.com", False),   # siblings: no PSL, so not aligned (stricter)
    ("example.com.evil.com", "example.com", False),
    ("evilexample.com", "example.com", False),
    ("", "example.com", False),
])
def test_aligned(domain: str, from_domain: str, ok: bool) -> None:
    assert dmarc.aligned(domain, from_domain) is ok


# --- the decision --------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    f"{MX}; dmarc=pass header.from=example.com",
    f"{MX}; dmarc=pass",
    f"{MX}; dkim=pass header.d=example.com",
    f"{MX}; dkim=pass header.i=@mail.example.com",
    f"{MX}; spf=pass smtp.mailfrom=alice@example.com",
    f"{MX}; spf=pass smtp.mailfrom=bounces.example.com",
    f"{MX}; spf=fail smtp.mailfrom=x@evil.com; dkim=pass header.d=example.com",
    "MX.EXAMPLE.COM; dmarc=PASS header.from=EXAMPLE.COM",
])
def test_passes(value: str) -> None:
    verdict = verify(value)
    assert verdict.ok, verdict.reason


@pytest.mark.parametrize(("value", "why"), [
    (f"{MX}; dmarc=fail header.from=example.com", "dmarc=fail"),
    (f"{MX}; dmarc=fail; dkim=pass header.d=example.com", "dmarc=fail"),
    (f"{MX}; dmarc=pass header.from=evil.com", "no dmarc=pass"),
    (f"{MX}; dkim=pass header.d=evil.com", "no dmarc=pass"),
    (f"{MX}; dkim=pass header.d=example.com.evil.com", "no dmarc=pass"),
    (f"{MX}; spf=pass smtp.mailfrom=x@evil.com", "no dmarc=pass"),
    (f"{MX}; spf=pass smtp.helo=example.com", "no dmarc=pass"),   # HELO is not alignment
    (f"{MX}; dkim=neutral header.d=example.com; spf=softfail smtp.mailfrom=example.com", "no dmarc=pass"),
    (f"{MX}; none", "no dmarc=pass"),
    ("other.example.net; dmarc=pass header.from=example.com", "no Authentication-Results header from"),
    (f"{MX}; dmarc=pass header.from", "unreadable"),
])
def test_fails(value: str, why: str) -> None:
    verdict = verify(value)
    assert not verdict.ok and why in verdict.reason


def test_no_header_at_all_fails_closed() -> None:
    verdict = verify()
    assert not verdict.ok and "no Authentication-Results header from mx.example.com" in verdict.reason


@pytest.mark.parametrize("froms", [(), ("alice@example.com", "bob@example.org"), ("not an address",)])
def test_from_must_name_exactly_one_domain(froms: tuple[str, ...]) -> None:
    verdict = verify(f"{MX}; dmarc=pass", from_=froms)
    assert not verdict.ok and "exactly one domain" in verdict.reason


def test_two_addresses_of_one_domain_are_fine() -> None:
    assert verify(f"{MX}; dmarc=pass", from_=("a@example.com", "b@EXAMPLE.com")).ok


# --- which headers count: the topmost run from the trusted authserv-id ---------------------------

def test_a_forged_pass_below_the_real_verdict_is_ignored() -> None:
    """The sender wrote ``A-R: mx.example.com; dmarc=pass``; our MTA prepended its own verdict
    (fail) and its Received: line above it."""
    headers = [(AR, f"{MX}; dmarc=fail header.from=example.com"),
               ("Received", f"from evil by {MX}"),
               (AR, f"{MX}; dmarc=pass header.from=example.com")]
    verdict = dmarc.verify(headers, ["alice@example.com"], MX)
    assert not verdict.ok and "dmarc=fail" in verdict.reason


def test_a_forged_pass_below_a_verdict_without_dmarc_is_ignored() -> None:
    headers = [(AR, f"{MX}; spf=fail smtp.mailfrom=evil.com"),
               ("Received", f"from evil by {MX}"),
               (AR, f"{MX}; dkim=pass header.d=example.com")]
    assert not dmarc.verify(headers, ["alice@example.com"], MX).ok


def test_consecutive_headers_of_the_trusted_mta_all_count() -> None:
    """OpenDKIM and OpenDMARC each write one header, one above the other."""
    headers = [(AR, f"{MX}; spf=none smtp.mailfrom=example.com"),
               (AR, f"{MX}; dkim=pass header.d=example.com"),
               ("Received", f"from client by {MX}")]
    assert dmarc.verify(headers, ["alice@example.com"], MX).ok


def test_headers_of_other_authserv_ids_are_ignored_anywhere() -> None:
    headers = [(AR, "internal.example.net; dmarc=pass header.from=example.com"),
               (AR, f"{MX}; dmarc=fail header.from=example.com"),
               (AR, "other.example.org; dmarc=pass header.from=example.com")]
    assert not dmarc.verify(headers, ["alice@example.com"], MX).ok
    # A header of another id directly below ours ends our run.
    headers = [(AR, f"{MX}; spf=fail smtp.mailfrom=example.com"),
               (AR, "other.example.org; none"),
               (AR, f"{MX}; dmarc=pass")]
    assert not dmarc.verify(headers, ["alice@example.com"], MX).ok


def test_an_unreadable_header_of_the_trusted_id_fails_closed() -> None:
    headers = [(AR, f"{MX}; dmarc=pass (unclosed"), (AR, f"{MX}; dmarc=pass")]
    verdict = dmarc.verify(headers, ["alice@example.com"], MX)
    assert not verdict.ok and "unreadable" in verdict.reason


def test_folded_headers_are_unfolded() -> None:
    headers = [(AR, f" {MX};\r\n\tdmarc=pass\r\n header.from=example.com")]
    assert dmarc.verify(headers, ["alice@example.com"], MX).ok


# --- through SMTP --------------------------------------------------------------------------------

def dmarc_mail(*results: str, sender: str = "Alice <alice@example.com>") -> bytes:
    raw = make_mail(sender=sender, attachments=[(make_pdf(), "application/pdf", "a.pdf")])
    trace = b"".join(f"{AR}: {r}\r\n".encode() for r in results)
    return trace + f"Received: from client.example.com by {MX}; Tue, 14 May 2024 10:32:00 +1000\r\n"\
        .encode() + raw


async def test_require_dmarc_over_smtp(start_intake: IntakeFactory) -> None:
    intake = await start_intake(require_dmarc=True, trusted_authserv_id=MX)
    ok = await send(intake.port, dmarc_mail(f"{MX}; dmarc=pass header.from=example.com"))
    assert ok["DATA"].is_(replies.QUEUED)
    assert len(intake.jobs()) == 1


@pytest.mark.parametrize(("results", "why"), [
    ((), "no Authentication-Results header from mx.example.com"),
    ((f"{MX}; dmarc=fail header.from=example.com",), "dmarc=fail"),
    (("evil.example; dmarc=pass",), "no Authentication-Results header from"),
])
async def test_require_dmarc_refuses_over_smtp(start_intake: IntakeFactory, results: tuple[str, ...],
                                               why: str) -> None:
    intake = await start_intake(require_dmarc=True, trusted_authserv_id=MX)
    answers = await send(intake.port, dmarc_mail(*results))
    assert answers["DATA"].is_(replies.DMARC_FAILED) and why in answers["DATA"].text
    intake.assert_empty()


async def test_a_forged_header_in_the_body_of_the_mail_is_ignored(start_intake: IntakeFactory) -> None:
    """The sender's own A-R header sits below our MTA's Received: (the mail as it arrived)."""
    intake = await start_intake(require_dmarc=True, trusted_authserv_id=MX)
    raw = make_mail(attachments=[(make_pdf(), "application/pdf", "a.pdf")],
                    headers={AR: f"{MX}; dmarc=pass header.from=example.com"})
    forged = (f"{AR}: {MX}; dmarc=fail header.from=example.com\r\n"
              f"Received: from evil.example by {MX}; Tue, 14 May 2024 10:32:00 +1000\r\n").encode() + raw
    answers = await send(intake.port, forged)
    assert answers["DATA"].is_(replies.DMARC_FAILED) and "dmarc=fail" in answers["DATA"].text
    intake.assert_empty()


async def test_without_require_dmarc_nothing_is_asked(start_intake: IntakeFactory) -> None:
    intake = await start_intake(trusted_authserv_id=MX)
    assert (await send(intake.port, dmarc_mail()))["DATA"].is_(replies.QUEUED)


async def test_authenticated_users_are_not_asked_for_dmarc(secure_intake: SecureFactory) -> None:
    intake = await secure_intake(users=ALICE, require_dmarc=True, trusted_authserv_id=MX)
    answers = await asyncio.to_thread(login_and_send, intake.port, dmarc_mail())
    assert answers["DATA"].is_(replies.QUEUED)
