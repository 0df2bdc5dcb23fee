"""Every resource limit of the intake, crossed over a real socket: connections, commands per
session, unknown commands, idle time, recipients, message size, line length, header size, MIME
parts and MIME depth (the last three from their [smtp] keys). Each refusal leaves the store
empty and the server serving.

(The basic 421 at max_connections and 452 at max_recipients are in test_intake_smtp.py; here
they are pushed harder.)
"""

from __future__ import annotations

import asyncio
import time

import pytest
from test_intake_message import make_mail, make_pdf, raw_mime, text_part
from test_intake_smtp import Intake, IntakeFactory, Raw, send

from bridge import replies
from bridge.intake.server import command_limits


async def still_serving(intake: Intake) -> None:
    assert (await send(intake.port, make_mail(message_id="<after@example.com>")))["DATA"].is_(
        replies.QUEUED)


async def closed(raw: Raw) -> bool:
    try:
        return await asyncio.wait_for(raw.reader.read(), 5) == b""
    except ConnectionError:
        return True


# --- connections -----------------------------------------------------------------------------------

async def test_a_burst_of_connections_gets_exactly_the_cap(start_intake: IntakeFactory) -> None:
    intake = await start_intake(max_connections=5)
    clients = await asyncio.gather(*(Raw.connect(intake.port) for _ in range(20)))
    try:
        greetings = await asyncio.gather(*(c.reply() for c in clients))
        served = [g for g in greetings if g.code == 220]
        refused = [g for g in greetings if g.is_(replies.TOO_MANY_CONNECTIONS)]
        assert (len(served), len(refused)) == (5, 15)
        assert refused[0].text == "4.7.0 too many connections, try again later"
        assert intake.server.live_sessions == 5
    finally:
        for c in clients:
            c.close()
    for _ in range(200):
        if intake.server.live_sessions == 0:
            break
        await asyncio.sleep(0.01)
    assert intake.server.live_sessions == 0  # every slot was given back
    await still_serving(intake)


# --- commands per session ----------------------------------------------------------------------------

@pytest.mark.parametrize(("command", "limit"), [(b"EHLO x", 5), (b"NOOP", 20), (b"VRFY x", 5),
                                                (b"HELP", 5)])
async def test_command_call_limit(start_intake: IntakeFactory, command: bytes, limit: int) -> None:
    intake = await start_intake()
    name = command.split()[0].decode()
    assert command_limits(intake.server.config)[name] == limit
    raw = await Raw.connect(intake.port)
    try:
        assert (await raw.reply()).code == 220
        for _ in range(limit):
            assert (await raw.command(command)).code < 400
        over = await raw.command(command)
        assert (over.code, over.text) == (421, f"4.7.0 {name} sent too many times")
        assert await closed(raw)
    finally:
        raw.close()
    await still_serving(intake)


async def test_mail_transactions_per_connection_are_bounded(start_intake: IntakeFactory) -> None:
    """MAIL, RSET, DATA, … each get the "*" budget (100) per connection: an open connection
    cannot be used forever."""
    intake = await start_intake()
    budget = command_limits(intake.server.config)["*"]
    raw = await Raw.connect(intake.port)
    try:
        assert (await raw.reply()).code == 220
        assert (await raw.command(b"EHLO x")).code == 250
        mails = []
        for _ in range(budget + 5):
            mails.append(await raw.command(b"MAIL FROM:<alice@example.com>"))
            if mails[-1].code == 421:
                break
            assert (await raw.command(b"RSET")).code == 250
        assert sum(1 for a in mails if a.code == 250) == budget
        assert (mails[-1].code, mails[-1].text) == (421, "4.7.0 MAIL sent too many times")
        assert await closed(raw)
    finally:
        raw.close()
    intake.assert_empty()


