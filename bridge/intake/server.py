"""The SMTP listener, in the daemon's own event loop, with a cap on concurrent sessions.

Why not aiosmtpd's ``Controller``: it runs a second event loop in a thread and connects to
itself once at start; we want one loop (the store, the sender and the handler share it) and no
stray sessions. So the server is ``loop.create_server(factory, host, port)``, and the factory is
where the connection cap lives, because aiosmtpd has none (its maintainers declined one):
beyond ``[smtp] max_connections`` a new client gets ``421 4.7.0`` and is closed before a session
(and its buffers) exists.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP

from bridge import replies
from bridge.config import Config
from bridge.intake.handler import IntakeHandler
from bridge.store import AsyncStore

__all__ = ["SmtpIntake", "command_limits"]

log = structlog.get_logger(__name__)

# How long stop() lets a mail that is already being accepted finish (so its client gets the
# 250 for a mail we commit anyway) before it closes the remaining sessions.
STOP_GRACE_SECONDS = 5.0


def command_limits(config: Config) -> dict[str, int]:
    """Per-session command budgets (aiosmtpd has none by default); beyond one the client gets
    ``421 4.7.0 <cmd> sent too many times`` and is disconnected.

    Generous for MTAs that deliver many mails over one connection, tight for commands a real
    client needs once or twice; RCPT allows ``max_recipients`` for each of many mails.
    """
    return {
        "AUTH": 3,  # issue 6: password guessing
        "EHLO": 5, "HELO": 5, "STARTTLS": 2,
        "VRFY": 5, "EXPN": 5, "HELP": 5, "NOOP": 20,
        "RCPT": 10 * (config.smtp.max_recipients + 5),
        "*": 100,  # MAIL, DATA, RSET, QUIT: up to ~100 mails per connection
    }


# Replies aiosmtpd writes itself, without an enhanced status code, mapped to ours (the person
# reading the bounce should learn the limit, and every reply should be in replies.py).
def _translate(status: str, config: Config) -> str:
    if status.startswith("552 ") and not status.startswith("552 5."):
        return replies.TOO_BIG.format(limit=config.smtp.max_message_bytes)
    return status


class _Session(SMTP):
    """One SMTP session: aiosmtpd's, counted by its :class:`SmtpIntake`."""

    def __init__(self, handler: IntakeHandler, *, intake: SmtpIntake, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._intake = intake

    async def push(self, status: str | bytes) -> None:  # type: ignore[override]
        if isinstance(status, str):
            status = _translate(status, self._intake.config)
        await super().push(status)

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            self._intake._release(self)


class _Refuse(asyncio.Protocol):
    """A connection we will not serve: one reply (421: "try again later"), then close."""

    def __init__(self, reply: str) -> None:
        self.reply = reply

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self.reply.encode("ascii") + b"\r\n")
        transport.close()  # after the write is flushed


class SmtpIntake:
    """The SMTP intake server: ``await start()``, ``port``, ``await stop()``."""

    def __init__(self, config: Config, store: AsyncStore, *,
                 on_accepted: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.store = store
        self.handler = IntakeHandler(config, store, on_accepted=on_accepted)
        self._server: asyncio.Server | None = None
        self._sessions: set[_Session] = set()
        self._closing = False

    # --- sessions -------------------------------------------------------------------------

    @property
    def live_sessions(self) -> int:
        return len(self._sessions)

    def _factory(self) -> asyncio.BaseProtocol:
        if self._closing:
            return _Refuse(str(replies.SHUTTING_DOWN))
        # The slot is taken here, not in connection_made: several connections accepted in one
        # loop iteration would otherwise all see the old count.
        if len(self._sessions) >= self.config.smtp.max_connections:
            log.warning("intake_too_many_connections", limit=self.config.smtp.max_connections)
            return _Refuse(str(replies.TOO_MANY_CONNECTIONS))
        smtp = self.config.smtp
        session = _Session(
            self.handler,
            intake=self,
            loop=asyncio.get_running_loop(),
            hostname=smtp.hostname,
            ident="faxbridge ESMTP",  # not aiosmtpd's default, which names its version
            data_size_limit=smtp.max_message_bytes,  # advertised as SIZE, enforced while reading
            enable_SMTPUTF8=True,
            decode_data=False,  # keep the bytes: the bare-LF check and the parser need them
            timeout=smtp.idle_timeout_seconds,
            command_call_limit=command_limits(self.config),
        )
        self._sessions.add(session)
        return session

    def _release(self, session: _Session) -> None:
        self._sessions.discard(session)

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the real one when ``listen`` asked for port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the SMTP intake is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        host, _, port = self.config.smtp.listen.rpartition(":")
        host = host.strip("[]")
        loop = asyncio.get_running_loop()
        self._closing = False
        self._server = await loop.create_server(self._factory, host, int(port))
        log.info("intake_listening", host=host, port=self.port)

    async def stop(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        """Stops listening, lets mails in DATA finish (up to ``grace_seconds``), then closes
        the other sessions with ``421 4.3.2``."""
        if self._server is None:
            return
        self._closing = True
        self._server.close()
        await self.handler.wait_idle(grace_seconds)
        tasks = []
        for session in list(self._sessions):
            transport = session.transport
            if transport is not None and not transport.is_closing():
                with contextlib.suppress(Exception):
                    transport.write(str(replies.SHUTTING_DOWN).encode("ascii") + b"\r\n")  # type: ignore[attr-defined]
                transport.close()
            # Private in aiosmtpd, but the only handle on the session's task; awaiting it
            # avoids "Task was destroyed but it is pending" at loop shutdown.
            task = getattr(session, "_handler_coroutine", None)
            if task is not None:
                tasks.append(task)
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        await self._server.wait_closed()
        self._server = None
        log.info("intake_stopped")
