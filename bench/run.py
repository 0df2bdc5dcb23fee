"""Runs every benchmark and prints the figures (``make bench``).

    .venv/bin/python bench/run.py            # everything, ~3 minutes on 2 cores
    .venv/bin/python bench/run.py --quick    # fewer rounds and samples, ~1 minute
    .venv/bin/python bench/run.py --only intake latency

Each benchmark compares against its own baseline or target measured in the same run (see the
module docstrings: ``bench/intake.py``, ``latency.py``, ``memory.py``, ``scale.py``). Nothing
here is a timed unit test: the figures are printed, and RESULTS.md records a run with the
machine it ran on. A busy machine makes the throughput figures noisy (the load average at the
start is printed for that reason); the ratios, measured in alternating rounds, less so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import intake, latency, memory, scale
from bench.common import machine

ALL = ("intake", "latency", "memory", "scale")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds and samples")
    p.add_argument("--only", nargs="+", choices=ALL, default=list(ALL))
    p.add_argument("--json", type=Path, help="also write the raw figures to this file")
    args = p.parse_args()
    load = os.getloadavg()
    print(f"machine: {machine()}")
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n", flush=True)
    figures: dict[str, Any] = {"machine": machine(), "load": load}
    started = time.monotonic()
    if "intake" in args.only:
        r = asyncio.run(intake.run(mails=150 if args.quick else 300,
                                   rounds=1 if args.quick else 3))
        figures["intake"] = r
        print(intake.report(r) + "\n", flush=True)
    if "latency" in args.only:
        r = asyncio.run(latency.run(samples=60 if args.quick else 200, quiet=True))
        figures["latency"] = r
        print(latency.report(r) + "\n", flush=True)
    if "memory" in args.only:
        r = asyncio.run(memory.run(quiet=True))
        figures["memory"] = r
        print(memory.report(r), flush=True)
        print(asyncio.run(memory.trace()) + "\n", flush=True)
    if "scale" in args.only:
        r = scale.run(quiet=True)
        figures["scale"] = r
        print(scale.report(r) + "\n", flush=True)
    print(f"(all benchmarks: {time.monotonic() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
