"""Hostile SMTP framing: SMTP smuggling, STARTTLS command injection, bare CR/LF.

In the way aiosmtpd's own tests do it (tests/test_smtpsmuggling.py, tests/test_starttls.py):
raw bytes over a socket, then a check that the server stayed in step with the client. A
smuggled second message would show up as extra replies (and a second job); an injected command
as a reply or state the client never asked for inside TLS.
"""

from __future__ import annotations

import asyncio
import re
import ssl

import aiosmtpd
import pytest
import test_security_auth
from hypothesis import given, settings
from hypothesis import strategies as st
from test_intake_message import make_mail, make_pdf
from test_intake_smtp import Intake, IntakeFactory, Raw
from test_security_auth import SecureFactory, client_tls

from bridge import replies
from bridge.intake.message import has_bare_line_ending

secure_intake = test_security_auth.secure_intake
tls_files = test_security_auth.tls_files


def test_aiosmtpd_is_at_least_1_4_6() -> None:
    """1.4.5 fixed <LF>.<CR><LF>; 1.4.6 the STARTTLS and AUTH issues our tests lean on."""
    version = tuple(int(x) for x in re.findall(r"\d+", aiosmtpd.__version__)[:3])
    assert version >= (1, 4, 6)


# --- SMTP smuggling --------------------------------------------------------------------------------

SMUGGLED = (b"MAIL FROM:<mallory@evil.com>\r\n"
            b"RCPT TO:<0398765432@fax.local>\r\n"
            b"DATA\r\n"
            b"From: mallory@evil.com\r\nSubject: smuggled\r\n\r\nsmuggled fax\r\n"
            b".\r\n")

# Fake end-of-data sequences that some server once took for <CR><LF>.<CR><LF>.
FAKE_ENDS = {
    "LF.CRLF": b"\n.\r\n",
    "LF.LF": b"\n.\n",
    "CR.CR": b"\r.\r",
    "CRLF.CR": b"\r\n.\r",
    "CR.CRLF": b"\r.\r\n",
    "CRLF.LF": b"\r\n.\n",
    "LF.CR": b"\n.\r",
    "CRLF.NUL.CRLF": b"\r\n.\x00\r\n",
    "CRLF.SP.CRLF": b"\r\n. \r\n",
}


async def in_step(raw: Raw) -> None:
    """The next reply is the answer to *our* NOOP, nothing queued before it, nothing after."""
    noop = await raw.command(b"NOOP")
    assert (noop.code, noop.text) == (250, "OK"), noop
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(raw.reader.readline(), 0.1)


@pytest.mark.parametrize("fake_end", FAKE_ENDS.values(), ids=FAKE_ENDS.keys())
async def test_smuggling_a_second_message(start_intake: IntakeFactory, fake_end: bytes) -> None:
    intake = await start_intake()
    raw = await Raw.connect(intake.port)
    try:
        await raw.envelope()
        raw.writer.write(b"From: alice@example.com\r\nSubject: x\r\n\r\nHello" + fake_end + SMUGGLED)
        reply = await raw.reply()
        # One message (the whole thing) and one answer. A bare CR or LF in it is refused; the
        # sequences made only of CRLF lines are ordinary text of the first message.
        assert reply.code in (250, 550), reply
        if has_bare_line_ending(fake_end):
            assert reply.is_(replies.BARE_LINE_ENDING)
        await in_step(raw)
    finally:
        raw.close()
    assert all(j.to_number != "61398765432" for j in intake.jobs())
    assert intake.mail_count() <= 1
    assert not [j for j in intake.jobs() if j.mail_from == "mallory@evil.com"]


