"""Scale: do the sender's "what next?" and ``faxbridge jobs`` stay fast as the queue grows?

Stores are filled directly (``Store.accept``, one tiny document per mail; the filling runs with
``synchronous=OFF`` to be quick, the timings use a freshly opened, normal store) with:

- 100 queued jobs;
- 10,000 queued jobs;
- 10,000 finished jobs (history) plus 100 queued.

Timed (median of many calls): ``Store.due_jobs(queued, limit=4)`` (what the sender asks each
pass with the default ``submit_concurrency`` of 4), ``due_jobs(submitted, limit=50)`` (its
status polls), ``next_due_at`` (its sleep), ``count_jobs`` (``/healthz`` and ``/metrics``), and
``faxbridge jobs`` / ``faxbridge jobs --json`` both in-process and as a command (the command's
time includes starting Python).

    .venv/bin/python -m bench.scale
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, median
from bridge import cli
from bridge.states import State
from bridge.store import NewDocument, NewJob, NewMail, Store
from tools.harness import PYTHON, make_pdf

TINY_PDF = make_pdf(600, "scale")


def fill(path: Path, queued: int, finished: int = 0) -> None:
    store = Store(path)
    store.db.execute("PRAGMA synchronous=OFF")  # only while filling: it is not what is timed
    total = queued + finished
    for i in range(total):
        store.accept(NewMail(
            mail_from=f"user{i % 50}@example.com", header_from=f"user{i % 50}@example.com",
            message_id=f"<scale{i}@example.com>", subject=f"scale {i}", notify=True,
            jobs=[NewJob("fax", f"6129876{i % 10000:04d}", f"scale-{i}")],
            documents=[NewDocument("a.pdf", "application/pdf", TINY_PDF, 1)]))
    if finished:
        # The oldest become history; one UPDATE instead of 3 transitions each keeps filling fast.
        store.db.execute("UPDATE jobs SET state = ?, gofax_id = 41000000 + id, final_at = ?,"
                         " result = 'Fax successfully sent' WHERE id <= ?",
                         (State.SENT, time.time(), finished))
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Median seconds of ``repeat`` calls (after one warm-up call)."""
    fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return median(samples)


def cli_jobs(config: Path, *extra: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["jobs", "--config", str(config), *extra])
    assert code == 0


def command(config: Path, *extra: str) -> None:
    subprocess.run([PYTHON, "-m", "bridge", "jobs", "--config", str(config), *extra],
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def measure(label: str, queued: int, finished: int = 0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        path = Path(tmp) / "store.db"
        config = Path(tmp) / "bridge.toml"
        config.write_text(f'[store]\npath = "{path}"\n')
        fill(path, queued, finished)
        store = Store(path)
        try:
            result = {
                "label": label, "jobs": queued + finished, "queued": queued,
                "due_queued_4": timed(lambda: store.due_jobs(State.QUEUED, limit=4), 500),
                "due_submitted_50": timed(lambda: store.due_jobs(State.SUBMITTED, limit=50), 500),
                "next_due_at": timed(lambda: store.next_due_at([State.QUEUED, State.SUBMITTED]),
                                     500),
                "count_jobs": timed(store.count_jobs, 200),
                "jobs_cli": timed(lambda: cli_jobs(config), 50),
                "jobs_cli_json": timed(lambda: cli_jobs(config, "--json"), 50),
                "jobs_command": timed(lambda: command(config), 5),
                "plan": [row[3] for row in store.db.execute(
                    "EXPLAIN QUERY PLAN SELECT j.id FROM jobs j JOIN mails m ON m.id = j.mail_id"
                    " WHERE j.state = ? AND j.next_attempt_at <= ?"
                    " ORDER BY j.next_attempt_at, j.id LIMIT 4", (State.QUEUED, time.time()))],
            }
        finally:
            store.close()
    return result


def run(quiet: bool = False) -> list[dict[str, Any]]:
    results = [measure("100 queued", 100), measure("10,000 queued", 10_000),
               measure("10,000 done + 100 queued", 100, 10_000)]
    if not quiet:
        print(report(results))
    return results


def report(results: list[dict[str, Any]]) -> str:
    def us(v: float) -> str:
        return f"{v * 1e6:9.0f} us" if v < 0.01 else f"{v * 1000:9.1f} ms"

    rows = [("", *[r["label"] for r in results])]
    for key, name in (("due_queued_4", "sender: due_jobs(queued, 4)"),
                      ("due_submitted_50", "sender: due_jobs(submitted, 50)"),
                      ("next_due_at", "sender: next_due_at"),
                      ("count_jobs", "/healthz, /metrics: count_jobs"),
                      ("jobs_cli", "faxbridge jobs (in-process)"),
                      ("jobs_cli_json", "faxbridge jobs --json (in-process)"),
                      ("jobs_command", "faxbridge jobs (command, incl. start-up)")):
        rows.append((name, *[us(r[key]) for r in results]))
    width = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["scale (median per call):"]
    lines += ["  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                               enumerate(zip(row, width, strict=True))) for row in rows]
    lines.append(f"  query plan of due_jobs: {'; '.join(results[1]['plan'])}")
    return "\n".join(lines)


def main() -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
