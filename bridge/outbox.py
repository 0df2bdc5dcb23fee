"""Outgoing mail: notices, received faxes and SMS replies leave through here, and are never lost.

Every mail is first a row in the store's outbox (queued in the same transaction as the event that
caused it). :class:`Outbox` hands due rows to a :class:`Transport` — an SMTP smarthost or, in the
sandbox, a local Maildir — and records the outcome:

- accepted → ``sent``;
- a temporary failure (smarthost down, timeout, 4xx) → stays ``pending`` and is retried with
  exponential backoff and jitter, without limit: mail is never dropped. After
  ``STALE_WARNING_SECONDS`` every further failure logs a warning so that someone notices;
- a permanent failure (5xx for every recipient, or for the message) → ``parked``: kept, shown by
  ``faxbridge jobs``, and sent again only when an operator requeues it (``store.requeue_mail``).

Delivery is *at least once*: if the process dies after the smarthost accepted a mail but before
the store recorded it, the mail goes again after the restart. A duplicate notice is the lesser
evil next to a lost one.
"""

from __future__ import annotations

import asyncio
import contextlib
import mailbox
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from email.utils import parseaddr
from pathlib import Path
from typing import Protocol

import aiosmtplib
import structlog

from bridge.backoff import backoff_seconds
from bridge.config import Config
from bridge.redact import redact
from bridge.store import AsyncStore, OutgoingMail

log = structlog.get_logger(__name__)

STALE_WARNING_SECONDS = 3 * 86_400   # pending this long: warn on every further failure
IDLE_CAP_SECONDS = 30.0              # look at the store at least this often
BATCH = 20                           # rows fetched per pass


class DeliveryError(Exception):
    """Base class; ``str()`` is a readable, redacted sentence for the operator."""

    def __init__(self, text: str) -> None:
        self.text = redact(text)
        super().__init__(self.text)


class TemporaryFailure(DeliveryError):
    """Try again later. ``transport_down`` says the next hop itself is unusable (refused
    connection, timeout, bad login), so the other due mails need not try it right now."""

    def __init__(self, text: str, *, transport_down: bool = False) -> None:
        super().__init__(text)
        self.transport_down = transport_down


class PermanentFailure(DeliveryError):
    """The next hop refused this message for good (5xx): park it for the operator."""


class Transport(Protocol):
    async def send(self, mail_from: str, rcpt_to: Sequence[str], message: bytes) -> None:
        """Delivers one message or raises TemporaryFailure / PermanentFailure."""
        ...


# --- SMTP smarthost ------------------------------------------------------------------------------

