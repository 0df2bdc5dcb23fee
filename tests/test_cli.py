"""The faxbridge command: help, check against a (simulated) GoFax, jobs and retry."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SIM_TOKEN, SimulatorFactory

from bridge.cli import main
from bridge.states import State
from bridge.store import NewJob, NewMail, Store


def write_config(folder: Path, text: str = "") -> Path:
    path = folder / "bridge.toml"
    path.write_text(f'[store]\npath = "{folder / "db.sqlite"}"\n{text}')
    return path


def test_help_explains_the_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "bridge", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for word in ("run", "check", "jobs", "retry", "inbox", "sim", "sandbox", "swaks"):
        assert word in out


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: faxbridge" in capsys.readouterr().out


async def test_check_says_whether_the_token_works(tmp_path: Path,
                                                  simulator_factory: SimulatorFactory,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    sim = await simulator_factory()
    good = write_config(tmp_path, f'[gofax]\nbase_url = "{sim.base_url}"\ntoken = "{SIM_TOKEN}"\n')
    assert await asyncio.to_thread(main, ["check", "--config", str(good)]) == 0
    out, err = capfd.readouterr()
    assert "accepts the token" in out and SIM_TOKEN not in out + err
    sim.token = "rotated-token"
    assert await asyncio.to_thread(main, ["check", "--config", str(good)]) == 1
    out, err = capfd.readouterr()
    assert "REFUSED the token" in err and SIM_TOKEN not in out + err


async def test_check_reports_an_unreachable_gofax(tmp_path: Path,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, '[gofax]\nbase_url = "http://127.0.0.1:9"\ntoken = "t0ken-x"\n'
                                 "timeout_seconds = 2\n")
    assert await asyncio.to_thread(main, ["check", "--config", str(cfg)]) == 1
    assert "could not check the token" in capfd.readouterr().err


def _store_with_jobs(folder: Path) -> Store:
    store = Store(folder / "db.sqlite")
    store.accept(NewMail("alice@example.com", "alice@example.com", "<a@x>", "Report", True,
                         [NewJob("fax", "61298765432", "k1"), NewJob("fax", "61398765432", "k2")]))
    store.move(1, State.QUEUED, State.SUBMITTING, attempts=1)
    store.move(1, State.SUBMITTING, State.UNCERTAIN, last_error="answer lost")
    store.move(2, State.QUEUED, State.SUBMITTING, attempts=1)
    store.move(2, State.SUBMITTING, State.FAILED, result="Busy")
    return store


def test_jobs_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    _store_with_jobs(tmp_path).close()
    assert main(["jobs", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "uncertain" in out and "+61 2 9876 5432" in out and "Busy" in out
    assert main(["jobs", "--config", str(cfg), "--json", "--state", "failed"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(j["id"], j["state"], j["result"]) for j in data["jobs"]] == [(2, "failed", "Busy")]


def test_jobs_without_a_store_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "--config", str(write_config(tmp_path))]) == 1
    assert "has not run" in capsys.readouterr().err


def test_retry_a_failed_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    _store_with_jobs(tmp_path).close()
    assert main(["retry", "2", "--config", str(cfg)]) == 0
    store = Store(tmp_path / "db.sqlite")
    job = store.job(2)
    assert job is not None and job.state is State.QUEUED and job.attempts == 1
    assert "retry requested by operator" in store.events(2)[-1][3]


def test_retry_an_uncertain_job_asks_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    _store_with_jobs(tmp_path).close()
    monkeypatch.setattr(sys, "stdin", io.StringIO("no\n"))
    assert main(["retry", "1", "--config", str(cfg)]) == 1
    assert "may already have sent it" in capsys.readouterr().out
    assert Store(tmp_path / "db.sqlite").job(1).state is State.UNCERTAIN  # type: ignore[union-attr]
    monkeypatch.setattr(sys, "stdin", io.StringIO("yes\n"))
    assert main(["retry", "1", "--config", str(cfg)]) == 0
    assert Store(tmp_path / "db.sqlite").job(1).state is State.QUEUED  # type: ignore[union-attr]


def test_retry_refuses_what_cannot_be_retried(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    store = _store_with_jobs(tmp_path)
    store.accept(NewMail("b@example.com", "b@example.com", "<b@x>", "", True,
                         [NewJob("fax", "61298765432", "k3")]))
    store.close()
    assert main(["retry", "3", "--config", str(cfg)]) == 1
    assert "only failed or uncertain" in capsys.readouterr().err
    assert main(["retry", "99", "--config", str(cfg)]) == 1
    assert "no job 99" in capsys.readouterr().err
