"""Receiving, end to end through the whole daemon: faxes to mailboxes, SMS replies into threads."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from pathlib import Path

from daemon import Daemon, start
from smtp_sink import SmtpSink
from test_intake_message import make_pdf

ROUTES = {"route": [{"number": "61298765432", "to": ["reception@example.com",
                                                     "archive@example.com"]}]}


async def test_a_webhook_makes_a_received_fax_arrive_before_the_poll(
        tmp_path: Path, sink: SmtpSink, daemons: list[Daemon]) -> None:
    d = await start(tmp_path, sink, receive={"poll_seconds": 60, **ROUTES})
    daemons.append(d)
    await asyncio.sleep(0.3)                 # the first poll has come and gone
    pdf = make_pdf(2)
    fax_id = d.sim.receive_fax(from_number="61733334444", to_number="61298765432", pdf=pdf)
    mails = await d.notices(2, timeout=5)    # the next poll is a minute away
    assert sorted(r for m in mails for r in m.rcpt_tos) == ["archive@example.com",
                                                           "reception@example.com"]
    for m in mails:
        msg = m.message
        assert msg["Subject"].strip() == "Fax from +61 7 3333 4444 (2 pages)"
        [attachment] = list(msg.iter_attachments())
        assert attachment.get_content() == pdf
        assert attachment.get_filename().startswith("fax-from-61733334444-")
    await asyncio.sleep(0.5)
    assert len(sink.messages) == 2            # and each mailbox once
    assert fax_id in d.sim.received


def sms_mail(text: str, message_id: str, in_reply_to: str | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@example.com"
    msg["To"] = "61412345678@sms.local"
    msg["Subject"] = "Appointment"
    msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    msg.set_content(text)
    return msg


async def test_a_three_turn_sms_conversation_stays_in_one_thread(
        tmp_path: Path, sink: SmtpSink, daemons: list[Daemon]) -> None:
    d = await start(tmp_path, sink, sms={"sender_id": "61400000000",
                                         "reply_numbers": ["61400000000"]})
    daemons.append(d)
    # Turn 1: Alice texts by mail; Bob answers by SMS; the answer lands under Alice's mail.
    await d.send(sms_mail("Can you come at 3pm?", "<turn1@example.com>"))
    await d.notices(1)                                    # "delivered"
    [job1] = d.jobs()
    d.sim.sms_reply("61412345678", "61400000000", "Make it 4pm?", message_id=job1.gofax_id)
    [_, reply1] = await d.notices(2)
    r1 = reply1.message
    assert reply1.rcpt_tos == ["alice@example.com"]
    assert r1["Subject"].strip() == "SMS from +61 412 345 678"
    assert r1["In-Reply-To"] == "<turn1@example.com>"
    assert r1["Reply-To"] == "61412345678@sms.local"
    assert "Make it 4pm?" in r1.get_body(("plain",)).get_content()
    # Turn 2: Alice answers that mail; it goes out as the next SMS, with her quote stripped.
    answer = "4pm is fine.\n\nOn Fri, Bob wrote:\n> Make it 4pm?\n"
    await d.send(sms_mail(answer, "<turn2@example.com>", in_reply_to=r1["Message-ID"]),
                 rcpts=[str(r1["Reply-To"])])
    await d.notices(3)
    job2 = d.jobs()[1]
    assert job2.sms_text == "4pm is fine."
    # Turn 3: Bob answers again, without a MessageID: matched to the latest SMS to him.
    d.sim.sms_reply("61412345678", "61400000000", "See you then")
    [*_, reply2] = await d.notices(4)
    assert reply2.message["In-Reply-To"] == "<turn2@example.com>"
    # The thread: reply2 → turn2 → reply1 → turn1.
    assert "<turn2@example.com>" in reply2.message["References"]
    await asyncio.sleep(0.5)
    assert len(sink.messages) == 4                        # replies are mailed once
