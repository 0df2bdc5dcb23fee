"""Peak memory while accepting and submitting one 20 MB attachment.

The daemon is a real process (``faxbridge sim`` in another, a test smarthost in this one). Its
RSS is sampled every 2 ms from ``/proc/<pid>/status`` and its peak (``VmHWM``, reset just
before the mail via ``clear_refs``) is read at the end, so the figures are:

- idle RSS before the mail;
- peak RSS while the mail is received and committed (SMTP DATA → ``250``);
- peak RSS while it is submitted (``250`` → the fax is sent and its notice queued);
- the peak as a multiple of the attachment size, total and above idle.

``--trace`` runs a second, diagnostic pass in this process (the daemon in-process under
``tracemalloc``) and prints how much each step allocates at its peak, to show where the copies
are.

    .venv/bin/python -m bench.memory [--mb 20] [--trace]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiosmtplib

from bench.common import proc_status, reset_peak_rss
from tools.harness import DaemonProcess, SimProcess, Sink, fax_message, make_pdf

MB = 1_000_000


class RssSampler(threading.Thread):
    """Samples a process's RSS every ``interval`` seconds: [(monotonic, bytes)]."""

    def __init__(self, pid: int, interval: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            with contextlib.suppress(OSError, KeyError):
                self.samples.append((time.monotonic(), proc_status(self.pid)["VmRSS"]))
            time.sleep(self.interval)

    def peak(self, start: float, end: float) -> int:
        return max((rss for at, rss in self.samples if start <= at <= end), default=0)


def the_mail(size: int) -> bytes:
    return fax_message(sender="big@example.com", to=["0298765432@fax.local"],
                       message_id="<big@bench.example.com>", subject="a big fax",
                       attachments=[("big.pdf", make_pdf(size, "memory-bench"))])


def config() -> dict[str, dict[str, Any]]:
    return {"smtp": {"max_message_bytes": 60_000_000},
            "gofax": {"timeout_seconds": 120, "status_poll_seconds": 0.5},
            "log": {"level": "warning"}}


async def run(size: int = 20 * MB, quiet: bool = False) -> dict[str, Any]:
    data = the_mail(size)
    sink = await Sink().start()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        workdir = Path(tmp)
        sim = SimProcess(workdir, fax_seconds=0.5)
        await sim.start()
        daemon = DaemonProcess(workdir, sim_url=sim.url, smarthost=sink.address,
                               config=config())
        try:
            await daemon.start()
            await asyncio.sleep(1.5)  # start-up work done: this is idle
            pid = daemon.process.pid
            idle = proc_status(pid)["VmRSS"]
            sampler = RssSampler(pid)
            sampler.start()
            hwm_reset = reset_peak_rss(pid)
            started = time.monotonic()
            await aiosmtplib.send(data, sender="big@example.com",
                                  recipients=["0298765432@fax.local"], hostname="127.0.0.1",
                                  port=daemon.smtp_port, timeout=120)
            accepted = time.monotonic()
            deadline = accepted + 120
            while not sink.messages:  # the notice: the fax was submitted and is final
                if time.monotonic() > deadline:
                    raise TimeoutError("no notice for the big fax")
                await asyncio.sleep(0.05)
            finished = time.monotonic()
            await asyncio.sleep(0.2)
            sampler.done.set()
            sampler.join()
            status = proc_status(pid)
            after = status["VmRSS"]
            hwm = status["VmHWM"] if hwm_reset else max(s for _, s in sampler.samples)
            intake_peak = sampler.peak(started, accepted)
            submit_peak = sampler.peak(accepted, finished)
        finally:
            await daemon.stop()
            await sim.stop()
            await sink.stop()
    result = {"attachment": size, "message": len(data), "idle": idle, "peak": hwm,
              "intake_peak": intake_peak, "submit_peak": submit_peak, "after": after,
              "accept_seconds": accepted - started, "submit_seconds": finished - accepted,
              "multiple": hwm / size, "multiple_above_idle": (hwm - idle) / size}
    if not quiet:
        print(report(result))
    return result


def report(r: dict[str, Any]) -> str:
    mb = r["attachment"] / MB

    def m(v: int) -> str:
        return f"{v / MB:6.0f} MB"

    return (f"memory, one {mb:.0f} MB attachment ({r['message'] / MB:.1f} MB as mail), daemon RSS:\n"
            f"  idle                          {m(r['idle'])}\n"
            f"  peak while received (->250)   {m(r['intake_peak'])}   "
            f"({r['accept_seconds']:.1f} s)\n"
            f"  peak while submitted          {m(r['submit_peak'])}   "
            f"({r['submit_seconds']:.1f} s to the notice)\n"
            f"  peak (VmHWM)                  {m(r['peak'])}   = {r['multiple']:.1f}x the "
            f"attachment, {r['multiple_above_idle']:.1f}x above idle  (target <= 5x)\n"
            f"  after                         {m(r['after'])}")


# --- the diagnostic pass: where the copies are ---------------------------------------------------

def _step(steps: list[tuple[str, float, float]], label: str, fn: Callable[[], Any]) -> Any:
    """Runs ``fn`` and records its traced peak above the start, and what it left allocated."""
    gc.collect()  # garbage of earlier steps (pypdf's reference cycles) must not count here
    tracemalloc.reset_peak()
    start = tracemalloc.get_traced_memory()[0]
    result = fn()
    current, peak = tracemalloc.get_traced_memory()
    steps.append((label, (peak - start) / MB, (current - start) / MB))
    return result


async def _aiosmtpd_read(data: bytes, steps: list[tuple[str, float, float]]) -> None:
    """aiosmtpd's own DATA reading, measured around ``SMTP.smtp_DATA`` in a bare server."""
    from aiosmtpd.smtp import SMTP, Envelope, Session

    class Discard:
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            current, peak = tracemalloc.get_traced_memory()
            steps.append(("aiosmtpd: its own DATA reader (a bytearray per line)",
                          (peak - started[0]) / MB, (current - started[0]) / MB))
            return "250 OK"

    started = [0]
    original = SMTP.smtp_DATA

    async def timed_data(self: SMTP, arg: str) -> None:
        tracemalloc.reset_peak()
        started[0] = tracemalloc.get_traced_memory()[0]
        await original(self, arg)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Discard(), decode_data=False, data_size_limit=100_000_000), "127.0.0.1", 0)
    SMTP.smtp_DATA = timed_data  # type: ignore[method-assign]
    try:
        port = server.sockets[0].getsockname()[1]
        await aiosmtplib.send(data, sender="big@example.com", recipients=["x@fax.local"],
                              hostname="127.0.0.1", port=port, timeout=120)
    finally:
        SMTP.smtp_DATA = original  # type: ignore[method-assign]
        server.close()


