"""Process management and test peers shared by ``tools/chaos.py``, ``tests/test_chaos.py`` and
``bench/``: the daemon and the GoFax simulator as real child processes, a test smarthost in the
harness's own event loop, an MTA-like SMTP client, and document/mail builders.

Everything here talks to faxbridge the way the outside world does: SMTP into its intake, HTTP to
``/metrics``, ``faxbridge jobs --json`` for the operator's view, and the simulator's ``/_sim/``
admin API for what "GoFax" received. Nothing imports the daemon's internals, so a check made
here is a check of the product as deployed.

Children are started in their own session (a Ctrl-C in the terminal reaches only the harness,
which then stops them) and are only ever signalled by their own pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import errno
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SIM_TOKEN = "chaos-sim-token"  # noqa: S105 - the simulator's, on loopback only
ACCOUNT_NUMBER = "61298765432"  # the simulator's default receiving number


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the child binds it a moment later; on a
    loopback-only test machine the race is harmless)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- documents and mails ---------------------------------------------------------------------

def make_pdf(size: int, tag: str, pages: int = 1) -> bytes:
    """A valid PDF of about ``size`` bytes whose bytes depend on ``tag`` (so every document of a
    run has its own sha256 and a fax at the simulator can be traced back to its mail).

    Written by hand rather than with fpdf2: a 20 MB document takes milliseconds, and the padding
    (base64 of seeded random bytes, in a content-stream comment) is incompressible like a scan.
    """
    rng = random.Random(tag)
    objects: list[bytes] = []
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(pages))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode())
    font = b"<< /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >>"
    overhead = 600 + 250 * pages
    pad_bytes = max(0, size - overhead) * 3 // 4
    for i in range(pages):
        text = f"BT /F1 14 Tf 72 760 Td (faxbridge test document {tag} page {i + 1}) Tj ET\n"
        body = text.encode("latin-1", "replace")
        if i == 0 and pad_bytes:
            import base64

            padding = base64.b64encode(rng.randbytes(pad_bytes))
            lines = [b"% " + padding[j:j + 76] for j in range(0, len(padding), 76)]
            body += b"\n".join(lines) + b"\n"
        page = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents {4 + 2 * i} 0 R "
                f"/Resources ").encode() + font + b" >>"
        objects.append(page)
        objects.append(b"<< /Length %d >>\nstream\n" % len(body) + body + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fax_message(*, sender: str, to: Sequence[str], message_id: str, subject: str,
                attachments: Sequence[tuple[str, bytes]], body: str = "") -> bytes:
    """A mail as a mail client writes it, serialised for SMTP (CRLF line ends)."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    msg.set_content(body or "\n")
    for name, data in attachments:
        msg.add_attachment(data, maintype="application", subtype="pdf", filename=name)
    return msg.as_bytes(policy=email.policy.SMTP)


# --- the test smarthost --------------------------------------------------------------------------

@dataclass
class Delivered:
    """One mail the smarthost accepted: envelope, headers (parsed; the body is not kept unless
    asked) and when it arrived (``time.monotonic()``)."""

    mail_from: str
    rcpt_tos: list[str]
    headers: Message
    size: int
    at: float
    data: bytes | None = None

    def header(self, name: str) -> str:
        return str(self.headers.get(name, "") or "").strip()


