"""A real SMTP server for tests: records what it is sent, refuses on demand, goes down and comes
back on the same port.

It is an aiosmtpd ``SMTP`` protocol served by ``loop.create_server`` in the test's own event loop
(no ``Controller`` thread, no stray self-connection), on 127.0.0.1 and a free port::

    from smtp_sink import SmtpSink     # tests/ is on sys.path (it has no __init__.py)

    async def test_something():
        async with SmtpSink() as sink:                  # listening on sink.host:sink.port
            transport = SmtpTransport(sink.host, sink.port)
            await transport.send("a@x", ["b@y"], b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
            [got] = await sink.wait_for(1)              # Received(mail_from, rcpt_tos, data, …)
            assert got.rcpt_tos == ["b@y"] and got.message["Subject"] == "hi"

            sink.fail("rcpt", "451 4.3.0 try again later", times=1)   # next RCPT is deferred
            sink.fail("data", "554 5.6.0 no thanks")                  # every DATA refused
            sink.clear_failures()

            await sink.stop()       # connections now refused (and open sessions cut)
            await sink.start()      # back on the same port

Failures are matched per command: ``stage`` is "mail", "rcpt" or "data"; ``recipients``
restricts an "rcpt" failure to some addresses (case-insensitive); ``times`` is how many commands
it refuses before it expires (``None``: until cleared). ``SmtpSink(auth={"user": "password"})``
requires AUTH PLAIN/LOGIN (allowed without TLS, for tests) and records ``logins``.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Literal

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

Stage = Literal["mail", "rcpt", "data"]


@dataclass
class Received:
    """One accepted message, as the sink saw it."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes                  # the message bytes after DATA (dot-unstuffed), CRLF line ends
    peer: Any = None

    @property
    def message(self) -> EmailMessage:
        """The message parsed with ``email.policy.default``."""
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Failure:
    stage: Stage
    reply: str
    recipients: frozenset[str] | None = None
    remaining: int | None = None


@dataclass
class Refusal:
    """A command the sink refused: (stage, address or None for DATA, the reply it gave)."""

    stage: Stage
    address: str | None
    reply: str


class SmtpSink:
    """See the module docstring. Attributes: ``messages`` (list of :class:`Received`),
    ``refusals`` (list of :class:`Refusal`), ``sessions`` (connections accepted), ``logins``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 auth: Mapping[str, str] | None = None, hostname: str = "sink.test") -> None:
        self.host = host
        self.port = port
        self.hostname = hostname
        self.auth = dict(auth) if auth is not None else None
        self.messages: list[Received] = []
        self.refusals: list[Refusal] = []
        self.logins: list[str] = []
        self.sessions = 0
        self._failures: list[Failure] = []
        self._server: asyncio.Server | None = None
        self._live: set[SMTP] = set()

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> SmtpSink:
        """Starts listening; after a stop, on the same port as before."""
        if self._server is not None:
            return self
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self.host, self.port,
                                                reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stops listening (new connections are refused) and cuts the open sessions."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for protocol in list(self._live):
            if protocol.transport is not None:
                protocol.transport.close()
        self._live.clear()
        await server.wait_closed()
        await asyncio.sleep(0)  # let the cut sessions run their connection_lost

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def address(self) -> str:
        """``host:port``, as ``[mail] smarthost`` wants it."""
        return f"{self.host}:{self.port}"

    async def __aenter__(self) -> SmtpSink:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- behaviour ----------------------------------------------------------------------------

    def fail(self, stage: Stage, reply: str, *, recipients: Iterable[str] | None = None,
             times: int | None = None) -> None:
        """Refuse commands of ``stage`` with ``reply`` (e.g. "451 4.3.0 later", "550 5.1.1 no")."""
        if stage not in ("mail", "rcpt", "data"):
            raise ValueError(f"stage must be mail, rcpt or data, not {stage!r}")
        code = reply[:3]
        if not (code.isdigit() and code[0] in "45"):
            raise ValueError(f"a refusal starts with a 4xx or 5xx code, not {reply!r}")
        rcpts = frozenset(r.lower() for r in recipients) if recipients is not None else None
        self._failures.append(Failure(stage, reply, rcpts, times))

    def clear_failures(self) -> None:
        self._failures.clear()

    def clear(self) -> None:
        """Forgets what was received and refused (not the failures still armed)."""
        self.messages.clear()
        self.refusals.clear()
        self.logins.clear()

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Waits until at least ``count`` messages arrived; returns them all. Fails on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.messages) < count:
            if loop.time() > deadline:
                raise AssertionError(f"the SMTP sink got {len(self.messages)} messages, "
                                     f"expected {count} within {timeout} s")
            await asyncio.sleep(0.01)
        return list(self.messages)

    # --- internals ----------------------------------------------------------------------------

    def _refusal(self, stage: Stage, address: str | None) -> str | None:
        for failure in self._failures:
            if failure.stage != stage:
                continue
            if (failure.recipients is not None
                    and (address or "").lower() not in failure.recipients):
                continue
            if failure.remaining is not None:
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failures.remove(failure)
            self.refusals.append(Refusal(stage, address, failure.reply))
            return failure.reply
        return None

    def _protocol(self) -> SMTP:
        sink = self
        kwargs: dict[str, Any] = {}
        if self.auth is not None:
            kwargs.update(authenticator=self._authenticate, auth_required=True,
                          auth_require_tls=False)

        class _Tracked(SMTP):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sink.sessions += 1
                sink._live.add(self)
                super().connection_made(transport)

            def connection_lost(self, error: Exception | None) -> None:
                sink._live.discard(self)
                super().connection_lost(error)

        with warnings.catch_warnings():
            # "Requiring AUTH while not requiring TLS": deliberate here, loopback-only tests.
            warnings.simplefilter("ignore", UserWarning)
            return _Tracked(_Handler(self), hostname=self.hostname, **kwargs)

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword) and self.auth is not None:
            login = auth_data.login.decode()
            if self.auth.get(login) == auth_data.password.decode():
                self.logins.append(login)
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)


@dataclass
class _Handler:
    sink: SmtpSink

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        if reply := self.sink._refusal("mail", address):
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if reply := self.sink._refusal("rcpt", address):
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if reply := self.sink._refusal("data", None):
            return reply
        data = envelope.original_content or envelope.content or b""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        self.sink.messages.append(Received(envelope.mail_from or "", list(envelope.rcpt_tos),
                                           bytes(data), session.peer))
        return "250 2.0.0 OK queued"
