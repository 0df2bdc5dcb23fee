"""The crash and fault harness: faxbridge's promises checked against a real daemon process.

    .venv/bin/python tools/chaos.py                       # 500 mails, 8 clients, 3 kills
    .venv/bin/python tools/chaos.py --fault-rate 0.2 --faxes-in 200 --kills 6 --seed 7
    .venv/bin/python tools/chaos.py --disk-full           # the store's disk fills up mid-run

What runs: ``faxbridge run`` (``python -m bridge run``) as a child process, ``faxbridge sim`` in
another (its record of what "GoFax" received survives every crash of the daemon), and a test
smarthost in this process. Clients send fax mails (1-3 PDFs, some to two fax numbers, a few with
a bad number or no document) the way MTAs do: a deferred recipient or a session cut off by a
kill is sent again, byte for byte. Meanwhile the daemon is SIGKILLed at random moments and
restarted, faxes arrive at the simulator, and optionally a share of the simulator's API calls
fail at random (5xx, 429, delays past the client timeout, dropped connections) and the
smarthost refuses a share of deliveries with 451.

At the end the daemon is stopped gracefully and the promises are checked from the outside:

- every recipient of a mail that got ``250`` has exactly one job, and exactly one fax at the
  simulator (found by ClientReference and by the sha256 of its documents), or the job is
  ``uncertain`` and has at most one; a recipient refused (5xx), and a mail without a document,
  has none; no fax at the simulator is unexplained;
- every job is final (sent, failed, uncertain) in ``faxbridge jobs --json``;
- every job's sender got exactly one notice (``X-Faxbridge-Job``), threaded under their mail
  (``In-Reply-To``); the same notice delivered again after a crash is counted apart (the README
  promises *at least once* delivery of the one notice);
- every received fax reached each routed mailbox exactly once (``X-Faxbridge-Fax``), again with
  re-deliveries of the same message counted apart;
- a valid mail is never refused for good (5xx), not even when the disk is full.

The seed fixes the mails, the fault choices and the kill delays; the moments themselves depend
on timing, so two runs with one seed stress the same things but not at identical instants.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make "tools" importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.harness import (
    AnswerCutter,
    DaemonProcess,
    Delivered,
    Outcome,
    SimProcess,
    Sink,
    StoreDisk,
    deliver,
    fax_message,
    free_port,
    make_pdf,
    sha256,
)

FINAL = {"sent", "failed", "uncertain"}
ROUTED = ("reception@example.com", "archive@example.com")  # harness.DaemonProcess's route
BAD_NUMBERS = ("12@fax.local", "0000@fax.local", "1900123456@fax.local")


@dataclass
class Options:
    mails: int = 500
    clients: int = 8
    kills: int = 3
    fault_rate: float = 0.0
    refuse_rate: float | None = None   # the smarthost's; None = same as fault_rate
    seed: int = 1
    faxes_in: int = 0
    kill_gap: tuple[float, float] = (1.0, 4.0)   # seconds between a restart and the next kill
    client_pause: float = 0.0          # each client waits U(0, this) s between mails
    cut_rate: float = 0.1              # share of 250s to DATA the relay swallows (lost answers)
    doc_bytes: tuple[int, int] = (2_000, 30_000)
    two_recipient_share: float = 0.25
    bad_recipient_share: float = 0.05
    no_document_share: float = 0.04
    drain_seconds: float = 120.0
    workdir: Path | None = None
    keep: bool = False
    quiet: bool = False

    @property
    def smarthost_refusals(self) -> float:
        return self.fault_rate if self.refuse_rate is None else self.refuse_rate


@dataclass
class MailPlan:
    index: int
    sender: str
    rcpts: list[str]
    numbers: dict[str, str | None]     # rcpt → the GoFax digits, None: must be refused
    message_id: str
    data: bytes
    doc_hashes: list[str]              # the attachments, in order
    has_document: bool
    outcome: Outcome | None = None


@dataclass
class Report:
    title: str
    counts: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    workdir: str = ""

    def render(self) -> str:
        lines = [f"== {self.title}"]
        width = max((len(k) for k in self.counts), default=10)
        lines += [f"  {k.ljust(width)}  {v}" for k, v in self.counts.items()]
        lines += [f"  note: {n}" for n in self.notes]
        if self.violations:
            lines.append(f"  PROMISE VIOLATIONS ({len(self.violations)}):")
            lines += [f"    - {v}" for v in self.violations[:60]]
            if len(self.violations) > 60:
                lines.append(f"    … and {len(self.violations) - 60} more")
        else:
            lines.append("  promises: all held")
        if self.workdir:
            lines.append(f"  logs: {self.workdir}")
        return "\n".join(lines)


# --- the workload --------------------------------------------------------------------------------

def fax_numbers(count: int = 40) -> list[str]:
    """Valid Sydney numbers as people write them: 02 9876 54xx."""
    return [f"029876{5400 + i:04d}" for i in range(count)]


def digits(local: str) -> str:
    return "61" + local[1:]


def plan_mails(opts: Options, *, prefix: str = "m") -> list[MailPlan]:
    rng = random.Random(opts.seed)
    numbers = fax_numbers()
    plans = []
    for i in range(opts.mails):
        sender = f"user{i % 8}@example.com"
        message_id = f"<{prefix}{i}.s{opts.seed}@chaos.example.com>"
        has_document = rng.random() >= opts.no_document_share
        count = 2 if rng.random() < opts.two_recipient_share else 1
        locals_ = rng.sample(numbers, count)
        rcpts = [f"{n}@fax.local" for n in locals_]
        mapping: dict[str, str | None] = {r: digits(n) for r, n in zip(rcpts, locals_, strict=True)}
        if rng.random() < opts.bad_recipient_share:
            bad = rng.choice(BAD_NUMBERS)
            rcpts.append(bad)
            mapping[bad] = None
        attachments = []
        if has_document:
            for a in range(rng.randint(1, 3)):
                size = rng.randint(*opts.doc_bytes)
                attachments.append((f"doc{i}-{a}.pdf",
                                    make_pdf(size, f"{prefix}{i}.{a}.s{opts.seed}",
                                             pages=rng.randint(1, 3))))
        # A mail with text but no attachment is faxed as a cover page; one with neither must
        # be refused (554), so the document-less mails have no text either.
        body = rng.choice(["", "", "Please see attached.", "Hi,\n\nthe signed pages.\n\n-- \nBob"]
                          ) if has_document else ""
        data = fax_message(sender=sender, to=rcpts, message_id=message_id,
                           subject=f"chaos mail {i}", attachments=attachments, body=body)
        plans.append(MailPlan(i, sender, rcpts, mapping, message_id, data,
                              [sha256(d) for _, d in attachments], has_document))
    return plans


# --- running it ----------------------------------------------------------------------------------

class Run:
    """One harness run: the peers, the daemon, the record of what happened."""

    def __init__(self, opts: Options, title: str) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed * 7919 + 1)
        self.workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="faxbridge-chaos-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.report = Report(title, workdir=str(self.workdir))
        self.sink = Sink(refuse_rate=opts.smarthost_refusals, seed=opts.seed + 1)
        self.sim: SimProcess | None = None
        self.daemon: DaemonProcess | None = None
        self.cutter: AnswerCutter | None = None
        self.kills: list[float] = []
        self.restart_seconds: list[float] = []
        self.received_ids: list[int] = []
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        if not self.opts.quiet:
            print(f"[{time.monotonic() - self.started:6.1f}s] {text}", flush=True)

    async def start(self, *, store_disk: StoreDisk | None = None) -> None:
        await self.sink.start()
        # The simulator needs the daemon's web address for webhooks and the daemon needs the
        # simulator's URL: choose the simulator's port first, then build both.
        sim_port = free_port()
        store = store_disk.directory / "faxbridge.db" if store_disk else None
        self.daemon = DaemonProcess(self.workdir, sim_url=f"http://127.0.0.1:{sim_port}",
                                    smarthost=self.sink.address, store_path=store,
                                    prefix=store_disk.prefix if store_disk else ())
        self.sim = SimProcess(self.workdir, webhook_url=self.daemon.web_url,
                              fault_rate=self.opts.fault_rate, fault_seed=self.opts.seed,
                              fault_delay_seconds=1.5, port=sim_port)
        await self.sim.start()
        took = await self.daemon.start()
        self.cutter = await AnswerCutter(self.daemon.smtp_port, rate=self.opts.cut_rate,
                                         seed=self.opts.seed + 2).start()
        self.say(f"daemon up in {took:.2f} s (smtp {self.daemon.smtp_port}, web "
                 f"{self.daemon.web_port}, sim {self.sim.url}, smarthost {self.sink.address})")

    async def close(self) -> None:
        if self.daemon is not None:
            if self.daemon.process.running:
                await self.daemon.kill()
            await self.daemon.close()
        if self.sim is not None:
            await self.sim.stop()
        await self.sink.stop()
        if self.cutter is not None:
            await self.cutter.stop()

    # --- load, kills, arrivals ---------------------------------------------------------------

    async def send_all(self, plans: Sequence[MailPlan], *, give_up_after: float = 90.0) -> None:
        assert self.cutter is not None
        port = self.cutter.port  # clients reach the intake through the answer-cutting relay
        queue: asyncio.Queue[MailPlan] = asyncio.Queue()
        for plan in plans:
            queue.put_nowait(plan)

        async def client(number: int) -> None:
            rng = random.Random(self.opts.seed * 1000 + number)
            while not queue.empty():
                plan = queue.get_nowait()
                if self.opts.client_pause:
                    await asyncio.sleep(rng.uniform(0, self.opts.client_pause))
                plan.outcome = await deliver(plan.data, sender=plan.sender, rcpts=plan.rcpts,
                                             port=port, rng=rng,
                                             give_up_after=give_up_after)

        await asyncio.gather(*(client(n) for n in range(self.opts.clients)))

    async def killer(self, count: int) -> None:
        assert self.daemon is not None
        for _ in range(count):
            await asyncio.sleep(self.rng.uniform(*self.opts.kill_gap))
            await self.daemon.kill()
            self.kills.append(time.monotonic() - self.started)
            self.say(f"SIGKILL #{len(self.kills)}")
            await asyncio.sleep(self.rng.uniform(0.0, 0.3))
            self.restart_seconds.append(await self.daemon.start())

    async def arrivals(self, count: int, spread_seconds: float) -> None:
        assert self.sim is not None
        for i in range(count):
            await asyncio.sleep(self.rng.uniform(0, 2 * spread_seconds / max(1, count)))
            self.received_ids.append(await self.sim.receive_fax(
                from_number=f"6173333{i % 10000:04d}", csid=f"CHAOS {i}"))

    async def drain(self) -> bool:
        """Waits until no job waits, no mail waits and every received fax reached its
        mailboxes (or was reported parked). False on timeout."""
        assert self.daemon is not None
        deadline = time.monotonic() + self.opts.drain_seconds
        last = ""
        while time.monotonic() < deadline:
            metrics = await self.daemon.metrics() or {}
            waiting = sum(metrics.get(f'faxbridge_jobs{{state="{s}"}}', 1)
                          for s in ("queued", "submitting", "submitted", "held"))
            pending = metrics.get('faxbridge_outbox{state="pending"}', 1)
            missing = len(self.missing_received())
            state = f"jobs waiting {waiting:g}, mail pending {pending:g}, received faxes " \
                    f"not yet in a mailbox {missing}"
            if state != last:
                self.say(f"draining: {state}")
                last = state
            if metrics and not waiting and not pending and not missing:
                return True
            await asyncio.sleep(0.25)
        self.report.violations.append(f"not settled within {self.opts.drain_seconds:g} s: {last}")
        return False

    def missing_received(self) -> list[tuple[int, str]]:
        seen = {(m.header("X-Faxbridge-Fax"), rcpt.lower()) for m in self.sink.messages
                for rcpt in m.rcpt_tos}
        parked = {m.header("X-Faxbridge-Alert") for m in self.sink.messages}
        return [(fid, rcpt) for fid in self.received_ids for rcpt in ROUTED
                if (str(fid), rcpt) not in seen and f"fax-parked:{fid}" not in parked]

    async def finish(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Graceful stop, then the operator's and the simulator's views."""
        assert self.daemon is not None and self.sim is not None
        code = await self.daemon.stop()
        self.report.counts["graceful stop exit code"] = code
        if code != 0:
            self.report.violations.append(f"SIGTERM: the daemon exited with {code} (expected 0)")
        jobs_view, sim_view = await self.daemon.jobs(), await self.sim.faxes()
        if self.opts.fault_rate:
            log = self.sim.process.log_path.read_text("utf-8", "replace")
            self.report.counts["simulator faults applied"] = log.count("applying fault")
        return jobs_view, sim_view

    # --- the checks --------------------------------------------------------------------------

    def check(self, plans: Sequence[MailPlan], jobs_view: dict[str, Any],
              sim_view: dict[str, Any]) -> None:
        r = self.report
        v = r.violations
        jobs = {int(j["id"]): j for j in jobs_view["jobs"]}
        faxes = sim_view["sent"]
        by_msgid = {p.message_id: p for p in plans}
        by_hash = {h: p for p in plans for h in p.doc_hashes}

        # Notices, by job: distinct messages (by Message-ID) and re-deliveries of the same one.
        notices: dict[int, list[Delivered]] = defaultdict(list)
        for m in self.sink.messages:
            if m.header("X-Faxbridge-Job"):
                notices[int(m.header("X-Faxbridge-Job"))].append(m)
        job_mail: dict[int, MailPlan] = {}
        redelivered_notices = 0
        for job_id, got in notices.items():
            distinct = {m.header("Message-ID"): m for m in got}
            redelivered_notices += len(got) - len(distinct)
            if job_id not in jobs:
                v.append(f"a notice for job {job_id}, which faxbridge jobs does not list")
            if len(distinct) > 1:
                v.append(f"job {job_id}: {len(distinct)} different notices: "
                         + "; ".join(m.header("Subject") for m in distinct.values()))
            for m in distinct.values():
                plan = by_msgid.get(m.header("In-Reply-To"))
                if plan is None:
                    v.append(f"job {job_id}: notice not threaded under a mail we sent "
                             f"(In-Reply-To {m.header('In-Reply-To')!r})")
                    continue
                job_mail[job_id] = plan
                if [r_.lower() for r_ in m.rcpt_tos] != [plan.sender]:
                    v.append(f"job {job_id}: notice went to {m.rcpt_tos}, not {plan.sender}")
        for job_id, job in jobs.items():
            if job["state"] not in FINAL:
                v.append(f"job {job_id} is {job['state']}, not final")
            if job_id not in notices:
                v.append(f"job {job_id} ({job['state']}, to {job['to']}) has no notice")

        # Faxes at the simulator, traced to mails by their documents and to jobs by reference.
        fax_count: Counter[tuple[int, str]] = Counter()
        for fax in faxes:
            hashes = [d["sha256"] for d in fax["Documents"]]
            plan = next((by_hash[h] for h in hashes if h in by_hash), None)
            ref = str(fax.get("ClientReference") or "")
            job_id = int(ref.removeprefix("faxbridge-")) if ref.startswith("faxbridge-") else None
            if plan is None:
                v.append(f"fax {fax['ID']} to {fax['SendTo']} matches no mail we sent")
                continue
            fax_count[(plan.index, fax["SendTo"])] += 1
            if hashes[-len(plan.doc_hashes):] != plan.doc_hashes:
                v.append(f"fax {fax['ID']}: documents differ from mail {plan.index}'s attachments")
            if fax["SendTo"] not in {n for n in plan.numbers.values() if n}:
                v.append(f"fax {fax['ID']} to {fax['SendTo']}: mail {plan.index} has no such "
                         "accepted recipient")
            if job_id is None or job_id not in jobs:
                v.append(f"fax {fax['ID']}: ClientReference {ref!r} names no job")
            elif jobs[job_id]["to"] != fax["SendTo"]:
                v.append(f"fax {fax['ID']}: job {job_id} is to {jobs[job_id]['to']}, the fax to "
                         f"{fax['SendTo']}")
            elif job_mail.get(job_id, plan) is not plan:
                v.append(f"fax {fax['ID']}: job {job_id}'s notice is threaded under another mail")
            else:
                job_mail.setdefault(job_id, plan)

        # Per mail and recipient: the promise.
        jobs_for: dict[tuple[int, str], list[int]] = defaultdict(list)
        for job_id, plan in job_mail.items():
            if job_id in jobs:
                jobs_for[(plan.index, jobs[job_id]["to"])].append(job_id)
        tally: Counter[str] = Counter()
        for plan in plans:
            o = plan.outcome
            if o is None:
                tally["mails never sent"] += 1
                continue
            for rcpt, number in plan.numbers.items():
                faxed = fax_count[(plan.index, number)] if number else 0
                owned = jobs_for.get((plan.index, number or ""), [])
                where = f"mail {plan.index} to {rcpt}"
                if rcpt in o.accepted:
                    if number is None or not plan.has_document:
                        v.append(f"{where}: accepted ({o.accepted[rcpt]}) but should be refused")
                        continue
                    tally["recipients accepted (250)"] += 1
                    if len(owned) != 1:
                        v.append(f"{where}: accepted, {len(owned)} jobs {owned} (expected 1)")
                        continue
                    state = jobs[owned[0]]["state"]
                    tally[f"  … job {state}, {faxed} fax(es) at GoFax"] += 1
                    if state == "uncertain" and faxed > 1:
                        v.append(f"{where}: uncertain job {owned[0]} but {faxed} faxes")
                    elif state != "uncertain" and faxed != 1:
                        v.append(f"{where}: job {owned[0]} {state}, {faxed} faxes (expected 1)")
                elif rcpt in o.refused:
                    tally["recipients refused (5xx)"] += 1
                    if number is not None and plan.has_document:
                        v.append(f"{where}: a valid fax refused for good: {o.refused[rcpt]}")
                    if faxed or owned:
                        v.append(f"{where}: refused, yet {faxed} faxes and jobs {owned}")
                else:
                    tally["recipients without a final answer"] += 1
                    if faxed > 1 or len(owned) > 1:
                        v.append(f"{where}: never answered, yet {faxed} faxes, jobs {owned}")
        for job_id in jobs:
            if job_id not in job_mail:
                v.append(f"job {job_id} cannot be traced to a mail (no notice, no fax)")

        outcomes = [p.outcome for p in plans if p.outcome]
        states = Counter(j["state"] for j in jobs.values())
        r.counts.update({
            "mails planned": len(plans),
            "  with 2 fax recipients": sum(sum(n is not None for n in p.numbers.values()) == 2
                                           for p in plans),
            "  with a bad recipient": sum(None in p.numbers.values() for p in plans),
            "  without a document": sum(not p.has_document for p in plans),
            "SMTP attempts (MTA re-sends incl.)": sum(o.attempts for o in outcomes),
            "sessions cut or refused (daemon down)": sum(o.connection_errors for o in outcomes),
            "deferrals (4xx) seen by clients": sum(len(o.deferrals) for o in outcomes),
            "250s cut off by the relay (lost answers)": self.cutter.cuts if self.cutter else 0,
            "re-sent recipients answered 'already queued'": sum(o.duplicate_answers
                                                                for o in outcomes),
        })
        r.counts.update(dict(sorted(tally.items(), key=lambda kv: kv[0].startswith("  "))))
        r.counts.update({
            "jobs": len(jobs),
            "  states": dict(states),
            "faxes at the simulator": len(faxes),
            "notices (distinct)": sum(len({m.header("Message-ID") for m in ms})
                                      for ms in notices.values()),
            "notices delivered again (same Message-ID)": redelivered_notices,
            "smarthost refusals (451)": self.sink.refusals,
        })
        if self.kills:
            r.counts["SIGKILLs"] = len(self.kills)
            r.counts["  at (s)"] = ", ".join(f"{k:.1f}" for k in self.kills)
            r.counts["  restart to SMTP greeting (s)"] = ", ".join(
                f"{s:.2f}" for s in self.restart_seconds)
        self.check_received()

    def check_received(self) -> None:
        if not self.received_ids:
            return
        r = self.report
        copies: dict[tuple[str, str], set[str]] = defaultdict(set)
        deliveries: Counter[tuple[str, str]] = Counter()
        for m in self.sink.messages:
            fid = m.header("X-Faxbridge-Fax")
            if fid:
                for rcpt in m.rcpt_tos:
                    copies[(fid, rcpt.lower())].add(m.header("Message-ID"))
                    deliveries[(fid, rcpt.lower())] += 1
        exactly_once = again = 0
        for fid in self.received_ids:
            for rcpt in ROUTED:
                distinct = copies.get((str(fid), rcpt), set())
                if len(distinct) == 1:
                    exactly_once += 1
                    again += deliveries[(str(fid), rcpt)] - 1
                else:
                    r.violations.append(f"received fax {fid}: {len(distinct)} different mails "
                                        f"to {rcpt} (expected 1)")
        known = {str(i) for i in self.received_ids}
        strays = [k for k in copies if k[0] not in known]
        if strays:
            r.violations.append(f"mails for received faxes that never arrived: {strays[:5]}")
        alerts = [m.header("Subject") for m in self.sink.messages if m.header("X-Faxbridge-Alert")]
        r.counts.update({
            "received faxes": len(self.received_ids),
            "  mailbox deliveries expected": len(self.received_ids) * len(ROUTED),
            "  delivered exactly once": exactly_once,
            "  delivered again (same Message-ID)": again,
            "operator alerts": len(alerts),
        })
        r.notes += [f"alert: {s}" for s in alerts[:10]]


