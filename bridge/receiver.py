"""GoFax → store → outbox: received faxes and SMS replies reach their mailboxes.

Guarantees, stated plainly:

- **Nothing lost.** A fax is recorded (``listed``) *before* its document is downloaded. GoFax
  counts a download as "retrieved" and stops listing the fax, so if the answer is lost or the
  daemon dies before the document is stored, our own table still names it and it is fetched
  again by id. The document and its mails (one per routed mailbox) are written in ONE
  transaction, so a stored fax always has its mails queued and the outbox retries them until the
  smarthost accepts them (it is ``delivered`` only then).
- **Nothing twice.** Received faxes and replies are keyed by their GoFax id, and the outbox has
  one row per (kind, ref) with a ref per fax/reply and mailbox.
- **Problems are told once.** A fax whose download fails ``max_attempts`` times, or whose
  document is neither a readable PDF nor a TIFF, is ``parked`` (its bytes kept, shown by
  ``faxbridge inbox``) and the postmaster (``[receive] default_to``) gets one alert.
- **Webhooks are hints.** ``wake()`` (the fax-received webhook) only makes the next poll happen
  now; the poll every ``[receive] poll_seconds`` works with no webhook at all.
- **Reconciliation** (``reconcile``, at start and then hourly) asks GoFax for every recent fax of
  our numbers and reports, once each, faxes marked retrieved that we never stored (downloaded by
  someone else): they cannot be fetched again by us, so a person must look.

SMS replies stay in GoFax's list forever; each is stored once by its id. On the very first poll
of a reply number (no cursor yet), replies that answer one of our SMS jobs, or that arrived within
``first_run_lookback_seconds`` (default 7 days), are mailed; older ones are recorded as
``skipped`` (visible in ``faxbridge inbox``): losing a recent reply is worse than a few old mails,
but mailing years of history to the postmaster helps nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from bridge import inbox
from bridge.backoff import backoff_seconds
from bridge.config import Config
from bridge.gofax.client import GoFaxClient
from bridge.gofax.errors import GoFaxError, Transient, Unauthorised
from bridge.gofax.models import FaxDocument, ReceivedFax, SmsReply
from bridge.notices import IncomingFax, IncomingSms, Notices
from bridge.numbers import display_number
from bridge.redact import redact
from bridge.store import AsyncStore, Job, NewOutgoing, Store

log = structlog.get_logger(__name__)

MAX_FETCH_ATTEMPTS = 5
RECONCILE_SECONDS = 3600.0
FIRST_RUN_LOOKBACK_SECONDS = 7 * 86_400.0
PDF_TYPE, TIFF_TYPE = "application/pdf", "image/tiff"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")

T = TypeVar("T")


# --- document checks (pure) ----------------------------------------------------------------------

@dataclass(frozen=True)
class DocumentCheck:
    content_type: str        # what the bytes are (PDF_TYPE / TIFF_TYPE), else GoFax's claim
    pages: int | None
    problem: str = ""        # non-empty: not deliverable


def check_document(data: bytes, content_type: str = "", filename: str = "") -> DocumentCheck:
    """Is this a fax we can mail? Decided by the bytes, not by GoFax's ContentType/Filename
    (which may say TIFF for a PDF or the reverse): a PDF that pypdf can read with at least one
    page, or a TIFF that Pillow can open."""
    claimed = content_type or "unknown type"
    if not data:
        return DocumentCheck(claimed, None, "GoFax sent an empty document")
    if b"%PDF-" in data[:1024]:  # PDF allows a little junk before the header
        return _check_pdf(data)
    if data[:4] in _TIFF_MAGIC:
        return _check_tiff(data)
    return DocumentCheck(claimed, None, f"the document is neither a PDF nor a TIFF (GoFax called "
                                        f"it {claimed}, named {filename or 'nothing'})")


def _check_pdf(data: bytes) -> DocumentCheck:
    from pypdf import PdfReader  # late: only needed here

    try:
        pages = len(PdfReader(io.BytesIO(data), strict=False).pages)
    except Exception as exc:  # pypdf raises many types on damaged files
        return DocumentCheck(PDF_TYPE, None, f"the PDF cannot be read ({type(exc).__name__}: "
                                             f"{str(exc)[:200]})")
    if pages < 1:
        return DocumentCheck(PDF_TYPE, None, "the PDF has no pages")
    return DocumentCheck(PDF_TYPE, pages)


def _check_tiff(data: bytes) -> DocumentCheck:
    try:
        from PIL import Image  # Pillow comes with fpdf2

        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            pages = int(getattr(image, "n_frames", 1))
    except ImportError:
        return DocumentCheck(TIFF_TYPE, None)  # the magic number will have to do
    except Exception as exc:
        return DocumentCheck(TIFF_TYPE, None, f"the TIFF cannot be read ({type(exc).__name__}: "
                                              f"{str(exc)[:200]})")
    return DocumentCheck(TIFF_TYPE, pages)


def _unique(addresses: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for addr in addresses:
        if addr.lower() not in seen:
            seen.add(addr.lower())
            out.append(addr)
    return out


@dataclass(frozen=True)
class _Prepared:
    check: DocumentCheck
    mails: list[NewOutgoing]
    problem: str = ""


# --- the receiver --------------------------------------------------------------------------------

class Receiver:
    """Polls GoFax for received faxes and SMS replies; see the module docstring.

    ``healthy``/``last_error`` describe the last attempt of each poll (faxes, replies,
    reconciliation); ``unauthorised`` is True while GoFax refuses the token (401).
    """

    def __init__(self, config: Config, store: AsyncStore, client: GoFaxClient, notices: Notices,
                 *, on_mail: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time,
                 rng: Callable[[], float] = random.random,
                 max_attempts: int = MAX_FETCH_ATTEMPTS,
                 retry_initial_seconds: float | None = None,
                 retry_max_seconds: float | None = None,
                 reconcile_seconds: float = RECONCILE_SECONDS,
                 first_run_lookback_seconds: float = FIRST_RUN_LOOKBACK_SECONDS) -> None:
        self.config = config
        self.store = store
        self.client = client
        self.notices = notices
        self.on_mail = on_mail
        self.clock = clock
        self.rng = rng
        self.poll_seconds = config.receive.poll_seconds
        self.max_attempts = max(1, max_attempts)
        # A failed download is retried on the poll cadence at first, then less often.
        self.retry_initial_seconds = retry_initial_seconds or self.poll_seconds
        self.retry_max_seconds = max(self.retry_initial_seconds,
                                     retry_max_seconds or config.gofax.retry_max_seconds)
        self.reconcile_seconds = reconcile_seconds
        self.first_run_lookback_seconds = first_run_lookback_seconds
        self.unauthorised = False
        self.last_error = ""
        self._errors: dict[str, str] = {}      # source ("faxes", "replies", ...) → error
        self._api_failures = 0                 # consecutive passes with a failed API call
        self._list_failed = False
        self._paused_until = 0.0
        self._next_reconcile = 0.0             # at start, then every reconcile_seconds
        self._wake = asyncio.Event()
        self._fax_lock = asyncio.Lock()
        self._reply_lock = asyncio.Lock()

    @property
    def healthy(self) -> bool:
        return not self._errors

    # --- the loop --------------------------------------------------------------------------

    def wake(self) -> None:
        """A hint (the fax-received webhook): poll now instead of at the next interval."""
        self._wake.set()

    async def run(self) -> None:
        """Polls until cancelled. Nothing raised by one pass stops the loop."""
        log.info("receiver_started", poll_seconds=self.poll_seconds,
                 routes=[r.number for r in self.config.receive.route],
                 reply_numbers=list(self.config.sms.reply_numbers))
        while True:
            self._wake.clear()
            await self.poll_once()
            if self.clock() >= self._next_reconcile:
                if self._list_failed or self.unauthorised:
                    # GoFax is failing: it would fail too; try after the next good poll.
                    self._next_reconcile = self.clock() + self.poll_seconds
                else:
                    self._next_reconcile = self.clock() + self.reconcile_seconds
                    await self._guarded("reconcile", self.reconcile)
            await self._sleep()

    async def poll_once(self) -> None:
        """One pass: faxes, replies, then mark what the outbox has delivered."""
        self._list_failed = False
        await self._guarded("faxes", self.poll_faxes)
        await self._guarded("replies", self.poll_replies)
        await self._guarded("settle", self._settle)
        if not self._list_failed:  # GoFax answered every list call: the normal cadence again
            self._api_failures = 0
            self._paused_until = 0.0

    async def _guarded(self, what: str, step: Callable[[], Awaitable[Any]]) -> bool:
        """Runs one step; a bug or a broken store is logged and retried, never fatal."""
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._error(what, f"internal error: {type(exc).__name__}: {exc}")
            log.exception("receiver_step_failed", step=what)
            return False
        return True

    async def _sleep(self) -> None:
        now = self.clock()
        if now < self._paused_until:  # GoFax is failing: back off (a wake still polls)
            wait = self._paused_until - now
        else:
            wait = self.poll_seconds
            due = await self._db(inbox.next_fax_due_at)
            if due is not None:
                wait = min(wait, due - now)
            wait = min(wait, self._next_reconcile - now)
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
        # arrives as the event is set (gh-86296), and the daemon would then never stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.05, wait)):
                await self._wake.wait()

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs an :mod:`bridge.inbox` function on the store's thread."""
        sync: Store = self.store.sync
        return await self.store.call(fn, sync, *args, **kwargs)

    # --- health bookkeeping ----------------------------------------------------------------

    def _error(self, source: str, text: str) -> None:
        self._errors[source] = self.last_error = redact(text)

    def _ok(self, source: str) -> None:
        self._errors.pop(source, None)
        if not self._errors:
            self.last_error = ""

    def _api_failed(self, source: str, exc: GoFaxError, *, account_wide: bool = True) -> None:
        """A list call failed: remember it, and poll less often until GoFax answers again.
        Only a 401 to an account-wide call (UnretrievedFaxes, our own fax's document) says the
        token is refused; for a per-number call it may just be a number of another account."""
        self._error(source, str(exc))
        self._list_failed = True
        self._api_failures += 1
        retry_after = exc.retry_after if isinstance(exc, Transient) else None
        delay = backoff_seconds(self._api_failures, initial=self.poll_seconds,
                                maximum=max(self.poll_seconds, self.config.gofax.retry_max_seconds),
                                retry_after=retry_after, rng=self.rng)
        self._paused_until = self.clock() + delay
        if isinstance(exc, Unauthorised) and account_wide:
            if not self.unauthorised:
                log.error("receiver_unauthorised", error=str(exc), retry_in_seconds=round(delay, 1),
                          hint="GoFax refuses the API token: received faxes wait at GoFax "
                               "until [gofax] token is fixed")
            self.unauthorised = True
        elif isinstance(exc, Unauthorised):
            log.error("receiver_poll_refused", source=source, error=str(exc),
                      retry_in_seconds=round(delay, 1),
                      hint="the token is refused, or the number is not one of the account's "
                           "([sms] reply_numbers)")
        else:
            log.warning("receiver_poll_failed", source=source, error=str(exc),
                        retry_in_seconds=round(delay, 1))

    def _api_answered(self, source: str) -> None:
        self._ok(source)
        if self.unauthorised:
            log.info("receiver_authorised_again")
            self.unauthorised = False

    # --- received faxes --------------------------------------------------------------------

    async def poll_faxes(self) -> int:
        """Lists unretrieved faxes, records them, fetches the due ones (new, retries, and any
        left half-done by a crash). Returns how many were stored and mailed."""
        async with self._fax_lock:
            try:
                listed = await self.client.unretrieved_faxes()
            except GoFaxError as exc:
                # Downloads would fail the same way: do not spend their attempts now.
                self._api_failed("faxes", exc)
                return 0
            self._api_answered("faxes")
            new = await self._db(inbox.record_listed, listed, now=self.clock())
            for fax_id in new:
                log.info("fax_listed", fax=fax_id)
            stored = 0
            for row in await self._db(inbox.due_faxes, now=self.clock()):
                outcome = await self._fetch(row)
                if outcome == "stored":
                    stored += 1
                elif outcome == "stop":
                    break
            return stored

    async def _fetch(self, row: inbox.StoredFax) -> str:
        """Downloads, checks and stores one fax: "stored", "parked", "retry" or "stop"."""
        try:
            document = await self.client.fax_document(row.gofax_id)
        except Unauthorised as exc:
            self._api_failed("faxes", exc)
            return "stop"
        except GoFaxError as exc:
            parked = await self._fetch_failed(row, str(exc), exc)
            if isinstance(exc, Transient):
                self._error("faxes", str(exc))
                return "stop"  # GoFax is struggling: leave the others for the next pass
            return "parked" if parked else "retry"
        try:
            return await self._store(row, document)
        except Exception as exc:
            log.exception("fax_store_failed", fax=row.gofax_id)
            parked = await self._fetch_failed(row, f"internal error: {type(exc).__name__}: {exc}")
            return "parked" if parked else "retry"

    async def _store(self, row: inbox.StoredFax, document: FaxDocument) -> str:
        prepared = await asyncio.to_thread(self._prepare, row, document)
        alert = self._parked_alert(row, prepared.problem, stored=True) if prepared.problem else None
        done = await self._db(
            inbox.store_document, row.gofax_id, document.filename,
            prepared.check.content_type, document.data, prepared.mails, now=self.clock(),
            pages=prepared.check.pages, park_reason=prepared.problem, alert=alert)
        if not done:
            return "retry"  # stored by someone else meanwhile; nothing was queued
        if prepared.problem:
            log.error("fax_parked", fax=row.gofax_id, reason=prepared.problem,
                      size=len(document.data), hint="faxbridge inbox shows it; the document is kept")
            self.on_mail()
            return "parked"
        log.info("fax_stored", fax=row.gofax_id, sender=row.from_number or "withheld",
                 to=row.to_number, pages=row.pages or prepared.check.pages,
                 size=len(document.data), mailboxes=len(prepared.mails))
        self.on_mail()
        return "stored"

    def _prepare(self, row: inbox.StoredFax, document: FaxDocument) -> _Prepared:
        """Checks the document and builds one mail per routed mailbox (off the event loop:
        parsing a PDF and base64-encoding it are CPU work)."""
        check = check_document(document.data, document.content_type, document.filename)
        if check.problem:
            return _Prepared(check, [], check.problem)
        rcpts = _unique(self.config.route_for(row.to_number))
        if not rcpts:
            return _Prepared(check, [], f"no mailbox is routed for {row.to_number} and "
                                        "[receive] default_to is empty")
        fax = IncomingFax(gofax_id=row.gofax_id, from_number=row.from_number,
                          to_number=row.to_number, csid=row.csid,
                          pages=row.pages or check.pages, received_utc=row.received_utc,
                          filename=document.filename or f"{row.gofax_id}.pdf", data=document.data)
        try:
            mails = [self.notices.received_fax(fax, rcpt) for rcpt in rcpts]
        except Exception as exc:  # a broken template: keep the fax, tell the operator
            return _Prepared(check, [], f"the mail could not be built ({type(exc).__name__}: {exc})")
        return _Prepared(check, mails)

    async def _fetch_failed(self, row: inbox.StoredFax, error: str,
                            exc: GoFaxError | None = None) -> bool:
        """Counts a failed fetch; parks the fax after ``max_attempts``. True when parked."""
        attempts = row.attempts + 1
        park = attempts >= self.max_attempts
        retry_after = exc.retry_after if isinstance(exc, Transient) else None
        delay = backoff_seconds(attempts, initial=self.retry_initial_seconds,
                                maximum=self.retry_max_seconds, retry_after=retry_after,
                                rng=self.rng)
        reason = f"fetching it failed {attempts} times; last: {error}"
        alert = self._parked_alert(row, reason, stored=False) if park else None
        await self._db(inbox.record_fetch_failure, row.gofax_id, redact(error), now=self.clock(),
                       next_attempt_at=self.clock() + delay, park=park, alert=alert)
        if park:
            log.error("fax_parked", fax=row.gofax_id, attempts=attempts, error=redact(error),
                      hint="faxbridge inbox --retry ID fetches it again")
            self.on_mail()
        else:
            log.warning("fax_fetch_retry", fax=row.gofax_id, attempts=attempts,
                        retry_in_seconds=round(delay, 1), error=redact(error))
        return park

    def _parked_alert(self, row: inbox.StoredFax, reason: str, *,
                      stored: bool) -> tuple[str, NewOutgoing | None]:
        key = f"fax-parked:{row.gofax_id}"
        rcpts = list(self.config.receive.default_to)
        if not rcpts:
            return key, None
        sender = display_number(row.from_number) if row.from_number else "a withheld number"
        kept = ("Its document is kept in the faxbridge store: 'faxbridge inbox --save "
                f"{row.gofax_id}' writes it to a file." if stored else
                "Its document could not be downloaded. GoFax may already count it as retrieved.")
        text = (f"A fax received from {sender} on {display_number(row.to_number)} "
                f"(GoFax fax ID {row.gofax_id}, {self.notices.format_time(row.received_utc)}) "
                f"could not be delivered to its mailboxes and is parked.\n\n"
                f"Reason: {reason}\n\n{kept}\n\n"
                f"'faxbridge inbox' lists parked faxes; after fixing the cause, "
                f"'faxbridge inbox --retry {row.gofax_id}' fetches it again.")
        subject = f"Received fax {row.gofax_id} from {sender} could not be delivered"
        return key, self.notices.operator_alert(key, subject, text, rcpts)

    async def _settle(self) -> None:
        faxes, replies = await self._db(inbox.settle_delivered, now=self.clock())
        self._ok("settle")
        for fax_id in faxes:
            log.info("fax_delivered", fax=fax_id)
        for reply_id in replies:
            log.info("sms_reply_delivered", reply=reply_id)

    # --- reconciliation --------------------------------------------------------------------

    def _reconcile_numbers(self, seen: Sequence[str]) -> list[str]:
        """Routed numbers and every number that received a fax; a route for an SMS reply
        number is not a fax number (GoFax would answer 401 for it)."""
        routed = {r.number for r in self.config.receive.route} - set(self.config.sms.reply_numbers)
        return sorted(routed | set(seen))

    async def reconcile(self) -> list[int]:
        """Compares GoFax's list of recent faxes (per number) with the store.

        Faxes marked retrieved that we never stored are reported to the postmaster once each
        (one mail per pass) and logged; their ids are returned. Unretrieved faxes we do not
        know yet are recorded, so the next poll fetches them even if UnretrievedFaxes missed
        them. A failing number is logged and skipped.
        """
        numbers = self._reconcile_numbers(await self._db(inbox.seen_fax_numbers))
        missing: list[ReceivedFax] = []
        failed = False
        for number in numbers:
            try:
                faxes = await self.client.received_faxes(number)
            except Unauthorised as exc:
                # For one number this means "not a fax number of this account" (a config
                # mistake); a bad token shows on the account-wide list call of poll_faxes.
                self._error("reconcile", str(exc))
                log.warning("reconcile_number_refused", number=number, error=str(exc),
                            hint="is this number one of the account's fax numbers?")
                failed = True
                continue
            except GoFaxError as exc:
                # Not a reason to poll less often: the next reconciliation tries again.
                self._error("reconcile", str(exc))
                log.warning("reconcile_failed", number=number, error=str(exc))
                failed = True
                continue
            missing += await self._compare(faxes)
        if not failed:
            self._ok("reconcile")
        if missing:
            await self._report_unstored(missing)
        return [f.id for f in missing]

    async def _compare(self, faxes: Sequence[ReceivedFax]) -> list[ReceivedFax]:
        known = await self._db(inbox.known_fax_ids, [f.id for f in faxes])
        unknown = [f for f in faxes if f.id not in known]
        waiting = [f for f in unknown if not f.retrieved]
        if waiting:
            await self._db(inbox.record_listed, waiting, now=self.clock())
            log.info("reconcile_found_unretrieved", faxes=[f.id for f in waiting])
            self.wake()
        return [f for f in unknown if f.retrieved]

    async def _report_unstored(self, missing: Sequence[ReceivedFax]) -> None:
        fresh_ids = await self._db(inbox.unreported, [f.id for f in missing])
        fresh = [f for f in missing if f.id in set(fresh_ids)]
        log.warning("faxes_retrieved_elsewhere", faxes=[f.id for f in missing],
                    new=[f.id for f in fresh],
                    hint="GoFax says these were retrieved, but faxbridge never stored them")
        if not fresh:
            return
        alert = self._unstored_alert(fresh)
        await self._db(inbox.report_unstored, [f.id for f in fresh], alert, now=self.clock())
        if alert is not None:
            self.on_mail()

    def _unstored_alert(self, faxes: Sequence[ReceivedFax]) -> NewOutgoing | None:
        rcpts = list(self.config.receive.default_to)
        if not rcpts:
            return None
        lines = [f"- GoFax fax ID {f.id}: from "
                 f"{display_number(f.from_number) if f.from_number else 'a withheld number'} "
                 f"to {display_number(f.to_number)}, {self.notices.format_time(f.received_utc)}"
                 f"{f', {f.pages} pages' if f.pages else ''}" for f in faxes]
        text = ("GoFax reports these received faxes as already retrieved (downloaded), but "
                "faxbridge never stored them, so they were NOT mailed by faxbridge. Someone else "
                "(another program using the same account, or the GoFax portal) downloaded them, "
                "or they arrived before faxbridge was set up.\n\n" + "\n".join(lines)
                + "\n\nLook them up in the GoFax portal. Each fax is reported only once.")
        n = len(faxes)
        subject = f"{n} received fax{'es' if n > 1 else ''} retrieved outside faxbridge"
        return self.notices.operator_alert(f"faxes-unstored:{faxes[0].id}+{n}", subject, text,
                                           rcpts)

    # --- SMS replies -----------------------------------------------------------------------

    async def poll_replies(self) -> int:
        """Polls every ``[sms] reply_numbers`` entry; returns how many replies were mailed."""
        async with self._reply_lock:
            mailed = 0
            failed = False
            for number in self.config.sms.reply_numbers:
                try:
                    replies = await self.client.sms_replies(number)
                except GoFaxError as exc:
                    # A 401 here: a bad token, or a number that is not the account's.
                    self._api_failed("replies", exc, account_wide=False)
                    failed = True
                    continue
                mailed += await self._take_replies(number, replies)
            if not failed:
                self._ok("replies")
            return mailed

    async def _take_replies(self, number: str, replies: Sequence[SmsReply]) -> int:
        first_run = await self._db(Store.cursor, inbox.reply_cursor(number)) is None
        known = await self._db(inbox.known_reply_ids, [r.id for r in replies])
        mailed = 0
        for reply in sorted(replies, key=lambda r: r.id):
            if reply.id in known:
                continue
            if await self._take_reply(number, reply, first_run=first_run):
                mailed += 1
        if first_run:
            await self._db(inbox.mark_polled, number, max((r.id for r in replies), default=0))
            log.info("sms_replies_first_poll", number=number, replies=len(replies),
                     mailed=mailed, lookback_days=round(self.first_run_lookback_seconds / 86400, 1))
        return mailed

    async def _take_reply(self, number: str, reply: SmsReply, *, first_run: bool) -> bool:
        received_at = reply.received_utc.timestamp() if reply.received_utc else None
        job = await self._db(inbox.find_sms_job_for_reply, reply.message_id, reply.from_number,
                             received_at=received_at)
        if first_run and job is None and self._too_old(received_at):
            await self._db(inbox.record_reply, reply, number, None, [], now=self.clock(),
                           state=inbox.SKIPPED)
            log.info("sms_reply_skipped", reply=reply.id, number=number,
                     reason="older than the first-run lookback and answers no SMS of ours")
            return False
        mails, threaded = self._reply_mails(reply, job)
        stored = await self._db(inbox.record_reply, reply, number, job.id if job else None, mails,
                                now=self.clock())
        if stored:
            log.info("sms_reply_stored", reply=reply.id, sender=reply.from_number,
                     job=job.id if job else None, matched_by=self._matched_by(reply, job),
                     threaded=threaded, mailboxes=len(mails))
            self.on_mail()
        return stored

    def _too_old(self, received_at: float | None) -> bool:
        return received_at is not None and received_at < self.clock() - self.first_run_lookback_seconds

    @staticmethod
    def _matched_by(reply: SmsReply, job: Job | None) -> str:
        if job is None:
            return "none"
        return "message_id" if reply.message_id is not None and job.gofax_id == reply.message_id \
            else "mobile"

    def _reply_mails(self, reply: SmsReply, job: Job | None) -> tuple[list[NewOutgoing], bool]:
        """To the person who sent the SMS, threaded under their mail; else to the mailboxes
        routed for the number it arrived on. (A sender we may not notify — null sender or an
        auto-submitted mail — does not get it either: it goes to the routed mailboxes.)"""
        incoming = IncomingSms(gofax_id=reply.id, from_number=reply.from_number,
                               to_number=reply.to_number, message=reply.message,
                               received_utc=reply.received_utc)
        domain = self.config.smtp.sms_domain
        if job is not None and job.notify and job.mail_from:
            mail = self.notices.sms_reply(incoming, job.mail_from, in_reply_to=job.message_id,
                                          sms_domain=domain)
            return [mail], True
        rcpts = _unique(self.config.route_for(reply.to_number))
        return [self.notices.sms_reply(incoming, rcpt, sms_domain=domain) for rcpt in rcpts], False


def sent_hooks() -> dict[str, Callable[..., None]]:
    """Outbox sent hooks to register (``outbox.add_sent_hook(kind, fn)``): a received fax or
    reply becomes ``delivered`` in the same transaction as its last mail's acceptance."""
    return {inbox.FAX_MAIL_KIND: inbox.fax_mail_sent, inbox.SMS_MAIL_KIND: inbox.sms_mail_sent}


__all__ = ["MAX_FETCH_ATTEMPTS", "RECONCILE_SECONDS", "DocumentCheck", "Receiver", "check_document",
           "sent_hooks"]