async def test_unknown_commands_end_the_session(start_intake: IntakeFactory) -> None:
    intake = await start_intake()
    raw = await Raw.connect(intake.port)
    try:
        assert (await raw.reply()).code == 220
        codes = [(await raw.command(b"XYZZY")).code for _ in range(5)]
        assert codes[:-1] == [500] * 4 and codes[-1] == 502
        assert await closed(raw)
    finally:
        raw.close()


async def test_a_command_line_too_long(start_intake: IntakeFactory) -> None:
    intake = await start_intake()
    raw = await Raw.connect(intake.port)
    try:
        assert (await raw.reply()).code == 220
        assert (await raw.command(b"EHLO x")).code == 250
        reply = await raw.command(b"MAIL FROM:<" + b"a" * 5000 + b"@example.com>")
        assert reply.code == 500 and "too long" in reply.text
        assert (await raw.command(b"NOOP")).code == 250  # and the session goes on
    finally:
        raw.close()
    intake.assert_empty()


# --- time ----------------------------------------------------------------------------------------------

async def test_an_idle_session_is_closed(start_intake: IntakeFactory) -> None:
    intake = await start_intake(idle_timeout_seconds=0.3)
    raw = await Raw.connect(intake.port)
    try:
        assert (await raw.reply()).code == 220
        started = time.monotonic()
        assert await closed(raw)
        assert 0.2 < time.monotonic() - started < 3
    finally:
        raw.close()
    assert intake.server.live_sessions == 0


async def test_a_stalled_data_phase_is_closed_and_nothing_stored(start_intake: IntakeFactory) -> None:
    intake = await start_intake(idle_timeout_seconds=0.3)
    raw = await Raw.connect(intake.port)
    try:
        await raw.envelope()
        raw.writer.write(make_mail()[:200])  # and then nothing: a slowloris
        await raw.writer.drain()
        assert await closed(raw)
    finally:
        raw.close()
    intake.assert_empty()


# --- recipients -----------------------------------------------------------------------------------------

async def test_many_recipients(start_intake: IntakeFactory) -> None:
    intake = await start_intake(max_recipients=3)
    raw = await Raw.connect(intake.port)
    try:
        assert (await raw.reply()).code == 220
        assert (await raw.command(b"EHLO x")).code == 250
        assert (await raw.command(b"MAIL FROM:<alice@example.com>")).code == 250
        answers = [await raw.command(f"RCPT TO:<029876543{i}@fax.local>".encode()) for i in range(10)]
        assert [a.code for a in answers] == [250] * 3 + [452] * 7
        assert all(a.is_(replies.TOO_MANY_RECIPIENTS) for a in answers[3:])
        assert (await raw.command(b"DATA")).code == 354
        assert (await raw.command(make_mail() + b".")).is_(replies.QUEUED)
    finally:
        raw.close()
    assert len(intake.jobs()) == 3


# --- size ----------------------------------------------------------------------------------------------

async def test_too_much_data_is_discarded_as_it_arrives(start_intake: IntakeFactory) -> None:
    intake = await start_intake(max_message_bytes=10_000)
    raw = await Raw.connect(intake.port)
    try:
        await raw.envelope()
        line = b"x" * 900 + b"\r\n"
        raw.writer.write(b"From: alice@example.com\r\nSubject: big\r\n\r\n" + line * 2000 + b".\r\n")
        reply = await raw.reply()
        assert reply.is_(replies.TOO_BIG) and "10000" in reply.text
        assert (await raw.command(b"NOOP")).code == 250
    finally:
        raw.close()
    intake.assert_empty()


async def test_a_data_line_too_long(start_intake: IntakeFactory) -> None:
    intake = await start_intake()
    raw = await Raw.connect(intake.port)
    try:
        await raw.envelope()
        raw.writer.write(b"From: alice@example.com\r\nSubject: " + b"y" * 3000 + b"\r\n\r\nHi\r\n.\r\n")
        reply = await raw.reply()
        assert reply.code == 500 and "too long" in reply.text.lower()
        assert (await raw.command(b"NOOP")).code == 250
    finally:
        raw.close()
    intake.assert_empty()