class SmtpTransport:
    """One SMTP session per mail to a smarthost, with aiosmtplib.

    Recipients are given RCPT one by one so that the outcome is decided *before* DATA:

    - any recipient answered 4xx → nothing is sent (RSET) and the whole mail is retried later,
      so that no recipient gets it twice;
    - every recipient answered 5xx → :class:`PermanentFailure`;
    - some accepted and the rest answered 5xx → the mail is sent to those accepted and counts as
      sent; the refused ones are logged (outbox rows are per mailbox in practice, so this is rare).

    5xx to MAIL FROM usually means the smarthost does not like our sender address (a config
    problem shared by every mail), so it is temporary and marks the transport down — except 552
    (message too big), which is about this mail. Authentication failures are temporary too: the
    operator fixes the password and the queue drains.
    """

    def __init__(self, host: str, port: int, *, username: str = "", password: str = "",
                 starttls: bool = False, timeout_seconds: float = 30,
                 local_hostname: str | None = None) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.starttls = starttls
        self.timeout_seconds = timeout_seconds
        self.local_hostname = local_hostname
        self._quitting: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:  # never shows the password
        return f"SmtpTransport({self.host}:{self.port}, user={self.username!r}, starttls={self.starttls})"

    @property
    def where(self) -> str:
        return f"smarthost {self.host}:{self.port}"

    async def send(self, mail_from: str, rcpt_to: Sequence[str], message: bytes) -> None:
        if not rcpt_to:
            raise PermanentFailure("the mail has no recipients")
        for address in (*rcpt_to, *([mail_from] if mail_from else [])):  # "" = null sender
            _check_address(address)
        client = aiosmtplib.SMTP(hostname=self.host, port=self.port, timeout=self.timeout_seconds,
                                 start_tls=self.starttls, local_hostname=self.local_hostname)
        handed_off = False
        try:
            await self._connect(client)
            await self._envelope(client, mail_from, rcpt_to, len(message))
            try:
                await client.data(message)
            except aiosmtplib.SMTPResponseException as exc:
                raise self._refusal(exc, "the message") from None
        except DeliveryError:
            await self._end(client, rset=True)
            raise
        except aiosmtplib.SMTPTimeoutError as exc:
            raise TemporaryFailure(f"{self.where} timed out: {exc}", transport_down=True) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            # Disconnects, refused connections, DNS and TLS errors: nothing was accepted.
            raise TemporaryFailure(f"{self.where}: {_describe(exc)}", transport_down=True) from None
        except ValueError as exc:
            # aiosmtplib could not put an address on a command line: this mail can never go.
            raise PermanentFailure(f"cannot send to {list(rcpt_to)} from <{mail_from}>: {exc}") from None
        else:
            # Accepted: from here on nothing may turn this into a failure (it would send twice).
            # QUIT in the background, so that the caller records "sent" at once: every moment
            # between the 250 and that record is one in which a crash means a second copy.
            task = asyncio.create_task(self._quit(client))
            self._quitting.add(task)
            task.add_done_callback(self._quitting.discard)
            handed_off = True
        finally:
            if client.is_connected and not handed_off:
                client.close()

    async def _quit(self, client: aiosmtplib.SMTP) -> None:
        try:
            await self._end(client, quit=True)
        finally:
            if client.is_connected:
                client.close()

    async def _connect(self, client: aiosmtplib.SMTP) -> None:
        try:
            await client.connect()
            if self.username:
                await client.login(self.username, self.password)
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise TemporaryFailure(f"{self.where} refused our login for user {self.username!r}: "
                                   f"{exc.code} {exc.message}", transport_down=True) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise TemporaryFailure(f"{self.where} refused the session: {exc.code} {exc.message}",
                                   transport_down=True) from None

    async def _envelope(self, client: aiosmtplib.SMTP, mail_from: str, rcpt_to: Sequence[str],
                        size: int) -> None:
        options = [f"SIZE={size}"] if client.supports_extension("size") else []
        try:
            await client.mail(mail_from, options=options)
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == 552:
                raise PermanentFailure(f"{self.where} refused the message as too big: "
                                       f"{exc.code} {exc.message}") from None
            text = f"{self.where} refused the sender <{mail_from}>: {exc.code} {exc.message}"
            raise TemporaryFailure(text, transport_down=exc.code >= 500) from None
        refused: dict[str, aiosmtplib.SMTPRecipientRefused] = {}
        for rcpt in rcpt_to:
            try:
                await client.rcpt(rcpt)
            except aiosmtplib.SMTPRecipientRefused as exc:
                refused[rcpt] = exc
        texts = "; ".join(f"<{r}>: {e.code} {e.message}" for r, e in refused.items())
        if any(e.code < 500 for e in refused.values()):
            # 421 is the server closing the session (shutting down, overloaded): a host matter.
            raise TemporaryFailure(f"{self.where} deferred recipients: {texts}",
                                   transport_down=any(e.code == 421 for e in refused.values()))
        if len(refused) == len(rcpt_to):
            raise PermanentFailure(f"{self.where} refused every recipient: {texts}")
        if refused:
            log.warning("outbox_recipients_refused", refused=texts,
                        accepted=[r for r in rcpt_to if r not in refused])

    def _refusal(self, exc: aiosmtplib.SMTPResponseException, what: str) -> DeliveryError:
        text = f"{self.where} refused {what}: {exc.code} {exc.message}"
        if exc.code >= 500:
            return PermanentFailure(text)
        return TemporaryFailure(text, transport_down=exc.code == 421)

    @staticmethod
    async def _end(client: aiosmtplib.SMTP, *, rset: bool = False, quit: bool = False) -> None:
        """Ends the session politely when possible; errors here change nothing."""
        if not client.is_connected:
            return
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            if rset:
                await client.rset()
            if quit:
                await client.quit()


