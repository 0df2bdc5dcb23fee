"""The outbox over real sockets: a test SMTP sink, a real store, a clock the test controls."""

from __future__ import annotations

import asyncio
import email
import email.policy
import mailbox
import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime
from pathlib import Path

import pytest
import structlog
from smtp_sink import SmtpSink

from bridge import config as cfg
from bridge.notices import IncomingFax, Notices
from bridge.outbox import (
    MaildirTransport,
    Outbox,
    PermanentFailure,
    SmtpTransport,
    TemporaryFailure,
    make_transport,
)
from bridge.store import AsyncStore, NewOutgoing, OutgoingMail, Store

START = 1_796_374_800.0


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[AsyncStore]:
    s = AsyncStore(Store(tmp_path / "faxbridge.db", clock=clock))
    yield s
    s.close()


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    async with SmtpSink() as s:
        yield s


def mail_config(smarthost: str = "", **mail: float) -> cfg.Config:
    # Tiny, jitter-free-ish backoff so that the arithmetic below is easy to follow.
    values = {"retry_initial_seconds": 10.0, "retry_max_seconds": 80.0, **mail}
    return cfg.defaults(mail=cfg.MailConfig(smarthost=smarthost, **values))  # type: ignore[arg-type]


def outbox_for(sink: SmtpSink, store: AsyncStore, clock: Clock, **kw: object) -> Outbox:
    config = mail_config(sink.address)
    return Outbox(config, store, SmtpTransport(sink.host, sink.port, timeout_seconds=5),
                  clock=clock, rng=lambda: 1.0, **kw)  # type: ignore[arg-type]


def raw_mail(ref: str, rcpts: Sequence[str] = ("alice@example.com",), kind: str = "notice",
             body: str = "Hello.") -> NewOutgoing:
    message = (f"From: faxbridge@localhost\r\nTo: {', '.join(rcpts)}\r\nSubject: {ref}\r\n"
               f"Message-ID: <{ref.replace(':', '.')}@localhost>\r\n\r\n{body}\r\n"
               ".leading dot survives dot-stuffing\r\n").encode()
    return NewOutgoing(kind=kind, ref=ref, mail_from="faxbridge@localhost", rcpt_to=list(rcpts),
                       message=message)


async def only(store: AsyncStore) -> OutgoingMail:
    [row] = await store.outbox()
    return row


# --- delivery ---------------------------------------------------------------------------------

async def test_delivers_to_the_smarthost_exactly_as_queued(sink: SmtpSink, store: AsyncStore,
                                                           clock: Clock) -> None:
    notice = Notices(cfg.defaults(), clock=clock).received_fax(
        IncomingFax(9001, "61733334444", "61298765432", "ACME", 1, datetime(2026, 12, 3, 22),
                    "9001.pdf", b"%PDF-1.4\n.\r\n..\r\n%%EOF\r\n"), "reception@example.com")
    assert await store.queue_mail(notice)
    outbox = outbox_for(sink, store, clock)

    assert await outbox.deliver_due() == 1

    [got] = sink.messages
    assert got.mail_from == "faxbridge@localhost"
    assert got.rcpt_tos == ["reception@example.com"]
    assert got.data == notice.message               # byte for byte, dots and all
    row = await only(store)
    assert (row.state, row.attempts, row.last_error) == ("sent", 1, "")
    assert outbox.healthy and outbox.last_success_at == clock()
    assert await outbox.deliver_due() == 0
    assert len(sink.messages) == 1


async def test_smarthost_down_then_back_delivers_once(sink: SmtpSink, store: AsyncStore,
                                                      clock: Clock) -> None:
    await store.queue_mail(raw_mail("job:1:sent"))
    outbox = outbox_for(sink, store, clock)
    await sink.stop()

    assert await outbox.deliver_due() == 0
    row = await only(store)
    assert (row.state, row.attempts) == ("pending", 1)
    assert "refused" in row.last_error
    assert row.next_attempt_at == clock() + 10          # initial backoff (rng=1.0: no jitter)
    assert not outbox.healthy and "refused" in outbox.last_error

    assert await outbox.deliver_due() == 0              # not due yet: no new attempt
    assert (await only(store)).attempts == 1

    clock.advance(10)
    assert await outbox.deliver_due() == 0              # still down: backoff doubles
    row = await only(store)
    assert (row.attempts, row.next_attempt_at) == (2, clock() + 20)

    await sink.start()                                  # back, on the same port
    clock.advance(20)
    assert await outbox.deliver_due() == 1
    assert await outbox.deliver_due() == 0
    assert [m.rcpt_tos for m in sink.messages] == [["alice@example.com"]]
    assert (await only(store)).state == "sent"
    assert outbox.healthy and outbox.last_error == ""


