"""The README's quick start, as a newcomer runs it: `faxbridge run` with the shipped bridge.toml,
a fax sent with swaks, the notice found in var/mailbox, and Ctrl-C stopping it cleanly.

The shipped file is used as it is, except that its fixed ports are swapped for free ones so the
test can run beside anything else on the machine.
"""

from __future__ import annotations

import email
import email.policy
import mailbox
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import pytest
from test_intake_message import make_pdf

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"faxbridge exited early:\n{proc.communicate()[0]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, int]:
    text = (ROOT / "bridge.toml").read_text()
    smtp_port = free_port()
    for old, new in (("127.0.0.1:2525", f"127.0.0.1:{smtp_port}"),
                     ("127.0.0.1:8025", f"127.0.0.1:{free_port()}"),
                     ("127.0.0.1:8099", f"127.0.0.1:{free_port()}"),
                     ("sandbox_fax_seconds = 5", "sandbox_fax_seconds = 0.5")):
        assert old in text
        text = text.replace(old, new)
    (tmp_path / "bridge.toml").write_text(text)
    return tmp_path, smtp_port


def send_fax(port: int, pdf_path: Path) -> None:
    if shutil.which("swaks"):
        subprocess.run(["swaks", "--server", f"127.0.0.1:{port}", "--from", "you@localhost",
                        "--to", "0298765432@fax.local", "--header", "Subject: Quarterly report",
                        "--body", "Please find the report attached.",
                        "--attach", f"@{pdf_path}"], check=True, capture_output=True, timeout=30)
        return
    msg = EmailMessage()  # swaks is installed by .ci/run; this keeps the test useful without it
    msg["From"], msg["To"], msg["Subject"] = "you@localhost", "0298765432@fax.local", "Quarterly report"
    msg.set_content("Please find the report attached.")
    msg.add_attachment(pdf_path.read_bytes(), maintype="application", subtype="pdf",
                       filename=pdf_path.name)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.send_message(msg)


@pytest.mark.timeout(90)
def test_quick_start_fax_notice_and_ctrl_c(sandbox: tuple[Path, int]) -> None:
    folder, smtp_port = sandbox
    pdf = folder / "letter.pdf"
    pdf.write_bytes(make_pdf(1))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("FAXBRIDGE_GOFAX_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "bridge", "run"], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_port(smtp_port, proc)
        send_fax(smtp_port, pdf)
        new_mail = folder / "var/mailbox/new"
        deadline = time.monotonic() + 30
        while not (new_mail.is_dir() and any(new_mail.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.2)
        [raw] = [bytes(m) for m in mailbox.Maildir(folder / "var/mailbox", create=False)]
        notice = email.message_from_bytes(raw, policy=email.policy.default)
        assert str(notice["Subject"]).strip() == (
            "Fax to +61 2 9876 5432 sent (2 pages): Quarterly report")  # cover + letter
        assert notice["To"] == "you@localhost"
        jobs = subprocess.run([sys.executable, "-m", "bridge", "jobs"], cwd=folder,
                              capture_output=True, text=True, check=True, timeout=30).stdout
        assert "sent" in jobs and "+61 2 9876 5432" in jobs
    finally:
        proc.send_signal(signal.SIGINT)          # Ctrl-C
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "nothing leaves this machine" in out
    assert "faxbridge_stopped" in out
    assert "Traceback" not in out
