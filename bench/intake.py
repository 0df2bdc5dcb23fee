"""Intake throughput: mails per second accepted, faxbridge against a bare aiosmtpd server.

Same load for both, in the same run: 8 client connections (aiosmtplib, each reconnecting every
50 mails because faxbridge limits commands per session), each mail one recipient and one 100 KB
PDF, every Message-ID distinct (so no mail is answered by dedupe). Each server runs in its own
process, like the daemon; the load generator is this process. On a 2-core machine the client
and the server share the CPUs, equally for both.

faxbridge is measured twice:

- **intake**: GoFax unreachable (a closed port), so the sender makes one failed attempt per job
  and then waits: the figure is the SMTP intake itself (parse, PDF check, durable commit).
- **whole daemon**: the sender submits every fax to ``faxbridge sim`` during the run. The
  simulator runs on the same two cores and does real work per fax (base64, a pypdf page count),
  which a real GoFax does elsewhere: this figure understates faxbridge on a real deployment.

    .venv/bin/python -m bench.intake [--mails 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiosmtplib

from bench.common import REPO, cpu_seconds, median
from tools.harness import (
    PYTHON,
    DaemonProcess,
    LoggedProcess,
    SimProcess,
    fax_message,
    free_port,
    make_pdf,
)

CONNECTIONS = 8
MAILS_PER_SESSION = 50  # below faxbridge's per-session budget of 100 MAIL/DATA commands
PDF_BYTES = 100_000


def messages(count: int, tag: str) -> list[bytes]:
    pdf = make_pdf(PDF_BYTES, "intake-bench")
    return [fax_message(sender="bench@example.com", to=["0298765432@fax.local"],
                        message_id=f"<{tag}.{i}@bench.example.com>", subject=f"bench {i}",
                        attachments=[("report.pdf", pdf)]) for i in range(count)]


async def load(port: int, mails: list[bytes]) -> tuple[float, int]:
    """Sends every mail over 8 connections; returns (seconds, mails answered 250)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for m in mails:
        queue.put_nowait(m)
    accepted = 0

    async def connection() -> None:
        nonlocal accepted
        smtp: aiosmtplib.SMTP | None = None
        in_session = 0
        while not queue.empty():
            data = queue.get_nowait()
            if smtp is None or in_session >= MAILS_PER_SESSION:
                if smtp is not None:
                    with contextlib.suppress(aiosmtplib.SMTPException):
                        await smtp.quit()
                smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60)
                await smtp.connect()
                in_session = 0
            errors, _ = await smtp.sendmail("bench@example.com", ["0298765432@fax.local"], data)
            in_session += 1
            accepted += not errors
        if smtp is not None:
            with contextlib.suppress(aiosmtplib.SMTPException):
                await smtp.quit()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    return time.perf_counter() - started, accepted


# --- the bare baseline server (run in its own process) ------------------------------------------

def serve_bare(port: int) -> None:
    """An aiosmtpd server whose handler accepts and discards: what SMTP alone costs."""
    from aiosmtpd.smtp import SMTP, Envelope, Session

    class Discard:
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            return "250 2.0.0 OK"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        handler = Discard()
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="bare.bench", decode_data=False,
                         data_size_limit=20_000_000, enable_SMTPUTF8=True),
            "127.0.0.1", port)
        print("listening", flush=True)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