async def test_the_real_end_of_data_still_ends_it(start_intake: IntakeFactory) -> None:
    """Control for the test above: with a real <CR><LF>.<CR><LF> the second message is a second
    message (so the assertions above would notice smuggling)."""
    intake = await start_intake()
    raw = await Raw.connect(intake.port)
    try:
        await raw.envelope()
        raw.writer.write(b"From: alice@example.com\r\nSubject: x\r\n\r\nHello\r\n.\r\n" + SMUGGLED)
        assert (await raw.reply()).is_(replies.QUEUED)
        assert (await raw.reply()).is_(replies.SENDER_OK)
        assert (await raw.reply()).is_(replies.RECIPIENT_OK)
        assert (await raw.reply()).code == 354
        assert (await raw.reply()).is_(replies.QUEUED)
        await in_step(raw)
    finally:
        raw.close()
    assert sorted(j.to_number for j in intake.jobs()) == ["61298765432", "61398765432"]


async def test_dot_stuffing_is_undone(start_intake: IntakeFactory) -> None:
    """A line that starts with a dot arrives with one dot removed, and ends nothing."""
    intake = await start_intake()
    raw = await Raw.connect(intake.port)
    try:
        await raw.envelope()
        raw.writer.write(b"From: alice@example.com\r\nSubject: x\r\n\r\n..\r\n...hidden\r\n.\r\n")
        assert (await raw.reply()).is_(replies.QUEUED)
        await in_step(raw)
    finally:
        raw.close()
    [job] = intake.jobs()
    [cover] = intake.documents(job.mail_id)
    assert cover.is_cover


# --- bare CR and LF -------------------------------------------------------------------------------

BARE = {
    "LF in a header (Bcc injection)":
        b"From: alice@example.com\r\nSubject: x\nBcc: victim@example.com\r\n\r\nHi\r\n",
    "CR in a header": b"From: alice@example.com\r\nSubject: x\rBcc: victim@example.com\r\n\r\nHi\r\n",
    "LF ending the header section": b"From: alice@example.com\r\nSubject: x\r\n\nHi\r\n",
    "LF in the body": b"From: alice@example.com\r\nSubject: x\r\n\r\nline one\nline two\r\n",
    "CR at the end": b"From: alice@example.com\r\nSubject: x\r\n\r\nHi\r\r\n",
    "LFCR": b"From: alice@example.com\r\nSubject: x\r\n\r\nHi\n\r\n",
}


@pytest.mark.parametrize("data", BARE.values(), ids=BARE.keys())
async def test_bare_cr_or_lf_is_refused_and_nothing_stored(start_intake: IntakeFactory, data: bytes) -> None:
    intake = await start_intake()
    raw = await Raw.connect(intake.port)
    try:
        await raw.envelope()
        raw.writer.write(data + b".\r\n")
        reply = await raw.reply()
        assert reply.is_(replies.BARE_LINE_ENDING) and reply.code == 550
        assert reply.text.startswith("5.5.2 ")
        await in_step(raw)
    finally:
        raw.close()
    intake.assert_empty()


async def test_bare_lf_inside_a_base64_attachment_is_refused(start_intake: IntakeFactory) -> None:
    intake = await start_intake()
    mail = make_mail(attachments=[(make_pdf(), "application/pdf", "a.pdf")])
    head, _, body = mail.partition(b"\r\n\r\n")
    broken = head + b"\r\n\r\n" + body.replace(b"\r\n", b"\n", 3)
    raw = await Raw.connect(intake.port)
    try:
        await raw.envelope()
        raw.writer.write(broken + b".\r\n")
        assert (await raw.reply()).is_(replies.BARE_LINE_ENDING)
    finally:
        raw.close()
    intake.assert_empty()


def _reference_bare(data: bytes) -> bool:
    return b"\r" in data.replace(b"\r\n", b"") or b"\n" in data.replace(b"\r\n", b"")


@given(st.binary(max_size=200) | st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b"."]))
       .map(b"".join))
@settings(max_examples=1000, deadline=None)
def test_has_bare_line_ending_matches_a_reference(data: bytes) -> None:
    # Careful: "\r\r\n" has a bare CR even though replace() would leave "\r"; the reference
    # catches that too, because replacing CRLF leaves the lone CR behind.
    assert has_bare_line_ending(data) is _reference_bare(data)