# --- structure (the [smtp] max_header_bytes, max_mime_parts, max_mime_depth keys) ----------------------

async def test_header_section_too_big(start_intake: IntakeFactory) -> None:
    intake = await start_intake(max_header_bytes=2_000)
    headers = {f"X-Filler-{i}": "z" * 60 for i in range(40)}
    answers = await send(intake.port, make_mail(headers=headers))
    assert answers["DATA"].is_(replies.HEADERS_TOO_BIG) and "2000" in answers["DATA"].text
    assert answers["DATA"].code == 552
    # A message that is nothing but header lines (no blank line) counts whole.
    answers = await send(intake.port, b"".join(f"X-H{i}: v\r\n".encode() for i in range(400)))
    assert answers["DATA"].is_(replies.HEADERS_TOO_BIG)
    # Just under the limit is fine.
    ok = await send(intake.port, make_mail(headers={"X-Filler": "z" * 500}))
    assert ok["DATA"].is_(replies.QUEUED)


async def test_too_many_mime_parts(start_intake: IntakeFactory) -> None:
    intake = await start_intake(max_mime_parts=5)
    parts = [text_part(f"part {i}") for i in range(6)]
    answers = await send(intake.port, raw_mime(parts))
    assert answers["DATA"].is_(replies.TOO_COMPLEX) and "more than 5 MIME parts" in answers["DATA"].text
    assert (await send(intake.port, raw_mime(parts[:3])))["DATA"].is_(replies.QUEUED)


def nested(depth: int, subtype: str = "mixed") -> bytes:
    """``depth`` multiparts, one inside the other, around one text part."""
    inner = text_part("deep down")
    for level in range(depth):
        boundary = f"b{level}".encode()
        inner = (b"Content-Type: multipart/" + subtype.encode() + b"; boundary=" + boundary +
                 b"\r\n\r\n--" + boundary + b"\r\n" + inner + b"\r\n--" + boundary + b"--\r\n")
    return (b"From: alice@example.com\r\nSubject: deep\r\nMessage-ID: <deep@example.com>\r\n"
            b"MIME-Version: 1.0\r\n" + inner)


async def test_mime_nesting_too_deep(start_intake: IntakeFactory) -> None:
    intake = await start_intake(max_mime_depth=4)
    answers = await send(intake.port, nested(6))
    assert answers["DATA"].is_(replies.TOO_COMPLEX) and "nested more than 4 deep" in answers["DATA"].text
    assert (await send(intake.port, nested(3)))["DATA"].is_(replies.QUEUED)


@pytest.mark.parametrize("kind", ["multipart", "message/rfc822"])
async def test_pathological_nesting_is_refused_not_a_crash(start_intake: IntakeFactory, kind: str) -> None:
    """Far deeper than any limit: the stdlib parser recurses too. The answer is a refusal (5xx,
    never 451 or a dead session) and the server goes on."""
    intake = await start_intake(max_message_bytes=5_000_000)
    if kind == "multipart":
        raw = nested(3000)
    else:
        raw = text_part("innermost")
        for _ in range(3000):
            raw = b"Content-Type: message/rfc822\r\n\r\n" + raw
        raw = b"From: alice@example.com\r\nSubject: deep\r\nMIME-Version: 1.0\r\n" + raw
    started = time.monotonic()
    answers = await send(intake.port, raw)
    assert 500 <= answers["DATA"].code < 600, answers["DATA"]
    assert time.monotonic() - started < 20
    intake.assert_empty()
    await still_serving(intake)


async def test_a_huge_attachment_count_within_size(start_intake: IntakeFactory) -> None:
    """Many tiny attachments are refused by count before any of them is opened."""
    intake = await start_intake(max_mime_parts=20)
    pdf = make_pdf()
    answers = await send(intake.port, make_mail(attachments=[(pdf, "application/pdf", f"{i}.pdf")
                                                             for i in range(30)]))
    assert answers["DATA"].is_(replies.TOO_COMPLEX)
    intake.assert_empty()
