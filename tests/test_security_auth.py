"""Who may send: SMTP AUTH after STARTTLS, the users file, address binding, require_auth.

The pure parts (bridge.users, bridge.policy, bridge.cli_user) are tested without sockets; the
SMTP parts over real sockets with smtplib (STARTTLS with a certificate made by ``openssl`` for the
session). The ``tls_files`` and ``secure_intake`` fixtures are imported by other security tests.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import smtplib
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from test_intake_message import make_mail, make_pdf
from test_intake_smtp import Answer, Intake, IntakePool, Raw

from bridge import cli_user, policy, replies, users
from bridge.config import FaxConfig, LimitsConfig, SmtpConfig, defaults
from bridge.users import Authenticator, User, UsersFileError

PASSWORD = "correct horse battery staple 7f3a"  # distinctive: test_security_secrets greps for it

# Cheap scrypt for tests that hash many times (the default costs ~30 ms per hash).
FAST = users.ScryptParams(n=2**4, r=1, p=1)


# --- fixtures shared with the other security tests -------------------------------------------

@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1, made once per test session."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=30)
    return cert, key


def client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the test certificate is self-signed
    return context


def write_users(path: Path, entries: dict[str, tuple[str, tuple[str, ...]]],
                params: users.ScryptParams = FAST) -> None:
    table: dict[str, User] = {}
    for name, (password, addresses) in entries.items():
        table = users.add_user(table, name, password, addresses, params=params)
    users.save_users(path, table)


SecureFactory = Callable[..., Awaitable[Intake]]


@pytest.fixture
async def secure_intake(intake_pool: IntakePool, tmp_path: Path,
                        tls_files: tuple[Path, Path]) -> SecureFactory:
    """``await secure_intake(users={name: (password, addresses)}, limits=..., **smtp)`` → an
    intake with STARTTLS and a users file (``users=None``: no users file)."""

    async def start(users: dict[str, tuple[str, tuple[str, ...]]] | None = None,
                    limits: LimitsConfig | None = None, cover: str = "auto",
                    **smtp: Any) -> Intake:
        cert, key = tls_files
        smtp.setdefault("listen", "127.0.0.1:0")
        smtp.setdefault("tls_cert", str(cert))
        smtp.setdefault("tls_key", str(key))
        if users is not None:
            path = tmp_path / f"users{len(intake_pool.started)}"
            write_users(path, users)
            smtp.setdefault("users_file", str(path))
        cfg = defaults(smtp=SmtpConfig(**smtp), fax=FaxConfig(cover=cover),
                       limits=limits or LimitsConfig(0, 0, 0))
        return await intake_pool.start(cfg, auth_failure_delay=0.01)

    return start


def answer(result: tuple[int, bytes]) -> Answer:
    return Answer(result[0], result[1].decode())


def login_and_send(port: int, raw: bytes, *, user: str | None = "alice",
                   password: str = PASSWORD, mail_from: str = "alice@example.com",
                   rcpt: str = "0298765432@fax.local", mechanism: str = "PLAIN",
                   starttls: bool = True) -> dict[str, Answer]:
    """STARTTLS, AUTH, one mail (blocking; run with asyncio.to_thread). Stops at a refusal."""
    out: dict[str, Answer] = {}
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.example.com")
        if starttls:
            out["STARTTLS"] = answer(client.starttls(context=client_tls()))
            client.ehlo("client.example.com")
        if user is not None:
            client.user, client.password = user, password
            auth = client.auth_plain if mechanism == "PLAIN" else client.auth_login
            try:
                out["AUTH"] = answer(client.auth(mechanism, auth, initial_response_ok=True))
            except smtplib.SMTPAuthenticationError as exc:
                out["AUTH"] = Answer(exc.smtp_code, exc.smtp_error.decode())
                return out
        out["MAIL"] = answer(client.mail(mail_from))
        if out["MAIL"].code != 250:
            return out
        out["RCPT"] = answer(client.rcpt(rcpt))
        if out["RCPT"].code != 250:
            return out
        out["DATA"] = answer(client.data(raw))
    return out


ALICE = {"alice": (PASSWORD, ("alice@example.com",))}
OUTSIDE = ("192.0.2.0/24",)  # trusted_networks that do not contain 127.0.0.1


# --- bridge.users: hashes -------------------------------------------------------------------

def test_hash_and_verify() -> None:
    encoded = users.hash_password("s3cret-pass", params=FAST)
    assert encoded.startswith("scrypt$16$1$1$")
    assert users.verify_password("s3cret-pass", encoded)
    assert users.verify_password(b"s3cret-pass", encoded)
    assert not users.verify_password("s3cret-pasS", encoded)
    assert not users.verify_password("", encoded)


def test_each_hash_has_its_own_salt() -> None:
    a, b = (users.hash_password("same", params=FAST) for _ in range(2))
    assert a != b and a.split("$")[4] != b.split("$")[4]


def test_default_cost_is_tens_of_milliseconds() -> None:
    """The documented trade-off: N=2^14, r=8 (16 MiB), ~30 ms on one core of a small server."""
    encoded = users.hash_password("x")
    assert encoded.startswith("scrypt$16384$8$1$")
    started = time.perf_counter()
    assert users.verify_password("x", encoded)
    assert time.perf_counter() - started < 1.0  # generous: shared CI machines


@pytest.mark.parametrize("encoded", [
    "", "plain", "scrypt$16$1$1$c2FsdHNhbHQ=", "bcrypt$16$1$1$c2FsdHNhbHQ=$a2V5a2V5a2V5a2V5a2V5",
    "scrypt$15$1$1$c2FsdHNhbHQ=$a2V5a2V5a2V5a2V5a2V5",          # n not a power of two
    "scrypt$4194304$8$1$c2FsdHNhbHQ=$a2V5a2V5a2V5a2V5a2V5",     # n = 2^22: too costly
    "scrypt$16$1$1$!!!$a2V5a2V5a2V5a2V5a2V5",                   # not base64
])
def test_malformed_hashes_never_verify(encoded: str) -> None:
    assert not users.verify_password("anything", encoded)


# --- bridge.users: the file ------------------------------------------------------------------

def test_users_file_round_trip_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "users"
    write_users(path, {"alice": ("pw-alice-123", ("alice@example.com",)),
                       "scanner@example.com": ("pw-scan-1234", ("*@example.org", "x@example.com"))})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = users.load_users(path)
    assert sorted(loaded) == ["alice", "scanner@example.com"]
    assert loaded["scanner@example.com"].addresses == ("*@example.org", "x@example.com")
    assert users.verify_password("pw-alice-123", loaded["alice"].password_hash)
    text = path.read_text()
    assert text.startswith("# faxbridge SMTP AUTH users") and "pw-alice" not in text


@pytest.mark.parametrize(("line", "problem"), [
    ("alice", "expected 'name hash address...'"),
    ("alice scrypt$16$1$1$c2FsdHNhbHQ=$a2V5a2V5a2V5a2V5a2V5", "expected 'name hash address...'"),
    ("al/ice {h} a@b.com", "is not a valid user name"),
    ("alice notahash alice@example.com", "not a scrypt"),
    ("alice {h} *", "is not an address"),
    ("alice {h} alice@example.com\nalice {h} alice@example.com", "appears twice"),
    ("-x {h} a@example.com", "is not a valid user name"),
])
def test_users_file_errors_name_the_line(line: str, problem: str) -> None:
    text = "# comment\n\n" + line.format(h=users.hash_password("pw", params=FAST))
    with pytest.raises(UsersFileError) as info:
        users.parse_users(text, source="users.txt")
    assert "users.txt: line 3" in str(info.value) or "users.txt: line 4" in str(info.value)
    assert problem in str(info.value)


@pytest.mark.parametrize(("pattern", "ok"), [
    ("alice@example.com", True), ("*@example.com", True), ("a.b+c@mail.example.com", True),
    ("*", False), ("alice", False), ("@example.com", False), ("a@", False),
    ("a@example.com.", False), ("a b@example.com", False), (".a@example.com", False),
    ("a..b@example.com", False), ("*@*.example.com", False),
])
def test_address_patterns(pattern: str, ok: bool) -> None:
    assert users.valid_address_pattern(pattern) is ok


def test_add_user_validates() -> None:
    with pytest.raises(ValueError, match="at least one address"):
        users.add_user({}, "alice", "pw", (), params=FAST)
    with pytest.raises(ValueError, match="not an address"):
        users.add_user({}, "alice", "pw", ("*",), params=FAST)
    with pytest.raises(ValueError, match="empty"):
        users.add_user({}, "alice", "", ("a@example.com",), params=FAST)


# --- bridge.users: the authenticator ---------------------------------------------------------

def counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = users.verify_password

    def spy(password: str | bytes, encoded: str) -> bool:
        calls.append(encoded)
        return real(password, encoded)

    monkeypatch.setattr(users, "verify_password", spy)
    return calls


def test_authenticator_checks_and_caches_only_successes(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "users"
    write_users(path, ALICE)
    auth = Authenticator(path)
    calls = counting(monkeypatch)
    assert auth.check(b"alice", PASSWORD.encode()).name == "alice"  # type: ignore[union-attr]
    assert auth.check(b"alice", PASSWORD.encode()) is not None
    assert len(calls) == 1  # the second success came from the cache
    assert auth.check(b"alice", b"wrong") is None
    assert auth.check(b"alice", b"wrong") is None
    assert len(calls) == 3  # failures are never cached


def test_unknown_users_cost_the_same_scrypt_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "users"
    write_users(path, ALICE)
    auth = Authenticator(path)
    calls = counting(monkeypatch)
    assert auth.check(b"mallory", PASSWORD.encode()) is None
    assert auth.check(b"\xff\xfe", b"x") is None
    assert len(calls) == 2  # a dummy hash was checked: the time does not reveal who exists


def test_a_changed_file_is_read_again_and_the_cache_forgotten(tmp_path: Path) -> None:
    path = tmp_path / "users"
    write_users(path, ALICE)
    auth = Authenticator(path)
    assert auth.check("alice", PASSWORD) is not None
    write_users(path, {"alice": ("a-new-password-1", ("alice@example.com",)),
                       "bob": ("bobs-password-22", ("bob@example.com",))})
    assert auth.check("alice", PASSWORD) is None  # not served from the cache
    assert auth.check("alice", "a-new-password-1") is not None
    assert auth.check("bob", "bobs-password-22") is not None


def test_a_broken_or_missing_file_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "users"
    write_users(path, ALICE)
    auth = Authenticator(path)
    assert auth.check("alice", PASSWORD) is not None
    path.write_text(path.read_text() + "garbage line\n")
    assert auth.check("alice", PASSWORD) is None
    assert auth.users() == {}
    path.unlink()
    assert auth.check("alice", PASSWORD) is None
    # At start-up a broken file is an error (the daemon does not start half-configured).
    path.write_text("garbage line\n")
    with pytest.raises(UsersFileError, match="line 1"):
        Authenticator(path)


def test_the_authenticator_is_thread_safe(tmp_path: Path) -> None:
    path = tmp_path / "users"
    write_users(path, ALICE)
    auth = Authenticator(path)
    results: list[bool] = []

    def worker(i: int) -> None:
        ok = auth.check("alice", PASSWORD if i % 2 else "wrong") is not None
        results.append(ok == bool(i % 2))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 16


# --- bridge.policy -----------------------------------------------------------------------------

def test_require_auth_changes_the_refusal_not_who_gets_in() -> None:
    nets = ["127.0.0.0/8"]
    assert policy.check_client("127.0.0.1", nets, require_auth=True)  # trusted: no AUTH needed
    outside = policy.check_client("203.0.113.9", nets, require_auth=True)
    assert not outside and outside.auth_required
    assert not policy.check_client("203.0.113.9", nets).auth_required
    assert policy.check_client("203.0.113.9", nets, auth_user="alice", require_auth=True)


@pytest.mark.parametrize(("address", "ok"), [
    ("alice@example.com", True), ("ALICE@Example.COM", True), ("bob@example.com", False),
    ("alice@example.com.evil.com", False), ("anyone@example.org", True),
    ("anyone@sub.example.org", False), ("", False),
])
def test_check_auth_sender(address: str, ok: bool) -> None:
    decision = policy.check_auth_sender(address, "alice", ("alice@example.com", "*@example.org", "*"))
    assert bool(decision) is ok
    if not ok:
        assert "alice" in decision.reason


# --- faxbridge user add|remove|list -------------------------------------------------------------

def run_cli(config: Any, argv: list[str], stdin: str = "") -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="faxbridge")
    cli_user.add_user_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    code = cli_user.run_user(config, args, stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_add_list_remove(tmp_path: Path) -> None:
    cfg = defaults(smtp=SmtpConfig(users_file=str(tmp_path / "users")))
    code, out, _ = run_cli(cfg, ["user", "add", "alice", "--address", "alice@example.com",
                                 "-a", "*@example.org", "--password-stdin"], PASSWORD + "\n")
    assert code == 0 and "user alice added" in out
    code, out, _ = run_cli(cfg, ["user", "list"])
    assert code == 0 and out == "alice  alice@example.com *@example.org\n"
    assert PASSWORD not in out and "scrypt" not in out
    assert Authenticator(tmp_path / "users").check("alice", PASSWORD) is not None
    code, _, err = run_cli(cfg, ["user", "add", "alice", "-a", "a@example.com", "--password-stdin"],
                           "another-password\n")
    assert code == 1 and "--replace" in err
    code, _, _ = run_cli(cfg, ["user", "remove", "alice"])
    assert code == 0 and users.load_users(tmp_path / "users") == {}
    code, _, err = run_cli(cfg, ["user", "remove", "alice"])
    assert code == 1 and "no user alice" in err


def test_cli_asks_for_the_password_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = defaults(smtp=SmtpConfig(users_file=str(tmp_path / "users")))
    answers = iter(["first-password-1", "other-password-2"])
    monkeypatch.setattr(cli_user.getpass, "getpass", lambda prompt: next(answers))
    code, _, err = run_cli(cfg, ["user", "add", "alice", "-a", "alice@example.com"])
    assert code == 1 and "differ" in err
    assert not (tmp_path / "users").exists()
    monkeypatch.setattr(cli_user.getpass, "getpass", lambda prompt: "short")
    code, _, err = run_cli(cfg, ["user", "add", "alice", "-a", "alice@example.com"])
    assert code == 1 and "too short" in err


def test_cli_needs_a_users_file_setting() -> None:
    code, _, err = run_cli(defaults(), ["user", "list"])
    assert code == 2 and "users_file" in err


# --- SMTP: STARTTLS first, then AUTH ---------------------------------------------------------------

async def test_auth_is_offered_only_after_starttls(secure_intake: SecureFactory) -> None:
    intake = await secure_intake(users=ALICE)

    def talk() -> tuple[bytes, tuple[int, bytes], bytes]:
        with smtplib.SMTP("127.0.0.1", intake.port, timeout=10) as client:
            _, before = client.ehlo("x")
            early = client.docmd("AUTH", "PLAIN " + base64.b64encode(
                b"\0alice\0" + PASSWORD.encode()).decode())
            client.starttls(context=client_tls())
            _, after = client.ehlo("x")
            return before, early, after

    before, early, after = await asyncio.to_thread(talk)
    assert b"STARTTLS" in before and b"AUTH" not in before
    assert early[0] == 538 and early[1].startswith(b"5.7.11")  # never a password in clear
    assert b"AUTH LOGIN PLAIN" in after and b"STARTTLS" not in after


async def test_no_users_file_means_no_auth_even_after_starttls(secure_intake: SecureFactory) -> None:
    intake = await secure_intake(users=None)
    answers = await asyncio.to_thread(login_and_send, intake.port, make_mail())
    assert answers["AUTH"].code in (503, 504, 535)  # smtplib may refuse to try; either way no login

    def ehlo() -> bytes:
        with smtplib.SMTP("127.0.0.1", intake.port, timeout=10) as client:
            client.starttls(context=client_tls())
            return client.ehlo("x")[1]

    assert b"AUTH" not in await asyncio.to_thread(ehlo)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_login_and_send_from_outside(secure_intake: SecureFactory, mechanism: str) -> None:
    intake = await secure_intake(users=ALICE, trusted_networks=OUTSIDE, require_auth=True)
    answers = await asyncio.to_thread(
        login_and_send, intake.port, make_mail(attachments=[(make_pdf(), "application/pdf", "a.pdf")]),
        mechanism=mechanism)
    assert answers["AUTH"].is_(replies.AUTH_OK)
    assert answers["DATA"].is_(replies.QUEUED)
    [job] = intake.jobs()
    assert intake.store.sync.db.execute("SELECT auth_user FROM mails").fetchone()[0] == "alice"
    assert job.mail_from == "alice@example.com"


async def test_wrong_password_is_535(secure_intake: SecureFactory) -> None:
    intake = await secure_intake(users=ALICE, trusted_networks=OUTSIDE)
    answers = await asyncio.to_thread(login_and_send, intake.port, make_mail(), password="guess")
    assert answers["AUTH"].is_(replies.AUTH_FAILED)
    answers = await asyncio.to_thread(login_and_send, intake.port, make_mail(), user="nobody")
    assert answers["AUTH"].is_(replies.AUTH_FAILED)  # the same answer: no user enumeration
    intake.assert_empty()


async def test_require_auth_refuses_unauthenticated_mail_from_outside(secure_intake: SecureFactory) -> None:
    intake = await secure_intake(users=ALICE, trusted_networks=OUTSIDE, require_auth=True)
    answers = await asyncio.to_thread(login_and_send, intake.port, make_mail(), user=None)
    assert answers["MAIL"].is_(replies.AUTH_REQUIRED)
    assert answers["MAIL"].text.startswith("5.7.0 Authentication required")
    # Without require_auth the client is still refused, as "not trusted".
    other = await secure_intake(users=ALICE, trusted_networks=OUTSIDE)
    answers = await asyncio.to_thread(login_and_send, other.port, make_mail(), user=None)
    assert answers["MAIL"].is_(replies.PEER_NOT_TRUSTED)
    intake.assert_empty()
    other.assert_empty()


async def test_trusted_networks_need_neither_auth_nor_tls(secure_intake: SecureFactory) -> None:
    intake = await secure_intake(users=ALICE, require_auth=True)  # 127.0.0.1 is trusted
    answers = await asyncio.to_thread(login_and_send, intake.port, make_mail(), user=None,
                                      starttls=False)
    assert answers["DATA"].is_(replies.QUEUED)


@pytest.mark.parametrize(("mail_from", "header_from", "stage"), [
    ("bob@example.com", "Alice <alice@example.com>", "MAIL"),
    ("alice@example.com", "Bob <bob@example.com>", "DATA"),
    ("alice@example.com", "Alice <alice@example.com>, Bob <bob@example.com>", "DATA"),
])
async def test_an_authenticated_user_sends_only_as_their_addresses(
        secure_intake: SecureFactory, mail_from: str, header_from: str, stage: str) -> None:
    # Even a user on a trusted network: the login binds the sender.
    intake = await secure_intake(users=ALICE)
    answers = await asyncio.to_thread(login_and_send, intake.port, make_mail(sender=header_from),
                                      mail_from=mail_from)
    assert answers["AUTH"].is_(replies.AUTH_OK)
    assert answers[stage].is_(replies.NOT_YOUR_ADDRESS)
    assert "bob@example.com" in answers[stage].text and "alice" in answers[stage].text
    intake.assert_empty()


async def test_domain_wide_addresses(secure_intake: SecureFactory) -> None:
    intake = await secure_intake(users={"scanner": (PASSWORD, ("*@example.com",))})
    ok = await asyncio.to_thread(login_and_send, intake.port, make_mail(sender="x@example.com"),
                                 user="scanner", mail_from="copier@example.com")
    assert ok["DATA"].is_(replies.QUEUED)
    other = await asyncio.to_thread(login_and_send, intake.port, make_mail(), user="scanner",
                                    mail_from="copier@sub.example.com")
    assert other["MAIL"].is_(replies.NOT_YOUR_ADDRESS)


async def test_a_removed_user_cannot_go_on_sending(secure_intake: SecureFactory) -> None:
    intake = await secure_intake(users=ALICE, trusted_networks=OUTSIDE)
    path = Path(intake.server.config.smtp.users_file)

    def talk() -> tuple[Answer, Answer]:
        with smtplib.SMTP("127.0.0.1", intake.port, timeout=10) as client:
            client.starttls(context=client_tls())
            client.login("alice", PASSWORD)
            first = answer(client.mail("alice@example.com"))
            client.rset()
            users.save_users(path, {})  # `faxbridge user remove alice` while she is connected
            return first, answer(client.mail("alice@example.com"))

    first, second = await asyncio.to_thread(talk)
    assert first.is_(replies.SENDER_OK)
    assert second.is_(replies.NOT_YOUR_ADDRESS)


async def test_auth_attempts_are_limited_per_connection(secure_intake: SecureFactory) -> None:
    intake = await secure_intake(users=ALICE, trusted_networks=OUTSIDE)

    def guess() -> list[tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", intake.port, timeout=10) as client:
            client.starttls(context=client_tls())
            client.ehlo("x")
            out = []
            for i in range(4):
                blob = base64.b64encode(f"\0alice\0guess{i}".encode()).decode()
                out.append(client.docmd("AUTH", f"PLAIN {blob}"))
            try:
                out.append(client.noop())
            except smtplib.SMTPServerDisconnected:
                out.append((0, b"disconnected"))
            return out

    results = await asyncio.to_thread(guess)
    assert [c for c, _ in results[:3]] == [535, 535, 535]
    assert results[3] == (421, b"4.7.0 AUTH sent too many times")
    assert results[4] == (0, b"disconnected")


async def test_a_failed_login_waits_but_the_server_does_not(secure_intake: SecureFactory,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The password check (scrypt) runs in a worker thread: while one login is being checked
    (here: made to take 0.6 s), other sessions are served at once."""
    intake = await secure_intake(users=ALICE)
    real_check = intake.server.handler.users.check  # type: ignore[union-attr]

    def slow_check(login: bytes, password: bytes) -> Any:
        time.sleep(0.6)
        return real_check(login, password)

    monkeypatch.setattr(intake.server.handler.users, "check", slow_check)
    login = asyncio.create_task(asyncio.to_thread(login_and_send, intake.port, make_mail()))
    await asyncio.sleep(0.2)  # the login is now inside the check
    started = time.monotonic()
    raw = await Raw.connect(intake.port)
    try:
        assert (await raw.reply()).code == 220
        assert (await raw.command(b"NOOP")).code == 250
    finally:
        raw.close()
    assert time.monotonic() - started < 0.3
    assert (await login)["DATA"].is_(replies.QUEUED)


async def test_auth_data_is_not_logged(secure_intake: SecureFactory,
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    intake = await secure_intake(users=ALICE)
    await asyncio.to_thread(login_and_send, intake.port, make_mail())
    await asyncio.to_thread(login_and_send, intake.port, make_mail(), password=PASSWORD + "x")
    blob = base64.b64encode(b"\0alice\0" + PASSWORD.encode()).decode()
    assert PASSWORD not in caplog.text and blob not in caplog.text
