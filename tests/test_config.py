"""Config: the shipped file, defaults, env secrets, and one clear line + exit 2 per bad file."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bridge import config as cfg
from bridge.cli import main

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "bridge.toml"


def test_shipped_file_loads_and_runs_the_sandbox() -> None:
    config = cfg.load(SHIPPED, env={})
    assert config.gofax.is_sandbox
    assert config.mail.smarthost == ""
    assert config.smtp.listen == "127.0.0.1:2525"
    assert config.route_for("61298765432") == ("reception@localhost",)
    assert config.route_for("61200000000") == ("postmaster@localhost",)


def test_shipped_file_shows_every_key_with_its_default_and_a_comment() -> None:
    data = tomllib.loads(SHIPPED.read_text())
    text = SHIPPED.read_text()
    defaults = cfg.Config()
    for section in dataclasses.fields(cfg.Config):
        if section.metadata.get("internal"):
            continue
        section_default = getattr(defaults, section.name)
        for f in dataclasses.fields(section_default):
            key = f.metadata.get("key", f.name)
            if key == "route":
                continue
            assert key in data[section.name], f"[{section.name}] {key} is not in bridge.toml"
            value = getattr(section_default, f.name)
            shipped = data[section.name][key]
            expected = list(value) if isinstance(value, tuple) else value
            assert shipped == expected, f"[{section.name}] {key}: shipped {shipped!r} != default"
            line = next(ln for ln in text.splitlines() if re.match(rf"{key}\s*=", ln))
            assert "#" in line, f"[{section.name}] {key} has no comment"


def test_defaults_without_a_file() -> None:
    config = cfg.from_mapping({}, env={})
    assert config == dataclasses.replace(cfg.Config(), source="<mapping>")


def test_environment_supplies_secrets() -> None:
    config = cfg.from_mapping(
        {"gofax": {"base_url": "https://restful-api.gofax.com.au"}},
        env={"FAXBRIDGE_GOFAX_TOKEN": "0b3f-ENV-TOKEN", "FAXBRIDGE_SMARTHOST_PASSWORD": "pw12"})
    assert config.gofax.token == "0b3f-ENV-TOKEN"
    assert config.mail.smarthost_password == "pw12"


def test_relative_paths_follow_the_file(tmp_path: Path) -> None:
    (tmp_path / "b.toml").write_text('[store]\npath = "data/x.db"\n')
    config = cfg.load(tmp_path / "b.toml", env={})
    assert config.path(config.store.path) == tmp_path / "data/x.db"


def test_routes_are_read() -> None:
    config = cfg.from_mapping({"receive": {"route": [
        {"number": "61298765432", "to": ["a@example.com", "b@example.com"]},
        {"number": "61733334444", "to": ["c@example.com"]}]}}, env={})
    assert config.route_for("61733334444") == ("c@example.com",)


BAD = [
    # (toml text, words the error must contain)
    ("[smtp]\nlisten = 2525\n", ["[smtp] listen", "expected a string"]),
    ('[smtp]\nlisten = "localhost"\n', ["[smtp] listen", "host:port"]),
    ('[smtp]\nlisen = "127.0.0.1:25"\n', ["[smtp] lisen", "unknown key"]),
    ('[smpt]\nlisten = "127.0.0.1:25"\n', ["[smpt]", "unknown section"]),
    ('[mail]\nfrom = "not an address"\n', ["[mail] from", "not an email address"]),
    ('[gofax]\nbase_url = "ftp://gofax"\n', ["[gofax] base_url", "https URL"]),
    ('[gofax]\nbase_url = "https://restful-api.gofax.com.au"\n', ["[gofax] token", "needs a token"]),
    ('[gofax]\nbase_url = "http://api.example.com"\ntoken = "t0k3n"\n', ["plain http"]),
    ('[gofax]\ntimeout_seconds = -1\n', ["[gofax] timeout_seconds", "greater than 0"]),
    ('[gofax]\ntimeout_seconds = "30"\n', ["[gofax] timeout_seconds", "expected a number"]),
    ('[gofax]\nauth = "cookie"\n', ["[gofax] auth", "'query'"]),
    ("[smtp]\nmax_recipients = 2.5\n", ["[smtp] max_recipients", "whole number"]),
    ("[numbers]\nallow_premium = 1\n", ["allow_premium", "true or false"]),
    ('[smtp]\ntrusted_networks = ["10.0.0.0/33"]\n', ["trusted_networks", "not a network"]),
    ('[smtp]\nallowed_senders = ["bob"]\n', ["allowed_senders", "sender pattern"]),
    ('[smtp]\nfax_domain = "Fax Local"\n', ["fax_domain", "not a mail domain"]),
    ('[smtp]\nsms_domain = "fax.local"\n', ["sms_domain", "differ"]),
    ('[sms]\nsender_id = "Far Too Long Name"\n', ["sender_id", "11"]),
    ('[sms]\nreply_numbers = ["0412 345 678"]\n', ["reply_numbers", "GoFax form"]),
    ('[receive]\ntimezone = "Mars/Olympus"\n', ["timezone", "time zone"]),
    ('[receive]\ndefault_to = ["nobody"]\n', ["default_to", "not an email address"]),
    ('[[receive.route]]\nnumber = "61298765432"\n', ["route[0] to", "at least one"]),
    ('[[receive.route]]\nnumber = "61298765432"\nto = ["a@b.c"]\n'
     '[[receive.route]]\nnumber = "61298765432"\nto = ["d@b.c"]\n', ["routed twice"]),
    ('[numbers]\ndefault_region = "XX"\n', ["default_region", "region code"]),
    ('[web]\nwebhook_user = "gofax"\n', ["webhook_password", "both or neither"]),
    ('[mail]\nsmarthost = "mail.example.com"\n', ["[mail] smarthost", "host:port"]),
    ('[smtp]\nusers_file = "users"\n', ["[smtp] users_file", "STARTTLS"]),
    ("[smtp]\nrequire_auth = true\n", ["[smtp] require_auth", "needs users_file"]),
    ('[smtp]\ntls_cert = "nope.pem"\ntls_key = "nope.key"\n', ["[smtp] tls_cert", "no such file"]),
    ("[smtp]\nrequire_dmarc = true\n", ["trusted_authserv_id"]),
    ("[smtp\nlisten=1\n", ["not valid TOML"]),
    ("smtp = 3\n", ["smtp", "expected a [smtp] table"]),
]


@pytest.mark.parametrize(("text", "words"), BAD, ids=[w[0] for _, w in BAD])
def test_bad_config_gives_one_clear_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, words: list[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path, env={})
    message = str(err.value)
    assert message.startswith(str(path) + ": ")
    for word in words:
        assert word in message
    assert main(["check", "--config", str(path)]) == 2
    out, errs = capsys.readouterr()
    assert out == ""
    assert errs.count("\n") == 1 and errs.startswith("faxbridge: config error: ")
    assert "Traceback" not in errs


def test_missing_and_unreadable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "file not found" in capsys.readouterr().err
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    assert main(["check", "--config", str(tmp_path / "bin.toml")]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_config_error_never_shows_the_token(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    path.write_text('[gofax]\nbase_url = "http://api.example.com"\ntoken = "0b3f-SECRET-TOKEN"\n')
    proc = subprocess.run([sys.executable, "-m", "bridge", "check", "--config", str(path)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "0b3f-SECRET-TOKEN" not in proc.stdout + proc.stderr


def test_check_on_the_shipped_sandbox_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(SHIPPED)]) == 0
    assert "sandbox" in capsys.readouterr().out
