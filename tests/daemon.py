"""The whole daemon in the test's loop: sandbox simulator, real SMTP in, real SMTP out.

``await start_daemon(**overrides)`` starts :class:`bridge.app.App` with every listener on
127.0.0.1:0, the in-process GoFax simulator (instant faxes), and the outbox pointed at an
:class:`SmtpSink`. Tests talk to it as a user would: aiosmtplib into its SMTP port, HTTP to its
web port, and read the notices the sink receives.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
from smtp_sink import Received, SmtpSink

from bridge import config as cfg
from bridge.app import App
from bridge.gofax.simulator import GoFaxSimulator
from bridge.states import State
from bridge.store import Job


def fast_config(tmp_path: Path, sink: SmtpSink, **sections: dict[str, Any]) -> cfg.Config:
    """A sandbox config with short timings, every listener on a free port."""
    data: dict[str, dict[str, Any]] = {
        "smtp": {"listen": "127.0.0.1:0"},
        "web": {"listen": "127.0.0.1:0"},
        "gofax": {"sandbox_fax_seconds": 0, "status_poll_seconds": 0.3,
                  "retry_initial_seconds": 0.05, "retry_max_seconds": 0.2,
                  "timeout_seconds": 2, "sandbox_listen": "127.0.0.1:0"},
        "mail": {"smarthost": sink.address, "retry_initial_seconds": 0.05,
                 "retry_max_seconds": 0.2},
        "store": {"path": str(tmp_path / "store.db")},
        "receive": {"poll_seconds": 0.3},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return cfg.from_mapping(data, source="test", base_dir=str(tmp_path), env={})


class Daemon:
    def __init__(self, app: App, sink: SmtpSink) -> None:
        self.app = app
        self.sink = sink

    @property
    def sim(self) -> GoFaxSimulator:
        assert self.app.simulator is not None
        return self.app.simulator

    @property
    def smtp_port(self) -> int:
        assert self.app.intake is not None
        return self.app.intake.port

    def jobs(self) -> list[Job]:
        assert self.app.store is not None
        return sorted(self.app.store.sync.jobs(limit=10_000), key=lambda j: j.id)

    def job(self, job_id: int) -> Job:
        assert self.app.store is not None
        job = self.app.store.sync.job(job_id)
        assert job is not None
        return job

    async def send(self, msg: EmailMessage | bytes, *, sender: str = "alice@example.com",
                   rcpts: list[str] | None = None) -> tuple[dict[str, Any], str]:
        if rcpts is None:
            assert isinstance(msg, EmailMessage)
            rcpts = [str(msg["To"])]
        return await aiosmtplib.send(msg, hostname="127.0.0.1", port=self.smtp_port,
                                     sender=sender, recipients=rcpts, timeout=10)

    async def wait_job(self, job_id: int, *states: State, timeout: float = 10) -> Job:
        await until(lambda: self.job(job_id).state in states, timeout,
                    lambda: f"job {job_id} is {self.job(job_id).state}, not {states}")
        return self.job(job_id)

    async def notices(self, count: int, timeout: float = 10) -> list[Received]:
        return await self.sink.wait_for(count, timeout)


async def until(predicate: Callable[[], Any], timeout: float = 10,
                why: str | Callable[[], str] = "condition") -> None:
    """Waits until ``predicate()`` is true; fails after ``timeout`` seconds, saying ``why``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting: {why if isinstance(why, str) else why()}")
        await asyncio.sleep(0.02)


async def start(tmp_path: Path, sink: SmtpSink, **sections: dict[str, Any]) -> Daemon:
    app = App(fast_config(tmp_path, sink, **sections))
    await app.start()
    return Daemon(app, sink)


def replace_config(daemon: Daemon, **changes: Any) -> cfg.Config:
    return dataclasses.replace(daemon.app.config, **changes)
