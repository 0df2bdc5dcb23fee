"""Shared fixtures. Keep each fixture in its own clearly named function."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon
from smtp_sink import SmtpSink
from test_intake_smtp import Intake, IntakeFactory, IntakePool

from bridge.config import FaxConfig, SmtpConfig, defaults
from bridge.gofax.simulator import GoFaxSimulator, RedactingAccessLogger

# ---------------------------------------------------------------- GoFax simulator fixtures

SIM_TOKEN = "0b3f-SECRET-TOKEN-7d21"  # distinctive, so tests can assert it never leaks

SimulatorFactory = Callable[..., Awaitable[GoFaxSimulator]]


@pytest.fixture
def simulator_factory(aiohttp_server: Any) -> SimulatorFactory:
    """``await simulator_factory(**GoFaxSimulator kwargs)`` → a simulator served on loopback,
    with ``sim.base_url`` set and ``sim.token == SIM_TOKEN`` unless given."""

    async def start(**kwargs: Any) -> GoFaxSimulator:
        kwargs.setdefault("token", SIM_TOKEN)
        sim = GoFaxSimulator(**kwargs)
        # The redacting access log keeps ?token= out of captured logs.
        server = await aiohttp_server(sim.app, access_log_class=RedactingAccessLogger)
        sim.base_url = str(server.make_url("")).rstrip("/")
        return sim

    return start


@pytest.fixture
async def simulator(simulator_factory: SimulatorFactory) -> GoFaxSimulator:
    """A running simulator with default settings (instant faxes, no webhooks)."""
    return await simulator_factory()


# ---------------------------------------------------------------- whole-daemon fixtures


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    """A test smarthost (see tests/smtp_sink.py)."""
    async with SmtpSink() as s:
        yield s


@pytest.fixture
async def daemons() -> AsyncIterator[list[Daemon]]:
    """Daemons a test starts with ``daemon.start`` go in here and are stopped after it."""
    started: list[Daemon] = []
    yield started
    for d in started:
        await d.app.stop()


# ---------------------------------------------------------------- SMTP intake fixtures


@pytest.fixture
async def intake_pool(tmp_path: Path) -> AsyncIterator[IntakePool]:
    pool = IntakePool(tmp_path)
    yield pool
    await pool.stop_all()


@pytest.fixture
async def start_intake(intake_pool: IntakePool) -> IntakeFactory:
    """``await start_intake(cover=..., **smtp settings)`` → a running intake on 127.0.0.1:0."""

    async def start(cover: str = "auto", **smtp: Any) -> Intake:
        smtp.setdefault("listen", "127.0.0.1:0")
        return await intake_pool.start(defaults(smtp=SmtpConfig(**smtp), fax=FaxConfig(cover=cover)))

    return start


@pytest.fixture
async def intake(start_intake: IntakeFactory) -> Intake:
    return await start_intake()
