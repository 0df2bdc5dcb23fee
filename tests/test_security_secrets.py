"""The GoFax token and every password never appear in anything the daemon emits.

One test runs the real ``faxbridge run`` in a subprocess (JSON logs at debug level), against a
GoFax simulator served separately by this test (``base_url`` = its http://127.0.0.1 URL), a
smarthost that requires SMTP AUTH, STARTTLS + SMTP AUTH on the intake, and webhooks with Basic
auth. All secrets come from the environment. The run goes through faults: GoFax answering 500
to a submission, status polls timing out, the token refused (401, jobs held) and accepted again,
the smarthost deferring and refusing our login, a wrong webhook password. Then ``faxbridge jobs``
(both formats) and ``faxbridge check`` run (once with GoFax failing), ``/healthz`` and
``/metrics`` are read while the token is refused, and a second ``faxbridge run`` crashes on a
busy port. Everything captured, plus the store's files, is searched for each secret and its
encodings (URL-quoted, and base64 as Basic auth, AUTH PLAIN and AUTH LOGIN would send it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import smtplib
import socket
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import pytest
import test_security_auth
from conftest import SimulatorFactory
from daemon import until
from smtp_sink import SmtpSink
from test_intake_message import make_mail, make_pdf
from test_security_auth import client_tls, write_users

tls_files = test_security_auth.tls_files  # the fixture, shared

TOKEN = "gofax-TOKEN-5b8e1d0c-9a7f-4e6b"
SMARTHOST_PASSWORD = "smarthost-PW-3c9a7e11"
WEBHOOK_PASSWORD = "webhook-PW-a1f04e77"
USER_PASSWORD = "intake-user-PW-6d2b9f30"
SECRETS = {"token": TOKEN, "smarthost": SMARTHOST_PASSWORD, "webhook": WEBHOOK_PASSWORD,
           "user": USER_PASSWORD}


def b64(data: str) -> str:
    return base64.b64encode(data.encode()).decode()


def forms(secret: str) -> set[str]:
    """The ways a secret could leak: as is, URL-quoted, and inside the base64 of an AUTH
    exchange or a Basic header (for the user names we use)."""
    out = {secret, quote(secret, safe=""), quote_plus(secret), b64(secret)}
    for user in ("notify", "gofax", "alice"):
        out |= {b64(f"{user}:{secret}"), b64(f"\0{user}\0{secret}")}
    return out


class Daemon:
    """``faxbridge run`` in a subprocess, its output collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._readers = [asyncio.create_task(self._read(s)) for s in (proc.stdout, proc.stderr)]

    async def _read(self, stream: asyncio.StreamReader | None) -> None:
        assert stream is not None
        while line := await stream.readline():
            self.lines.append(line.decode("utf-8", "replace"))

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == name:
                out.append(record)
        return out

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await asyncio.gather(*self._readers)