async def test_a_down_smarthost_is_tried_once_per_pass(sink: SmtpSink, store: AsyncStore,
                                                       clock: Clock) -> None:
    for i in range(5):
        await store.queue_mail(raw_mail(f"job:{i}:sent"))
    outbox = outbox_for(sink, store, clock)
    await sink.stop()
    assert await outbox.deliver_due() == 0
    attempts = sorted(m.attempts for m in await store.outbox())
    assert attempts == [0, 0, 0, 0, 1]                  # the others were not hammered
    await sink.start()
    clock.advance(10)
    assert await outbox.deliver_due() == 5


async def test_backoff_grows_to_the_maximum_and_never_gives_up(store: AsyncStore,
                                                               clock: Clock) -> None:
    class Down:
        async def send(self, mail_from: str, rcpt_to: Sequence[str], message: bytes) -> None:
            raise TemporaryFailure("smarthost 192.0.2.1:25: connection refused", transport_down=True)

    await store.queue_mail(raw_mail("job:1:failed"))
    outbox = Outbox(mail_config(), store, Down(), clock=clock, rng=lambda: 1.0)
    delays = []
    for _ in range(7):
        await outbox.deliver_due()
        row = await only(store)
        delays.append(row.next_attempt_at - clock())
        clock.advance(row.next_attempt_at - clock())
    assert delays == [10, 20, 40, 80, 80, 80, 80]
    assert (await only(store)).state == "pending"


async def test_jitter_spreads_retries(store: AsyncStore, clock: Clock) -> None:
    class Down:
        async def send(self, mail_from: str, rcpt_to: Sequence[str], message: bytes) -> None:
            raise TemporaryFailure("451 later")

    await store.queue_mail(raw_mail("a"))
    outbox = Outbox(mail_config(), store, Down(), clock=clock, rng=lambda: 0.0)
    await outbox.deliver_due()
    assert (await only(store)).next_attempt_at == clock() + 5   # half the ceiling at rng=0


async def test_451_is_retried_and_other_mail_still_goes(sink: SmtpSink, store: AsyncStore,
                                                        clock: Clock) -> None:
    await store.queue_mail(raw_mail("one", ["greylisted@example.com"]))
    await store.queue_mail(raw_mail("two", ["bob@example.com"]))
    sink.fail("rcpt", "451 4.7.1 greylisted, try again later",
              recipients=["greylisted@example.com"], times=1)
    outbox = outbox_for(sink, store, clock)

    assert await outbox.deliver_due() == 1              # a 4xx is about one mail, not the host
    assert [m.rcpt_tos for m in sink.messages] == [["bob@example.com"]]
    one = next(m for m in await store.outbox() if m.ref == "one")
    assert one.state == "pending" and "451 4.7.1 greylisted" in one.last_error
    assert outbox.healthy                               # greylisting is not an outage

    clock.advance(10)
    assert await outbox.deliver_due() == 1
    assert [m.rcpt_tos for m in sink.messages] == [["bob@example.com"], ["greylisted@example.com"]]


async def test_a_4xx_for_one_recipient_sends_to_nobody(sink: SmtpSink, store: AsyncStore,
                                                       clock: Clock) -> None:
    # Sending to the accepted ones now would make them receive it twice after the retry.
    await store.queue_mail(raw_mail("both", ["a@example.com", "b@example.com"]))
    sink.fail("rcpt", "452 4.2.2 mailbox full", recipients=["b@example.com"], times=1)
    outbox = outbox_for(sink, store, clock)
    assert await outbox.deliver_due() == 0
    assert sink.messages == []
    clock.advance(10)
    assert await outbox.deliver_due() == 1
    assert sink.messages[0].rcpt_tos == ["a@example.com", "b@example.com"]