def _assemble(wire: bytes) -> bytes | bytearray:
    """The intake's DataAssembler fed the mail as it arrives after 354, in the 256 KB reads
    asyncio makes."""
    from bridge.intake.data import DataAssembler

    assembler = DataAssembler(100_000_000)
    for at in range(0, len(wire), 1 << 18):
        assembler.feed(wire[at:at + (1 << 18)])
    assert assembler.done and assembler.problem is None
    return assembler.message


async def _client_put(documents: list[tuple[str, bytes]], steps: list[tuple[str, float, float]]
                      ) -> None:
    """GoFaxClient.send_fax to a server that reads and discards the body."""
    from aiohttp import web

    from bridge.gofax.client import GoFaxClient

    async def sink(request: web.Request) -> web.Response:
        async for _ in request.content.iter_chunked(1 << 16):
            pass
        return web.json_response({"Success": True, "Message": "", "ValidationErrors": [],
                                  "Response": 1})

    app = web.Application(client_max_size=100_000_000)
    app.router.add_put("/v1.0/SendFax", sink)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with GoFaxClient(f"http://127.0.0.1:{port}", "t", timeout_seconds=120) as client:
            tracemalloc.reset_peak()
            start = tracemalloc.get_traced_memory()[0]
            await client.send_fax("61298765432", documents, client_reference="faxbridge-1")
            current, peak = tracemalloc.get_traced_memory()
            steps.append(("client: send_fax (the JSON streamed in base64 pieces)",
                          (peak - start) / MB, (current - start) / MB))
    finally:
        await runner.cleanup()


