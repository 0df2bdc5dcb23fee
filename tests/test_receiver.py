"""The receiver end to end, on real sockets: the real GoFaxClient against the GoFaxSimulator, a
real Store in tmp_path, and the real Outbox delivering to an SMTP sink."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email
import email.policy
import io
import zoneinfo
from collections.abc import AsyncIterator
from email.message import EmailMessage
from typing import Any

import pytest
from daemon import until
from smtp_sink import SmtpSink  # tests/ is on sys.path
from structlog.testing import capture_logs

from bridge import inbox
from bridge.config import Config, MailConfig, ReceiveConfig, RouteConfig, SmsConfig, defaults
from bridge.gofax.client import GoFaxClient
from bridge.gofax.simulator import GoFaxSimulator
from bridge.notices import Notices
from bridge.outbox import Outbox, SmtpTransport
from bridge.receiver import Receiver, check_document, sent_hooks
from bridge.states import State
from bridge.store import AsyncStore, NewJob, NewMail

TOKEN = "5e1f-RECEIVER-TOKEN-93ab"  # distinctive, so tests can assert it never leaks
RECEPTION = "61298765432"            # routed to one mailbox
SALES = "61299990000"                # routed to two mailboxes
UNROUTED = "61288880000"             # → [receive] default_to
REPLY_NUMBER = "61400000000"         # our SMS reply number, routed to the SMS desk
MOBILE = "61412345678"
POSTMASTER = "postmaster@example.com"


def make_config(sink: SmtpSink, *, poll_seconds: float = 0.05) -> Config:
    return defaults(
        receive=ReceiveConfig(
            poll_seconds=poll_seconds, default_to=(POSTMASTER,), timezone="Australia/Sydney",
            route=(RouteConfig(RECEPTION, ("reception@example.com",)),
                   RouteConfig(SALES, ("a@example.com", "b@example.com")),
                   RouteConfig(REPLY_NUMBER, ("sms-desk@example.com",)))),
        sms=SmsConfig(reply_numbers=(REPLY_NUMBER,)),
        mail=MailConfig(smarthost=sink.address, retry_initial_seconds=0.05, retry_max_seconds=0.1))


@dataclasses.dataclass
class Rig:
    sim: GoFaxSimulator
    sink: SmtpSink
    config: Config
    store: AsyncStore
    client: GoFaxClient
    notices: Notices
    outbox: Outbox
    receiver: Receiver

    def new_receiver(self, *, poll_seconds: float | None = None, token: str = TOKEN,
                     config: Config | None = None, **kw: Any) -> Receiver:
        """A fresh Receiver on the same store (a restart), optionally with other settings."""
        config = config or self.config
        if poll_seconds is not None:
            config = dataclasses.replace(config, receive=dataclasses.replace(
                config.receive, poll_seconds=poll_seconds))
        client = self.client
        if token != TOKEN:
            client = GoFaxClient(self.sim.base_url or "", token, timeout_seconds=0.5)
        kw.setdefault("retry_initial_seconds", 0.01)
        kw.setdefault("retry_max_seconds", 0.02)
        kw.setdefault("rng", lambda: 0.0)
        return Receiver(config, self.store, client, self.notices, on_mail=self.outbox.wake, **kw)

    async def deliver(self) -> int:
        return await self.outbox.deliver_due()

    def messages(self) -> list[EmailMessage]:
        return [m.message for m in self.sink.messages]

    async def fax_state(self, gofax_id: int) -> str | None:
        fax = await self.store.call(inbox.get_fax, self.store.sync, gofax_id)
        return fax.state if fax else None

    async def outbox_rows(self, kind: str) -> list[Any]:
        rows = await self.store.outbox(limit=1000)
        return [r for r in rows if r.kind == kind]

    def document_requests(self) -> int:
        return sum(1 for r in self.sim.requests if r.path.endswith("/Document"))


@pytest.fixture
async def rig(simulator_factory: Any, tmp_path: Any) -> AsyncIterator[Rig]:
    sim = await simulator_factory(token=TOKEN, account_numbers=(RECEPTION, SALES, UNROUTED),
                                  sms_reply_numbers=(REPLY_NUMBER,))
    sink = await SmtpSink().start()
    config = make_config(sink)
    store = AsyncStore.open(tmp_path / "faxbridge.db")
    client = GoFaxClient(sim.base_url, TOKEN, timeout_seconds=0.5)
    notices = Notices(config)
    outbox = Outbox(config, store, SmtpTransport(sink.host, sink.port, timeout_seconds=2),
                    rng=lambda: 0.0)
    rig = Rig(sim, sink, config, store, client, notices, outbox, None)  # type: ignore[arg-type]
    rig.receiver = rig.new_receiver()
    try:
        yield rig
    finally:
        await client.close()
        await sink.stop()
        store.close()


def attachment(msg: EmailMessage) -> tuple[str | None, str, bytes]:
    [part] = list(msg.iter_attachments())
    return part.get_filename(), part.get_content_type(), part.get_content()


def local_stamp(sim: GoFaxSimulator, fax_id: int) -> str:
    received = sim.received[fax_id].received_utc
    return received.astimezone(zoneinfo.ZoneInfo("Australia/Sydney")).strftime("%Y%m%d-%H%M")


@contextlib.asynccontextmanager
async def running(*coros: Any) -> AsyncIterator[list[asyncio.Task[Any]]]:
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        yield tasks
    finally:
        pending = set(tasks)
        for _ in range(20):
            for task in pending:
                task.cancel()
            # Cancel again if needed: Outbox._sleep's asyncio.wait_for can swallow a
            # cancellation on Python 3.11 (gh-86296; reported, outbox.py is not ours).
            _, pending = await asyncio.wait(pending, timeout=0.1)
            if not pending:
                break
        assert not pending, f"did not stop when cancelled: {pending}"
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


# --- received faxes ------------------------------------------------------------------------------

async def test_one_fax_becomes_one_mail_with_the_exact_pdf(rig: Rig) -> None:
    fax_id = rig.sim.receive_fax(from_number="61733334444", to_number=RECEPTION, pages=2)
    pdf = rig.sim.received[fax_id].pdf

    assert await rig.receiver.poll_faxes() == 1
    assert await rig.fax_state(fax_id) == inbox.FETCHED  # stored; mailed only once accepted
    assert await rig.deliver() == 1
    [msg] = rig.messages()
    assert rig.sink.messages[0].rcpt_tos == ["reception@example.com"]
    assert msg["Subject"] == "Fax from +61 7 3333 4444 (2 pages)"
    name, ctype, data = attachment(msg)
    assert (name, ctype) == (f"fax-from-61733334444-{local_stamp(rig.sim, fax_id)}.pdf",
                             "application/pdf")
    assert data == pdf

    await rig.receiver.poll_once()  # marks it delivered; polling again mails nothing new
    assert await rig.fax_state(fax_id) == inbox.DELIVERED
    assert await rig.receiver.poll_faxes() == 0
    assert await rig.deliver() == 0
    assert len(rig.sink.messages) == 1
    assert rig.receiver.healthy and not rig.receiver.unauthorised


async def test_routing_to_several_mailboxes_and_the_default(rig: Rig) -> None:
    to_sales = rig.sim.receive_fax(to_number=SALES)
    to_nobody = rig.sim.receive_fax(to_number=UNROUTED)
    assert await rig.receiver.poll_faxes() == 2
    assert await rig.deliver() == 3
    got = {(m.rcpt_tos[0], m.message["X-Faxbridge-Fax"]) for m in rig.sink.messages}
    assert got == {("a@example.com", str(to_sales)), ("b@example.com", str(to_sales)),
                   (POSTMASTER, str(to_nobody))}
    assert all(len(m.rcpt_tos) == 1 for m in rig.sink.messages)  # one mail per mailbox


async def test_withheld_caller_id(rig: Rig) -> None:
    fax_id = rig.sim.receive_fax(from_number="", csid="", to_number=RECEPTION)
    await rig.receiver.poll_faxes()
    await rig.deliver()
    [msg] = rig.messages()
    assert msg["Subject"] == "Fax from withheld number (1 page)"
    name, _, _ = attachment(msg)
    assert name == f"fax-from-withheld-{local_stamp(rig.sim, fax_id)}.pdf"
    assert "withheld" in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]


async def test_a_tiff_document_is_accepted(rig: Rig) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (64, 32)).save(buffer, format="TIFF")
    rig.sim.receive_fax(to_number=RECEPTION, pdf=buffer.getvalue())  # GoFax still says PDF
    assert await rig.receiver.poll_faxes() == 1
    await rig.deliver()
    name, ctype, data = attachment(rig.messages()[0])
    assert ctype == "image/tiff" and name and name.endswith(".tif")
    assert data == buffer.getvalue()


async def test_wake_picks_a_fax_up_long_before_the_poll_interval(rig: Rig) -> None:
    receiver = rig.new_receiver(poll_seconds=60)
    async with running(receiver.run(), rig.outbox.run()):
        await until(lambda: any(r.path.endswith("UnretrievedFaxes") for r in rig.sim.requests))
        await asyncio.sleep(0.1)  # the first pass is over; the next poll is a minute away
        rig.sim.receive_fax(to_number=RECEPTION)
        receiver.wake()  # what the fax-received webhook does
        await rig.sink.wait_for(1, timeout=3)


async def test_run_stops_at_once_when_cancelled_even_while_woken(rig: Rig) -> None:
    receiver = rig.new_receiver(poll_seconds=0.01)
    for i in range(15):
        task = asyncio.create_task(receiver.run())
        await asyncio.sleep(0.002 * i)
        receiver.wake()
        task.cancel()  # exactly once: a swallowed cancellation would hang a daemon's stop
        done, _ = await asyncio.wait([task], timeout=1)
        assert done == {task} and task.cancelled()


async def test_smarthost_down_then_up_delivers_once(rig: Rig) -> None:
    fax_id = rig.sim.receive_fax(to_number=RECEPTION)
    await rig.sink.stop()
    await rig.receiver.poll_faxes()
    assert await rig.deliver() == 0
    [row] = await rig.outbox_rows("fax_in")
    assert row.state == "pending" and row.attempts == 1
    await rig.receiver.poll_once()
    assert await rig.fax_state(fax_id) == inbox.FETCHED  # not delivered while the smarthost is down

    await rig.sink.start()
    async with running(rig.outbox.run()):
        await rig.sink.wait_for(1)
        await asyncio.sleep(0.2)
    await rig.receiver.poll_once()
    assert len(rig.sink.messages) == 1
    assert await rig.fax_state(fax_id) == inbox.DELIVERED


async def test_crash_between_download_and_mail_delivers_exactly_once(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    fax_id = rig.sim.receive_fax(to_number=RECEPTION)
    real = inbox.store_document
    calls = 0

    def crash_once(*args: Any, **kwargs: Any) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk I/O error (simulated crash)")
        return real(*args, **kwargs)

    monkeypatch.setattr(inbox, "store_document", crash_once)
    assert await rig.receiver.poll_faxes() == 0
    # GoFax now counts it retrieved and no longer lists it; only our table knows it.
    assert rig.sim.received[fax_id].retrieved
    assert await rig.client.unretrieved_faxes() == []
    assert await rig.fax_state(fax_id) == inbox.LISTED
    assert await rig.outbox_rows("fax_in") == []

    await asyncio.sleep(0.05)  # past the (tiny) retry delay
    restarted = rig.new_receiver()
    assert await restarted.poll_faxes() == 1
    assert await restarted.poll_faxes() == 0
    assert await rig.deliver() == 1
    assert await rig.deliver() == 0
    assert [m.message["X-Faxbridge-Fax"] for m in rig.sink.messages] == [str(fax_id)]


async def test_lost_download_answer_is_fetched_again_by_id(rig: Rig) -> None:
    # GoFax served the document (and marked the fax retrieved), but the answer never arrived.
    fax_id = rig.sim.receive_fax(to_number=RECEPTION)
    # Until cleared: aiohttp itself retries a GET once on a dropped keep-alive connection.
    rig.sim.inject("GET /v1.0/ReceiveFax/*/Document", "drop_after_processing", times=None)
    assert await rig.receiver.poll_faxes() == 0
    assert rig.sim.received[fax_id].retrieved
    assert await rig.client.unretrieved_faxes() == []
    assert not rig.receiver.healthy
    rig.sim.clear_faults()
    await asyncio.sleep(0.05)
    assert await rig.receiver.poll_faxes() == 1
    await rig.deliver()
    assert len(rig.sink.messages) == 1
    assert rig.receiver.healthy


@pytest.mark.parametrize("fault", [{"kind": "status", "status": 503},
                                   {"kind": "status", "status": 500},
                                   {"kind": "429", "retry_after": 0},
                                   {"kind": "delay", "delay_seconds": 1.0}])
async def test_list_failures_are_retried_and_never_crash(rig: Rig, fault: dict[str, Any]) -> None:
    rig.sim.receive_fax(to_number=RECEPTION)
    rig.sim.inject("GET /v1.0/ReceiveFaxes/UnretrievedFaxes", **fault)
    assert await rig.receiver.poll_faxes() == 0
    assert not rig.receiver.healthy
    assert rig.receiver.last_error and TOKEN not in rig.receiver.last_error
    assert await rig.receiver.poll_faxes() == 1
    assert rig.receiver.healthy


@pytest.mark.parametrize("fault", [{"kind": "status", "status": 502},
                                   {"kind": "drop"},
                                   {"kind": "delay", "delay_seconds": 1.0}])
async def test_document_failures_are_retried(rig: Rig, fault: dict[str, Any]) -> None:
    fax_id = rig.sim.receive_fax(to_number=RECEPTION)
    # Until cleared: aiohttp itself retries a GET once on a dropped keep-alive connection.
    rig.sim.inject("GET /v1.0/ReceiveFax/*/Document", times=None, **fault)
    assert await rig.receiver.poll_faxes() == 0
    fax = await rig.store.call(inbox.get_fax, rig.store.sync, fax_id)
    assert fax is not None and fax.state == inbox.LISTED and fax.attempts == 1
    assert TOKEN not in fax.last_error
    await asyncio.sleep(0.05)
    assert await rig.receiver.poll_faxes() == 0
    rig.sim.clear_faults()
    await asyncio.sleep(0.05)
    assert await rig.receiver.poll_faxes() == 1
    await rig.deliver()
    assert len(rig.sink.messages) == 1


async def test_the_loop_survives_failures_and_delivers(rig: Rig) -> None:
    rig.sim.receive_fax(to_number=RECEPTION)
    rig.sim.inject("GET /v1.0/ReceiveFaxes/UnretrievedFaxes", "status", status=503, times=2)
    rig.sim.inject("GET /v1.0/SMS/Replies/*", "drop", times=2)
    async with running(rig.receiver.run(), rig.outbox.run()):
        await rig.sink.wait_for(1, timeout=5)
        await until(lambda: rig.receiver.healthy)


async def test_download_failing_repeatedly_parks_and_alerts_once(rig: Rig) -> None:
    fax_id = rig.sim.receive_fax(to_number=RECEPTION)
    rig.sim.inject("GET /v1.0/ReceiveFax/*/Document", "status", status=500, times=None)
    for _ in range(5):
        await rig.receiver.poll_faxes()
        await asyncio.sleep(0.03)
    assert await rig.fax_state(fax_id) == inbox.PARKED
    for _ in range(2):  # parked: neither fetched again nor alerted again
        await rig.receiver.poll_faxes()
        await asyncio.sleep(0.03)
    assert rig.document_requests() == 5
    await rig.deliver()
    [alert] = rig.sink.messages
    assert alert.rcpt_tos == [POSTMASTER]
    assert str(fax_id) in alert.message["Subject"]
    assert TOKEN.encode() not in alert.data

    listing = await rig.store.call(inbox.list_faxes, rig.store.sync)
    assert [f.state for f, _ in listing] == [inbox.PARKED]


async def test_corrupt_document_is_parked_kept_and_alerted_once(rig: Rig) -> None:
    fax_id = rig.sim.receive_fax(to_number=RECEPTION, pdf=b"not a pdf")
    good = rig.sim.receive_fax(to_number=RECEPTION)
    assert await rig.receiver.poll_faxes() == 1  # the good one
    assert await rig.receiver.poll_faxes() == 0
    assert await rig.fax_state(fax_id) == inbox.PARKED
    kept = await rig.store.call(inbox.fax_document, rig.store.sync, fax_id)
    assert kept is not None and kept[2] == b"not a pdf"
    await rig.deliver()
    by_rcpt = {m.rcpt_tos[0]: m.message for m in rig.sink.messages}
    assert set(by_rcpt) == {POSTMASTER, "reception@example.com"}
    assert by_rcpt["reception@example.com"]["X-Faxbridge-Fax"] == str(good)
    assert str(fax_id) in by_rcpt[POSTMASTER]["Subject"]


async def test_reconciliation_reports_faxes_retrieved_elsewhere_once(rig: Rig) -> None:
    ours = rig.sim.receive_fax(to_number=RECEPTION)
    await rig.receiver.poll_faxes()                       # retrieved by us: fine
    elsewhere = rig.sim.receive_fax(to_number=RECEPTION)
    rig.sim.received[elsewhere].retrieved = True          # someone else downloaded it
    waiting = rig.sim.receive_fax(to_number=SALES)        # not yet polled: recorded, not reported

    assert await rig.receiver.reconcile() == [elsewhere]
    assert await rig.fax_state(waiting) == inbox.LISTED
    assert await rig.fax_state(elsewhere) is None
    assert await rig.receiver.reconcile() == [elsewhere]  # still there, but told only once
    alerts = await rig.outbox_rows("alert")
    assert len(alerts) == 1 and alerts[0].rcpt_to == (POSTMASTER,)
    # The text, not the raw message: its MIME boundary is random digits that may hold "9001".
    alert = email.message_from_bytes(alerts[0].message, policy=email.policy.default)
    text = alert.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert f"GoFax fax ID {elsewhere}" in text
    assert str(ours) not in text.split("GoFax fax ID", 1)[1]
    assert rig.receiver.healthy


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_check_document() -> None:
    from bridge.gofax.samplepdf import sample_pdf

    assert check_document(sample_pdf(3)).pages == 3
    assert check_document(b"").problem
    assert check_document(b"%PDF-1.4 garbage").problem
    assert "neither a PDF nor a TIFF" in check_document(b"GIF89a", "image/tiff", "1.tif").problem
    assert check_document(b"II*\x00garbage").problem


# --- SMS replies ---------------------------------------------------------------------------------

async def sms_job(rig: Rig, *, sender: str, message_id: str, gofax_id: int,
                  to: str = MOBILE, notify: bool = True) -> int:
    """An SMS job as intake + sender would leave it: accepted from a mail, then submitted."""
    store = rig.store
    result = await store.accept(NewMail(
        mail_from=sender, header_from=sender, message_id=message_id, subject="",
        notify=notify, jobs=[NewJob(kind="sms", to_number=to, dedupe_key=message_id,
                                    sms_text="See you at 10?", sms_parts=1)]))
    [job_id] = result.job_ids
    await store.move(job_id, State.QUEUED, State.SUBMITTING)
    await store.move(job_id, State.SUBMITTING, State.SUBMITTED, gofax_id=gofax_id)
    return job_id


async def test_reply_matched_by_message_id_is_threaded_to_the_sender(rig: Rig) -> None:
    await sms_job(rig, sender="alice@example.com", message_id="<m1@example.com>", gofax_id=77001)
    await sms_job(rig, sender="bob@example.com", message_id="<m9@example.com>", gofax_id=77009)
    rig.sim.sms_reply(MOBILE, None, "Yes, see you then", message_id=77001)
    assert await rig.receiver.poll_replies() == 1
    await rig.deliver()
    [got] = rig.sink.messages
    msg = got.message
    assert got.rcpt_tos == ["alice@example.com"]  # not bob, whose SMS is more recent
    assert msg["Subject"] == "SMS from +61 412 345 678"
    assert msg["In-Reply-To"] == "<m1@example.com>"
    assert msg["References"] == "<m1@example.com>"
    assert msg["Reply-To"] == f"{MOBILE}@sms.local"
    assert "Yes, see you then" in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]


async def test_reply_without_message_id_goes_to_the_latest_sms_to_that_mobile(rig: Rig) -> None:
    await sms_job(rig, sender="alice@example.com", message_id="<old@example.com>", gofax_id=77001)
    await sms_job(rig, sender="carol@example.com", message_id="<new@example.com>", gofax_id=77002)
    await sms_job(rig, sender="dave@example.com", message_id="<other@example.com>",
                  gofax_id=77003, to="61499999999")
    rig.sim.sms_reply(MOBILE, None, "ok")
    rig.sim.sms_reply(MOBILE, None, "unknown id", message_id=12345)  # not ours: fall back too
    assert await rig.receiver.poll_replies() == 2
    await rig.deliver()
    assert {(m.rcpt_tos[0], m.message["In-Reply-To"]) for m in rig.sink.messages} == {
        ("carol@example.com", "<new@example.com>")}
    assert len(rig.sink.messages) == 2


async def test_unmatched_reply_goes_to_the_routed_mailbox(rig: Rig) -> None:
    # An SMS job whose mail may not be answered (null sender) does not get the reply either.
    await sms_job(rig, sender="", message_id="<auto@example.com>", gofax_id=77004,
                  to="61411111111", notify=False)
    rig.sim.sms_reply("61422222222", None, "who is this?")
    rig.sim.sms_reply("61411111111", None, "stop", message_id=77004)
    assert await rig.receiver.poll_replies() == 2
    await rig.deliver()
    assert [m.rcpt_tos for m in rig.sink.messages] == [["sms-desk@example.com"]] * 2
    assert all(m.message["In-Reply-To"] is None for m in rig.sink.messages)
    replies = await rig.store.call(inbox.list_replies, rig.store.sync)
    assert sorted(r.job_id or 0 for r, _ in replies) == [0, 1]  # the match is still recorded


async def test_duplicate_replies_are_mailed_once(rig: Rig) -> None:
    await sms_job(rig, sender="alice@example.com", message_id="<m1@example.com>", gofax_id=77001)
    rig.sim.sms_reply(MOBILE, None, "once", message_id=77001)
    assert await rig.receiver.poll_replies() == 1
    assert await rig.receiver.poll_replies() == 0
    assert await rig.new_receiver().poll_replies() == 0  # after a restart too
    await rig.deliver()
    assert len(rig.sink.messages) == 1


async def test_first_run_skips_only_old_unmatched_replies(rig: Rig) -> None:
    from datetime import timedelta

    old = rig.sim.sms_reply("61433333333", None, "from last month")
    rig.sim.replies[old].received_utc -= timedelta(days=30)
    recent = rig.sim.sms_reply("61433333333", None, "from this morning")
    assert await rig.receiver.poll_replies() == 1
    later_old = rig.sim.sms_reply("61433333333", None, "late arrival, old stamp")
    rig.sim.replies[later_old].received_utc -= timedelta(days=30)
    assert await rig.receiver.poll_replies() == 1  # after the first run nothing is skipped
    states = {r.gofax_id: r.state for r, _ in
              await rig.store.call(inbox.list_replies, rig.store.sync)}
    assert states == {old: inbox.SKIPPED, recent: inbox.STORED, later_old: inbox.STORED}


async def test_a_three_turn_conversation_stays_in_one_thread(rig: Rig) -> None:
    # Turn 1: alice's mail M1 sends an SMS; the reply comes back under M1.
    await sms_job(rig, sender="alice@example.com", message_id="<m1@example.com>", gofax_id=77001)
    rig.sim.sms_reply(MOBILE, None, "Which day?", message_id=77001)
    await rig.receiver.poll_replies()
    await rig.deliver()
    reply1 = rig.messages()[0]
    # Turn 2: alice answers reply 1 by mail (M2, In-Reply-To reply 1) → a second SMS job.
    in_reply_to = {"<m2@example.com>": reply1["Message-ID"]}
    await sms_job(rig, sender="alice@example.com", message_id="<m2@example.com>", gofax_id=77002)
    # Turn 3: the answer to it (GoFax gives no MessageID this time: matched by mobile).
    rig.sim.sms_reply(MOBILE, None, "Tuesday works")
    await rig.receiver.poll_replies()
    await rig.deliver()
    reply2 = rig.messages()[1]

    for msg in (reply1, reply2):
        in_reply_to[msg["Message-ID"]] = msg["In-Reply-To"]
        assert msg["Reply-To"] == f"{MOBILE}@sms.local"
    assert reply2["In-Reply-To"] == "<m2@example.com>"
    chain, at = [], reply2["Message-ID"]
    while at in in_reply_to:
        at = in_reply_to[at]
        chain.append(at)
    assert chain == ["<m2@example.com>", reply1["Message-ID"], "<m1@example.com>"]
    assert [m.rcpt_tos for m in rig.sink.messages] == [["alice@example.com"]] * 2


# --- auth, logging and delivery tracking ---------------------------------------------------------

async def test_a_refused_token_is_reported_and_backed_off(rig: Rig) -> None:
    rig.sim.receive_fax(to_number=RECEPTION)
    receiver = rig.new_receiver(token="wrong-token")
    assert await receiver.poll_faxes() == 0
    assert await receiver.poll_replies() == 0
    assert receiver.unauthorised and not receiver.healthy
    assert "token" in receiver.last_error
    await receiver.client.close()
    assert await rig.receiver.poll_faxes() == 1
    assert not rig.receiver.unauthorised


async def test_a_refused_reply_number_is_not_a_refused_token(rig: Rig) -> None:
    config = dataclasses.replace(rig.config, sms=SmsConfig(
        reply_numbers=("61411110000", REPLY_NUMBER)))  # the first is not the account's
    receiver = rig.new_receiver(config=config)
    rig.sim.sms_reply("61433333333", None, "still delivered")
    assert await receiver.poll_faxes() == 0
    assert await receiver.poll_replies() == 1
    assert not receiver.unauthorised and not receiver.healthy
    assert "61411110000" in receiver.last_error


async def test_logs_carry_neither_token_nor_document(rig: Rig) -> None:
    import base64

    fax_id = rig.sim.receive_fax(to_number=RECEPTION)
    rig.sim.inject("GET /v1.0/ReceiveFax/*/Document", "status", status=503)
    with capture_logs() as logs:
        await rig.receiver.poll_faxes()
        await asyncio.sleep(0.05)
        await rig.receiver.poll_faxes()
        await rig.receiver.reconcile()
    text = repr(logs)
    pdf = rig.sim.received[fax_id].pdf
    assert {e["event"] for e in logs} >= {"fax_listed", "fax_fetch_retry", "fax_stored"}
    assert TOKEN not in text
    assert base64.b64encode(pdf)[:40].decode() not in text and repr(pdf[:40])[2:-1] not in text


async def test_outbox_sent_hook_marks_delivery_at_once(rig: Rig) -> None:
    for kind, hook in sent_hooks().items():
        rig.outbox.add_sent_hook(kind, hook)
    fax_id = rig.sim.receive_fax(to_number=SALES)
    await rig.receiver.poll_faxes()
    rig.sink.fail("rcpt", "451 4.3.0 later", recipients=["b@example.com"], times=1)
    await rig.deliver()
    assert await rig.fax_state(fax_id) == inbox.FETCHED  # one of two mailboxes still waits
    await asyncio.sleep(0.12)
    await rig.deliver()
    assert await rig.fax_state(fax_id) == inbox.DELIVERED