async def test_550_parks_the_mail_visibly(sink: SmtpSink, store: AsyncStore, clock: Clock) -> None:
    await store.queue_mail(raw_mail("job:9:failed", ["nobody@example.com"]))
    sink.fail("rcpt", "550 5.1.1 no such user")
    outbox = outbox_for(sink, store, clock)
    with structlog.testing.capture_logs() as logs:
        assert await outbox.deliver_due() == 0

    [parked] = await store.outbox(states=["parked"])
    assert parked.ref == "job:9:failed"
    assert "550 5.1.1 no such user" in parked.last_error
    assert parked.message == raw_mail("job:9:failed", ["nobody@example.com"]).message  # kept
    assert any(e["event"] == "outbox_parked" and e["log_level"] == "error" for e in logs)
    assert outbox.healthy                               # the smarthost itself is fine

    clock.advance(10_000)
    assert await outbox.deliver_due() == 0              # parked mail is not retried by itself
    assert sink.messages == []

    sink.clear_failures()                               # the operator fixed it and requeued
    assert await store.requeue_mail(parked.id)
    assert await outbox.deliver_due() == 1
    assert sink.messages[0].rcpt_tos == ["nobody@example.com"]


async def test_554_to_the_message_parks_it(sink: SmtpSink, store: AsyncStore, clock: Clock) -> None:
    await store.queue_mail(raw_mail("spammy"))
    sink.fail("data", "554 5.7.1 message refused")
    await outbox_for(sink, store, clock).deliver_due()
    row = await only(store)
    assert row.state == "parked" and "554 5.7.1" in row.last_error


async def test_some_recipients_refused_for_good_counts_as_sent(sink: SmtpSink, store: AsyncStore,
                                                               clock: Clock) -> None:
    await store.queue_mail(raw_mail("mixed", ["ok@example.com", "gone@example.com"]))
    sink.fail("rcpt", "550 5.1.1 no such user", recipients=["gone@example.com"])
    with structlog.testing.capture_logs() as logs:
        assert await outbox_for(sink, store, clock).deliver_due() == 1
    assert sink.messages[0].rcpt_tos == ["ok@example.com"]
    assert (await only(store)).state == "sent"
    assert any(e["event"] == "outbox_recipients_refused" for e in logs)


async def test_sender_refused_is_a_config_problem_not_a_parking(sink: SmtpSink, store: AsyncStore,
                                                                clock: Clock) -> None:
    await store.queue_mail(raw_mail("a"))
    sink.fail("mail", "553 5.7.1 sender not allowed", times=1)
    outbox = outbox_for(sink, store, clock)
    assert await outbox.deliver_due() == 0
    row = await only(store)
    assert row.state == "pending" and "refused the sender" in row.last_error
    assert not outbox.healthy
    clock.advance(10)
    assert await outbox.deliver_due() == 1


# --- never lost, never twice ---------------------------------------------------------------------

async def test_same_kind_and_ref_is_one_mail(sink: SmtpSink, store: AsyncStore, clock: Clock) -> None:
    assert await store.queue_mail(raw_mail("job:5:sent"))
    assert not await store.queue_mail(raw_mail("job:5:sent", body="again"))
    assert await store.queue_mail(raw_mail("job:5:sent", kind="alert"))   # another kind
    assert await outbox_for(sink, store, clock).deliver_due() == 2
    assert len(sink.messages) == 2


async def test_restart_delivers_each_pending_mail_exactly_once(sink: SmtpSink, store: AsyncStore,
                                                               clock: Clock) -> None:
    for i in range(5):
        await store.queue_mail(raw_mail(f"job:{i}:sent"))
    first = outbox_for(sink, store, clock, batch=2)
    assert await first.deliver_due() == 2

    # The process dies; a new outbox on the same store carries on.
    second = outbox_for(sink, store, clock)
    assert await second.deliver_due() == 3
    assert await second.deliver_due() == 0
    subjects = sorted(m.message["Subject"] for m in sink.messages)
    assert subjects == [f"job:{i}:sent" for i in range(5)]


