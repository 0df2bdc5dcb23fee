"""The ``faxbridge`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bridge import config as config_mod
from bridge.cli_inbox import add_inbox_parser, run_inbox
from bridge.cli_user import add_user_parser, run_user
from bridge.config import Config, ConfigError

DEFAULT_CONFIG = "bridge.toml"

EPILOG = """\
quick start (no GoFax account needed):
  faxbridge run                 start in the sandbox: a built-in GoFax simulator stands in,
                                mail goes to var/mailbox, nothing leaves this machine
  swaks --server 127.0.0.1:2525 --to 0298765432@fax.local --attach @letter.pdf
                                send a fax by mail; the notice lands in var/mailbox/new
  faxbridge jobs                see what was sent, what failed and what waits

every command reads bridge.toml from the current folder (or --config PATH, or the
FAXBRIDGE_CONFIG environment variable)
"""


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="PATH",
                   help=f"config file (default: $FAXBRIDGE_CONFIG or ./{DEFAULT_CONFIG})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="faxbridge", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Send faxes and SMS by email, and receive them in a mailbox, through GoFax.",
        epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon (SMTP intake, sender, receiver, webhooks)",
                       description="Run the daemon until Ctrl-C or SIGTERM.")
    _add_config(p)

    p = sub.add_parser("check", help="validate the config and test the GoFax token",
                       description="Validate the config file; with a real GoFax base_url, also "
                                   "ask GoFax whether the token works (CheckHaveAccess).")
    _add_config(p)

    p = sub.add_parser("jobs", help="list fax/SMS jobs and mail that waits or was parked",
                       description="List jobs, newest first, and outgoing mail that is waiting "
                                   "or parked.")
    _add_config(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--state", action="append", default=[],
                   help="only jobs in this state (repeatable): queued, submitting, submitted, "
                        "sent, failed, uncertain, held")
    p.add_argument("--limit", type=int, default=50, help="at most this many jobs (default 50)")

    p = sub.add_parser("retry", help="send a failed or uncertain job again",
                       description="Put a failed or uncertain job back in the queue. An uncertain "
                                   "job may already have been faxed: check the GoFax portal "
                                   "first; you are asked to confirm.")
    _add_config(p)
    p.add_argument("job_id", type=int, metavar="ID")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    add_inbox_parser(sub)
    add_user_parser(sub)

    p = sub.add_parser("sim", help="run the GoFax simulator on its own port",
                       description="Run the GoFax simulator standalone, to try the API by hand "
                                   "or to point a faxbridge at it.")
    p.add_argument("--listen", default="127.0.0.1:8090", help="host:port (default 127.0.0.1:8090)")
    p.add_argument("--token", default="sandbox-token", help="the token it accepts")
    p.add_argument("--fax-seconds", type=float, default=5.0,
                   help="how long a fax takes to be 'sent' (default 5)")
    p.add_argument("--webhook-url", metavar="URL", default="",
                   help="a faxbridge web listener (e.g. http://127.0.0.1:8025): the fax-sent, "
                        "sms-sent and fax-received webhooks are posted to its /webhooks/gofax/… "
                        "paths (default: no webhooks)")
    p.add_argument("--fault-rate", type=float, default=0.0, metavar="P",
                   help="fail this fraction (0-1) of API calls at random: a 5xx, 429, a delay "
                        "of --fault-delay-seconds, or a dropped connection before or after the "
                        "request was processed (default 0)")
    p.add_argument("--fault-delay-seconds", type=float, default=35.0, metavar="S",
                   help="how long a random 'delay' fault holds a call; make it longer than the "
                        "client's timeout (default 35)")
    p.add_argument("--fault-seed", type=int, default=None, metavar="N",
                   help="seed for --fault-rate, to repeat a run's choice of faults")
    return parser


def load_config(path: str | None) -> Config:
    explicit = path or os.environ.get("FAXBRIDGE_CONFIG")
    if explicit:
        return config_mod.load(explicit)
    if Path(DEFAULT_CONFIG).exists():
        return config_mod.load(DEFAULT_CONFIG)
    return config_mod.from_mapping({}, source="<built-in defaults>")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "sim":
            return _sim(args)
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"faxbridge: config error: {exc}", file=sys.stderr)
        return 2
    handler = {"run": _run, "check": _check, "jobs": _jobs, "retry": _retry,
               "inbox": run_inbox, "user": run_user}[args.command]
    try:
        return handler(config, args)
    except KeyboardInterrupt:
        return 130


# --- commands -------------------------------------------------------------------------------

def _run(config: Config, _args: argparse.Namespace) -> int:
    from bridge import log
    from bridge.app import App
    from bridge.malloc import release_big_blocks
    from bridge.users import UsersFileError

    log.setup(config.log.level, config.log.format)
    release_big_blocks()
    try:
        asyncio.run(App(config).serve())
    except (OSError, UsersFileError) as exc:
        print(f"faxbridge: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _check(config: Config, _args: argparse.Namespace) -> int:
    from bridge.notices import NoticeError, Notices

    print(f"config {config.source}: OK")
    try:
        Notices(config).self_test()
    except NoticeError as exc:
        print(f"templates: {exc}", file=sys.stderr)
        return 1
    print("templates: OK")
    from bridge.intake.server import make_tls_context
    from bridge.users import UsersFileError, load_users

    try:
        if make_tls_context(config) is not None:
            print("tls: certificate and key OK")
        if config.smtp.users_file:
            users = load_users(config.path(config.smtp.users_file))
            print(f"users: {len(users)} in {config.path(config.smtp.users_file)}")
    except (OSError, ValueError, UsersFileError) as exc:
        print(f"smtp: {exc}", file=sys.stderr)
        return 1
    if config.gofax.is_sandbox:
        print("gofax: sandbox (the built-in simulator; nothing is really sent)")
        return 0
    from bridge.gofax.client import GoFaxClient
    from bridge.gofax.errors import GoFaxError, Unauthorised

    async def probe() -> bool:
        async with GoFaxClient(config.gofax.base_url, config.gofax.token,
                               timeout_seconds=config.gofax.timeout_seconds,
                               auth=config.gofax.auth) as client:  # type: ignore[arg-type]
            return await client.check_access()

    try:
        ok = asyncio.run(probe())
    except Unauthorised:
        ok = False
    except GoFaxError as exc:
        print(f"gofax: could not check the token: {exc}", file=sys.stderr)
        return 1
    if not ok:
        print(f"gofax: {config.gofax.base_url} REFUSED the token: it is wrong or has expired "
              "(tokens last at most 12 months)", file=sys.stderr)
        return 1
    print(f"gofax: {config.gofax.base_url} accepts the token")
    return 0


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _open_store(config: Config) -> Any:
    from bridge.store import Store

    path = config.path(config.store.path)
    if not path.exists():
        print(f"faxbridge: no store at {path} yet (the daemon has not run)", file=sys.stderr)
        return None
    return Store(path)


def _jobs(config: Config, args: argparse.Namespace) -> int:
    from bridge.numbers import display_number

    store = _open_store(config)
    if store is None:
        return 1
    now = time.time()
    jobs = store.jobs(states=args.state, limit=args.limit)
    waiting_mail = store.outbox(states=["pending", "parked"], limit=100)
    if args.json:
        print(json.dumps({
            "jobs": [{"id": j.id, "kind": j.kind, "state": j.state.value, "to": j.to_number,
                      "sender": j.mail_from, "attempts": j.attempts, "gofax_id": j.gofax_id,
                      "created_at": j.created_at, "result": j.result, "error": j.last_error,
                      "pages": j.pages, "sms_parts": j.sms_parts} for j in jobs],
            "outbox": [{"id": m.id, "kind": m.kind, "state": m.state, "to": list(m.rcpt_to),
                        "attempts": m.attempts, "error": m.last_error} for m in waiting_mail],
        }, indent=2))
        return 0
    rows = [("ID", "KIND", "STATE", "TO", "SENDER", "TRIES", "GOFAX", "AGE", "DETAIL")]
    for j in jobs:
        rows.append((str(j.id), j.kind, j.state.value, display_number(j.to_number), j.mail_from,
                     str(j.attempts), str(j.gofax_id or "-"), _age(now - j.created_at),
                     (j.last_error or j.result)[:60]))
    _table(rows)
    if not jobs:
        print("(no jobs)")
    if waiting_mail:
        print("\noutgoing mail waiting or parked:")
        rows = [("ID", "KIND", "STATE", "TO", "TRIES", "LAST ERROR")]
        for m in waiting_mail:
            rows.append((str(m.id), m.kind, m.state, ", ".join(m.rcpt_to), str(m.attempts),
                         m.last_error[:60]))
        _table(rows)
    return 0


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _retry(config: Config, args: argparse.Namespace) -> int:
    from bridge.states import State
    from bridge.store import StaleState

    store = _open_store(config)
    if store is None:
        return 1
    job = store.job(args.job_id)
    if job is None:
        print(f"faxbridge: there is no job {args.job_id}", file=sys.stderr)
        return 1
    if job.state not in (State.FAILED, State.UNCERTAIN):
        print(f"faxbridge: job {job.id} is {job.state.value}; only failed or uncertain jobs can "
              "be retried", file=sys.stderr)
        return 1
    if job.state is State.UNCERTAIN and not args.yes:
        print(f"Job {job.id} is UNCERTAIN: GoFax may already have sent it"
              f"{f' (GoFax id {job.gofax_id})' if job.gofax_id else ''}.\n"
              "Check the GoFax portal first. Sending again may fax the recipient twice.")
        try:
            answer = input("Type 'yes' to send it again: ")
        except EOFError:
            answer = ""
        if answer.strip().lower() != "yes":
            print("not retried")
            return 1
    try:
        store.move(job.id, job.state, State.QUEUED, operator=True, next_attempt_at=time.time(),
                   first_attempt_at=None, gofax_id=None,
                   detail=f"retry requested by operator (was {job.state.value}, "
                          f"GoFax id {job.gofax_id or 'none'})")
    except StaleState:
        print(f"faxbridge: job {job.id} changed state meanwhile; look again", file=sys.stderr)
        return 1
    print(f"job {job.id} queued again; the running daemon picks it up within 30 seconds")
    return 0


def _sim(args: argparse.Namespace) -> int:
    from bridge import log
    from bridge.gofax.simulator import run_standalone

    log.setup("info", "auto")
    host, _, port = args.listen.rpartition(":")
    if not 0.0 <= args.fault_rate <= 1.0:
        print("faxbridge: --fault-rate must be between 0 and 1", file=sys.stderr)
        return 2
    kw: dict[str, Any] = {"token": args.token, "fax_seconds": args.fax_seconds}
    if args.webhook_url:
        from bridge.web import FAX_RECEIVED_PATH, FAX_SENT_PATH, SMS_SENT_PATH

        base = args.webhook_url.rstrip("/")
        kw["webhooks"] = {"fax_sent": base + FAX_SENT_PATH, "sms_sent": base + SMS_SENT_PATH,
                          "fax_received": base + FAX_RECEIVED_PATH}
    with contextlib.suppress(KeyboardInterrupt):
        if args.fault_rate > 0:
            asyncio.run(_sim_with_random_faults(host, int(port), args, **kw))
        else:
            asyncio.run(run_standalone(host, int(port), **kw))
    return 0


async def _sim_with_random_faults(host: str, port: int, args: argparse.Namespace,
                                  **kw: Any) -> None:
    """``run_standalone`` plus a middleware that turns a random share of API calls into faults.

    The fault itself is the simulator's own (a one-shot ``inject`` for exactly this request's
    method and path, applied by its fault middleware), so a random fault behaves exactly like
    one injected through ``POST /_sim/fault``.
    """
    import random

    from aiohttp import web

    from bridge.gofax.simulator import GoFaxSimulator, serve, usage_text

    sim = GoFaxSimulator(**kw)
    rng = random.Random(args.fault_seed)
    kinds = ("status", "429", "delay", "drop", "drop_after_processing")

    @web.middleware
    async def random_faults(request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/_sim") and rng.random() < args.fault_rate:
            sim.inject(f"{request.method} {request.path}", rng.choice(kinds),  # type: ignore[arg-type]
                       status=rng.choice((500, 502, 503, 504)), retry_after=1,
                       delay_seconds=args.fault_delay_seconds, times=1)
        return await handler(request)

    sim.app.middlewares.insert(0, random_faults)  # outermost: before the fault middleware runs
    runner = await serve(sim, host, port)
    print(usage_text(sim.base_url or "", token=sim.token), flush=True)
    print(f"random faults: {args.fault_rate:.0%} of API calls (seed {args.fault_seed})",
          flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    sys.exit(main())
