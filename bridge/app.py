"""Wires every part into one event loop; starts in order and stops gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from bridge.config import Config
from bridge.gofax.client import GoFaxClient
from bridge.intake.server import SmtpIntake
from bridge.notices import Notices
from bridge.outbox import Outbox, make_transport
from bridge.receiver import Receiver, sent_hooks
from bridge.sender import Sender
from bridge.states import State
from bridge.store import AsyncStore
from bridge.web import FAX_RECEIVED_PATH, FAX_SENT_PATH, SMS_SENT_PATH, make_app

if TYPE_CHECKING:
    from bridge.gofax.simulator import GoFaxSimulator

log = structlog.get_logger(__name__)

SANDBOX_TOKEN = "sandbox-token"  # noqa: S105 - the in-process simulator's, not a secret
DEDUPE_SWEEP_SECONDS = 3600
STOP_GRACE_SECONDS = 2.0


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class App:
    """The daemon. ``await app.start()`` … ``await app.stop()``; or ``await app.serve()``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store: AsyncStore | None = None
        self.simulator: GoFaxSimulator | None = None
        self.client: GoFaxClient | None = None
        self.sender: Sender | None = None
        self.outbox: Outbox | None = None
        self.receiver: Receiver | None = None
        self.intake: SmtpIntake | None = None
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.web_url = ""
        self.started_at = time.time()

    # --- start / stop --------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        self.store = AsyncStore.open(cfg.path(cfg.store.path))
        self.notices = Notices(cfg)
        recovered = await self.store.recover_after_restart(self.notices.job_outcome)
        if recovered:
            log.warning("jobs_uncertain_after_restart", jobs=recovered,
                        hint="these were being submitted when the daemon stopped; their "
                             "senders are told; see 'faxbridge jobs' and decide with "
                             "'faxbridge retry'")
        self.outbox = Outbox(cfg, self.store, make_transport(cfg))

        # The web listener first: the sandbox simulator needs its address for webhooks.
        web_app = make_app(cfg, on_sent_hint=self._sent_hint, on_received_hint=self._received_hint,
                           health=self)
        host, port = _split(cfg.web.listen)
        runner = await self._serve(web_app, host, port)
        self.web_url = f"http://{_url_host(host)}:{runner.addresses[0][1]}"

        base_url, token = cfg.gofax.base_url, cfg.gofax.token
        if cfg.gofax.is_sandbox:
            base_url, token = await self._start_simulator()
        self.client = GoFaxClient(base_url, token, timeout_seconds=cfg.gofax.timeout_seconds,
                                  auth=cfg.gofax.auth)  # type: ignore[arg-type]
        self.sender = Sender(cfg, self.store, self.client, self.notices,
                             on_notice=self.outbox.wake)
        self.receiver = Receiver(cfg, self.store, self.client, self.notices,
                                 on_mail=self.outbox.wake)
        # A received fax or reply is marked delivered with its last mail's acceptance.
        for kind, hook in sent_hooks().items():
            self.outbox.add_sent_hook(kind, hook)

        self.intake = SmtpIntake(cfg, self.store, on_accepted=self.sender.wake)
        await self.intake.start()

        self._spawn(self.sender.run(), "sender")
        self._spawn(self.outbox.run(), "outbox")
        self._spawn(self.receiver.run(), "receiver")
        self._spawn(self._sweep_dedupe(), "dedupe-sweep")
        self._announce()

    async def _start_simulator(self) -> tuple[str, str]:
        # Imported here: a daemon that talks to the real GoFax never loads the simulator.
        from bridge.gofax.simulator import GoFaxSimulator

        cfg = self.config
        auth = ((cfg.web.webhook_user, cfg.web.webhook_password)
                if cfg.web.webhook_user else None)
        self.simulator = GoFaxSimulator(
            token=SANDBOX_TOKEN, fax_seconds=cfg.gofax.sandbox_fax_seconds,
            webhooks={"fax_sent": self.web_url + FAX_SENT_PATH,
                      "sms_sent": self.web_url + SMS_SENT_PATH,
                      "fax_received": self.web_url + FAX_RECEIVED_PATH},
            webhook_auth=auth,
            account_numbers=tuple(r.number for r in cfg.receive.route) or ("61298765432",),
            sms_reply_numbers=cfg.sms.reply_numbers or ("61400000000",))
        host, port = _split(cfg.gofax.sandbox_listen)
        runner = await self._serve(self.simulator.app, host, port)
        url = f"http://{_url_host(host)}:{runner.addresses[0][1]}"
        log.info("sandbox_simulator", url=url, admin=url + "/_sim/")
        return url, SANDBOX_TOKEN

    async def _serve(self, app: web.Application, host: str, port: int) -> web.AppRunner:
        # A webhook or (sandbox) API call still in progress at stop gets a moment, not a minute.
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=STOP_GRACE_SECONDS)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._runners.append(runner)
        return runner

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_ended)
        self._tasks.append(task)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("task_died", task=task.get_name(), error=repr(task.exception()))

    def _announce(self) -> None:
        cfg = self.config
        assert self.intake is not None
        where = ("the built-in GoFax simulator (sandbox): nothing leaves this machine, "
                 "no fax or SMS is really sent" if cfg.gofax.is_sandbox else cfg.gofax.base_url)
        mail = (f"smarthost {cfg.mail.smarthost}" if cfg.mail.smarthost
                else f"the Maildir {cfg.path(cfg.mail.maildir)}")
        log.info("faxbridge_started", smtp=f"{_split(cfg.smtp.listen)[0]}:{self.intake.port}",
                 web=self.web_url, gofax=where, outgoing_mail=mail,
                 config=cfg.source)

    async def stop(self) -> None:
        """Stops taking mail first, then lets in-flight work settle, then closes."""
        if self.intake is not None:
            await self.intake.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self.client is not None:
            await self.client.close()
        if self.store is not None:
            self.store.close()
        log.info("faxbridge_stopped")

    async def serve(self) -> None:
        """Runs until SIGINT or SIGTERM."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
            log.info("faxbridge_stopping")
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await self.stop()

    # --- hooks and health ----------------------------------------------------------------------

    async def _sent_hint(self, kind: str, gofax_id: int) -> bool:
        return await self.sender.hint(kind, gofax_id) if self.sender else False

    def _received_hint(self) -> None:
        if self.receiver is not None:
            self.receiver.wake()

    async def _sweep_dedupe(self) -> None:
        assert self.store is not None
        while True:
            removed = await self.store.forget_dedupe(self.config.store.dedupe_days * 86_400)
            if removed:
                log.info("dedupe_swept", removed=removed)
            await asyncio.sleep(DEDUPE_SWEEP_SECONDS)

    async def health(self) -> dict[str, Any]:
        assert self.store and self.sender and self.outbox
        counts = await self.store.count_jobs()
        parked = (await self.store.count_outbox()).get("parked", 0)
        problems = []
        if self.sender.held:
            problems.append("GoFax refuses the API token (401): jobs are held")
        if self.sender.store_failing:
            problems.append(f"the store cannot be written: {self.sender.last_error}")
        if not self.outbox.healthy:
            problems.append(f"outgoing mail is failing: {self.outbox.last_error}")
        if self.receiver is not None and not self.receiver.healthy:
            problems.append(f"receiving from GoFax is failing: {self.receiver.last_error}")
        return {"ok": not problems, "problems": problems, "jobs": counts,
                "outbox_parked": parked, "sandbox": self.config.gofax.is_sandbox,
                "uptime_seconds": round(time.time() - self.started_at)}

    async def metrics(self) -> dict[str, float]:
        assert self.store and self.sender
        counts = await self.store.count_jobs()
        out: dict[str, float] = {f'faxbridge_jobs{{state="{s.value}"}}': counts.get(s.value, 0)
                                 for s in State}
        outbox = await self.store.count_outbox()
        for state in ("pending", "sent", "parked"):
            out[f'faxbridge_outbox{{state="{state}"}}'] = outbox.get(state, 0)
        out["faxbridge_gofax_held"] = 1.0 if self.sender.held else 0.0
        return out


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
