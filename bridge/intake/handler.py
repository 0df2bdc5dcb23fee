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
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

from bridge import policy, replies
from bridge.config import Config
from bridge.intake.addresses import Recipient, parse_recipient
from bridge.intake.message import DEFAULT_LIMITS, Limits, build_mail
from bridge.replies import Refused
from bridge.store import AsyncStore

__all__ = ["IntakeHandler", "peer_ip"]

log = structlog.get_logger(__name__)


def peer_ip(session: Session) -> str | None:
    """The client's IP address (aiosmtpd gives the socket's peername tuple)."""
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None


class IntakeHandler:
    """aiosmtpd handler for the fax (and, with issue 5, SMS) intake.

    ``on_accepted`` is called (synchronously, must not block) after new jobs were committed,
    to wake the sender.
    """


    def __init__(self, config: Config, store: AsyncStore, *,
                 on_accepted: Callable[[], None] = lambda: None, limits: Limits = DEFAULT_LIMITS) -> None:
        self.config = config
        self.store = store
        self.on_accepted = on_accepted
        self.limits = limits
        # Mails between the end of DATA and their reply, so that a graceful stop can let
        # them finish (see wait_idle).
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # --- helpers --------------------------------------------------------------------------

    @staticmethod
    def auth_user(session: Session) -> str:
        """The SMTP AUTH identity of the session, "" when it did not authenticate.

        The seam for issue 6: its authenticator returns ``AuthResult(success=True,
        auth_data=<user name>)``; until then no session authenticates.
        """
        if getattr(session, "authenticated", False) and getattr(session, "auth_data", None):
            return str(session.auth_data)
        return ""

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
        return [*responses[:-1], "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        ip = peer_ip(session)
        client = policy.check_client(ip, self.config.smtp.trusted_networks,
                                     auth_user=self.auth_user(session) or None)
        if not client:
            log.info("intake_refused", stage="MAIL", peer=ip, reason=client.reason)
            return replies.PEER_NOT_TRUSTED.format(ip=ip or "this client")
        if address in ("", "<>"):
            log.info("intake_refused", stage="MAIL", peer=ip, reason="null sender")
            return str(replies.NULL_SENDER)
        sender = policy.check_envelope_sender(address, self.config.smtp.allowed_senders)
        if not sender:
            log.info("intake_refused", stage="MAIL", peer=ip, sender=address, reason=sender.reason)
            return replies.SENDER_NOT_ALLOWED.format(reason=sender.reason)
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
        limit = self.config.smtp.max_message_bytes
        # aiosmtpd enforces data_size_limit while reading; this guards the parser in case the
        # two ever differ.
        if len(raw) > limit:
            return replies.TOO_BIG.format(limit=limit)
        recipients = [self.recipient(a) for a in envelope.rcpt_tos]
        mail_from = envelope.mail_from or ""
        ip = peer_ip(session) or ""
        # MIME parsing, pypdf and fpdf2 are CPU work on hostile input: off the event loop.
        mail = await asyncio.to_thread(
            build_mail, raw, mail_from=mail_from, recipients=recipients, config=self.config,
            peer=ip, auth_user=self.auth_user(session), limits=self.limits)
        result = await self.store.accept(mail)
        if not result.job_ids:
            log.info("intake_duplicate", sender=mail_from, message_id=mail.message_id)
            return str(replies.ALREADY_QUEUED)
        log.info("intake_accepted", sender=mail_from, peer=ip, jobs=list(result.job_ids),
                 documents=len(mail.documents), message_id=mail.message_id)
        self._wake()
        return replies.QUEUED.format(ids=", ".join(str(i) for i in result.job_ids))

    def _wake(self) -> None:
        # The mail is committed: a failing callback must not turn that into a 451 (the MTA
        # would re-send, harmlessly but needlessly). The sender also polls the store.
        try:
            self.on_accepted()
        except Exception:
            log.exception("intake_on_accepted_failed")
