"""The short, seeded crash and fault checks (``tools/chaos.py`` runs the long ones).

Each test runs the daemon as a real process (``python -m bridge run``) against ``faxbridge sim``
in another process, with a test smarthost in the test's loop, and checks faxbridge's promises
from the outside (see ``tools/chaos.py`` for the list). Together they take about 40 s on a
2-core machine. The report is printed (``pytest -s`` shows it) and every violation fails the test
with the whole report as its message.

The seeds fix the mails, the fault choices and the kill delays; the moments of the kills depend
on timing, so a run stresses the same things every time but not at the identical instant.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import daemon as inproc  # tests/daemon.py: the whole daemon in this loop
import pytest
from smtp_sink import SmtpSink

from bridge.states import State
from tools.chaos import Options, Report, run_chaos, run_disk_full
from tools.harness import fax_message, make_pdf

pytestmark = pytest.mark.timeout(120)


def _show(report: Report) -> Report:
    print(report.render())
    return report


async def test_sigkill_under_load_loses_nothing_and_sends_nothing_twice(tmp_path: Path) -> None:
    """8 clients, 3 SIGKILLs at random moments with restarts, 10% of answers lost on the way
    (the client re-sends the same bytes), and received faxes arriving meanwhile."""
    report = _show(await run_chaos(Options(
        mails=60, clients=8, kills=3, faxes_in=20, seed=11, kill_gap=(0.5, 1.5),
        client_pause=0.4, cut_rate=0.1, drain_seconds=40, workdir=tmp_path, quiet=True)))
    assert not report.violations, report.render()
    counts = report.counts
    assert counts["SIGKILLs"] == 3
    assert counts["250s cut off by the relay (lost answers)"] > 0
    assert counts["re-sent recipients answered 'already queued'"] > 0
    assert counts["  delivered exactly once"] == counts["  mailbox deliveries expected"] == 40


async def test_random_faults_and_sigkills_keep_every_promise(tmp_path: Path) -> None:
    """20% of simulator calls fail (5xx, 429, delays past the timeout, dropped connections
    before or after processing) and the smarthost defers 20% of deliveries, under kills."""
    report = _show(await run_chaos(Options(
        mails=50, clients=8, kills=3, faxes_in=10, seed=23, fault_rate=0.2, kill_gap=(0.5, 1.5),
        client_pause=0.4, drain_seconds=45, workdir=tmp_path, quiet=True)))
    assert not report.violations, report.render()
    assert report.counts["simulator faults applied"] > 0
    assert report.counts["smarthost refusals (451)"] > 0


async def test_a_full_disk_defers_mail_and_loses_nothing_accepted(tmp_path: Path) -> None:
    """The store's disk fills up (a tmpfs in a private mount namespace where possible, else a
    file-size limit on the daemon) while submissions are in flight: intake answers 4xx, never
    5xx, the daemon stays up, and once space is back, without a restart, every mail that got
    250 is faxed once and notified (writes that record GoFax's answers are retried)."""
    report = _show(await run_disk_full(
        Options(mails=24, clients=8, seed=5, drain_seconds=30, workdir=tmp_path, quiet=True),
        in_flight=True, restart_after=False))
    assert not report.violations, report.render()
    assert report.counts["daemon alive while the disk was full"] is True
    replies = report.counts["intake replies while full"]
    assert isinstance(replies, dict) and all(code.startswith("4") for code in replies)


async def test_a_failed_write_after_a_successful_submission_does_not_strand_the_job(
        tmp_path: Path) -> None:
    """Minimal repro of what the disk-full run finds (``tools/chaos.py --disk-full``): the PUT
    succeeds, the one write that records it fails, the disk is fine again right after."""
    async with SmtpSink() as sink:
        d = await inproc.start(tmp_path, sink)
        try:
            assert d.app.store is not None
            store = d.app.store.sync
            real_move = store.move
            failed: list[int] = []

            def move_failing_once(job_id: int, expected: State, new: State, **kw: Any) -> Any:
                if (expected, new) == (State.SUBMITTING, State.SUBMITTED) and not failed:
                    failed.append(job_id)
                    raise sqlite3.OperationalError("database or disk is full")
                return real_move(job_id, expected, new, **kw)

            store.move = move_failing_once  # type: ignore[method-assign]
            mail = fax_message(sender="alice@example.com", to=["0298765432@fax.local"],
                               message_id="<stranded@example.com>", subject="one write fails",
                               attachments=[("a.pdf", make_pdf(3000, "stranded"))])
            await d.send(mail, rcpts=["0298765432@fax.local"])
            await inproc.until(lambda: bool(failed), 5, lambda: "no submission was made")
            assert len(d.sim.faxes) == 1  # GoFax has the fax
            # A working sender records it (or at worst calls it uncertain and says so) soon;
            # status polls run every 0.3 s here.
            await d.wait_job(failed[0], State.SENT, State.UNCERTAIN, State.FAILED, timeout=3)
            await d.notices(1, timeout=3)
        finally:
            await d.app.stop()
            await asyncio.sleep(0)