def _check_address(address: str) -> None:
    """Refuses an address that aiosmtplib would send as something else.

    aiosmtplib passes addresses through ``parseaddr``, which quietly turns ``"a@b>\\r\\nX"`` into
    ``a@b``: rather than mail someone we did not mean, such a mail is refused for good.
    """
    usable = (address.isascii() and address.isprintable() and "@" in address
              and not any(c in address for c in " <>") and parseaddr(address)[1] == address)
    if not usable:
        raise PermanentFailure(f"not a usable mail address: {address!r}")


def _describe(exc: BaseException) -> str:
    """A short reason; aiosmtplib wraps the OS error, so look down the cause chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError) or "errno 111" in str(seen).lower():
            return "connection refused (is the smarthost running and listening there?)"
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


# --- Maildir (the sandbox) -----------------------------------------------------------------------

class MaildirTransport:
    """Delivers into one local Maildir: the sandbox's mailbox, where nothing leaves the machine.

    The envelope is not kept (one shared mailbox; the To: header says who it was for). The
    mailbox module writes the message under tmp/ and renames it into new/, so a reader never sees
    half a message; line ends become the local convention (LF), as Maildir readers expect.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"MaildirTransport({str(self.path)!r})"

    async def send(self, mail_from: str, rcpt_to: Sequence[str], message: bytes) -> None:
        try:
            await asyncio.to_thread(self._add, message)
        except OSError as exc:
            raise TemporaryFailure(f"cannot write to the Maildir {self.path}: {exc}",
                                   transport_down=True) from None

    def _add(self, message: bytes) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)  # Maildir() makes only the leaf
        box = mailbox.Maildir(self.path, create=True)
        return box.add(message)


def make_transport(config: Config) -> Transport:
    """The smarthost when ``[mail] smarthost`` is set, else the Maildir at ``[mail] maildir``."""
    mail = config.mail
    if not mail.smarthost:
        return MaildirTransport(config.path(mail.maildir))
    host, _, port = mail.smarthost.rpartition(":")
    return SmtpTransport(host.strip("[]"), int(port), username=mail.smarthost_user,
                         password=mail.smarthost_password, starttls=mail.smarthost_starttls,
                         local_hostname=config.smtp.hostname or None)


# --- the delivery loop ---------------------------------------------------------------------------

SentHook = Callable[[sqlite3.Connection, OutgoingMail], None]


