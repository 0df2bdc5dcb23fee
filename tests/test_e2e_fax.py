"""Fax by mail, end to end: SMTP in → store → GoFax (simulator, over HTTP) → notice out.

Every test runs the whole daemon (:mod:`daemon`) and talks to it only through its sockets,
then checks what GoFax received (the simulator's request log) and what the sender was told
(the SMTP sink).
"""

from __future__ import annotations

import asyncio
import base64
import email.policy
from email.message import EmailMessage
from pathlib import Path

import aiohttp
import pytest
from daemon import Daemon, start, until
from smtp_sink import SmtpSink
from test_intake_message import make_pdf

from bridge.states import State
from bridge.store import Store

PDF1 = make_pdf(1)
PDF3 = make_pdf(3)


def fax_mail(*, to: str = "0298765432@fax.local", subject: str = "Quarterly report",
             body: str = "", attachments: tuple[tuple[str, bytes], ...] = (("report.pdf", PDF1),),
             message_id: str = "<q1@example.com>") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Alice <alice@example.com>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    msg.set_content(body)
    for name, data in attachments:
        msg.add_attachment(data, maintype="application", subtype="pdf", filename=name)
    return msg


@pytest.fixture
async def daemon(tmp_path: Path, sink: SmtpSink, daemons: list[Daemon]) -> Daemon:
    d = await start(tmp_path, sink)
    daemons.append(d)
    return d


def fax_puts(d: Daemon) -> list[dict[str, object]]:
    return [r.json for r in d.sim.requests if r.method == "PUT" and r.path == "/v1.0/SendFax"]


# --- the happy path ---------------------------------------------------------------------------

async def test_one_pdf_is_faxed_byte_exact_and_the_sender_told_once(daemon: Daemon) -> None:
    await daemon.send(fax_mail())
    [notice] = await daemon.notices(1)
    [job] = daemon.jobs()
    assert job.state is State.SENT
    [put] = fax_puts(daemon)
    assert put["SendTo"] == "61298765432"
    assert put["Subject"] == "Quarterly report"
    assert [(d["Filename"], base64.b64decode(d["Data"])) for d in put["Documents"]] == [
        ("report.pdf", PDF1)]
    msg = notice.message
    assert notice.rcpt_tos == ["alice@example.com"]
    assert msg["Subject"].strip() == "Fax to +61 2 9876 5432 sent (1 page): Quarterly report"
    assert msg["In-Reply-To"] == "<q1@example.com>"
    assert msg["References"] == "<q1@example.com>"
    assert msg["Auto-Submitted"] == "auto-replied"
    await asyncio.sleep(0.3)
    assert len(daemon.sink.messages) == 1  # and nothing more comes


async def test_several_attachments_go_in_order_after_the_cover(daemon: Daemon) -> None:
    mail = fax_mail(body="Dear Bob,\nthree documents follow.",
                    attachments=(("a.pdf", PDF1), ("b.pdf", PDF3), ("c.pdf", PDF1)))
    await daemon.send(mail)
    [notice] = await daemon.notices(1)
    [put] = fax_puts(daemon)
    names = [d["Filename"] for d in put["Documents"]]
    assert names[1:] == ["a.pdf", "b.pdf", "c.pdf"]
    assert names[0].endswith(".pdf") and "cover" in names[0]
    assert [base64.b64decode(d["Data"]) for d in put["Documents"][1:]] == [PDF1, PDF3, PDF1]
    assert "(6 pages)" in notice.message["Subject"]


async def test_several_fax_recipients_make_one_fax_and_one_notice_each(daemon: Daemon) -> None:
    await daemon.send(fax_mail(), rcpts=["0298765432@fax.local", "0398765432@fax.local"])
    notices = await daemon.notices(2)
    assert sorted(p["SendTo"] for p in fax_puts(daemon)) == ["61298765432", "61398765432"]
    subjects = sorted(n.message["Subject"].strip() for n in notices)
    assert subjects == [
        "Fax to +61 2 9876 5432 sent (1 page): Quarterly report",
        "Fax to +61 3 9876 5432 sent (1 page): Quarterly report"]


async def test_a_resent_copy_is_not_faxed_again(daemon: Daemon) -> None:
    raw = fax_mail().as_bytes(policy=email.policy.SMTP)
    await daemon.send(raw, rcpts=["0298765432@fax.local"])
    await daemon.notices(1)
    # An MTA that never saw our 250 sends the same bytes again, with a new Received: line.
    await daemon.send(b"Received: from relay.example.com; Fri, 4 Dec 2026 10:00:00 +1000\r\n" + raw,
                      rcpts=["0298765432@fax.local"])
    assert len(daemon.jobs()) == 1
    await asyncio.sleep(0.3)
    assert len(fax_puts(daemon)) == 1 and len(daemon.sink.messages) == 1


# --- results GoFax reports --------------------------------------------------------------------

