"""The SMTP intake over real sockets: smtplib (or a raw socket) → SmtpIntake → a real Store.

smtplib is blocking, and the server runs in the test's own event loop, so every smtplib
conversation runs in a thread (asyncio.to_thread). Conversations that smtplib cannot have
(bare LF, hanging up mid-DATA, a connection flood) use a raw asyncio stream.
"""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from test_intake_message import (
    PNG,
    encrypted_pdf,
    make_mail,
    make_pdf,
)

from bridge import replies
from bridge.config import Config
from bridge.intake.server import SmtpIntake
from bridge.replies import Reply
from bridge.store import AsyncStore, Document, Job


@dataclass
class Intake:
    server: SmtpIntake
    store: AsyncStore
    wakes: list[float] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.port

    def jobs(self) -> list[Job]:
        return sorted(self.store.sync.jobs(), key=lambda j: j.id)

    def documents(self, mail_id: int) -> list[Document]:
        return self.store.sync.documents(mail_id)

    def mail_count(self) -> int:
        return int(self.store.sync.db.execute("SELECT COUNT(*) FROM mails").fetchone()[0])

    def document_count(self) -> int:
        return int(self.store.sync.db.execute("SELECT COUNT(*) FROM documents").fetchone()[0])

    def assert_empty(self) -> None:
        assert (self.jobs(), self.mail_count(), self.document_count()) == ([], 0, 0)


IntakeFactory = Callable[..., Awaitable[Intake]]