class Sink:
    """An SMTP smarthost in the harness's loop that records what it accepts and, when asked,
    refuses a random share of deliveries with a temporary ``451`` (at MAIL, RCPT or DATA, so
    that every stage of faxbridge's outbox sees it), or every delivery (``refuse_all``)."""

    def __init__(self, *, refuse_rate: float = 0.0, seed: int | None = None,
                 keep_data: bool = False) -> None:
        self.refuse_rate = refuse_rate
        self.refuse_all = False
        self.keep_data = keep_data
        self.rng = random.Random(seed)
        self.messages: list[Delivered] = []
        self.refusals = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> Sink:
        loop = asyncio.get_running_loop()
        handler = _SinkHandler(self)
        self._server = await loop.create_server(
            lambda: SMTP(handler, hostname="sink.test", decode_data=False,
                         data_size_limit=100_000_000),
            "127.0.0.1", self.port or 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    def with_header(self, name: str) -> list[Delivered]:
        return [m for m in self.messages if m.header(name)]


class _SinkHandler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def _refuse_at(self, envelope: Envelope) -> str | None:
        return getattr(envelope, "refuse_at", None)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        stage = None
        if self.sink.refuse_all:
            stage = "mail"
        elif self.sink.refuse_rate and self.sink.rng.random() < self.sink.refuse_rate:
            stage = self.sink.rng.choice(("mail", "rcpt", "data"))
        envelope.refuse_at = stage  # type: ignore[attr-defined]
        if stage == "mail":
            self.sink.refusals += 1
            return "451 4.3.0 sink: try again later (mail)"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if self._refuse_at(envelope) == "rcpt":
            self.sink.refusals += 1
            return "451 4.3.0 sink: try again later (rcpt)"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self._refuse_at(envelope) == "data":
            self.sink.refusals += 1
            return "451 4.3.0 sink: try again later (data)"
        data = envelope.original_content or b""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        headers = BytesHeaderParser(policy=email.policy.default).parsebytes(data)
        self.sink.messages.append(Delivered(envelope.mail_from or "", list(envelope.rcpt_tos),
                                            headers, len(data), time.monotonic(),
                                            bytes(data) if self.sink.keep_data else None))
        return "250 2.0.0 OK"


# --- child processes -----------------------------------------------------------------------------

class ProcessDied(RuntimeError):
    pass


class LoggedProcess:
    """A child whose stdout and stderr are pumped into a log file by a thread.

    A pipe rather than the file itself: a process under a file-size limit (the disk-full check)
    must not fail on its own log writes.
    """

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, *,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._pump: threading.Thread | None = None
        self.starts = 0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== {self.name} start #{self.starts + 1} at {time.time():.3f}: "
                      f"{' '.join(self.argv)}\n".encode())
        self.proc = subprocess.Popen(  # noqa: S603 - our own argv
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd, start_new_session=True)
        self.starts += 1
        assert self.proc.stdout is not None
        self._pump = threading.Thread(target=self._copy, args=(self.proc.stdout,),
                                      name=f"pump-{self.name}", daemon=True)
        self._pump.start()

    def _copy(self, stream: Any) -> None:
        with open(self.log_path, "ab") as log:
            while chunk := stream.read1(65536):
                log.write(chunk)
                log.flush()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL and reap: the process gets no chance to tidy up."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._join()
        self._note(f"killed (SIGKILL), exit {self.proc.returncode}")

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait for a graceful exit; SIGKILL after ``timeout``. Returns the exit code
        of the graceful stop, None if it had to be killed."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            return self.proc.returncode
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        self._join()
        self._note(f"stopped (SIGTERM), exit {code}")
        return code

    def _join(self) -> None:
        if self._pump is not None:
            self._pump.join(5)

    def _note(self, text: str) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"===== {self.name} {text} at {time.time():.3f}\n".encode())

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