async def trace(size: int = 20 * MB) -> str:
    """Each step of accepting and submitting the mail, on its own, under tracemalloc: the peak
    of Python allocations above what existed when the step began (its transient copies) and
    what it left behind."""
    from bridge import config as cfg
    from bridge.intake import message as msg_mod
    from bridge.intake.addresses import parse_recipient
    from bridge.states import State
    from bridge.store import Store

    data = the_mail(size)
    steps: list[tuple[str, float, float]] = []
    tracemalloc.start()
    try:
        await _aiosmtpd_read(data, steps)
        wire = (b"\r\n" + data).replace(b"\r\n.", b"\r\n..")[2:] + b".\r\n"  # dot-stuffed
        _step(steps, "intake: its DATA reader (one buffer, 256 KB reads)",
              functools.partial(_assemble, wire))
        del wire
        _step(steps, "intake: body_hash (hashes a view of the body)",
              lambda: msg_mod.body_hash(data))
        parsed = _step(steps, "intake: parse_bytes (runs aside, stdlib parser)",
                       lambda: msg_mod.parse_bytes(data))
        part = next(iter(parsed.iter_attachments()))
        doc = _step(steps, "intake: payload_bytes (the attachment decoded)",
                    functools.partial(msg_mod.payload_bytes, part))
        _step(steps, "intake: pdf_pages (pypdf over a BufferedReader)",
              functools.partial(msg_mod.pdf_pages, doc, "big.pdf"))
        del parsed, part, doc
        conf = cfg.from_mapping({"smtp": {"max_message_bytes": 60_000_000}}, source="bench",
                                base_dir=".", env={})
        rcpt = parse_recipient("0298765432@fax.local", fax_domain="fax.local",
                               sms_domain="sms.local")
        mail = _step(steps, "intake: build_mail, all of the above together",
                     lambda: msg_mod.build_mail(data, mail_from="big@example.com",
                                                recipients=[rcpt], config=conf))
        with tempfile.TemporaryDirectory(prefix="bench-memtrace-") as tmp:
            store = Store(f"{tmp}/store.db")
            accepted = _step(steps, "store: accept (sqlite's own memory is not traced)",
                             functools.partial(store.accept, mail))
            del mail
            store.move(accepted.job_ids[0], State.QUEUED, State.SUBMITTING)
            documents = _step(steps, "sender: Store.documents (through a blob handle)",
                              lambda: store.documents(accepted.mail_id))
            store.close()
        await _client_put([(d.filename, d.data) for d in documents], steps)
    finally:
        tracemalloc.stop()
    lines = [f"where the copies are (tracemalloc, each step alone, one {size / MB:.0f} MB "
             f"attachment = {len(data) / MB:.1f} MB mail; Python allocations only):",
             f"  {'step':62s} {'peak':>9s} {'kept':>9s}"]
    for label, peak, kept in steps:
        lines.append(f"  {label:62s} {peak:7.1f} MB {kept:7.1f} MB")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=int, default=20, help="attachment size in MB (default 20)")
    p.add_argument("--trace", action="store_true", help="also run the tracemalloc diagnosis")
    args = p.parse_args()
    asyncio.run(run(args.mb * MB))
    if args.trace:
        print(asyncio.run(trace(args.mb * MB)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
