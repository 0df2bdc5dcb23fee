"""SMS by mail, end to end: SMTP in → PUT /v1.0/SMS (simulator) → status → threaded notice."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

import pytest
from daemon import Daemon, start
from smtp_sink import SmtpSink

from bridge.states import State

MOBILE = "0412345678@sms.local"


def sms_mail(body: str = "Your appointment is confirmed for 3pm.", *, to: str = MOBILE,
             subject: str = "Appointment") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Alice <alice@example.com>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = "<s1@example.com>"
    msg.set_content(body)
    return msg


async def run(tmp_path: Path, sink: SmtpSink, daemons: list[Daemon], **sections: dict[str, object]
              ) -> Daemon:
    d = await start(tmp_path, sink, **sections)  # type: ignore[arg-type]
    daemons.append(d)
    return d


def sms_puts(d: Daemon) -> list[dict[str, object]]:
    return [r.json for r in d.sim.requests if r.method == "PUT" and r.path == "/v1.0/SMS"]


async def test_an_sms_is_sent_with_the_sender_id_and_the_sender_told(
        tmp_path: Path, sink: SmtpSink, daemons: list[Daemon]) -> None:
    d = await run(tmp_path, sink, daemons, sms={"sender_id": "ACMELegal"})
    await d.send(sms_mail())
    [notice] = await d.notices(1)
    [put] = sms_puts(d)
    assert put["To"] == ["61412345678"]
    assert put["From"] == "ACMELegal"
    assert put["Body"] == "Your appointment is confirmed for 3pm."
    job = d.jobs()[0]
    assert job.state is State.SENT and job.sms_parts == 1
    msg = notice.message
    assert msg["Subject"].strip().startswith("SMS to +61 412 345 678 delivered (1 part)")
    assert msg["In-Reply-To"] == "<s1@example.com>"


async def test_a_failed_sms_says_why(tmp_path: Path, sink: SmtpSink,
                                     daemons: list[Daemon]) -> None:
    d = await run(tmp_path, sink, daemons)
    d.sim.set_number_behaviour("61412345678", "invalid")
    await d.send(sms_mail())
    [notice] = await d.notices(1)
    assert d.jobs()[0].state is State.FAILED
    subject = notice.message["Subject"].strip()
    assert subject.startswith("SMS to +61 412 345 678 FAILED")
    assert "invalid" in notice.message.get_body(("plain",)).get_content().lower()


@pytest.mark.parametrize("behaviour", ["undeliverable", "expired", "no_credit"])
async def test_every_failure_status_ends_failed(tmp_path: Path, sink: SmtpSink,
                                                daemons: list[Daemon], behaviour: str) -> None:
    d = await run(tmp_path, sink, daemons)
    d.sim.set_number_behaviour("61412345678", behaviour)
    await d.send(sms_mail())
    [notice] = await d.notices(1)
    assert d.jobs()[0].state is State.FAILED
    assert "FAILED" in notice.message["Subject"]


async def test_success_notices_can_be_turned_off_but_failures_are_always_told(
        tmp_path: Path, sink: SmtpSink, daemons: list[Daemon]) -> None:
    d = await run(tmp_path, sink, daemons, sms={"notify_success": False})
    d.sim.set_number_behaviour("61423456789", "invalid")
    await d.send(sms_mail(), rcpts=[MOBILE, "0423456789@sms.local"])
    [notice] = await d.notices(1)
    await d.wait_job(1, State.SENT)
    await d.wait_job(2, State.FAILED)
    assert "+61 423 456 789 FAILED" in notice.message["Subject"]


async def test_several_recipients_one_job_and_one_call_each(tmp_path: Path, sink: SmtpSink,
                                                             daemons: list[Daemon]) -> None:
    d = await run(tmp_path, sink, daemons)
    await d.send(sms_mail("Office closed today."), rcpts=[MOBILE, "0423456789@sms.local"])
    notices = await d.notices(2)
    assert sorted(p["To"][0] for p in sms_puts(d)) == ["61412345678", "61423456789"]  # type: ignore[index]
    assert all(len(p["To"]) == 1 for p in sms_puts(d))  # type: ignore[arg-type]
    assert {n.message["X-Faxbridge-Job"] for n in notices} == {"1", "2"}


async def test_a_long_sms_reports_its_parts(tmp_path: Path, sink: SmtpSink,
                                            daemons: list[Daemon]) -> None:
    d = await run(tmp_path, sink, daemons)
    await d.send(sms_mail("a" * 161))
    [notice] = await d.notices(1)
    assert "(2 parts)" in notice.message["Subject"]


async def test_an_sms_answer_lost_is_uncertain_not_resent(tmp_path: Path, sink: SmtpSink,
                                                         daemons: list[Daemon]) -> None:
    d = await run(tmp_path, sink, daemons)
    d.sim.inject("PUT /v1.0/SMS", "drop_after_processing")
    await d.send(sms_mail())
    [notice] = await d.notices(1)
    assert d.jobs()[0].state is State.UNCERTAIN
    assert len(sms_puts(d)) == 1
    assert "uncertain" in notice.message["Subject"].lower() or "may not" in notice.message["Subject"]