async def test_a_busy_number_fails_with_the_reason(daemon: Daemon) -> None:
    daemon.sim.set_number_behaviour("61298765432", "busy")
    await daemon.send(fax_mail())
    [notice] = await daemon.notices(1)
    assert daemon.jobs()[0].state is State.FAILED
    subject = notice.message["Subject"].strip()
    assert subject.startswith("Fax to +61 2 9876 5432 FAILED: Busy")
    text = notice.message.get_body(("plain",)).get_content()
    assert "Busy" in text


async def test_a_refused_document_fails_quoting_the_validation_error(daemon: Daemon) -> None:
    daemon.sim.inject("PUT /v1.0/SendFax", "status", status=400)
    await daemon.send(fax_mail())
    [notice] = await daemon.notices(1)
    job = daemon.jobs()[0]
    assert job.state is State.FAILED and job.attempts == 1
    assert "FAILED" in notice.message["Subject"]


# --- faults: retry, uncertain, held -----------------------------------------------------------

@pytest.mark.parametrize("fault", [
    {"kind": "status", "status": 503},
    {"kind": "status", "status": 502},
    {"kind": "429", "retry_after": 0.3},
])
async def test_transient_errors_are_retried_then_sent_once(daemon: Daemon,
                                                           fault: dict[str, object]) -> None:
    daemon.sim.inject("PUT /v1.0/SendFax", times=2, **fault)  # type: ignore[arg-type]
    await daemon.send(fax_mail())
    [notice] = await daemon.notices(1)
    job = daemon.jobs()[0]
    assert job.state is State.SENT and job.attempts == 3
    assert len(daemon.sim.faxes) == 1
    assert "sent" in notice.message["Subject"]


async def test_retry_after_is_honoured(daemon: Daemon) -> None:
    daemon.sim.inject("PUT /v1.0/SendFax", "429", retry_after=1.0)
    await daemon.send(fax_mail())
    await daemon.notices(1)
    puts = [r for r in daemon.sim.requests if r.method == "PUT" and r.path == "/v1.0/SendFax"]
    assert len(puts) == 2
    gap = (puts[1].at_utc - puts[0].at_utc).total_seconds()
    assert gap >= 0.95


@pytest.mark.parametrize("fault", [
    {"kind": "status", "status": 500},                  # GoFax may have created it
    {"kind": "drop_after_processing"},                  # created, answer lost
    {"kind": "drop"},                                   # we cannot know
    {"kind": "delay", "delay_seconds": 3},              # past our 2 s timeout; created
])
async def test_a_lost_answer_makes_the_job_uncertain_and_it_is_not_resent(
        daemon: Daemon, fault: dict[str, object]) -> None:
    daemon.sim.inject("PUT /v1.0/SendFax", **fault)  # type: ignore[arg-type]
    await daemon.send(fax_mail())
    [notice] = await daemon.notices(1, timeout=15)
    job = daemon.jobs()[0]
    assert job.state is State.UNCERTAIN and job.attempts == 1
    subject = notice.message["Subject"].strip()
    assert "may not have been sent" in subject or "uncertain" in subject.lower()
    text = notice.message.get_body(("plain",)).get_content()
    assert "faxbridge retry" in text
    puts = [r for r in daemon.sim.requests if r.method == "PUT" and r.path == "/v1.0/SendFax"]
    assert len(puts) == 1


async def test_status_reads_that_hang_do_not_hold_back_a_new_fax(
        tmp_path: Path, sink: SmtpSink, daemons: list[Daemon]) -> None:
    """Status reads run beside submissions. Here every read hangs until the 2 s timeout: read
    one after another, four of them would keep the next fax from GoFax for 8 s."""
    d = await start(tmp_path, sink, gofax={"sandbox_fax_seconds": 60})
    daemons.append(d)
    for i in range(4):
        await d.send(fax_mail(message_id=f"<wait{i}@example.com>"))
    await until(lambda: [j.state for j in d.jobs()] == [State.SUBMITTED] * 4)
    d.sim.inject("GET /v1.0/SendFax/*", "delay", delay_seconds=30, times=None)
    await until(lambda: sum(r.method == "GET" for r in d.sim.requests) >= 4, timeout=3)
    await d.send(fax_mail(message_id="<new@example.com>"))
    await until(lambda: len(fax_puts(d)) == 5, timeout=1.5,
                why=lambda: "the new fax waited for the status reads")
    assert d.job(5).state in (State.SUBMITTING, State.SUBMITTED)
    d.sim.clear_faults()