async def _wait_until(check: Any, proc: LoggedProcess, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while True:
        if not proc.running:
            raise ProcessDied(f"{proc.name} exited while {what}:\n{proc.tail()}")
        if await check():
            return
        if time.monotonic() > deadline:
            raise ProcessDied(f"{proc.name} not ready after {within} s ({what}):\n{proc.tail()}")
        await asyncio.sleep(0.05)


class SimProcess:
    """``faxbridge sim`` in its own process, so that its record of what "GoFax" received
    survives every crash of the daemon."""

    def __init__(self, workdir: Path, *, fax_seconds: float = 0.2, webhook_url: str = "",
                 fault_rate: float = 0.0, fault_seed: int | None = None,
                 fault_delay_seconds: float = 2.0, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [PYTHON, "-m", "bridge", "sim", "--listen", f"127.0.0.1:{self.port}",
                "--token", SIM_TOKEN, "--fax-seconds", str(fax_seconds)]
        if webhook_url:
            argv += ["--webhook-url", webhook_url]
        if fault_rate:
            argv += ["--fault-rate", str(fault_rate), "--fault-delay-seconds",
                     str(fault_delay_seconds)]
            if fault_seed is not None:
                argv += ["--fault-seed", str(fault_seed)]
        self.process = LoggedProcess("sim", argv, workdir / "sim.log", cwd=REPO)
        self._http: aiohttp.ClientSession | None = None

    async def start(self, ready_within: float = 20.0) -> None:
        self.process.start()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))

        async def up() -> bool:
            try:
                async with self.http.get(self.url + "/_sim/") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await _wait_until(up, self.process, ready_within, "starting")

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None
        return self._http

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
        await asyncio.to_thread(self.process.terminate, 5)

    async def faxes(self) -> dict[str, Any]:
        """``{"sent": [...], "received": [...]}`` as the admin API lists them."""
        async with self.http.get(self.url + "/_sim/faxes") as response:
            response.raise_for_status()
            result: dict[str, Any] = await response.json()
            return result

    async def receive_fax(self, *, from_number: str = "61733334444", to: str | None = None,
                          csid: str = "CHAOS") -> int:
        body: dict[str, Any] = {"from": from_number, "csid": csid}
        if to:
            body["to"] = to
        async with self.http.post(self.url + "/_sim/receive-fax", json=body) as response:
            response.raise_for_status()
            return int((await response.json())["id"])

    async def fault(self, endpoint: str, kind: str, **fields: Any) -> None:
        async with self.http.post(self.url + "/_sim/fault",
                                  json={"endpoint": endpoint, "kind": kind, **fields}) as response:
            response.raise_for_status()

    async def clear_faults(self) -> None:
        async with self.http.delete(self.url + "/_sim/fault") as response:
            response.raise_for_status()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(sections: Mapping[str, Any]) -> str:
    """Enough TOML for bridge.toml: tables of scalars and lists, and arrays of tables
    (``{"receive": {"route": [{...}, ...]}}`` → ``[[receive.route]]``)."""
    out: list[str] = []
    for name, values in sections.items():
        tables = {k: v for k, v in values.items()
                  if isinstance(v, list) and v and all(isinstance(i, dict) for i in v)}
        out.append(f"[{name}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in values.items() if k not in tables]
        for key, items in tables.items():
            for item in items:
                out.append(f"\n[[{name}.{key}]]")
                out += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
        out.append("")
    return "\n".join(out)


def merge(base: dict[str, dict[str, Any]], extra: Mapping[str, Mapping[str, Any]]
          ) -> dict[str, dict[str, Any]]:
    merged = {k: dict(v) for k, v in base.items()}
    for name, values in extra.items():
        merged.setdefault(name, {}).update(values)
    return merged


class DaemonProcess:
    """``python -m bridge run --config <workdir>/bridge.toml`` as a real process.

    ``prefix`` runs it (and ``faxbridge jobs``) inside another mount namespace (the disk-full
    check's tmpfs). Ports are chosen once, so webhooks and clients find it again after every
    restart.
    """

    def __init__(self, workdir: Path, *, sim_url: str, smarthost: str,
                 store_path: Path | None = None, config: Mapping[str, Mapping[str, Any]] = {},
                 prefix: Sequence[str] = (), log_name: str = "daemon.log") -> None:
        self.workdir = workdir
        self.smtp_port = free_port()
        self.web_port = free_port()
        self.web_url = f"http://127.0.0.1:{self.web_port}"
        self.store_path = store_path or workdir / "store" / "faxbridge.db"
        self.config_path = workdir / "bridge.toml"
        self.prefix = list(prefix)
        base: dict[str, dict[str, Any]] = {
            "smtp": {"listen": f"127.0.0.1:{self.smtp_port}", "max_connections": 100},
            "gofax": {"base_url": sim_url, "token": SIM_TOKEN, "timeout_seconds": 1.0,
                      "status_poll_seconds": 0.5, "retry_initial_seconds": 0.05,
                      "retry_max_seconds": 0.5},
            "limits": {"faxes_per_day": 0, "fax_pages_per_day": 0, "sms_parts_per_day": 0},
            "mail": {"smarthost": smarthost, "retry_initial_seconds": 0.05,
                     "retry_max_seconds": 0.5},
            "store": {"path": str(self.store_path)},
            "receive": {"poll_seconds": 0.5, "default_to": ["postmaster@example.com"],
                        "route": [{"number": ACCOUNT_NUMBER,
                                   "to": ["reception@example.com", "archive@example.com"]}]},
            "web": {"listen": f"127.0.0.1:{self.web_port}"},
            "log": {"level": "info", "format": "json"},
        }
        self.config = merge(base, config)
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(to_toml(self.config))
        argv = [*self.prefix, PYTHON, "-m", "bridge", "run", "--config", str(self.config_path)]
        self.process = LoggedProcess("daemon", argv, workdir / log_name, cwd=REPO)
        self._http: aiohttp.ClientSession | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self._http

    async def start(self, ready_within: float = 30.0) -> float:
        """Starts it and waits until its SMTP intake greets; returns the seconds that took."""
        started = time.monotonic()
        self.process.start()
        await _wait_until(self._greets, self.process, ready_within, "starting")
        return time.monotonic() - started

    async def _greets(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.smtp_port)
        except OSError:
            return False
        try:
            line = await asyncio.wait_for(reader.readline(), 2)
            writer.write(b"QUIT\r\n")
            return line.startswith(b"220")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def kill(self) -> None:
        await asyncio.to_thread(self.process.kill)

    async def stop(self) -> int | None:
        code = await asyncio.to_thread(self.process.terminate, 20)
        await self.close()
        return code

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def metrics(self) -> dict[str, float] | None:
        """``/metrics`` as a dict (None when the daemon does not answer)."""
        try:
            async with self.http.get(self.web_url + "/metrics") as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return None
        values = {}
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[name] = float(value)
        return values

    async def cli(self, *args: str) -> str:
        """Runs ``faxbridge <args> --config …`` (inside the daemon's namespace, if any)."""
        proc = await asyncio.create_subprocess_exec(
            *self.prefix, PYTHON, "-m", "bridge", *args, "--config", str(self.config_path),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"faxbridge {' '.join(args)} failed ({proc.returncode}): "
                               f"{err.decode(errors='replace')}")
        return out.decode()

    async def jobs(self) -> dict[str, Any]:
        """The operator's view: ``faxbridge jobs --json`` with every job."""
        result: dict[str, Any] = json.loads(await self.cli("jobs", "--json",
                                                           "--limit", "10000000"))
        return result


# --- a disk that can fill up ---------------------------------------------------------------------

class StoreDisk:
    """The folder the daemon's store lives in, with ``fill()`` / ``free()``.

    Preferred: a small tmpfs mounted in a private mount namespace (``unshare``, needs root or
    unprivileged user namespaces), so that SQLite meets a real ``ENOSPC``; the namespace (and the
    mount) lives exactly as long as a holder process and nothing outside sees it. The daemon and
    ``faxbridge jobs`` enter it with ``nsenter``; the harness reaches its files through
    ``/proc/<holder>/root``.

    Fallback (no namespaces): ``RLIMIT_FSIZE`` on the running daemon (``prlimit``), so that no
    file of its can grow (``EFBIG``; Python ignores ``SIGXFSZ``). Same effect on SQLite ("the
    write failed"), but not literally a full disk; ``mode`` says which one ran.
    """

    def __init__(self, directory: Path, size_bytes: int, *, allow_tmpfs: bool = True) -> None:
        self.directory = directory
        self.size_bytes = size_bytes
        self.allow_tmpfs = allow_tmpfs
        self.mode = ""
        self.holder: subprocess.Popen[bytes] | None = None
        self.prefix: list[str] = []
        self._limited: int | None = None

    def open(self) -> StoreDisk:
        self.directory.mkdir(parents=True, exist_ok=True)
        unshare, nsenter = shutil.which("unshare"), shutil.which("nsenter")
        if unshare and nsenter and self.allow_tmpfs:
            # The holder keeps the namespace (and the tmpfs) alive until its stdin closes: when
            # this process ends, however it ends, the mount goes with it.
            holder = subprocess.Popen(  # noqa: S603 - fixed argv
                [unshare, "--mount", "--propagation", "private", "--", "sh", "-c",
                 'mount -t tmpfs -o size="$1" faxbridge-chaos "$0" && echo mounted '
                 "&& exec cat >/dev/null", str(self.directory), str(self.size_bytes)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                start_new_session=True)
            assert holder.stdout is not None
            if holder.stdout.readline().strip() == b"mounted":
                self.holder = holder
                self.mode = "tmpfs (real ENOSPC, private mount namespace)"
                self.prefix = [nsenter, f"--mount=/proc/{holder.pid}/ns/mnt", "--"]
                return self
            holder.kill()
            holder.wait()
        self.mode = "RLIMIT_FSIZE on the daemon (EFBIG; no mount namespace available)"
        return self

    def host_path(self, path: Path) -> Path:
        """How this process reaches ``path`` on the store disk."""
        if self.holder is None:
            return path
        return Path(f"/proc/{self.holder.pid}/root{path.resolve()}")

    def fill(self, daemon_pid: int) -> int:
        """Makes the disk full; returns the bytes written to fill it (tmpfs) or the file-size
        limit set (fallback)."""
        if self.holder is None:
            sizes = [p.stat().st_size for p in self.directory.iterdir() if p.is_file()]
            self._limited = daemon_pid
            limit = max(sizes, default=0)
            # Only the soft limit: lowering and raising it again needs no privilege.
            _, hard = resource.prlimit(daemon_pid, resource.RLIMIT_FSIZE)
            resource.prlimit(daemon_pid, resource.RLIMIT_FSIZE, (limit, hard))
            return limit
        written = 0
        filler = self.host_path(self.directory / "filler")
        with open(filler, "wb", buffering=0) as f:
            for chunk in (1 << 20, 1 << 12):
                block = b"\0" * chunk
                while True:
                    try:
                        written += f.write(block) or 0
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        return written

    def free(self) -> None:
        if self.holder is None:
            if self._limited is not None:
                with contextlib.suppress(ProcessLookupError):
                    _, hard = resource.prlimit(self._limited, resource.RLIMIT_FSIZE)
                    resource.prlimit(self._limited, resource.RLIMIT_FSIZE, (hard, hard))
                self._limited = None
            return
        with contextlib.suppress(FileNotFoundError):
            self.host_path(self.directory / "filler").unlink()

    def close(self) -> None:
        if self.holder is not None:
            if self.holder.poll() is None:
                os.kill(self.holder.pid, signal.SIGKILL)
            self.holder.wait()
            for pipe in (self.holder.stdin, self.holder.stdout):
                if pipe is not None:
                    pipe.close()
        self.holder = None


# --- lost answers --------------------------------------------------------------------------------

class AnswerCutter:
    """A TCP relay in front of the SMTP intake that, for a share of mails, swallows the ``250``
    that answers DATA and cuts the session.

    The mail is committed but its client never learns it: the lost answer an MTA re-sends after.
    A kill at random moments hits that window only by luck; this makes it happen on purpose.
    """

    def __init__(self, target_port: int, *, rate: float, seed: int | None = None) -> None:
        self.target_port = target_port
        self.rate = rate
        self.rng = random.Random(seed)
        self.cuts = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> AnswerCutter:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()

    async def _session(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()  # the daemon is down: the client sees a cut session
            return

        async def upstream() -> None:
            with contextlib.suppress(OSError):
                while data := await client_r.read(65536):
                    server_w.write(data)
                    await server_w.drain()
            server_w.close()

        task = asyncio.create_task(upstream())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            while line := await server_r.readline():
                if line.startswith(b"250 ") and b"queued" in line and self.rng.random() < self.rate:
                    self.cuts += 1
                    break  # the answer is lost: neither forwarded nor followed by anything
                client_w.write(line)
                await client_w.drain()
        except OSError:
            pass
        finally:
            client_w.close()
            server_w.close()
            task.cancel()


# --- an MTA-like client ------------------------------------------------------------------------

@dataclass
class Outcome:
    """What one mail's deliveries ended in, per envelope recipient."""

    accepted: dict[str, str] = field(default_factory=dict)   # rcpt → the 250 text
    refused: dict[str, str] = field(default_factory=dict)    # rcpt → the 5xx reply
    pending: list[str] = field(default_factory=list)         # never got a final answer
    attempts: int = 0
    connection_errors: int = 0     # refused connection, or the session cut (a kill mid-session)
    deferrals: list[str] = field(default_factory=list)       # the 4xx replies seen
    accepted_at: float | None = None                         # monotonic, first 250

    @property
    def duplicate_answers(self) -> int:
        return sum("already queued" in text for text in self.accepted.values())


async def deliver(data: bytes, *, sender: str, rcpts: Sequence[str], port: int,
                  give_up_after: float = 60.0, rng: random.Random | None = None,
                  session_timeout: float = 15.0) -> Outcome:
    """Delivers one mail as an MTA would: a recipient deferred (4xx) or a session cut off (the
    daemon killed mid-way, its answer lost) is tried again with the identical bytes, until it
    gets a final answer (250 or 5xx) or ``give_up_after`` seconds have passed."""
    rng = rng or random.Random()
    outcome = Outcome()
    remaining = list(rcpts)
    deadline = time.monotonic() + give_up_after
    while remaining and time.monotonic() < deadline:
        outcome.attempts += 1
        try:
            errors, response = await aiosmtplib.send(
                data, sender=sender, recipients=remaining, hostname="127.0.0.1", port=port,
                timeout=session_timeout)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            for refusal in exc.recipients:
                _answer(outcome, refusal.recipient, refusal.code, refusal.message, remaining)
        except aiosmtplib.SMTPResponseException as exc:  # MAIL or DATA refused
            for rcpt in list(remaining):
                _answer(outcome, rcpt, exc.code, exc.message, remaining)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            outcome.connection_errors += 1
        else:
            for rcpt, refusal in errors.items():
                _answer(outcome, rcpt, refusal.code, refusal.message, remaining)
            for rcpt in list(remaining):
                if rcpt not in errors:
                    outcome.accepted[rcpt] = response
                    remaining.remove(rcpt)
            if outcome.accepted and outcome.accepted_at is None:
                outcome.accepted_at = time.monotonic()
        if remaining:
            await asyncio.sleep(0.05 + rng.random() * 0.25)
    outcome.pending = remaining
    return outcome


def _answer(outcome: Outcome, rcpt: str, code: int, message: str, remaining: list[str]) -> None:
    text = f"{code} {message}"
    if 200 <= code < 300:
        outcome.accepted[rcpt] = text
    elif code >= 500:
        outcome.refused[rcpt] = text
    else:
        outcome.deferrals.append(text)
        return
    if rcpt in remaining:
        remaining.remove(rcpt)


__all__ = ["ACCOUNT_NUMBER", "PYTHON", "REPO", "SIM_TOKEN", "AnswerCutter", "DaemonProcess",
           "Delivered",
           "LoggedProcess", "Outcome", "ProcessDied", "SimProcess", "Sink", "StoreDisk",
           "deliver", "fax_message", "free_port", "make_pdf", "merge", "sha256", "to_toml"]
