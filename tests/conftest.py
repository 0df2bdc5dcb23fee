"""Shared fixtures. Keep each fixture in its own clearly named function."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

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