# --- STARTTLS command injection --------------------------------------------------------------------

async def starttls_with_injection(intake: Intake, injected: bytes) -> tuple[list[bytes], Raw]:
    """EHLO, then "STARTTLS<CRLF><injected>" in ONE packet, then the TLS handshake. Returns the
    replies read in clear after the 220, and the stream (now TLS)."""
    raw = await Raw.connect(intake.port)
    assert (await raw.reply()).code == 220
    assert (await raw.command(b"EHLO client.example.com")).code == 250
    raw.writer.write(b"STARTTLS\r\n" + injected)
    await raw.writer.drain()
    ready = await raw.reply()
    assert ready.code == 220 and "Ready to start TLS" in ready.text
    # Nothing else may have been answered in clear.
    leftovers = list(raw.reader._buffer)  # type: ignore[attr-defined]
    await raw.writer.start_tls(client_tls())
    return [bytes(leftovers)] if leftovers else [], raw


@pytest.mark.parametrize("injected", [
    b"MAIL FROM:<mallory@evil.com>\r\n",
    b"MAIL FROM:<mallory@evil.com>\r\nRCPT TO:<0298765432@fax.local>\r\n",
    b"RSET\r\nMAIL FROM:<mallory@evil.com>\r\n",
    b"AUTH PLAIN AGFsaWNlAHdyb25n\r\n",
])
async def test_commands_pipelined_after_starttls_are_discarded(secure_intake: SecureFactory,
                                                                injected: bytes) -> None:
    intake = await secure_intake(users=test_security_auth.ALICE)
    clear, raw = await starttls_with_injection(intake, injected)
    try:
        assert clear == []
        # The first reply inside TLS answers our EHLO: the injected commands left no reply...
        ehlo = await raw.command(b"EHLO client.example.com")
        assert ehlo.code == 250 and "AUTH" in ehlo.text
        # ...and no state: there is no sender, so RCPT needs a MAIL first.
        rcpt = await raw.command(b"RCPT TO:<0298765432@fax.local>")
        assert rcpt.code == 503, rcpt
        await in_step(raw)
    finally:
        raw.close()
    intake.assert_empty()


async def test_starttls_then_a_normal_mail_works(secure_intake: SecureFactory) -> None:
    """Control for the test above: the same client, without injection, sends a fax."""
    intake = await secure_intake(users=test_security_auth.ALICE)
    clear, raw = await starttls_with_injection(intake, b"")
    try:
        assert clear == []
        assert (await raw.command(b"EHLO client.example.com")).code == 250
        assert (await raw.command(b"MAIL FROM:<alice@example.com>")).is_(replies.SENDER_OK)
        assert (await raw.command(b"RCPT TO:<0298765432@fax.local>")).is_(replies.RECIPIENT_OK)
        assert (await raw.command(b"DATA")).code == 354
        assert (await raw.command(make_mail() + b".")).is_(replies.QUEUED)
    finally:
        raw.close()
    assert len(intake.jobs()) == 1


async def test_plaintext_after_the_handshake_starts_breaks_only_that_session(
        secure_intake: SecureFactory) -> None:
    """Garbage where the TLS handshake should be: that session ends, the server goes on."""
    intake = await secure_intake(users=test_security_auth.ALICE)
    raw = await Raw.connect(intake.port)
    try:
        assert (await raw.reply()).code == 220
        assert (await raw.command(b"EHLO x")).code == 250
        assert (await raw.command(b"STARTTLS")).code == 220
        raw.writer.write(b"MAIL FROM:<mallory@evil.com>\r\n")
        await raw.writer.drain()
        data = await asyncio.wait_for(raw.reader.read(1000), 5)
        assert b"250" not in data
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        raw.close()
    other = await Raw.connect(intake.port)
    try:
        assert (await other.reply()).code == 220
    finally:
        other.close()
    intake.assert_empty()
