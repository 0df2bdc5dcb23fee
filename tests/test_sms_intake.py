"""SMS by mail over real SMTP sessions: text extraction, part counting and refusals."""

from __future__ import annotations

import pytest
from test_intake_message import make_mail, make_pdf
from test_intake_smtp import Intake, IntakeFactory, send

from bridge import replies

MOBILE = "0412345678@sms.local"


async def test_an_sms_is_queued_with_its_text_and_parts(intake: Intake) -> None:
    answers = await send(intake.port, make_mail(body="See you at 3pm.\n", to=MOBILE),
                         rcpts=[MOBILE])
    assert answers[f"RCPT {MOBILE}"].is_(replies.RECIPIENT_OK)
    assert "SMS to +61 412 345 678" in answers[f"RCPT {MOBILE}"].text
    assert answers["DATA"].is_(replies.QUEUED)
    [job] = intake.jobs()
    assert (job.kind, job.to_number, job.sms_text, job.sms_parts) == (
        "sms", "61412345678", "See you at 3pm.", 1)
    assert intake.document_count() == 0


async def test_a_landline_is_refused_for_sms(intake: Intake) -> None:
    answers = await send(intake.port, make_mail(to="0298765432@sms.local"),
                         rcpts=["0298765432@sms.local"])
    answer = answers["RCPT 0298765432@sms.local"]
    assert answer.is_(replies.NOT_A_MOBILE) and "+61 2 9876 5432" in answer.text
    intake.assert_empty()


async def test_a_bad_sms_number_says_why(intake: Intake) -> None:
    answers = await send(intake.port, make_mail(), rcpts=["04123@sms.local"])
    assert answers["RCPT 04123@sms.local"].is_(replies.BAD_SMS_NUMBER)


async def test_quotes_and_signature_are_not_sent(intake: Intake) -> None:
    body = ("Yes, Thursday works.\n\n-- \nAlice Smith\nACME Legal\n\n"
            "On Wed, 2 Dec 2026 at 09:00, Bob <bob@example.com> wrote:\n> Can we meet?\n")
    await send(intake.port, make_mail(body=body, to=MOBILE), rcpts=[MOBILE])
    [job] = intake.jobs()
    assert job.sms_text == "Yes, Thursday works."


async def test_an_empty_body_sends_the_subject(intake: Intake) -> None:
    await send(intake.port, make_mail(body="\n", subject="Running 10 min late", to=MOBILE),
               rcpts=[MOBILE])
    [job] = intake.jobs()
    assert job.sms_text == "Running 10 min late"


async def test_no_text_and_no_subject_is_refused(intake: Intake) -> None:
    answers = await send(intake.port, make_mail(body="\n", subject="", to=MOBILE), rcpts=[MOBILE])
    assert answers["DATA"].is_(replies.EMPTY_SMS)
    intake.assert_empty()


async def test_too_many_parts_is_refused_with_the_count(start_intake: IntakeFactory) -> None:
    intake = await start_intake()
    body = "x" * (153 * 6 + 1)      # 7 GSM-7 parts, limit 6
    answers = await send(intake.port, make_mail(body=body, to=MOBILE), rcpts=[MOBILE])
    assert answers["DATA"].is_(replies.SMS_TOO_LONG)
    assert "7 parts" in answers["DATA"].text and "limit is 6" in answers["DATA"].text
    intake.assert_empty()


@pytest.mark.parametrize(("body", "parts", "encoding_is_gsm"), [
    ("a" * 160, 1, True),
    ("a" * 161, 2, True),
    ("a" * 306, 2, True),
    ("a" * 307, 3, True),
    ("ж" * 70, 1, False),
    ("ж" * 71, 2, False),
    ("ж" * 134, 2, False),
    ("ж" * 135, 3, False),
    ("\u201cquoted\u201d \u2013 " + "a" * 148, 1, True),   # smart quotes and dash made GSM-7
])
async def test_part_counts_at_the_boundaries(intake: Intake, body: str, parts: int,
                                             encoding_is_gsm: bool) -> None:
    await send(intake.port, make_mail(body=body, to=MOBILE), rcpts=[MOBILE])
    [job] = intake.jobs()
    assert job.sms_parts == parts
    assert job.sms_text is not None
    assert job.sms_text.isascii() == encoding_is_gsm


async def test_several_sms_recipients_make_one_job_each(intake: Intake) -> None:
    rcpts = [MOBILE, "0423456789@sms.local"]
    answers = await send(intake.port, make_mail(body="Office closed today.", to=MOBILE),
                         rcpts=rcpts)
    assert answers["DATA"].is_(replies.QUEUED)
    jobs = intake.jobs()
    assert [(j.kind, j.to_number, j.sms_text) for j in jobs] == [
        ("sms", "61412345678", "Office closed today."),
        ("sms", "61423456789", "Office closed today.")]
    assert len({j.mail_id for j in jobs}) == 1


async def test_fax_and_sms_recipients_in_one_mail(intake: Intake) -> None:
    raw = make_mail(body="Contract attached.",
                    attachments=[(make_pdf(2), "application/pdf", "contract.pdf")])
    answers = await send(intake.port, raw, rcpts=["0298765432@fax.local", MOBILE])
    assert answers["DATA"].is_(replies.QUEUED)
    fax, sms = intake.jobs()
    assert (fax.kind, sms.kind) == ("fax", "sms")
    assert sms.sms_text == "Contract attached."
    assert [d.filename for d in intake.documents(fax.mail_id)][-1] == "contract.pdf"
