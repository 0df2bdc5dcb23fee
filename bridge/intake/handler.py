"""The aiosmtpd handler: envelope checks at MAIL/RCPT, then DATA → store → ``250``.

A thin adapter: every decision is made by pure code (:mod:`bridge.policy`,
:mod:`bridge.intake.addresses`, :mod:`bridge.intake.message`); this class runs it at the right
moment of the SMTP dialogue, moves the CPU work off the event loop, and turns the outcome into
one reply from :mod:`bridge.replies`.

Durability rules (DESIGN.md, pitfalls.md):

- ``250`` is answered only after :meth:`AsyncStore.accept` returned, i.e. the jobs are committed.
- Nothing happens before ``250`` that would need undoing: parsing and cover rendering have no
  side effects, and the store write is one transaction. If the client disconnects mid-DATA,
  aiosmtpd cancels us; the store write, once started, is shielded and completes (the client
  never saw 250, its MTA re-sends, dedupe answers that copy 250 without a second fax).
- Any unexpected exception becomes ``451 4.3.0`` (try again), never aiosmtpd's ``500``.

Who may send (SECURITY.md): MAIL checks the client (trusted network or SMTP AUTH), the envelope
sender (allow-list, and an authenticated user's own addresses); RCPT checks the recipient
(never relay) and the sender's quota; DATA checks the header From: the same way, the DMARC
verdict of the trusted MTA when required, and the quota again with this mail's cost, in the same
critical section as the store write so that concurrent sessions cannot overrun it together.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

from bridge import policy, quota, replies
from bridge.config import Config
from bridge.intake.addresses import Recipient, parse_recipient
from bridge.intake.message import Limits, build_mail
from bridge.replies import Refused
from bridge.store import AsyncStore, NewMail
from bridge.users import Authenticator

__all__ = ["IntakeHandler", "peer_ip"]

log = structlog.get_logger(__name__)


def peer_ip(session: Session) -> str | None:
    """The client's IP address (aiosmtpd gives the socket's peername tuple)."""
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None


# At most this many password checks (scrypt: ~30 ms of CPU and 16 MiB each) run at once; the
# rest wait their turn. A flood of AUTH attempts then costs a bounded share of the machine.
AUTH_CONCURRENCY = 2


class IntakeHandler:
    """aiosmtpd handler for the fax and SMS intake.

    ``on_accepted`` is called (synchronously, must not block) after new jobs were committed,
    to wake the sender. ``users`` checks SMTP AUTH logins (None: nobody can log in).
    """

    def __init__(self, config: Config, store: AsyncStore, *,
                 on_accepted: Callable[[], None] = lambda: None, limits: Limits | None = None,
                 users: Authenticator | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.on_accepted = on_accepted
        self.limits = limits or Limits.from_config(config)
        self.users = users
        self.quota = quota.Quota.from_config(config.limits)
        self.clock = clock
        # Quota check + store write, one mail at a time (only when quotas are on).
        self._quota_lock = asyncio.Lock()
        self._auth_slots = asyncio.Semaphore(AUTH_CONCURRENCY)
        # Mails between the end of DATA and their reply, so that a graceful stop can let
        # them finish (see wait_idle).
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # --- helpers --------------------------------------------------------------------------

    @staticmethod
    def session_user(session: Session) -> str:
        """The SMTP AUTH identity of the session, "" when it did not authenticate.

        (Not called ``auth_…``: aiosmtpd takes every handler method named ``auth_*`` for an AUTH
        mechanism and would advertise it.)
        """
        if getattr(session, "authenticated", False) and getattr(session, "auth_data", None):
            return str(session.auth_data)
        return ""

    async def authenticate(self, login: bytes, password: bytes) -> str | None:
        """The user name when the login is right, else None. The scrypt check runs in a worker
        thread, at most AUTH_CONCURRENCY at a time: the event loop never waits for it."""
        if self.users is None:
            return None
        async with self._auth_slots:
            user = await asyncio.to_thread(self.users.check, login, password)
        shown = login.decode("utf-8", "replace")[:100]
        if user is None:
            log.info("smtp_auth_failed", login=shown)
            return None
        log.info("smtp_auth", user=user.name)
        return user.name

    def user_addresses(self, user: str) -> tuple[str, ...]:
        """The addresses an authenticated user may send as; none when the user was removed
        from the file since logging in."""
        found = self.users.user(user) if self.users is not None else None
        return found.addresses if found is not None else ()

    async def _usage(self, sender: str) -> quota.Usage:
        faxes, pages, parts = await self.store.sender_usage_since(
            sender, self.clock() - quota.WINDOW_SECONDS)
        return quota.Usage(faxes, pages, parts)

    def recipient(self, address: str) -> Recipient:
        smtp = self.config.smtp
        return parse_recipient(address, fax_domain=smtp.fax_domain, sms_domain=smtp.sms_domain,
                               region=self.config.numbers.default_region,
                               allow_premium=self.config.numbers.allow_premium)

    # --- hooks ----------------------------------------------------------------------------

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        # Every reply we give carries an RFC 3463 code; RFC 2034 says to advertise that.
        session.host_name = hostname  # the new-style hook must record it itself
        if self.users is None:
            # No users file: nobody can log in, so do not offer AUTH (after STARTTLS) at all.
            responses = [r for r in responses if not r.startswith("250-AUTH")]
        return [*responses[:-1], "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        ip = peer_ip(session)
        user = self.session_user(session)
        smtp = self.config.smtp
        client = policy.check_client(ip, smtp.trusted_networks, auth_user=user or None,
                                     require_auth=smtp.require_auth)
        if not client:
            log.info("intake_refused", stage="MAIL", peer=ip, reason=client.reason)
            if client.auth_required:
                return str(replies.AUTH_REQUIRED)
            return replies.PEER_NOT_TRUSTED.format(ip=ip or "this client")
        if address in ("", "<>"):
            log.info("intake_refused", stage="MAIL", peer=ip, reason="null sender")
            return str(replies.NULL_SENDER)
        sender = policy.check_envelope_sender(address, smtp.allowed_senders)
        if not sender:
            log.info("intake_refused", stage="MAIL", peer=ip, sender=address, reason=sender.reason)
            return replies.SENDER_NOT_ALLOWED.format(reason=sender.reason)
        if user:
            own = policy.check_auth_sender(address, user, self.user_addresses(user))
            if not own:
                log.info("intake_refused", stage="MAIL", peer=ip, sender=address, user=user,
                         reason=own.reason)
                return replies.NOT_YOUR_ADDRESS.format(address=address, user=user)
        # A hook that answers must record the sender itself (aiosmtpd does it only by default).
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return str(replies.SENDER_OK)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        limit = self.config.smtp.max_recipients
        if len(envelope.rcpt_tos) >= limit:
            return replies.TOO_MANY_RECIPIENTS.format(limit=limit)
        try:
            rcpt = self.recipient(address)
        except Refused as refused:
            log.info("intake_refused", stage="RCPT", peer=peer_ip(session), rcpt=address,
                     reply=refused.reply)
            return refused.reply
        if self.quota.active and envelope.mail_from:
            # Used up already: say so before the client sends the data (452: it frees up).
            over = quota.check_recipient(rcpt.kind, await self._usage(envelope.mail_from),
                                         self.quota)
            if over:
                log.info("intake_refused", stage="RCPT", peer=peer_ip(session),
                         sender=envelope.mail_from, reason=f"quota: {over.detail}")
                return replies.QUOTA_REACHED.format(sender=envelope.mail_from, detail=over.detail)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RECIPIENT_OK.format(kind="fax" if rcpt.kind == "fax" else "SMS",
                                           number=rcpt.number.display)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._busy += 1
        self._idle.clear()
        try:
            return await self._data(session, envelope)
        except Refused as refused:
            log.info("intake_refused", stage="DATA", peer=peer_ip(session),
                     sender=envelope.mail_from, reply=refused.reply)
            return refused.reply
        except RecursionError:
            # A pathologically nested message that got past the MIME limits (the stdlib parser
            # recurses too): permanent, retrying will not help.
            return replies.TOO_COMPLEX.format(detail="nested too deep")
        except Exception:
            log.exception("intake_failed", peer=peer_ip(session), sender=envelope.mail_from)
            return str(replies.TEMPFAIL)
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    async def wait_idle(self, seconds: float) -> bool:
        """Waits until no mail is being accepted; False if that took longer than ``seconds``."""
        try:
            await asyncio.wait_for(self._idle.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def handle_exception(self, error: Exception) -> str:
        """Called by aiosmtpd for an exception outside handle_DATA; without it, the client
        would get ``500 Error: (…)``: a permanent failure that also leaks our internals."""
        log.error("intake_error", error=f"{type(error).__name__}: {error}", exc_info=error)
        return str(replies.TEMPFAIL)

    # --- DATA -----------------------------------------------------------------------------

    async def _data(self, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content
        if raw is None:
            content = envelope.content
            raw = content if isinstance(content, bytes) else str(content or "").encode(
                "utf-8", "surrogateescape")
        # From here on ``raw`` is the only reference, so the mail's bytes are freed as soon as
        # it is parsed, before the store write (a 20 MB fax is ~28 MB of mail).
        envelope.content = envelope.original_content = None
        limit = self.config.smtp.max_message_bytes
        # aiosmtpd enforces data_size_limit while reading; this guards the parser in case the
        # two ever differ.
        if len(raw) > limit:
            return replies.TOO_BIG.format(limit=limit)
        recipients = [self.recipient(a) for a in envelope.rcpt_tos]
        mail_from = envelope.mail_from or ""
        ip = peer_ip(session) or ""
        user = self.session_user(session)
        smtp = self.config.smtp
        # An authenticated user proved who they are with a password; DMARC is how a mail
        # relayed by the trusted MTA proves it, so it is asked of unauthenticated mail only.
        dmarc_id = smtp.trusted_authserv_id if smtp.require_dmarc and not user else ""
        # MIME parsing, pypdf and fpdf2 are CPU work on hostile input: off the event loop.
        mail = await asyncio.to_thread(
            build_mail, raw, mail_from=mail_from, recipients=recipients, config=self.config,
            peer=ip, auth_user=user, auth_addresses=self.user_addresses(user) if user else None,
            dmarc_authserv_id=dmarc_id, limits=self.limits)
        del raw
        if self.quota.active:
            # Checked and committed under one lock: two sessions of the same sender cannot both
            # pass the check and then together go over the limit.
            async with self._quota_lock:
                await self._check_quota(mail)
                result = await self.store.accept(mail)
        else:
            result = await self.store.accept(mail)
        if not result.job_ids:
            log.info("intake_duplicate", sender=mail_from, message_id=mail.message_id)
            return str(replies.ALREADY_QUEUED)
        log.info("intake_accepted", sender=mail_from, peer=ip, jobs=list(result.job_ids),
                 documents=len(mail.documents), message_id=mail.message_id)
        self._wake()
        return replies.QUEUED.format(ids=", ".join(str(i) for i in result.job_ids))

    async def _check_quota(self, mail: NewMail) -> None:
        """Raises Refused (452 4.7.1 or 550 5.7.1, see bridge.quota) when this mail would take its
        sender over a daily limit. Jobs the store already has (a re-sent copy) cost nothing."""
        keys = [j.dedupe_key for j in mail.jobs]
        fresh = set(keys) - await self.store.known_dedupe_keys(keys)
        if not fresh:
            return  # store.accept answers it as a duplicate
        adds = quota.cost(mail, fresh)
        over = quota.check_mail(await self._usage(mail.mail_from), adds, self.quota)
        if over is None:
            return
        reply = replies.QUOTA_REACHED if over.temporary else replies.QUOTA_EXCEEDED
        raise Refused(reply.format(sender=mail.mail_from, detail=over.detail))

    def _wake(self) -> None:
        # The mail is committed: a failing callback must not turn that into a 451 (the MTA
        # would re-send, harmlessly but needlessly). The sender also polls the store.
        try:
            self.on_accepted()
        except Exception:
            log.exception("intake_on_accepted_failed")
