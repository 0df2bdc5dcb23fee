"""Store → GoFax: submits queued jobs and tracks them to a final state.

Guarantees, stated plainly:

- **At most once per submission.** A job is marked ``submitting`` (committed) before its PUT
  and the GoFax id is recorded with the answer. Only an error that GoFax cannot have acted on
  (refused connection, 429, 502/503/504, 408) puts it back in the queue. When the answer is lost
  (timeout or reset after the request went out, a 500 to a submission, or the daemon died in
  between) the job becomes ``uncertain`` and is **never resent automatically**; its sender is
  told, and an operator decides with ``faxbridge retry``.
- **One notice per outcome.** The final transition and its notice are one store transaction.
- **Webhooks are hints.** They only make a job's next status poll happen now; the poll of
  ``GET /v1.0/SendFax/{id}`` (or ``/SMS/{id}``) decides, so a lost webhook delays a notice by at
  most ``status_poll_seconds`` and a duplicate or forged one changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import sqlite3
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from bridge.backoff import backoff_seconds
from bridge.config import Config
from bridge.gofax.client import GoFaxClient
from bridge.gofax.errors import Permanent, Transient, Unauthorised, Uncertain
from bridge.notices import NoticeError, Notices
from bridge.redact import redact
from bridge.states import State
from bridge.store import AsyncStore, Job, StaleState

log = structlog.get_logger(__name__)

# First status read soon after submission; later ones every status_poll_seconds.
FIRST_POLL_SECONDS = 5.0
# Status reads at once: they run beside submissions, so a status endpoint that hangs delays
# other status reads, never a new fax.
POLL_CONCURRENCY = 8
ACCESS_CHECK_MAX_SECONDS = 900.0


class Sender:
    def __init__(self, config: Config, store: AsyncStore, client: GoFaxClient, notices: Notices,
                 *, on_notice: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time,
                 rng: Callable[[], float] = random.random) -> None:
        self.config = config
        self.store = store
        self.client = client
        self.notices = notices
        self.on_notice = on_notice
        self.clock = clock
        self.rng = rng
        self.held = False              # GoFax said 401: the whole account waits
        self.held_since: float | None = None
        self.last_error = ""
        self.store_failing = False     # a write that records GoFax's answer keeps failing
        self._access_checks = 0
        self._next_access_check = 0.0
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(config.gofax.submit_concurrency)
        self._inflight: set[int] = set()
        self._poll_slots = asyncio.Semaphore(POLL_CONCURRENCY)
        self._polling: set[int] = set()

    # --- the loop ------------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Runs until cancelled. In-flight submissions get up to timeout_seconds + 5 s to finish."""
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                self._wake.clear()
                try:
                    await self.step(tasks)
                except Exception:  # a bug or a broken store must not stop the sender for good
                    log.exception("sender_step_failed")
                    await asyncio.sleep(5)
                await self._sleep()
        finally:
            if tasks:
                # A submission in flight is not abandoned half-way: its answer gets recorded.
                # Bounded, so that a store that cannot be written does not hang the stop; a job
                # cut off here stays "submitting" and becomes uncertain (with a notice) at start.
                _, late = await asyncio.wait(tasks, timeout=self.config.gofax.timeout_seconds + 5)
                for task in late:
                    task.cancel()

    async def _sleep(self) -> None:
        now = self.clock()
        # Jobs being polled are still due until their poll ends (which wakes the loop).
        due = await self.store.next_due_at([State.QUEUED, State.SUBMITTED],
                                           exclude=sorted(self._polling))
        wait = 30.0 if due is None else max(0.05, min(30.0, due - now))
        if self.held:
            wait = max(0.05, min(wait, self._next_access_check - now))
        # asyncio.timeout, not wait_for: see Outbox._sleep (a swallowed cancellation).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._wake.wait()

    async def step(self, tasks: set[asyncio.Task[None]] | None = None) -> None:
        """One pass: re-check a held account, start due submissions, poll due statuses."""
        if self.held:
            if self.clock() < self._next_access_check:
                return
            await self.check_access()
            if self.held:
                return
        pending = tasks if tasks is not None else set()
        free = self.config.gofax.submit_concurrency - len(self._inflight)
        if free > 0:
            _start(await self.store.due_jobs(State.QUEUED, limit=free), self._inflight,
                   self._submit_slot, pending)
        _start(await self.store.due_jobs(State.SUBMITTED, limit=50), self._polling,
               self._poll_slot, pending)
        if tasks is None and pending:
            await asyncio.gather(*pending)

    async def _record(self, job_id: int, expected: State, new: State, **kw: Any) -> Job:
        """A store move made after GoFax answered: what GoFax said (the fax id above all) is
        only in memory until this succeeds, so a failing disk is retried, not given up on.

        If the daemon stops meanwhile, the job stays ``submitting`` and becomes ``uncertain``
        (with a notice) at the next start: never sent twice, never silently lost.
        """
        delay = 0.5
        while True:
            try:
                job = await self.store.move(job_id, expected, new, **kw)
                self.store_failing = False
                return job
            except StaleState:
                raise
            except (sqlite3.Error, OSError) as exc:
                self.store_failing = True
                self.last_error = f"cannot write the store: {exc}"
                log.error("store_write_failed", job=job_id, to_state=new.value, error=str(exc),
                          retry_in_seconds=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _submit_slot(self, job: Job) -> None:
        try:
            async with self._slots:
                await self.submit(job)
        except Exception:
            # Before the PUT (the queued→submitting write failed) nothing was sent and the job
            # is still queued; say so loudly rather than lose the reason in a dead task.
            log.exception("job_submit_failed", job=job.id)
        finally:
            self._inflight.discard(job.id)
            # The job's next step (a retry, a first poll) was scheduled while the loop slept
            # on a due time that did not include it.
            self.wake()

    async def _poll_slot(self, job: Job) -> None:
        try:
            async with self._poll_slots:
                if not self.held:  # a 401 while this one waited: the access check comes first
                    await self.poll(job)
        except Exception:
            log.exception("job_poll_failed", job=job.id)
        finally:
            self._polling.discard(job.id)
            self.wake()

    # --- submission ------------------------------------------------------------------------

    async def submit(self, job: Job) -> None:
        if self.held:
            return
        now = self.clock()
        try:
            job = await self.store.move(job.id, State.QUEUED, State.SUBMITTING,
                                        attempts=job.attempts + 1,
                                        first_attempt_at=job.first_attempt_at or now)
        except StaleState:
            return
        log.info("job_submitting", job=job.id, kind=job.kind, to=job.to_number,
                 attempt=job.attempts)
        try:
            result_id = await self._put(job)
        except Transient as exc:
            await self._after_transient(job, exc)
        except Uncertain as exc:
            await self._finish(job, State.SUBMITTING, State.UNCERTAIN, error=str(exc))
        except Permanent as exc:
            await self._finish(job, State.SUBMITTING, State.FAILED, error=_permanent_text(exc),
                               result=exc.message or "refused by GoFax")
        except Unauthorised as exc:
            await self._hold(job, str(exc))
        except Exception as exc:
            # We cannot tell whether the request went out: treat it like a lost answer.
            log.exception("job_submit_crashed", job=job.id)
            await self._finish(job, State.SUBMITTING, State.UNCERTAIN,
                               error=f"internal error while submitting: {type(exc).__name__}")
        else:
            poll_at = self.clock() + min(FIRST_POLL_SECONDS, self.config.gofax.status_poll_seconds)
            await self._record(job.id, State.SUBMITTING, State.SUBMITTED, gofax_id=result_id,
                               next_attempt_at=poll_at, last_error="",
                               detail=f"GoFax id {result_id}")
            log.info("job_submitted", job=job.id, gofax_id=result_id)

    async def _put(self, job: Job) -> int:
        reference = f"faxbridge-{job.id}"
        if job.kind == "sms":
            result = await self.client.send_sms([job.to_number], self.config.sms.sender_id,
                                                job.sms_text or "", client_reference=reference)
            return result.id
        documents = await self.store.documents(job.mail_id)
        result = await self.client.send_fax(
            job.to_number, [(d.filename, d.data) for d in documents],
            subject=job.subject or None, client_reference=reference)
        return result.id

    async def _after_transient(self, job: Job, exc: Transient) -> None:
        error = redact(str(exc))
        started = job.first_attempt_at or job.created_at
        if self.clock() - started >= self.config.gofax.retry_lifetime_seconds:
            await self._finish(job, State.SUBMITTING, State.FAILED,
                               error=f"gave up after {job.attempts} attempts: {error}",
                               result="GoFax could not be reached")
            return
        delay = backoff_seconds(job.attempts, initial=self.config.gofax.retry_initial_seconds,
                                maximum=self.config.gofax.retry_max_seconds,
                                retry_after=exc.retry_after, rng=self.rng)
        await self._record(job.id, State.SUBMITTING, State.QUEUED, last_error=error,
                           next_attempt_at=self.clock() + delay,
                           detail=f"retry in {delay:.0f}s: {error}")
        self.last_error = error
        log.warning("job_retry", job=job.id, delay_seconds=round(delay, 1), error=error)

    async def _hold(self, job: Job, error: str) -> None:
        await self._record(job.id, job.state, State.HELD, last_error=redact(error),
                           detail="GoFax refused the token (401)")
        first = not self.held
        self._enter_held()
        if first:
            await self._alert_held()

    async def _alert_held(self) -> None:
        """The postmaster hears of a refused token once per day it lasts: held jobs are not an
        outcome their senders are told about, so somebody must be."""
        day = time.strftime("%Y-%m-%d", time.gmtime(self.clock()))
        key = f"gofax-unauthorised:{day}"
        mail = self.notices.operator_alert(
            key, "faxbridge: GoFax refuses the API token; faxes and SMS are held",
            "GoFax answered 401 Unauthorized: the API token is wrong or has expired (tokens last "
            "at most 12 months). Nothing is lost: jobs are held and go out once the token works "
            "again; faxbridge re-checks it automatically.\n\nFix [gofax] token (or "
            "FAXBRIDGE_GOFAX_TOKEN), run 'faxbridge check', and restart faxbridge. "
            "'faxbridge jobs --state held' lists what waits.",
            self.config.receive.default_to)
        if await self.store.alert_once(key, mail):
            self.on_notice()

    def _enter_held(self) -> None:
        if not self.held:
            log.error("gofax_unauthorised",
                      hint="GoFax refused the API token (401). Jobs wait; nothing is lost. "
                           "Fix [gofax] token or FAXBRIDGE_GOFAX_TOKEN and restart, or wait for "
                           "the automatic re-check.")
            self.held = True
            self.held_since = self.clock()
            self._access_checks = 0
        self._schedule_access_check()

    def _schedule_access_check(self) -> None:
        self._access_checks += 1
        self._next_access_check = self.clock() + backoff_seconds(
            self._access_checks, initial=self.config.gofax.retry_initial_seconds,
            maximum=ACCESS_CHECK_MAX_SECONDS, rng=self.rng)

    async def _token_works(self) -> bool:
        try:
            return await self.client.check_access()
        except (Transient, Uncertain, Permanent, Unauthorised) as exc:
            self.last_error = redact(str(exc))
            return False

    async def check_access(self) -> None:
        if not await self._token_works():
            self._schedule_access_check()
            return
        self.held = False
        self.held_since = None
        released = await self.store.release_held()
        log.info("gofax_token_works_again", released_jobs=len(released))

    # --- status tracking ---------------------------------------------------------------------

    async def poll(self, job: Job) -> None:
        assert job.gofax_id is not None
        try:
            if job.kind == "sms":
                sms = await self.client.get_sms_status(job.gofax_id)
                outcome, message, pages = sms.outcome, sms.status, None
            else:
                fax = await self.client.get_fax_status(job.gofax_id)
                outcome = ("sent" if fax.is_success else "failed") if fax.is_final else "pending"
                message, pages = fax.message or fax.status, fax.pages
        except Unauthorised as exc:
            # GoFax also answers 401 for an id that is not this account's. Only a failing
            # token check holds the account; otherwise it is this job's problem.
            if await self._token_works():
                await self._poll_later(job, f"GoFax refuses to show this id: {redact(str(exc))}")
            else:
                self._enter_held()
            return
        except (Transient, Uncertain, Permanent) as exc:
            await self._poll_later(job, redact(str(exc)))
            return
        if outcome == "pending":
            await self._poll_later(job, "")
            return
        new = State.SENT if outcome == "sent" else State.FAILED
        extra: dict[str, Any] = {"pages": pages} if pages else {}
        await self._finish(job, State.SUBMITTED, new, result=message, error="", **extra)

    async def _poll_later(self, job: Job, error: str) -> None:
        submitted_for = self.clock() - (job.first_attempt_at or job.created_at)
        if submitted_for >= self.config.gofax.status_lifetime_seconds:
            await self._finish(job, State.SUBMITTED, State.UNCERTAIN,
                               error="GoFax never reported a final status"
                                     + (f" (last error: {error})" if error else ""))
            return
        delay = self.config.gofax.status_poll_seconds
        if error:
            delay = max(delay, backoff_seconds(job.attempts + 1,
                                               initial=self.config.gofax.retry_initial_seconds,
                                               maximum=self.config.gofax.retry_max_seconds,
                                               rng=self.rng))
            log.warning("status_poll_failed", job=job.id, error=error)
        await self.store.update_job(job.id, State.SUBMITTED, last_error=error,
                                    next_attempt_at=self.clock() + delay)

    async def hint(self, kind: str, gofax_id: int) -> bool:
        """A webhook said this fax/SMS changed: poll it now. False for an unknown id."""
        job = await self.store.job_by_gofax_id(kind, gofax_id)
        if job is None or job.state is not State.SUBMITTED:
            return job is not None
        await self.store.update_job(job.id, State.SUBMITTED, next_attempt_at=self.clock())
        self.wake()
        return True

    # --- endings -------------------------------------------------------------------------------

    async def _finish(self, job: Job, expected: State, new: State, *, error: str = "",
                      result: str | None = None, **columns: Any) -> None:
        error = redact(error)
        result = job.result if result is None else redact(result)
        ended = dataclasses.replace(job, state=new, last_error=error, result=result,
                                    pages=columns.get("pages", job.pages),
                                    final_at=self.clock())
        try:
            notice = self.notices.job_outcome(ended, documents=await self._documents(ended))
        except NoticeError:
            # A broken override template must not stop the job from reaching its state;
            # `faxbridge check` tests the templates before they can cause this.
            log.exception("notice_failed", job=job.id, state=new.value)
            notice = None
        try:
            await self._record(job.id, expected, new, last_error=error, result=result,
                               notice=notice, detail=error or result, **columns)
        except StaleState:
            return
        log.info("job_" + new.value, job=job.id, kind=job.kind, to=job.to_number,
                 result=result, error=error, notified=notice is not None)
        if notice is not None:
            self.on_notice()

    async def _documents(self, job: Job) -> list[Any]:
        if job.kind != "fax":
            return []
        return list(await self.store.document_info(job.mail_id))


def _start(jobs: list[Job], busy: set[int], work: Callable[[Job], Coroutine[Any, Any, None]],
           tasks: set[asyncio.Task[None]]) -> None:
    """A task of ``work`` for each job not ``busy`` already; the task's ``work`` takes the job
    out of ``busy`` when it ends."""
    for job in jobs:
        if job.id in busy:
            continue
        busy.add(job.id)
        task = asyncio.create_task(work(job))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def _permanent_text(exc: Permanent) -> str:
    reasons = "; ".join(exc.validation_errors)
    base = exc.message or str(exc)
    return f"{base}: {reasons}" if reasons else base