async def _greets(port: int, proc: LoggedProcess, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not proc.running:
            raise RuntimeError(f"{proc.name} died:\n{proc.tail()}")
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            line = await reader.readline()
            writer.close()
            if line.startswith(b"220"):
                return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not start")


# --- one measurement per server ------------------------------------------------------------------

async def measure_bare(workdir: Path, mails: list[bytes], warmup: list[bytes]
                       ) -> tuple[float, float]:
    port = free_port()
    proc = LoggedProcess("bare", [PYTHON, "-m", "bench.intake", "--serve-bare", str(port)],
                         workdir / "bare.log", cwd=REPO)
    proc.start()
    try:
        await _greets(port, proc)
        await load(port, warmup)
        cpu = cpu_seconds(proc.pid)
        seconds, accepted = await load(port, mails)
        cpu = cpu_seconds(proc.pid) - cpu
    finally:
        await asyncio.to_thread(proc.terminate, 5)
    assert accepted == len(mails), f"bare server accepted {accepted} of {len(mails)}"
    return accepted / seconds, cpu / accepted


async def measure_daemon(workdir: Path, mails: list[bytes], warmup: list[bytes], *,
                         with_sim: bool) -> tuple[float, float]:
    sim: SimProcess | None = None
    if with_sim:
        sim = SimProcess(workdir, fax_seconds=0.5)
        await sim.start()
        sim_url = sim.url
    else:
        sim_url = f"http://127.0.0.1:{free_port()}"  # nobody listens: GoFax unreachable
    daemon = DaemonProcess(
        workdir, sim_url=sim_url, smarthost="",
        config={"gofax": {"retry_initial_seconds": 600, "retry_max_seconds": 900,
                          "timeout_seconds": 30, "status_poll_seconds": 30},
                "mail": {"smarthost": "", "maildir": str(workdir / "maildir")},
                "log": {"level": "warning"}},
        log_name="daemon.log")
    try:
        await daemon.start()
        await load(daemon.smtp_port, warmup)
        cpu = cpu_seconds(daemon.process.pid)
        seconds, accepted = await load(daemon.smtp_port, mails)
        cpu = cpu_seconds(daemon.process.pid) - cpu
    finally:
        await daemon.stop()
        if sim is not None:
            await sim.stop()
    assert accepted == len(mails), f"faxbridge accepted {accepted} of {len(mails)}"
    return accepted / seconds, cpu / accepted


async def run(mails: int = 300, rounds: int = 3, quiet: bool = False) -> dict[str, Any]:
    rates: dict[str, list[float]] = {"bare": [], "intake": [], "daemon": []}
    cpu: dict[str, list[float]] = {"bare": [], "intake": [], "daemon": []}
    for r in range(rounds):
        for name in rates:
            with tempfile.TemporaryDirectory(prefix=f"bench-intake-{name}-") as tmp:
                batch = messages(mails, f"{name}{r}")
                warmup = messages(2 * CONNECTIONS, f"{name}{r}w")
                if name == "bare":
                    rate, per_mail = await measure_bare(Path(tmp), batch, warmup)
                else:
                    rate, per_mail = await measure_daemon(Path(tmp), batch, warmup,
                                                          with_sim=name == "daemon")
            rates[name].append(rate)
            cpu[name].append(per_mail)
            if not quiet:
                print(f"  round {r + 1}: {name:7s} {rate:7.1f} mails/s, server CPU "
                      f"{per_mail * 1000:5.2f} ms/mail", flush=True)
    bare, intake, whole = (median(rates[k]) for k in ("bare", "intake", "daemon"))
    return {"mails_per_round": mails, "rounds": rounds, "connections": CONNECTIONS,
            "pdf_bytes": PDF_BYTES, "bare_per_s": bare, "intake_per_s": intake,
            "daemon_per_s": whole, "intake_ratio": intake / bare, "daemon_ratio": whole / bare,
            "cpu_ms_per_mail": {k: median(v) * 1000 for k, v in cpu.items()},
            "all": rates}


def report(r: dict[str, Any]) -> str:
    cpu = r["cpu_ms_per_mail"]
    return (f"intake throughput ({r['connections']} connections, {r['pdf_bytes'] // 1000} KB PDF, "
            f"{r['mails_per_round']} mails x {r['rounds']} rounds, median):\n"
            f"  bare aiosmtpd (accept + discard) {r['bare_per_s']:7.1f} mails/s   server CPU "
            f"{cpu['bare']:5.2f} ms/mail\n"
            f"  faxbridge intake (sender idle)   {r['intake_per_s']:7.1f} mails/s   server CPU "
            f"{cpu['intake']:5.2f} ms/mail   = {r['intake_ratio']:.2f}x  (target >= 0.5x)\n"
            f"  faxbridge whole daemon + sim     {r['daemon_per_s']:7.1f} mails/s   server CPU "
            f"{cpu['daemon']:5.2f} ms/mail   = {r['daemon_ratio']:.2f}x")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mails", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    print(report(asyncio.run(run(args.mails, args.rounds))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