# --- the scenarios -------------------------------------------------------------------------------

async def run_chaos(opts: Options) -> Report:
    """Load + SIGKILLs (+ faults, + received faxes) → the checks."""
    title = (f"chaos: {opts.mails} mails, {opts.clients} clients, {opts.kills} kills, "
             f"fault rate {opts.fault_rate:.0%} (smarthost {opts.smarthost_refusals:.0%}), "
             f"{opts.faxes_in} faxes in, seed {opts.seed}")
    run = Run(opts, title)
    run.say(title)
    plans = plan_mails(opts)
    try:
        await run.start()
        started = time.monotonic()
        spread = max(3.0, opts.kills * sum(opts.kill_gap) / 2)
        await asyncio.gather(run.send_all(plans), run.killer(opts.kills),
                             run.arrivals(opts.faxes_in, spread))
        run.report.counts["send phase (s)"] = round(time.monotonic() - started, 1)
        drained = time.monotonic()
        await run.drain()
        run.report.counts["drain (s)"] = round(time.monotonic() - drained, 1)
        jobs_view, sim_view = await run.finish()
        run.check(plans, jobs_view, sim_view)
    finally:
        await run.close()
    run.report.counts["total (s)"] = round(time.monotonic() - run.started, 1)
    _cleanup(run, opts)
    return run.report


