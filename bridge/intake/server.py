"""The SMTP listener, in the daemon's own event loop, with a cap on concurrent sessions.

Why not aiosmtpd's ``Controller``: it runs a second event loop in a thread and connects to
itself once at start; we want one loop (the store, the sender and the handler share it) and no
stray sessions. So the server is ``loop.create_server(factory, host, port)``, and the factory is
where the connection cap lives, because aiosmtpd has none (its maintainers declined one):
beyond ``[smtp] max_connections`` a new client gets ``421 4.7.0`` and is closed before a session
(and its buffers) exists.

STARTTLS and SMTP AUTH: with ``[smtp] tls_cert``/``tls_key`` the session offers STARTTLS, and AUTH
PLAIN/LOGIN only after it (``auth_require_tls``: a password never crosses the wire in clear).
STARTTLS is not *required*: clients in ``trusted_networks`` may send without it. aiosmtpd's
built-in PLAIN/LOGIN call their authenticator synchronously, in the event loop; a password check
that is worth anything (scrypt) takes ~30 ms, so :class:`_Session` re-implements the two
mechanisms (aiosmtpd's parsing, line for line) around an awaited check that runs in a worker
thread (:meth:`IntakeHandler.authenticate`). A failed login is answered after a pause
(``auth_failure_delay``), and ``command_call_limit`` allows 3 AUTH commands per connection:
guessing passwords costs a new connection every 3 tries and a second or more per try.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import logging
import re
import ssl
from base64 import b64decode
from collections.abc import Callable
from typing import Any

import structlog
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, syntax

from bridge import replies
from bridge.config import Config
from bridge.intake.data import DataAssembler, DataProblem
from bridge.intake.handler import IntakeHandler
from bridge.store import AsyncStore
from bridge.users import Authenticator

__all__ = ["SmtpIntake", "command_limits", "make_tls_context"]

log = structlog.get_logger(__name__)

_SOURCE_ROUTE = re.compile(r"\s*TO:\s*<\s*@", re.IGNORECASE)

# How long a wrong password waits for its answer (not the event loop: this session only).
AUTH_FAILURE_DELAY_SECONDS = 1.0


def _not_login_data_warning(record: logging.LogRecord) -> bool:
    # aiosmtpd sets the deprecated Session.login_data on every successful AUTH, which logs a
    # warning each time; it says nothing to an operator.
    return "login_data is deprecated" not in record.getMessage()


logging.getLogger("mail.log").addFilter(_not_login_data_warning)


def make_tls_context(config: Config) -> ssl.SSLContext | None:
    """The server-side TLS context for STARTTLS, or None without ``[smtp] tls_cert``.

    Raises OSError (ssl.SSLError is one) when the certificate or key cannot be loaded.
    """
    smtp = config.smtp
    if not smtp.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # no client certificates
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.path(smtp.tls_cert), config.path(smtp.tls_key))
    return context


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
        "AUTH": 3,  # password guessing: a new connection every 3 tries
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

    # --- DATA: read into one buffer (see bridge.intake.data) -------------------------------

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        # aiosmtpd's own checks and replies, in its order.
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        data = DataAssembler(self.data_size_limit, self.line_length_limit)
        reader = self._reader
        try:
            # read() hands over everything buffered (up to the huge n), so when DATA ends the
            # reader is empty and feed_data() can return the leftover in order.
            while True:
                chunk = await reader.read(1 << 30)
                if not chunk:  # EOF: aiosmtpd's eof_received cancels this task as well
                    self._writer.close()
                    return
                if data.feed(chunk):
                    break
        except asyncio.CancelledError:
            log.info("intake_connection_lost", stage="DATA")
            self._writer.close()
            raise
        if data.leftover:
            with contextlib.suppress(AssertionError):  # the client closed after pipelining
                reader.feed_data(data.leftover)
        if data.problem is DataProblem.TOO_BIG:
            await self.push(replies.TOO_BIG.format(limit=self.data_size_limit))
            self._set_post_data_state()
            return
        if data.problem is DataProblem.LINE_TOO_LONG:
            await self.push(replies.LINE_TOO_LONG.format(limit=self.line_length_limit - 2))
            self._set_post_data_state()
            return
        self.envelope.content = self.envelope.original_content = data.message
        del data
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        # aiosmtpd drops a source route (RFC 5321 §3.6.1, <@relay:user@domain>) and hands our
        # hook only "user@domain". A client that still writes one is asking us to relay.
        if arg and _SOURCE_ROUTE.match(arg):
            log.info("intake_refused", stage="RCPT", rcpt=arg[:200], reason="source route")
            await self.push(replies.RELAY_DENIED.format(fax_domain=self._intake.config.smtp.fax_domain))
            return
        await super().smtp_RCPT(arg)

    # --- AUTH: aiosmtpd's PLAIN and LOGIN, with an awaited (threaded) password check ---------

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False)  # challenge_auth answered already
        else:
            try:
                blob = b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await self.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        assert isinstance(blob, bytes)
        try:
            # RFC 4616: authzid NUL authcid NUL passwd; the authzid is ignored.
            _authzid, login, password = blob.split(b"\x00")
        except ValueError:
            await self.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False, handled=True)
        return await self._check_login(login, password)

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await self.challenge_auth(self.AuthLoginUsernameChallenge)
            if login is MISSING:
                return AuthResult(success=False)
        else:
            try:
                login = b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await self.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False)
        assert isinstance(login, bytes) and isinstance(password, bytes)
        return await self._check_login(login, password)

    async def _check_login(self, login: bytes, password: bytes) -> AuthResult:
        user = await self._intake.handler.authenticate(login, password)
        if user is None:
            await asyncio.sleep(self._intake.auth_failure_delay)
            return AuthResult(success=False, handled=False, message=str(replies.AUTH_FAILED))
        return AuthResult(success=True, auth_data=user, message=str(replies.AUTH_OK))


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
                 on_accepted: Callable[[], None] = lambda: None,
                 users: Authenticator | None = None,
                 auth_failure_delay: float = AUTH_FAILURE_DELAY_SECONDS) -> None:
        """Raises OSError when the TLS certificate cannot be loaded, and
        :class:`~bridge.users.UsersFileError` when the users file is broken: both stop the
        daemon at start-up rather than leave it running without what the operator asked for."""
        self.config = config
        self.store = store
        self.tls_context = make_tls_context(config)
        if users is None and config.smtp.users_file:
            users = Authenticator(config.path(config.smtp.users_file))
        self.auth_failure_delay = auth_failure_delay
        self.handler = IntakeHandler(config, store, on_accepted=on_accepted, users=users)
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
            tls_context=self.tls_context,
            require_starttls=False,  # trusted networks may send in clear; AUTH needs TLS anyway
            auth_require_tls=True,
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