async def run_cli(args: list[str], env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return f"$ faxbridge {' '.join(args)} (exit {proc.returncode})\n" + out.decode("utf-8", "replace")


def send_with_auth(port: int, raw: bytes, rcpt: str = "0298765432@fax.local") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.starttls(context=client_tls())
        client.login("alice", USER_PASSWORD)
        client.mail("alice@example.com")
        client.rcpt(rcpt)
        return client.data(raw)


def config_text(sim_url: str, sink: SmtpSink, tmp_path: Path, cert: Path, key: Path,
                smtp_listen: str = "127.0.0.1:0") -> str:
    return f"""
[smtp]
listen = "{smtp_listen}"
tls_cert = "{cert}"
tls_key = "{key}"
users_file = "users"

[gofax]
base_url = "{sim_url}"
timeout_seconds = 1
status_poll_seconds = 0.3
retry_initial_seconds = 0.1
retry_max_seconds = 0.5

[mail]
smarthost = "{sink.address}"
smarthost_user = "notify"
retry_initial_seconds = 0.1
retry_max_seconds = 0.5

[store]
path = "{tmp_path / 'store.db'}"

[receive]
poll_seconds = 0.3
default_to = ["postmaster@example.com"]

[[receive.route]]
number = "61298765432"
to = ["reception@example.com"]

[sms]
reply_numbers = ["61400000000"]

[web]
listen = "127.0.0.1:0"
webhook_user = "gofax"

[log]
level = "debug"
format = "json"
"""


def subjects(sink: SmtpSink) -> list[str]:
    return [str(m.message["Subject"]) for m in sink.messages]


@pytest.mark.timeout(120)
async def test_no_secret_in_anything_the_daemon_emits(
        tmp_path: Path, simulator_factory: SimulatorFactory, tls_files: tuple[Path, Path]) -> None:
    sim = await simulator_factory(token=TOKEN, fax_seconds=0.2,
                                  account_numbers=("61298765432",),
                                  sms_reply_numbers=("61400000000",))
    cert, key = tls_files
    write_users(tmp_path / "users", {"alice": (USER_PASSWORD, ("alice@example.com",))})
    config = tmp_path / "bridge.toml"
    captured: list[str] = []
    async with SmtpSink(auth={"notify": SMARTHOST_PASSWORD}) as sink:
        config.write_text(config_text(sim.base_url, sink, tmp_path, cert, key))
        env = {**os.environ, "FAXBRIDGE_GOFAX_TOKEN": TOKEN,
               "FAXBRIDGE_SMARTHOST_PASSWORD": SMARTHOST_PASSWORD,
               "FAXBRIDGE_WEBHOOK_PASSWORD": WEBHOOK_PASSWORD, "FAXBRIDGE_CONFIG": str(config)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "run", env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        daemon = Daemon(proc)
        try:
            await until(lambda: bool(daemon.events("faxbridge_started")), 30, "the daemon to start")
            started = daemon.events("faxbridge_started")[0]
            smtp_port = int(str(started["smtp"]).rpartition(":")[2])
            web_url = str(started["web"])
            pdf = make_pdf()

            def mail(n: int) -> bytes:
                return make_mail(message_id=f"<secret-test-{n}@example.com>",
                                 attachments=[(pdf, "application/pdf", f"doc{n}.pdf")])

            # 1. The smarthost defers the first notice once: the outbox retries.
            sink.fail("data", "451 4.3.0 try again later", times=1)
            code, _ = await asyncio.to_thread(send_with_auth, smtp_port, mail(1))
            assert code == 250
            await until(lambda: any("sent" in s for s in subjects(sink)), 20, "notice 1")

            # 2. GoFax answers 500 to a submission: uncertain, told, never resent.
            sim.inject("PUT /v1.0/SendFax", "status", status=500, times=1)
            assert (await asyncio.to_thread(send_with_auth, smtp_port, mail(2)))[0] == 250
            await until(lambda: any("uncertain" in s for s in subjects(sink)), 20, "notice 2")

            # 3. Status polls time out twice (1 s client timeout), then work.
            sim.inject("GET /v1.0/SendFax/*", "delay", delay_seconds=1.5, times=2)
            assert (await asyncio.to_thread(send_with_auth, smtp_port, mail(3)))[0] == 250
            await until(lambda: sum("sent" in s for s in subjects(sink)) >= 2, 30, "notice 3")

            # 4. The token is refused: jobs are held, /healthz turns red; then it works again.
            sim.token = "rotated-elsewhere"
            assert (await asyncio.to_thread(send_with_auth, smtp_port, mail(4)))[0] == 250
            async with aiohttp.ClientSession() as http:
                async def read(path: str) -> tuple[int, str]:
                    async with http.get(web_url + path) as resp:
                        return resp.status, await resp.text()

                deadline = time.monotonic() + 20
                while (health := await read("/healthz"))[0] != 503:
                    assert time.monotonic() < deadline, "never held"
                    await asyncio.sleep(0.1)
                captured.append("GET /healthz (held)\n" + health[1])
                captured.append("GET /metrics (held)\n" + (await read("/metrics"))[1])
                sim.token = TOKEN
                await until(lambda: sum("sent" in s for s in subjects(sink)) >= 3, 30, "notice 4")
                captured.append("GET /healthz\n" + (await read("/healthz"))[1])
                captured.append("GET /metrics\n" + (await read("/metrics"))[1])

                # 5. Webhooks with a wrong and the right password.
                for password in ("wrong-password", WEBHOOK_PASSWORD):
                    basic = "Basic " + b64(f"gofax:{password}")
                    async with http.post(web_url + "/webhooks/gofax/fax-sent", data={"ID": "1"},
                                         headers={"Authorization": basic}) as resp:
                        captured.append(f"webhook {resp.status}\n{await resp.text()}")

            # 6. The smarthost refuses our login for a while (a rotated password).
            sink.auth = {"notify": "rotated-smarthost-password"}
            sim.receive_fax(from_number="61733334444", csid="ACME")
            await until(lambda: any("login" in line.lower() and "refused" in line.lower()
                                    for line in daemon.lines), 20, "a refused smarthost login")
            sink.auth = {"notify": SMARTHOST_PASSWORD}
            await until(lambda: any(s.startswith("Fax from") for s in subjects(sink)), 20,
                        "the received fax mail")
            sim.sms_reply("61412345678", "61400000000", "Thanks, got it")
            await until(lambda: any(s.startswith("SMS from") for s in subjects(sink)), 20,
                        "the SMS reply mail")

            # 7. The operator's commands, while the daemon runs.
            captured.append(await run_cli(["jobs"], env))
            captured.append(await run_cli(["jobs", "--json"], env))
            captured.append(await run_cli(["check"], env))
            sim.inject("*", "status", status=500, times=None)
            captured.append(await run_cli(["check"], env))
            sim.clear_faults()
        finally:
            await daemon.stop()
        captured.extend(daemon.lines)
        assert daemon.proc.returncode == 0

        # 8. A crash at start-up: the SMTP port is taken.
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            crash_config = tmp_path / "crash.toml"
            crash_config.write_text(config_text(sim.base_url, sink, tmp_path, cert, key,
                                                smtp_listen=f"127.0.0.1:{port}")
                                    .replace("store.db", "crash.db"))
            crash = await run_cli(["run", "--config", str(crash_config)], env)
        assert "exit 1" in crash.splitlines()[0] and "cannot start" in crash
        captured.append(crash)

        captured.extend(m.data.decode("utf-8", "replace") for m in sink.messages)
        assert sink.logins and set(sink.logins) == {"notify"}

    # The store's files too: job errors and events are written there.
    store_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("store.db*"))
    everything = "\n".join(captured)
    assert "faxbridge_started" in everything and '"jobs"' in everything  # we did capture
    assert len(everything) > 10_000
    for name, secret in SECRETS.items():
        for leaked in forms(secret):
            assert leaked not in everything, f"the {name} secret leaked as {leaked!r}"
            assert leaked.encode() not in store_bytes, f"the {name} secret is in the store"
    # The token was really in use (the simulator takes faxes only with it), so its absence
    # above means something.
    assert len(sim.faxes) == 3  # the 500 was answered without taking the fax
