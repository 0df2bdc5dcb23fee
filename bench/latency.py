"""Latency on an idle daemon, one event at a time:

- **250 → PUT**: from the client reading the ``250`` to the ``PUT /v1.0/SendFax`` of that job
  arriving at the simulator (matched by ClientReference ``faxbridge-<job id>``);
- **webhook → mail**: from the fax-received webhook being posted to the daemon to the received
  fax's mail arriving at a test smarthost (the receiver's poll is set to 60 s, so only the
  webhook can make it look).

The daemon is a real process; the simulator and the smarthost run in this process, so that both
ends of each interval are read from one clock (``time.monotonic``). The simulator is
``GoFaxSimulator`` with one extra outermost middleware that notes when a SendFax request
arrives (before its body is read).

    .venv/bin/python -m bench.latency [--samples 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import aiosmtplib
from aiohttp import web

from bench.common import pct
from bridge.gofax.simulator import GoFaxSimulator, serve
from bridge.web import FAX_RECEIVED_PATH
from tools.harness import (
    ACCOUNT_NUMBER,
    SIM_TOKEN,
    DaemonProcess,
    Sink,
    fax_message,
    make_pdf,
)


class TimedSimulator:
    """The in-process simulator plus arrival times of SendFax requests, by ClientReference."""

    def __init__(self) -> None:
        self.sim = GoFaxSimulator(token=SIM_TOKEN, fax_seconds=0.2)
        self.put_arrived: dict[str, float] = {}
        self._runner: web.AppRunner | None = None

        @web.middleware
        async def timestamp(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.method == "PUT" and request.path == "/v1.0/SendFax":
                arrived = time.monotonic()
                body = json.loads(await request.read() or b"{}")  # cached for the handler
                self.put_arrived[str(body.get("ClientReference"))] = arrived
            return await handler(request)

        self.sim.app.middlewares.insert(0, timestamp)

    async def start(self) -> str:
        self._runner = await serve(self.sim, "127.0.0.1", 0)
        assert self.sim.base_url
        return self.sim.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def _until(predicate: Any, within: float) -> float:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("event did not happen")
        await asyncio.sleep(0.0005)
    return time.monotonic()


async def run(samples: int = 200, quiet: bool = False) -> dict[str, Any]:
    rng = random.Random(1)
    timed = TimedSimulator()
    sim_url = await timed.start()
    sink = await Sink().start()
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        daemon = DaemonProcess(
            Path(tmp), sim_url=sim_url, smarthost=sink.address,
            config={"gofax": {"timeout_seconds": 30, "status_poll_seconds": 5},
                    "receive": {"poll_seconds": 60,
                                "route": [{"number": ACCOUNT_NUMBER,
                                           "to": ["reception@example.com"]}]},
                    "log": {"level": "warning"}})
        put_ms: list[float] = []
        mail_ms: list[float] = []
        try:
            await daemon.start()
            await asyncio.sleep(1.0)  # let start-up work (first polls, reconcile) finish
            pdf = make_pdf(20_000, "latency")
            for i in range(samples + 5):  # the first 5 warm up
                data = fax_message(sender="lat@example.com", to=["0298765432@fax.local"],
                                   message_id=f"<lat{i}@bench.example.com>", subject=f"lat {i}",
                                   attachments=[("a.pdf", pdf)])
                _, reply = await aiosmtplib.send(
                    data, sender="lat@example.com", recipients=["0298765432@fax.local"],
                    hostname="127.0.0.1", port=daemon.smtp_port, timeout=30)
                got_250 = time.monotonic()
                job = reply.rsplit("job(s) ", 1)[1].split()[0].strip(",")
                ref = f"faxbridge-{job}"
                await _until(lambda ref=ref: ref in timed.put_arrived, 10)
                if i >= 5:
                    put_ms.append((timed.put_arrived[ref] - got_250) * 1000)
                await asyncio.sleep(0.02 + rng.random() * 0.03)
            async with aiohttp.ClientSession() as http:
                for i in range(samples + 5):
                    fax_id = timed.sim.receive_fax(from_number="61733334444", csid=f"LAT {i}")
                    posted = time.monotonic()
                    async with http.post(daemon.web_url + FAX_RECEIVED_PATH,
                                         data={"ID": str(fax_id), "ToNumber": ACCOUNT_NUMBER}
                                         ) as response:
                        response.raise_for_status()

                    def mailed(fax_id: int = fax_id) -> bool:
                        return any(m.header("X-Faxbridge-Fax") == str(fax_id)
                                   for m in sink.messages[-3:])

                    await _until(mailed, 10)
                    delivered = next(m.at for m in reversed(sink.messages)
                                     if m.header("X-Faxbridge-Fax") == str(fax_id))
                    if i >= 5:
                        mail_ms.append((delivered - posted) * 1000)
                    await asyncio.sleep(0.02 + rng.random() * 0.03)
        finally:
            await daemon.stop()
            await sink.stop()
            await timed.stop()
    result = {"samples": samples,
              "put": {"p50": pct(put_ms, 50), "p99": pct(put_ms, 99), "max": max(put_ms)},
              "mail": {"p50": pct(mail_ms, 50), "p99": pct(mail_ms, 99), "max": max(mail_ms)}}
    if not quiet:
        print(report(result))
    return result


def report(r: dict[str, Any]) -> str:
    put, mail = r["put"], r["mail"]
    return (f"latency ({r['samples']} samples each, idle daemon, target p99 < 250 ms):\n"
            f"  250 -> SendFax PUT at GoFax      p50 {put['p50']:6.1f} ms   p99 "
            f"{put['p99']:6.1f} ms   max {put['max']:6.1f} ms\n"
            f"  fax-received webhook -> mail     p50 {mail['p50']:6.1f} ms   p99 "
            f"{mail['p99']:6.1f} ms   max {mail['max']:6.1f} ms")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=200)
    args = p.parse_args()
    asyncio.run(run(args.samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