async def run_disk_full(opts: Options, *, size_bytes: int = 24 << 20, in_flight: bool = True,
                        restart_after: bool = False, allow_tmpfs: bool = True) -> Report:
    """The store's disk fills up while mails arrive and faxes are being submitted.

    Promise: intake answers 4xx (never 5xx, never a 250 it cannot keep), the daemon stays up,
    and once space is back every mail that got 250 is faxed exactly once and notified.

    ``in_flight`` slows every SendFax PUT (inside the client timeout) so that submissions are
    surely in flight when the disk fills. ``restart_after`` restarts the daemon (SIGKILL, start)
    once space is back: it settles jobs that a failed write left mid-submission (which the CI
    version needs to be deterministic; without it, such jobs show as violations).
    """
    run = Run(opts, f"disk full: {opts.mails} mails, seed {opts.seed}")
    disk = StoreDisk(run.workdir / "store", size_bytes, allow_tmpfs=allow_tmpfs).open()
    run.report.notes.append(f"store disk: {disk.mode}")
    run.say(run.report.title + f" — store on {disk.mode}")
    plans = plan_mails(opts, prefix="d")
    # Few mails before the disk fills: SQLite reuses the WAL's allocated space after a
    # checkpoint (about 4 MB, some 40 jobs here), and writes that fit in it succeed on a full
    # disk. Kept below that, every write that needs space fails, so the check is deterministic.
    third = max(1, min(8, len(plans) // 3))
    try:
        await run.start(store_disk=disk)
        assert run.sim is not None and run.daemon is not None
        await run.send_all(plans[:third])
        if in_flight:
            # Slow PUTs (inside the client timeout): the second third's submissions are still in
            # flight when the disk fills right after, so the write that records a successful
            # submission is among those that fail.
            await run.sim.fault("PUT /v1.0/SendFax", "delay", delay_seconds=0.6, times=0)
            await run.send_all(plans[third:2 * third])
        rest = plans[2 * third:] if in_flight else plans[third:]
        filled = disk.fill(run.daemon.process.pid)
        # Sent while the disk is full: these must be deferred (4xx), then accepted once there
        # is space again (the clients keep re-sending, as MTAs do).
        sending = asyncio.create_task(run.send_all(rest, give_up_after=120))
        run.say(f"disk full ({filled} bytes of filler / limit)")
        full_at = time.monotonic()
        fax_during = await run.sim.receive_fax(from_number="61733330000", csid="DISK FULL")
        run.received_ids.append(fax_during)
        await asyncio.sleep(2.0)
        alive = run.daemon.process.running
        run.report.counts["daemon alive while the disk was full"] = alive
        if not alive:
            run.report.violations.append("the daemon died when its disk filled up")
            await run.daemon.start()
        disk.free()
        await run.sim.clear_faults()
        run.say(f"space freed after {time.monotonic() - full_at:.1f} s")
        await sending
        if restart_after:
            await run.daemon.kill()
            await run.daemon.start()
            run.report.notes.append("the daemon was restarted once space was back")
        await run.drain()
        jobs_view, sim_view = await run.finish()
        run.check(plans, jobs_view, sim_view)
        deferrals = Counter(d.split(" ", 1)[0] for p in plans if p.outcome
                            for d in p.outcome.deferrals)
        run.report.counts["intake replies while full"] = dict(deferrals) or "none"
        if not deferrals:
            run.report.violations.append("no 4xx while the disk was full: the check did not bite")
        log = run.daemon.process.log_path.read_text("utf-8", "replace")
        run.report.counts["daemon log: 'disk is full' / I/O errors"] = (
            log.count("database or disk is full") + log.count("disk I/O error"))
    finally:
        await run.close()
        disk.free()
        disk.close()
    run.report.counts["total (s)"] = round(time.monotonic() - run.started, 1)
    _cleanup(run, opts)
    return run.report


def _cleanup(run: Run, opts: Options) -> None:
    if not opts.keep and not run.report.violations and opts.workdir is None:
        shutil.rmtree(run.workdir, ignore_errors=True)
        run.report.workdir = ""


# --- command line --------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mails", type=int, default=500)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--kills", type=int, default=3, help="SIGKILLs (each followed by a restart)")
    p.add_argument("--fault-rate", type=float, default=0.0,
                   help="share of simulator calls that fail, and of smarthost deliveries "
                        "refused with 451 (e.g. 0.2)")
    p.add_argument("--refuse-rate", type=float, default=None,
                   help="the smarthost's refusal share, if not --fault-rate")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--faxes-in", type=int, default=0, help="faxes that arrive during the run")
    p.add_argument("--kill-gap", type=float, nargs=2, default=(1.0, 4.0), metavar=("MIN", "MAX"),
                   help="seconds between a restart and the next kill (default 1 4)")
    p.add_argument("--client-pause", type=float, default=0.0, metavar="S",
                   help="each client waits up to S seconds between mails (stretches the load "
                        "so that kills fall in it)")
    p.add_argument("--cut-rate", type=float, default=0.1,
                   help="share of the intake's 250s to DATA that are lost on the way to the "
                        "client, which then re-sends (default 0.1)")
    p.add_argument("--drain-seconds", type=float, default=120.0)
    p.add_argument("--disk-full", action="store_true",
                   help="run the disk-full scenario instead (uses --mails, --seed)")
    p.add_argument("--restart-after", action="store_true",
                   help="--disk-full: restart the daemon once space is back")
    p.add_argument("--no-tmpfs", action="store_true",
                   help="--disk-full: use the RLIMIT_FSIZE fallback even where a tmpfs works")
    p.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir, "
                                                "removed unless something failed)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    opts = Options(mails=args.mails, clients=args.clients, kills=args.kills,
                   fault_rate=args.fault_rate, refuse_rate=args.refuse_rate, seed=args.seed,
                   faxes_in=args.faxes_in, kill_gap=tuple(args.kill_gap),
                   drain_seconds=args.drain_seconds, workdir=args.workdir, keep=args.keep,
                   client_pause=args.client_pause, cut_rate=args.cut_rate,
                   quiet=args.json)
    runner = (run_disk_full(opts, restart_after=args.restart_after,
                            allow_tmpfs=not args.no_tmpfs) if args.disk_full
              else run_chaos(opts))
    with contextlib.suppress(KeyboardInterrupt):
        report = asyncio.run(runner)
        if args.json:
            print(json.dumps({"title": report.title, "counts": report.counts,
                              "violations": report.violations, "notes": report.notes},
                             indent=2, default=str))
        else:
            print(report.render())
        return 1 if report.violations else 0
    return 130


if __name__ == "__main__":
    sys.exit(main())