class IntakePool:
    """Intakes a test starts (each with a store in tmp_path); all stopped after the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Intake] = []

    async def start(self, cfg: Config, *, db: str | None = None, **server_kw: Any) -> Intake:
        store = AsyncStore.open(self.tmp_path / f"{db or f'store{len(self.started)}'}.db")
        wakes: list[float] = []
        server = SmtpIntake(cfg, store, on_accepted=lambda: wakes.append(time.monotonic()),
                            **server_kw)
        await server.start()
        intake = Intake(server, store, wakes)
        self.started.append(intake)
        return intake

    async def stop_all(self) -> None:
        for intake in self.started:
            await intake.server.stop(grace_seconds=1)
            intake.store.close()


# --- clients --------------------------------------------------------------------------------

@dataclass
class Answer:
    code: int
    text: str

    def is_(self, reply: Reply) -> bool:
        return reply.matches(self.code, self.text)


def _answer(result: tuple[int, bytes]) -> Answer:
    return Answer(result[0], result[1].decode())


async def send(port: int, raw: bytes, *, mail_from: str = "alice@example.com",
               rcpts: Sequence[str] = ("0298765432@fax.local",)) -> dict[str, Answer]:
    """One SMTP transaction with smtplib; the answer to each step (stops at the first refusal)."""
    def talk() -> dict[str, Answer]:
        answers: dict[str, Answer] = {}
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("client.example.com")
            answers["MAIL"] = _answer(client.mail(mail_from))
            if answers["MAIL"].code != 250:
                return answers
            for r in rcpts:
                answers[f"RCPT {r}"] = _answer(client.rcpt(r))
            if not any(a.code == 250 for k, a in answers.items() if k.startswith("RCPT")):
                return answers
            answers["DATA"] = _answer(client.data(raw))
        return answers

    return await asyncio.to_thread(talk)


class Raw:
    """A raw SMTP client on asyncio streams: sends exactly the bytes it is given."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def reply(self) -> Answer:
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 5)
            if not line:
                raise ConnectionError("closed")
            lines.append(line.decode().rstrip("\r\n"))
            if line[3:4] != b"-":
                break
        return Answer(int(lines[-1][:3]), "\n".join(x[4:] for x in lines))

    async def command(self, line: bytes) -> Answer:
        self.writer.write(line + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def envelope(self, rcpt: bytes = b"0298765432@fax.local") -> None:
        assert (await self.reply()).code == 220
        assert (await self.command(b"EHLO raw.example.com")).code == 250
        assert (await self.command(b"MAIL FROM:<alice@example.com>")).code == 250
        assert (await self.command(b"RCPT TO:<" + rcpt + b">")).code == 250
        assert (await self.command(b"DATA")).code == 354

    def close(self) -> None:
        self.writer.close()


# --- the happy path -------------------------------------------------------------------------

async def test_one_pdf_is_queued_byte_exact(intake: Intake) -> None:
    pdf = make_pdf(2)
    raw = make_mail(body=None, attachments=[(pdf, "application/pdf", "report.pdf")])
    answers = await send(intake.port, raw)
    assert answers["MAIL"].is_(replies.SENDER_OK)
    assert answers["RCPT 0298765432@fax.local"].is_(replies.RECIPIENT_OK)
    assert "+61 2 9876 5432" in answers["RCPT 0298765432@fax.local"].text
    assert answers["DATA"].is_(replies.QUEUED)
    [job] = intake.jobs()
    assert answers["DATA"].text.endswith(f"queued as job(s) {job.id}")
    assert (job.kind, job.to_number, job.state, job.pages) == ("fax", "61298765432", "queued", 2)
    assert (job.mail_from, job.message_id, job.subject, job.notify) == (
        "alice@example.com", "<m1@example.com>", "Quarterly report", True)
    [doc] = intake.documents(job.mail_id)
    assert (doc.filename, doc.content_type, doc.data, doc.pages, doc.is_cover) == (
        "report.pdf", "application/pdf", pdf, 2, False)
    assert len(intake.wakes) == 1


async def test_several_attachments_keep_their_order(intake: Intake) -> None:
    a, b = make_pdf(1, "a"), make_pdf(2, "b")
    raw = make_mail(body="Cover note", attachments=[(a, "application/pdf", "a.pdf"),
                                                    (PNG, "image/png", "chart.png"),
                                                    (b, "application/pdf", "b.pdf")])
    assert (await send(intake.port, raw))["DATA"].is_(replies.QUEUED)
    [job] = intake.jobs()
    docs = intake.documents(job.mail_id)
    assert [(d.seq, d.filename, d.is_cover) for d in docs] == [
        (0, "cover.pdf", True), (1, "a.pdf", False), (2, "chart.png", False), (3, "b.pdf", False)]
    assert [d.data for d in docs[1:]] == [a, PNG, b]
    assert docs[0].data.startswith(b"%PDF-")


async def test_several_recipients_make_one_job_each_sharing_documents(intake: Intake) -> None:
    pdf = make_pdf()
    rcpts = ["0298765432@fax.local", "0398765432@fax.local", "+1 415 555 0100@fax.local"]
    answers = await send(intake.port, make_mail(body=None, attachments=[(pdf, "application/pdf", "x.pdf")]),
                         rcpts=rcpts)
    assert answers["DATA"].is_(replies.QUEUED)
    jobs = intake.jobs()
    assert [j.to_number for j in jobs] == ["61298765432", "61398765432", "14155550100"]
    assert answers["DATA"].text.endswith(", ".join(str(j.id) for j in jobs))
    assert len({j.mail_id for j in jobs}) == 1
    assert [d.data for d in intake.documents(jobs[0].mail_id)] == [pdf]
    assert intake.document_count() == 1


async def test_a_resent_mail_is_answered_250_and_not_queued_again(intake: Intake) -> None:
    raw = make_mail(attachments=[(make_pdf(), "application/pdf", "x.pdf")])
    first = await send(intake.port, raw)
    second = await send(intake.port, raw)
    assert first["DATA"].is_(replies.QUEUED)
    assert second["DATA"].is_(replies.ALREADY_QUEUED)
    assert len(intake.jobs()) == 1 and intake.mail_count() == 1
    assert len(intake.wakes) == 1
    # The same mail to one more recipient queues only the new one.
    third = await send(intake.port, raw, rcpts=["0298765432@fax.local", "0398765432@fax.local"])
    assert third["DATA"].is_(replies.QUEUED)
    assert [j.to_number for j in intake.jobs()] == ["61298765432", "61398765432"]


async def test_ehlo_advertises_size_and_enhanced_codes(start_intake: IntakeFactory) -> None:
    intake = await start_intake(max_message_bytes=5000)

    def ehlo() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", intake.port, timeout=10) as client:
            return client.ehlo("x")

    code, text = await asyncio.to_thread(ehlo)
    assert code == 250 and b"SIZE 5000" in text and b"ENHANCEDSTATUSCODES" in text


# --- refusals -------------------------------------------------------------------------------

@pytest.mark.parametrize("rcpt", [
    "someone@example.com", "0298765432@fax.local.evil.com", "0298765432@evilfax.local",
    "0298765432@sub.fax.local", "postmaster", "0298765432@FAX.LOCAL.evil.com",
])
async def test_relaying_is_denied(intake: Intake, rcpt: str) -> None:
    answers = await send(intake.port, make_mail(), rcpts=[rcpt])
    assert answers[f"RCPT {rcpt}"].is_(replies.RELAY_DENIED)
    intake.assert_empty()


async def test_trailing_dot_domain_is_refused(intake: Intake) -> None:
    # aiosmtpd itself refuses it as a malformed address, before our hook.
    answers = await send(intake.port, make_mail(), rcpts=["0298765432@fax.local."])
    assert answers["RCPT 0298765432@fax.local."].code == 553
    intake.assert_empty()


async def test_bad_number_is_refused_at_rcpt_with_its_reason(intake: Intake) -> None:
    answers = await send(intake.port, make_mail(), rcpts=["0299@fax.local", "0298765432@fax.local"])
    bad = answers["RCPT 0299@fax.local"]
    assert bad.is_(replies.BAD_NUMBER) and "0299" in bad.text
    # The good recipient still gets its fax.
    assert answers["DATA"].is_(replies.QUEUED)
    assert [j.to_number for j in intake.jobs()] == ["61298765432"]


async def test_too_many_recipients(start_intake: IntakeFactory) -> None:
    intake = await start_intake(max_recipients=2)
    rcpts = ["0298765432@fax.local", "0398765432@fax.local", "0298765433@fax.local"]
    answers = await send(intake.port, make_mail(), rcpts=rcpts)
    assert answers["RCPT 0298765433@fax.local"].is_(replies.TOO_MANY_RECIPIENTS)
    assert "at most 2" in answers["RCPT 0298765433@fax.local"].text
    assert answers["DATA"].is_(replies.QUEUED)
    assert len(intake.jobs()) == 2


async def test_sender_not_in_allowed_senders(start_intake: IntakeFactory) -> None:
    intake = await start_intake(allowed_senders=("*@example.com",))
    answers = await send(intake.port, make_mail(), mail_from="bob@evil.com")
    assert answers["MAIL"].is_(replies.SENDER_NOT_ALLOWED)
    assert answers["MAIL"].text == "5.7.1 sender bob@evil.com is not in [smtp] allowed_senders"
    intake.assert_empty()


async def test_header_from_not_in_allowed_senders(start_intake: IntakeFactory) -> None:
    intake = await start_intake(allowed_senders=("*@example.com",))
    answers = await send(intake.port, make_mail(sender="Mallory <mallory@evil.com>"))
    assert answers["MAIL"].is_(replies.SENDER_OK)
    assert answers["DATA"].is_(replies.SENDER_NOT_ALLOWED)
    assert "mallory@evil.com" in answers["DATA"].text
    intake.assert_empty()


async def test_null_sender_is_refused(intake: Intake) -> None:
    answers = await send(intake.port, make_mail(), mail_from="<>")
    assert answers["MAIL"].is_(replies.NULL_SENDER)


async def test_untrusted_client_is_refused(start_intake: IntakeFactory) -> None:
    intake = await start_intake(trusted_networks=("192.0.2.0/24",))
    answers = await send(intake.port, make_mail())
    assert answers["MAIL"].is_(replies.PEER_NOT_TRUSTED) and "127.0.0.1" in answers["MAIL"].text
    intake.assert_empty()


@pytest.mark.parametrize(("attachment", "reply", "named"), [
    ((b"PK\x03\x04" + bytes(30), "application/zip", "files.zip"), replies.UNSUPPORTED_ATTACHMENT,
     "files.zip"),
    ((make_pdf(2)[:300], "application/pdf", "broken.pdf"), replies.BAD_PDF, "broken.pdf"),
    ((encrypted_pdf(), "application/pdf", "locked.pdf"), replies.ENCRYPTED_PDF, "locked.pdf"),
])
async def test_content_refusals(intake: Intake, attachment: tuple[bytes, str, str], reply: Reply,
                                named: str) -> None:
    answers = await send(intake.port, make_mail(attachments=[(make_pdf(), "application/pdf", "ok.pdf"),
                                                             attachment]))
    assert answers["DATA"].is_(reply) and named in answers["DATA"].text
    intake.assert_empty()


async def test_nothing_to_send(intake: Intake) -> None:
    answers = await send(intake.port, make_mail(body="\r\n-- \r\nAlice\r\n"))
    assert answers["DATA"].is_(replies.NOTHING_TO_SEND)
    intake.assert_empty()


async def test_message_too_big(start_intake: IntakeFactory) -> None:
    intake = await start_intake(max_message_bytes=3000)
    answers = await send(intake.port, make_mail(body="x" * 5000))
    assert answers["DATA"].is_(replies.TOO_BIG) and "3000" in answers["DATA"].text
    intake.assert_empty()


async def test_declared_size_too_big_is_refused_at_mail(start_intake: IntakeFactory) -> None:
    intake = await start_intake(max_message_bytes=3000)
    raw = await Raw.connect(intake.port)
    try:
        assert (await raw.reply()).code == 220
        assert (await raw.command(b"EHLO x")).code == 250
        assert (await raw.command(b"MAIL FROM:<alice@example.com> SIZE=999999")).is_(replies.TOO_BIG)
    finally:
        raw.close()


async def test_bare_lf_in_a_header_is_refused(intake: Intake) -> None:
    raw = await Raw.connect(intake.port)
    try:
        await raw.envelope()
        raw.writer.write(b"From: alice@example.com\r\nSubject: x\nBcc: victim@example.com\r\n"
                         b"\r\nHello\r\n.\r\n")
        assert (await raw.reply()).is_(replies.BARE_LINE_ENDING)
    finally:
        raw.close()
    intake.assert_empty()


async def test_bare_cr_in_the_body_is_refused(intake: Intake) -> None:
    raw = await Raw.connect(intake.port)
    try:
        await raw.envelope()
        raw.writer.write(b"From: alice@example.com\r\nSubject: x\r\n\r\nHello\rthere\r\n.\r\n")
        assert (await raw.reply()).is_(replies.BARE_LINE_ENDING)
        # The session goes on: a clean mail afterwards is accepted.
        assert (await raw.command(b"MAIL FROM:<alice@example.com>")).code == 250
        assert (await raw.command(b"RCPT TO:<0298765432@fax.local>")).code == 250
        assert (await raw.command(b"DATA")).code == 354
        assert (await raw.command(b"From: alice@example.com\r\nSubject: x\r\n\r\nHello\r\n."))\
            .is_(replies.QUEUED)
    finally:
        raw.close()
    assert len(intake.jobs()) == 1


# --- failures of our own --------------------------------------------------------------------

async def test_store_failure_answers_451_and_stores_nothing(intake: Intake,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(intake.store.sync, "accept", broken)
    answers = await send(intake.port, make_mail(attachments=[(make_pdf(), "application/pdf", "a.pdf")]))
    assert answers["DATA"].is_(replies.TEMPFAIL)
    assert "disk full" not in answers["DATA"].text
    monkeypatch.undo()
    intake.assert_empty()
    assert intake.wakes == []


async def test_an_exception_outside_data_answers_451_not_500(intake: Intake,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(address: str) -> None:
        raise RuntimeError("internal detail")

    monkeypatch.setattr(intake.server.handler, "recipient", boom)
    answers = await send(intake.port, make_mail())
    rcpt = answers["RCPT 0298765432@fax.local"]
    assert rcpt.is_(replies.TEMPFAIL) and "internal detail" not in rcpt.text


async def test_a_failing_wake_callback_does_not_fail_the_mail(intake: Intake) -> None:
    def broken_wake() -> None:
        raise RuntimeError("sender gone")

    intake.server.handler.on_accepted = broken_wake
    answers = await send(intake.port, make_mail())
    assert answers["DATA"].is_(replies.QUEUED)
    assert len(intake.jobs()) == 1


# --- connections ----------------------------------------------------------------------------

async def test_connection_cap(start_intake: IntakeFactory) -> None:
    intake = await start_intake(max_connections=2)
    first, second = await Raw.connect(intake.port), await Raw.connect(intake.port)
    try:
        assert (await first.reply()).code == 220
        assert (await second.reply()).code == 220
        third = await Raw.connect(intake.port)
        assert (await third.reply()).is_(replies.TOO_MANY_CONNECTIONS)
        assert await third.reader.read() == b""  # and closed
        third.close()
        # smtplib sees it as a refused connection.
        with pytest.raises(smtplib.SMTPConnectError) as info:
            await asyncio.to_thread(smtplib.SMTP, "127.0.0.1", intake.port, timeout=5)
        assert info.value.smtp_code == 421
    finally:
        first.close()
    # A slot frees up when a session ends.
    for _ in range(100):
        if intake.server.live_sessions < 2:
            break
        await asyncio.sleep(0.01)
    assert (await send(intake.port, make_mail()))["DATA"].is_(replies.QUEUED)
    second.close()


async def test_hanging_up_mid_data_leaves_nothing(intake: Intake) -> None:
    raw = await Raw.connect(intake.port)
    await raw.envelope()
    mail = make_mail(attachments=[(make_pdf(), "application/pdf", "a.pdf")])
    raw.writer.write(mail[: len(mail) // 2])
    await raw.writer.drain()
    raw.close()
    await asyncio.sleep(0.2)
    intake.assert_empty()
    # The MTA retries later; that copy is accepted once.
    assert (await send(intake.port, mail))["DATA"].is_(replies.QUEUED)
    assert len(intake.jobs()) == 1


async def test_hanging_up_while_the_store_writes_leaves_a_whole_job_or_none(
        intake: Intake, monkeypatch: pytest.MonkeyPatch) -> None:
    real_accept = intake.store.sync.accept
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow_accept(mail: Any) -> Any:
        loop.call_soon_threadsafe(started.set)
        time.sleep(0.3)
        return real_accept(mail)

    monkeypatch.setattr(intake.store.sync, "accept", slow_accept)
    mail = make_mail(attachments=[(make_pdf(), "application/pdf", "a.pdf")])
    raw = await Raw.connect(intake.port)
    await raw.envelope()
    raw.writer.write(mail + b".\r\n")
    await raw.writer.drain()
    await asyncio.wait_for(started.wait(), 5)
    raw.close()  # the client never sees the 250
    # The write was shielded: it completes, whole.
    for _ in range(500):
        if intake.jobs():
            break
        await asyncio.sleep(0.01)
    [job] = intake.jobs()
    assert [d.filename for d in intake.documents(job.mail_id)] == ["cover.pdf", "a.pdf"]
    # The MTA re-sends the same mail: answered 250, not queued again.
    monkeypatch.undo()
    assert (await send(intake.port, mail))["DATA"].is_(replies.ALREADY_QUEUED)
    assert len(intake.jobs()) == 1


async def test_stop_closes_idle_sessions_and_the_port(start_intake: IntakeFactory) -> None:
    intake = await start_intake()
    raw = await Raw.connect(intake.port)
    assert (await raw.reply()).code == 220
    port = intake.port
    await intake.server.stop(grace_seconds=1)
    assert (await raw.reply()).is_(replies.SHUTTING_DOWN)
    raw.close()
    assert intake.server.live_sessions == 0
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