async def test_an_expired_token_holds_jobs_and_they_go_when_it_works(daemon: Daemon) -> None:
    good = daemon.sim.token
    daemon.sim.token = "expired-token"
    await daemon.send(fax_mail())
    await daemon.wait_job(1, State.HELD)
    web = daemon.app.web_url
    async with aiohttp.ClientSession() as http, http.get(web + "/healthz") as resp:
        assert resp.status == 503
        assert "401" in (await resp.text())
    # Held is not an outcome, so the sender is not told yet; the postmaster is, once.
    [alert] = await daemon.notices(1)
    assert alert.rcpt_tos == ["postmaster@localhost"]
    assert "refuses the API token" in alert.message["Subject"]
    daemon.sim.token = good
    [_, notice] = await daemon.notices(2, timeout=10)
    assert notice.rcpt_tos == ["alice@example.com"]
    assert daemon.job(1).state is State.SENT
    async with aiohttp.ClientSession() as http:
        async def healthy() -> bool:
            async with http.get(web + "/healthz") as resp:
                return resp.status == 200
        for _ in range(100):          # every part notices the token works on its next try
            if await healthy():
                break
            await asyncio.sleep(0.05)
        assert await healthy()


# --- status tracking: webhooks hint, polls decide ---------------------------------------------

async def test_a_lost_webhook_is_caught_by_the_poll(tmp_path: Path, sink: SmtpSink,
                                                   daemons: list[Daemon]) -> None:
    d = await start(tmp_path, sink, gofax={"sandbox_fax_seconds": 0.5, "status_poll_seconds": 1})
    daemons.append(d)
    d.sim.suppress_webhooks = True
    await d.send(fax_mail())
    [notice] = await d.notices(1, timeout=10)
    assert "sent" in notice.message["Subject"]
    status_reads = [r for r in d.sim.requests if r.method == "GET" and "SendFax/" in r.path]
    assert status_reads


async def test_a_duplicate_webhook_gives_one_notice(tmp_path: Path, sink: SmtpSink,
                                                   daemons: list[Daemon]) -> None:
    d = await start(tmp_path, sink, gofax={"sandbox_fax_seconds": 0.3, "status_poll_seconds": 60})
    daemons.append(d)
    d.sim.duplicate_webhooks = True
    await d.send(fax_mail())
    await d.notices(1, timeout=10)
    await until(lambda: len(d.sim.webhook_attempts) >= 2, 5)
    assert len(sink.messages) == 1


async def test_webhooks_alone_finish_a_job_long_before_the_poll(tmp_path: Path, sink: SmtpSink,
                                                                 daemons: list[Daemon]) -> None:
    d = await start(tmp_path, sink, gofax={"sandbox_fax_seconds": 0.3, "status_poll_seconds": 60})
    daemons.append(d)
    await d.send(fax_mail())
    [notice] = await d.notices(1, timeout=8)  # the first poll would be 5 s away
    assert "sent" in notice.message["Subject"]


async def test_a_webhook_for_an_unknown_id_changes_nothing(daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(daemon.app.web_url + "/webhooks/gofax/fax-sent",
                             data={"ID": "999", "Success": "True"}) as resp:
            assert resp.status == 200 and "ignored" in await resp.text()
        async with http.post(daemon.app.web_url + "/webhooks/gofax/fax-sent",
                             data={"ID": "abc"}) as resp:
            assert resp.status == 400
    assert daemon.jobs() == []


# --- restart and the smarthost ----------------------------------------------------------------

async def test_a_job_caught_mid_submission_becomes_uncertain_on_restart(
        tmp_path: Path, sink: SmtpSink, daemons: list[Daemon]) -> None:
    d = await start(tmp_path, sink)
    d.sim.inject("PUT /v1.0/SendFax", "status", status=503, times=None)  # keep it queued
    await d.send(fax_mail())
    await d.wait_job(1, State.QUEUED)
    await d.app.stop()
    # As if the process had died between marking the job and hearing GoFax's answer.
    store = Store(tmp_path / "store.db")
    store.move(1, State.QUEUED, State.SUBMITTING)
    store.close()
    d2 = await start(tmp_path, sink)
    daemons.append(d2)
    [notice] = await d2.notices(1)
    assert d2.job(1).state is State.UNCERTAIN
    assert "uncertain" in notice.message["Subject"].lower() or "may not" in notice.message["Subject"]
    assert fax_puts(d2) == []


async def test_queued_jobs_continue_after_a_restart(tmp_path: Path, sink: SmtpSink,
                                                    daemons: list[Daemon]) -> None:
    d = await start(tmp_path, sink, gofax={"retry_initial_seconds": 1, "retry_max_seconds": 1})
    d.sim.inject("PUT /v1.0/SendFax", "status", status=503)
    await d.send(fax_mail())
    await d.wait_job(1, State.QUEUED)
    await d.app.stop()
    d2 = await start(tmp_path, sink)
    daemons.append(d2)
    await d2.notices(1, timeout=10)
    assert d2.job(1).state is State.SENT


async def test_the_notice_waits_for_the_smarthost(daemon: Daemon, sink: SmtpSink) -> None:
    await sink.stop()
    await daemon.send(fax_mail())
    await daemon.wait_job(1, State.SENT)
    await until(lambda: daemon.app.outbox is not None and not daemon.app.outbox.healthy, 5)
    await sink.start()
    [notice] = await daemon.notices(1, timeout=10)
    assert "sent" in notice.message["Subject"]
