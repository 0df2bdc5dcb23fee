"""[limits] per-sender daily quotas: 452 4.7.1 when used up (try later), 550 5.7.1 when one mail
alone is over the limit; counted from the store over a rolling 24 hours.

bridge.quota is pure and tested on numbers; the rest goes through real SMTP sessions and a real
store (restarts included).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from test_intake_message import make_mail, make_pdf
from test_intake_smtp import Answer, Intake, IntakePool, Raw, send

from bridge import quota, replies
from bridge.config import FaxConfig, LimitsConfig, SmtpConfig, defaults
from bridge.quota import Quota, Usage
from bridge.store import NewDocument, NewJob, NewMail

# --- pure ----------------------------------------------------------------------------------------


def new_mail(*, faxes: int = 1, pages: tuple[int | None, ...] = (1,), sms: tuple[int, ...] = ()) -> NewMail:
    jobs = [NewJob(kind="fax", to_number=f"6129876543{i}", dedupe_key=f"f{i}") for i in range(faxes)]
    jobs += [NewJob(kind="sms", to_number=f"6141234567{i}", dedupe_key=f"s{i}", sms_text="hi",
                    sms_parts=p) for i, p in enumerate(sms)]
    docs = [NewDocument(filename=f"d{i}.pdf", content_type="application/pdf", data=b"%PDF-",
                        pages=p) for i, p in enumerate(pages)] if faxes else []
    return NewMail(mail_from="a@example.com", header_from="", message_id="<m@x>", subject="",
                   notify=True, jobs=jobs, documents=docs)


def test_cost_counts_like_the_store() -> None:
    # Two fax recipients of a mail with a 3-page PDF, a cover (1) and a TIFF of unknown pages.
    mail = new_mail(faxes=2, pages=(1, 3, None), sms=(2, 1))
    assert quota.cost(mail) == Usage(faxes=2, fax_pages=10, sms_parts=3)
    # Only fresh jobs count (the others are a re-sent copy of an accepted mail).
    assert quota.cost(mail, {"f1", "s0"}) == Usage(faxes=1, fax_pages=5, sms_parts=2)
    assert quota.cost(mail, set()) == Usage()


def test_zero_means_no_limit() -> None:
    off = Quota(0, 0, 0)
    assert not off.active
    assert quota.check_recipient("fax", Usage(10**6, 10**6, 10**6), off) is None
    assert quota.check_mail(Usage(10**6, 10**6, 10**6), Usage(10**6, 10**6, 10**6), off) is None


@pytest.mark.parametrize(("kind", "used", "refused"), [
    ("fax", Usage(faxes=4), False),
    ("fax", Usage(faxes=5), True),
    ("fax", Usage(faxes=1, fax_pages=50), True),
    ("fax", Usage(sms_parts=999), False),
    ("sms", Usage(sms_parts=9), False),
    ("sms", Usage(sms_parts=10), True),
    ("sms", Usage(faxes=999, fax_pages=999), False),
])
def test_check_recipient(kind: str, used: Usage, refused: bool) -> None:
    verdict = quota.check_recipient(kind, used, Quota(5, 50, 10))
    assert (verdict is not None) is refused
    if verdict:
        assert verdict.temporary and "[limits]" in verdict.detail


@pytest.mark.parametrize(("used", "adds", "expected"), [
    (Usage(4, 40, 0), Usage(1, 10, 0), None),                 # exactly at the limit: fine
    (Usage(5, 0, 0), Usage(1, 1, 0), "temporary"),            # one fax too many
    (Usage(0, 45, 0), Usage(1, 6, 0), "temporary"),           # pages would exceed
    (Usage(0, 0, 0), Usage(1, 51, 0), "permanent"),           # 51 pages > 50 a day: never
    (Usage(4, 45, 0), Usage(1, 51, 0), "permanent"),          # permanent wins over temporary
    (Usage(0, 0, 8), Usage(0, 0, 3), "temporary"),
    (Usage(0, 0, 0), Usage(0, 0, 11), "permanent"),
])
def test_check_mail(used: Usage, adds: Usage, expected: str | None) -> None:
    verdict = quota.check_mail(used, adds, Quota(5, 50, 10))
    if expected is None:
        assert verdict is None
    else:
        assert verdict is not None and verdict.temporary is (expected == "temporary")


# --- over SMTP -----------------------------------------------------------------------------------

QuotaFactory = Callable[..., Awaitable[Intake]]


@pytest.fixture
async def quota_intake(intake_pool: IntakePool) -> QuotaFactory:
    """``await quota_intake(faxes=…, pages=…, sms=…, db="name")``: an intake with quotas on; the
    same ``db`` name reuses the store file (a restart)."""

    async def start(faxes: int = 0, pages: int = 0, sms: int = 0, db: str = "store") -> Intake:
        cfg = defaults(smtp=SmtpConfig(listen="127.0.0.1:0"), fax=FaxConfig(cover="never"),
                       limits=LimitsConfig(faxes, pages, sms))
        return await intake_pool.start(cfg, db=db)

    return start


def fax(n: int = 0, pages: int = 1, sender: str = "Alice <alice@example.com>") -> bytes:
    return make_mail(body=None, message_id=f"<q{n}-{pages}@example.com>", sender=sender,
                     attachments=[(make_pdf(pages), "application/pdf", "a.pdf")])


def sms(n: int, text: str = "Hello there") -> bytes:
    return make_mail(body=text, subject="", message_id=f"<s{n}@example.com>",
                     to="0412345678@sms.local")


async def test_the_fax_count_is_refused_at_rcpt_once_used_up(quota_intake: QuotaFactory) -> None:
    intake = await quota_intake(faxes=2)
    for n in range(2):
        assert (await send(intake.port, fax(n)))["DATA"].is_(replies.QUEUED)
    answers = await send(intake.port, fax(3))
    rcpt = answers["RCPT 0298765432@fax.local"]
    assert rcpt.is_(replies.QUOTA_REACHED) and rcpt.code == 452
    assert rcpt.text.startswith("4.7.1 daily quota reached for alice@example.com: 2 faxes")
    assert "[limits] faxes_per_day" in rcpt.text
    assert "DATA" not in answers and len(intake.jobs()) == 2
    # Another sender has their own allowance.
    other = await send(intake.port, fax(4, sender="bob@example.com"), mail_from="bob@example.com")
    assert other["DATA"].is_(replies.QUEUED)


async def test_pages_that_would_exceed_are_452_and_too_many_for_a_day_550(
        quota_intake: QuotaFactory) -> None:
    intake = await quota_intake(pages=5)
    assert (await send(intake.port, fax(1, pages=3)))["DATA"].is_(replies.QUEUED)
    later = await send(intake.port, fax(2, pages=3))
    assert later["DATA"].is_(replies.QUOTA_REACHED) and "3 fax pages" in later["DATA"].text
    never = await send(intake.port, fax(3, pages=6))
    assert never["DATA"].is_(replies.QUOTA_EXCEEDED) and never["DATA"].code == 550
    assert never["DATA"].text.startswith("5.7.1 this mail alone exceeds the daily quota")
    assert "6 fax pages" in never["DATA"].text
    assert len(intake.jobs()) == 1
    # Two fax recipients of a 2-page mail need 4 pages: over the 2 that are left.
    both = await send(intake.port, fax(4, pages=2), rcpts=["0298765432@fax.local", "0398765432@fax.local"])
    assert both["DATA"].is_(replies.QUOTA_REACHED)
    assert len(intake.jobs()) == 1


async def test_sms_parts(quota_intake: QuotaFactory) -> None:
    intake = await quota_intake(sms=3)
    rcpt = ["0412345678@sms.local"]
    assert (await send(intake.port, sms(1, "x" * 200), rcpts=rcpt))["DATA"].is_(replies.QUEUED)  # 2 parts
    assert (await send(intake.port, sms(2, "y" * 200), rcpts=rcpt))["DATA"].is_(replies.QUOTA_REACHED)
    assert (await send(intake.port, sms(3, "z"), rcpts=rcpt))["DATA"].is_(replies.QUEUED)
    assert (await send(intake.port, sms(4, "w"), rcpts=rcpt))["RCPT 0412345678@sms.local"]\
        .is_(replies.QUOTA_REACHED)
    # Faxes are not SMS: a fax still goes.
    assert (await send(intake.port, fax(5)))["DATA"].is_(replies.QUEUED)


async def test_a_restart_does_not_reset_the_count(quota_intake: QuotaFactory) -> None:
    first = await quota_intake(faxes=1, db="shared")
    assert (await send(first.port, fax(1)))["DATA"].is_(replies.QUEUED)
    await first.server.stop(grace_seconds=1)
    second = await quota_intake(faxes=1, db="shared")
    answers = await send(second.port, fax(2))
    assert answers["RCPT 0298765432@fax.local"].is_(replies.QUOTA_REACHED)


async def test_the_window_rolls_over_24_hours(quota_intake: QuotaFactory) -> None:
    intake = await quota_intake(faxes=1)
    # A fax accepted 25 hours ago no longer counts; one 23 hours ago does.
    intake.store.sync.clock = lambda: time.time() - 25 * 3600
    assert (await send(intake.port, fax(1)))["DATA"].is_(replies.QUEUED)
    intake.store.sync.clock = time.time
    assert (await send(intake.port, fax(2)))["DATA"].is_(replies.QUEUED)
    assert (await send(intake.port, fax(3)))["RCPT 0298765432@fax.local"].is_(replies.QUOTA_REACHED)


async def test_the_sender_is_compared_case_insensitively(quota_intake: QuotaFactory) -> None:
    intake = await quota_intake(faxes=1)
    assert (await send(intake.port, fax(1)))["DATA"].is_(replies.QUEUED)
    answers = await send(intake.port, fax(2), mail_from="ALICE@EXAMPLE.COM")
    assert answers["RCPT 0298765432@fax.local"].is_(replies.QUOTA_REACHED)


async def test_a_resent_copy_is_answered_250_not_refused(quota_intake: QuotaFactory) -> None:
    """The MTA never saw our 250 and sends the same mail again: it must get 250 (nothing new is
    queued), not a quota refusal: the copy costs nothing. (Had the first copy used the allowance
    up completely, the copy would get 452 at RCPT, before we can know it is a copy; its MTA
    retries, and once the window frees up it is answered 250 without a second fax.)"""
    intake = await quota_intake(pages=3)
    raw = fax(1, pages=2)
    assert (await send(intake.port, raw))["DATA"].is_(replies.QUEUED)
    assert (await send(intake.port, raw))["DATA"].is_(replies.ALREADY_QUEUED)  # 2 + 2 > 3
    assert len(intake.jobs()) == 1


async def raw_send(port: int, mail: bytes) -> Answer:
    """One mail over an asyncio stream (no thread): the last answer of the transaction."""
    raw = await Raw.connect(port)
    try:
        assert (await raw.reply()).code == 220
        for line in (b"EHLO x", b"MAIL FROM:<alice@example.com>", b"RCPT TO:<0298765432@fax.local>"):
            reply = await raw.command(line)
            if reply.code >= 400:
                return reply
        assert (await raw.command(b"DATA")).code == 354
        stuffed = re.sub(rb"(?m)^\.", b"..", mail)
        return await raw.command(stuffed + b".")
    finally:
        raw.close()


async def test_concurrent_sessions_cannot_overrun_the_quota(quota_intake: QuotaFactory) -> None:
    intake = await quota_intake(faxes=3)
    # All eight pass RCPT (nothing used yet) and reach DATA together.
    results = await asyncio.gather(*(raw_send(intake.port, fax(n)) for n in range(8)))
    assert sum(1 for a in results if a.is_(replies.QUEUED)) == 3
    assert sum(1 for a in results if a.is_(replies.QUOTA_REACHED)) == 5
    assert len(intake.jobs()) == 3


async def test_usage_counts_jobs_whatever_became_of_them(quota_intake: QuotaFactory,
                                                          tmp_path: Path) -> None:
    """A failed fax was still an attempt to spend money; it counts."""
    intake = await quota_intake(faxes=1)
    assert (await send(intake.port, fax(1)))["DATA"].is_(replies.QUEUED)
    [job] = intake.jobs()
    from bridge.states import State

    intake.store.sync.move(job.id, State.QUEUED, State.FAILED, detail="test", last_error="x")
    answers: dict[str, Any] = await send(intake.port, fax(2))
    assert answers["RCPT 0298765432@fax.local"].is_(replies.QUOTA_REACHED)