class Outbox:
    """Delivers due outbox rows until cancelled. One mail at a time, in due order.

    ``healthy`` / ``last_error`` are for ``/healthz``: unhealthy from a failure of the next hop
    itself (down, timing out, refusing our login or sender) until the next successful delivery.

    ``add_sent_hook(kind, fn)`` runs ``fn(db, mail)`` inside the transaction that marks a mail
    of that kind sent (the receiver marks a fax delivered there).
    """

    def __init__(self, config: Config, store: AsyncStore, transport: Transport | None = None, *,
                 clock: Callable[[], float] = time.time,
                 rng: Callable[[], float] = random.random,
                 batch: int = BATCH, idle_cap_seconds: float = IDLE_CAP_SECONDS) -> None:
        self.config = config
        self.store = store
        self.transport = transport if transport is not None else make_transport(config)
        self.clock = clock
        self.rng = rng
        self.batch = batch
        self.idle_cap_seconds = idle_cap_seconds
        self.healthy = True
        self.last_error = ""
        self.last_success_at: float | None = None
        self._wake = asyncio.Event()
        # While the next hop is down, no mail is tried before this time (not one per due row).
        self._blocked_until = 0.0
        self._hooks: dict[str, SentHook] = {}

    def wake(self) -> None:
        """Something was queued: look at the outbox now rather than at the next due time."""
        self._wake.set()

    def add_sent_hook(self, kind: str, hook: SentHook) -> None:
        self._hooks[kind] = hook

    async def run(self) -> None:
        """Delivers until cancelled. Errors other than delivery failures (a store problem) are
        logged and retried after a pause: this task must not die while mail waits."""
        log.info("outbox_started", transport=repr(self.transport))
        failures = 0
        while True:
            try:
                sent = await self.deliver_due()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                self.healthy = False
                self.last_error = redact(f"outbox error: {type(exc).__name__}: {exc}")
                log.exception("outbox_error", error=self.last_error)
                await self._sleep(min(self.idle_cap_seconds, 2.0 ** failures))
                continue
            if sent >= self.batch and self.clock() >= self._blocked_until:
                continue  # a full batch went out: there may be more due right now
            await self._sleep(await self._seconds_until_due())

    async def _seconds_until_due(self) -> float:
        due = await self.store.next_mail_due_at()
        now = self.clock()
        if due is None:
            return self.idle_cap_seconds
        return min(self.idle_cap_seconds, max(0.0, max(due, self._blocked_until) - now))

    async def _sleep(self, seconds: float) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
        # that arrives as the event is set, and then stop() would wait for ever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self._wake.wait()
        self._wake.clear()

    async def deliver_due(self) -> int:
        """One pass over the due rows; returns how many were delivered."""
        if self.clock() < self._blocked_until:
            return 0
        sent = 0
        for mail in await self.store.due_mail(self.batch):
            if await self._deliver(mail):
                sent += 1
            elif self.clock() < self._blocked_until:
                break  # the next hop is down: the rest stay due, untouched
        return sent

    async def _deliver(self, mail: OutgoingMail) -> bool:
        where = {"mail": mail.id, "kind": mail.kind, "ref": mail.ref}
        try:
            await self.transport.send(mail.mail_from, mail.rcpt_to, mail.message)
        except TemporaryFailure as exc:
            await self._retry(mail, exc, where)
            return False
        except PermanentFailure as exc:
            await self.store.mail_retry(mail.id, exc.text, self.clock(), park=True)
            log.error("outbox_parked", **where, rcpt=list(mail.rcpt_to), error=exc.text,
                      hint="faxbridge jobs lists parked mail; fix the cause, then requeue it")
            return False
        except Exception as exc:
            # A bug in a transport must not stop the queue behind this mail: retry it later.
            log.exception("outbox_transport_error", **where)
            await self._retry(mail, TemporaryFailure(f"{type(exc).__name__}: {exc}"), where)
            return False
        await self._record_sent(mail, where)
        self.healthy = True
        self.last_error = ""
        self.last_success_at = self.clock()
        log.info("outbox_sent", **where, rcpt=list(mail.rcpt_to), attempts=mail.attempts + 1)
        return True

    async def _record_sent(self, mail: OutgoingMail, where: dict[str, object]) -> None:
        """The next hop has the mail: record it, retrying a failing disk rather than sending the
        mail again (which a failed write left as pending would do)."""
        hook = self._hooks.get(mail.kind)
        delay = 0.5
        while True:
            try:
                await self.store.mail_sent(mail.id,
                                           on_sent=(lambda db: hook(db, mail)) if hook else None)
                return
            except (sqlite3.Error, OSError) as exc:
                self.healthy = False
                self.last_error = f"cannot write the store: {exc}"
                log.error("outbox_record_failed", **where, error=str(exc), retry_in_seconds=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _retry(self, mail: OutgoingMail, exc: TemporaryFailure, where: dict[str, object]) -> None:
        mail_cfg = self.config.mail
        delay = backoff_seconds(mail.attempts + 1, initial=mail_cfg.retry_initial_seconds,
                                maximum=mail_cfg.retry_max_seconds, rng=self.rng)
        now = self.clock()
        await self.store.mail_retry(mail.id, exc.text, now + delay)
        if exc.transport_down:
            # The next hop is unusable: /healthz goes red, and no other mail tries it for now.
            # (A 4xx for one mail — greylisting, a full mailbox — is that mail's business.)
            self.healthy = False
            self.last_error = exc.text
            self._blocked_until = now + delay
        age = now - mail.created_at
        if age >= STALE_WARNING_SECONDS:
            log.warning("outbox_mail_stale", **where, pending_hours=round(age / 3600, 1),
                        attempts=mail.attempts + 1, error=exc.text, retry_in_seconds=round(delay))
        else:
            log.info("outbox_retry", **where, attempts=mail.attempts + 1, error=exc.text,
                     retry_in_seconds=round(delay, 1))


__all__ = ["DeliveryError", "MaildirTransport", "Outbox", "PermanentFailure", "SmtpTransport",
           "TemporaryFailure", "Transport", "make_transport"]