async def test_cancelled_mid_send_is_delivered_after_restart(sink: SmtpSink, store: AsyncStore,
                                                             clock: Clock) -> None:
    for i in range(3):
        await store.queue_mail(raw_mail(f"m{i}"))
    stuck = asyncio.Event()

    class HangsOnSecond:
        def __init__(self) -> None:
            self.calls = 0
            self.real = SmtpTransport(sink.host, sink.port)

        async def send(self, mail_from: str, rcpt_to: Sequence[str], message: bytes) -> None:
            self.calls += 1
            if self.calls == 2:
                stuck.set()
                await asyncio.Event().wait()          # hangs until cancelled
            await self.real.send(mail_from, rcpt_to, message)

    first = Outbox(mail_config(sink.address), store, HangsOnSecond(), clock=clock)
    task = asyncio.create_task(first.run())
    await asyncio.wait_for(stuck.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert [m.message["Subject"] for m in sink.messages] == ["m0"]
    second = outbox_for(sink, store, clock)
    assert await second.deliver_due() == 2
    assert sorted(m.message["Subject"] for m in sink.messages) == ["m0", "m1", "m2"]


async def test_a_broken_transport_does_not_block_the_queue(store: AsyncStore, clock: Clock) -> None:
    sent: list[bytes] = []

    class Buggy:
        async def send(self, mail_from: str, rcpt_to: Sequence[str], message: bytes) -> None:
            if b"Subject: poison" in message:
                raise RuntimeError("bug")
            sent.append(message)

    await store.queue_mail(raw_mail("poison"))
    await store.queue_mail(raw_mail("fine"))
    with structlog.testing.capture_logs():
        assert await Outbox(mail_config(), store, Buggy(), clock=clock).deliver_due() == 1
    poison = next(m for m in await store.outbox() if m.ref == "poison")
    assert poison.state == "pending" and "RuntimeError: bug" in poison.last_error
    assert len(sent) == 1


async def test_sent_hook_runs_in_the_same_transaction(sink: SmtpSink, store: AsyncStore,
                                                      clock: Clock) -> None:
    await store.queue_mail(raw_mail("fax:9001:r@example.com", kind="fax_in"))
    await store.queue_mail(raw_mail("job:1:sent"))
    seen: list[str] = []

    def delivered(db: sqlite3.Connection, mail: OutgoingMail) -> None:
        db.execute("INSERT INTO cursors VALUES ('hook', ?)", (mail.ref,))
        seen.append(mail.ref)

    outbox = outbox_for(sink, store, clock)
    outbox.add_sent_hook("fax_in", delivered)
    assert await outbox.deliver_due() == 2
    assert seen == ["fax:9001:r@example.com"]
    assert await store.cursor("hook") == "fax:9001:r@example.com"


async def test_stale_mail_warns(store: AsyncStore, clock: Clock) -> None:
    class Down:
        async def send(self, mail_from: str, rcpt_to: Sequence[str], message: bytes) -> None:
            raise TemporaryFailure("connection refused", transport_down=True)

    await store.queue_mail(raw_mail("old"))
    outbox = Outbox(mail_config(), store, Down(), clock=clock, rng=lambda: 1.0)
    with structlog.testing.capture_logs() as logs:
        await outbox.deliver_due()
        clock.advance(3 * 86_400)
        await outbox.deliver_due()
    # Only the retry after three days warns (info lines may be filtered by an earlier log setup).
    warnings = [e["event"] for e in logs if e["log_level"] == "warning"]
    assert warnings == ["outbox_mail_stale"]


# --- the run loop -------------------------------------------------------------------------------

async def test_run_wakes_on_new_mail_and_rides_out_an_outage(sink: SmtpSink, tmp_path: Path) -> None:
    store = AsyncStore(Store(tmp_path / "real-clock.db"))
    config = mail_config(sink.address, retry_initial_seconds=0.05, retry_max_seconds=0.2)
    outbox = Outbox(config, store, idle_cap_seconds=5)   # transport from the config
    task = asyncio.create_task(outbox.run())
    try:
        await asyncio.sleep(0.05)                        # idle: sleeping up to 5 s
        await store.queue_mail(raw_mail("first"))
        outbox.wake()
        await sink.wait_for(1, timeout=2)                # long before the 5 s cap

        await sink.stop()
        await store.queue_mail(raw_mail("second"))
        outbox.wake()
        for _ in range(200):
            if (await store.outbox())[0].attempts >= 2:
                break
            await asyncio.sleep(0.01)
        assert not outbox.healthy
        await sink.start()
        await sink.wait_for(2, timeout=3)
        assert [m.message["Subject"] for m in sink.messages] == ["first", "second"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        store.close()


# --- transports ---------------------------------------------------------------------------------

async def test_smtp_login(store: AsyncStore, clock: Clock) -> None:
    async with SmtpSink(auth={"bridge": "s3cret-Pa55word"}) as sink:
        good = SmtpTransport(sink.host, sink.port, username="bridge", password="s3cret-Pa55word")
        await good.send("faxbridge@localhost", ["a@example.com"], raw_mail("x").message)
        assert sink.logins == ["bridge"] and len(sink.messages) == 1

        bad = SmtpTransport(sink.host, sink.port, username="bridge", password="wrong-Pa55word")
        assert "wrong-Pa55word" not in repr(bad)
        with pytest.raises(TemporaryFailure) as caught:
            await bad.send("faxbridge@localhost", ["a@example.com"], raw_mail("x").message)
        assert caught.value.transport_down
        assert "refused our login" in str(caught.value)
        assert "wrong-Pa55word" not in str(caught.value)


async def test_smtp_timeout_is_temporary() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)                           # accepts, never greets

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        transport = SmtpTransport("127.0.0.1", port, timeout_seconds=0.2)
        with pytest.raises(TemporaryFailure, match="timed out") as caught:
            await transport.send("a@x.example", ["b@y.example"], b"Subject: x\r\n\r\nx\r\n")
        assert caught.value.transport_down
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


@pytest.mark.parametrize("rcpt", ["bad\r\naddress@x.example", "a@b.example>\r\nRCPT TO:<c@d.example",
                                  "Ünï@x.example", "a b@x.example", "no-at-sign", ""])
async def test_unsendable_address_is_permanent(sink: SmtpSink, rcpt: str) -> None:
    # aiosmtplib would quietly send "a@b>\r\nRCPT TO:<c@d" to a@b: refuse instead.
    transport = SmtpTransport(sink.host, sink.port)
    with pytest.raises(PermanentFailure, match="not a usable mail address"):
        await transport.send("faxbridge@localhost", [rcpt], b"Subject: x\r\n\r\nx\r\n")
    assert sink.sessions == 0 and sink.messages == []


async def test_maildir_transport_writes_a_message_that_parses_back(tmp_path: Path, store: AsyncStore,
                                                                   clock: Clock) -> None:
    config = cfg.defaults(mail=cfg.MailConfig(maildir="var/mailbox"))
    config = cfg.dataclasses.replace(config, base_dir=str(tmp_path))
    transport = make_transport(config)
    assert isinstance(transport, MaildirTransport)
    assert transport.path == tmp_path / "var" / "mailbox"

    pdf = b"%PDF-1.4\n\x00\xffbinary\r\n%%EOF"
    mail = Notices(config, clock=clock).received_fax(
        IncomingFax(9001, "61733334444", "61298765432", "ACME", 2, datetime(2026, 12, 3, 22),
                    "9001.pdf", pdf), "reception@example.com")
    await store.queue_mail(mail)
    assert await Outbox(config, store, clock=clock).deliver_due() == 1

    [name] = list((tmp_path / "var" / "mailbox" / "new").iterdir())
    msg = email.message_from_bytes(name.read_bytes(), policy=email.policy.default)
    assert msg["Subject"] == "Fax from +61 7 3333 4444 (2 pages)"
    [attachment] = list(msg.iter_attachments())           # type: ignore[attr-defined]
    assert attachment.get_content() == pdf
    assert len(mailbox.Maildir(tmp_path / "var" / "mailbox", create=False)) == 1


def test_make_transport_for_a_smarthost() -> None:
    config = cfg.defaults(mail=cfg.MailConfig(smarthost="[::1]:587", smarthost_user="u",
                                              smarthost_password="p4ssw0rd-x",
                                              smarthost_starttls=True))
    transport = make_transport(config)
    assert isinstance(transport, SmtpTransport)
    assert (transport.host, transport.port, transport.username, transport.starttls) == (
        "::1", 587, "u", True)
    assert "p4ssw0rd-x" not in repr(transport)
