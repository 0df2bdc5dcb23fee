"""The webhook endpoint: Basic auth (constant-time), size and shape limits, and the rule that a
webhook is only a hint: whatever it claims, the status poll of the API decides.

Runs the whole daemon (sandbox simulator) and talks HTTP to its web port.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from daemon import Daemon, start, until
from smtp_sink import SmtpSink
from test_e2e_fax import fax_mail

from bridge import web
from bridge.states import State
from bridge.web import FAX_RECEIVED_PATH, FAX_SENT_PATH, MAX_WEBHOOK_BYTES, SMS_SENT_PATH

USER, PASSWORD = "gofax", "hook-secret-9c41e"
GOOD = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
PATHS = [FAX_SENT_PATH, SMS_SENT_PATH, FAX_RECEIVED_PATH]


@pytest.fixture
async def daemon(tmp_path: Path, sink: SmtpSink, daemons: list[Daemon]) -> Daemon:
    d = await start(tmp_path, sink, web={"webhook_user": USER, "webhook_password": PASSWORD})
    daemons.append(d)
    return d


async def post(d: Daemon, path: str, data: Any = None, *, auth: str | None = GOOD,
               headers: dict[str, str] | None = None) -> tuple[int, str]:
    all_headers = dict(headers or {})
    if auth is not None:
        all_headers["Authorization"] = auth
    async with aiohttp.ClientSession() as http, \
            http.post(d.app.web_url + path, data=data, headers=all_headers) as resp:
        return resp.status, await resp.text()


# --- authentication ---------------------------------------------------------------------------------

@pytest.mark.parametrize("auth", [
    None,
    "Basic " + base64.b64encode(f"{USER}:wrong".encode()).decode(),
    "Basic " + base64.b64encode(f"other:{PASSWORD}".encode()).decode(),
    "Basic " + base64.b64encode(f"{USER}:{PASSWORD}x".encode()).decode(),
    "Basic " + base64.b64encode(f"{USER}:{PASSWORD[:-1]}".encode()).decode(),
    "Basic " + base64.b64encode(PASSWORD.encode()).decode(),
    "Basic !!!not-base64!!!",
    "Basic ",
    "Bearer " + PASSWORD,
    GOOD.lower(),  # base64 is case-sensitive
], ids=["missing", "wrong-password", "wrong-user", "longer", "shorter", "no-user", "not-base64",
        "empty", "bearer", "lower-case"])
@pytest.mark.parametrize("path", PATHS)
async def test_wrong_or_missing_basic_auth_is_401(daemon: Daemon, auth: str | None, path: str) -> None:
    status, text = await post(daemon, path, {"ID": "1"}, auth=auth)
    assert status == 401 and text == "unauthorised\n"
    assert PASSWORD not in text


async def test_401_asks_for_basic_auth(daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as http, \
            http.post(daemon.app.web_url + FAX_SENT_PATH, data={"ID": "1"}) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Basic realm="faxbridge"'


async def test_right_auth_is_accepted(daemon: Daemon) -> None:
    assert await post(daemon, FAX_SENT_PATH, {"ID": "999"}) == (200, "ignored: unknown id\n")
    assert (await post(daemon, FAX_RECEIVED_PATH, {"ID": "5"}))[0] == 200


def test_the_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """basic_auth_ok always ends in hmac.compare_digest, whatever the header looks like (no
    early return that would time the difference between a bad header and a bad password)."""
    calls: list[tuple[bytes, bytes]] = []
    real = web.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(web.hmac, "compare_digest", spy)
    for header in (None, "", "Basic !!", "Bearer x", GOOD):
        web.basic_auth_ok(header, USER, PASSWORD)
    assert len(calls) == 5
    assert web.basic_auth_ok(GOOD, USER, PASSWORD) and not web.basic_auth_ok(None, USER, PASSWORD)


# --- size and shape ---------------------------------------------------------------------------------

async def test_an_oversized_body_is_413(daemon: Daemon) -> None:
    status, _ = await post(daemon, FAX_SENT_PATH, {"ID": "1", "Pad": "x" * (MAX_WEBHOOK_BYTES + 1)})
    assert status == 413


async def test_an_oversized_body_without_content_length_is_413(daemon: Daemon) -> None:
    async def chunks() -> Any:
        yield b"ID=1&Pad="
        for _ in range(40):
            yield b"x" * 1024

    status, _ = await post(daemon, FAX_SENT_PATH, chunks(),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 413


async def test_an_oversized_body_without_auth_is_401_first(daemon: Daemon) -> None:
    """Authentication is checked before the body is read: a stranger cannot make us read 16 KiB."""
    status, _ = await post(daemon, FAX_SENT_PATH, {"Pad": "x" * 100_000}, auth=None)
    assert status == 401


@pytest.mark.parametrize(("data", "headers"), [
    ({"Success": "True"}, None),                                     # no ID
    ({"ID": "abc"}, None),
    ({"ID": "-5"}, None),
    ({"ID": "1" * 40}, None),                                        # absurdly long
    ({"ID": "1e3"}, None),
    ('{"ID": 1}', {"Content-Type": "application/json"}),             # not a form
    (b"\xff\xfe\x00garbage", {"Content-Type": "application/x-www-form-urlencoded"}),
    (b"--x\r\nbroken multipart", {"Content-Type": "multipart/form-data; boundary=x"}),
])
async def test_malformed_bodies_are_400(daemon: Daemon, data: Any, headers: dict[str, str] | None) -> None:
    status, _ = await post(daemon, FAX_SENT_PATH, data, headers=headers)
    assert status == 400


async def test_only_post_is_served(daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as http, http.get(daemon.app.web_url + FAX_SENT_PATH,
                        headers={"Authorization": GOOD}) as resp:
        assert resp.status == 405


# --- a webhook is a hint; the poll decides ---------------------------------------------------------

async def test_unknown_ids_are_ignored(daemon: Daemon) -> None:
    for path in (FAX_SENT_PATH, SMS_SENT_PATH):
        assert await post(daemon, path, {"ID": "123456", "Success": "False"}) == (
            200, "ignored: unknown id\n")
    assert daemon.jobs() == []
    assert not [r for r in daemon.sim.requests if r.method == "GET" and "/123456" in r.path]


async def test_a_forged_failure_for_a_sent_fax_changes_nothing(daemon: Daemon) -> None:
    await daemon.send(fax_mail())
    [notice] = await daemon.notices(1)
    [job] = daemon.jobs()
    assert job.state is State.SENT and job.gofax_id
    for _ in range(3):
        status, _ = await post(daemon, FAX_SENT_PATH, {"ID": str(job.gofax_id), "Success": "False",
                                                       "Result": "Busy", "Status": "Failed"})
        assert status == 200
    await asyncio.sleep(0.5)
    after = daemon.job(job.id)
    assert (after.state, after.result, after.last_error) == (State.SENT, job.result, job.last_error)
    assert len(daemon.sink.messages) == 1 and "sent" in notice.message["Subject"]


async def test_a_forged_failure_for_a_fax_in_flight_is_overruled_by_the_poll(
        tmp_path: Path, sink: SmtpSink, daemons: list[Daemon]) -> None:
    d = await start(tmp_path, sink, web={"webhook_user": USER, "webhook_password": PASSWORD},
                    gofax={"sandbox_fax_seconds": 0.6, "status_poll_seconds": 0.3})
    daemons.append(d)
    d.sim.suppress_webhooks = True  # only the forged one arrives
    await d.send(fax_mail())
    job = await d.wait_job(1, State.SUBMITTED)
    status, _ = await post(d, FAX_SENT_PATH, {"ID": str(job.gofax_id), "Success": "False",
                                              "Result": "No answer"})
    assert status == 200
    final = await d.wait_job(1, State.SENT, State.FAILED, timeout=10)
    assert final.state is State.SENT  # what the API said, not what the webhook claimed
    [notice] = await d.notices(1)
    assert "FAILED" not in notice.message["Subject"]


async def test_a_flood_of_forged_hints_causes_at_most_polls(daemon: Daemon) -> None:
    await daemon.send(fax_mail())
    await daemon.notices(1)
    [job] = daemon.jobs()
    puts_before = [r for r in daemon.sim.requests if r.method == "PUT"]
    results = await asyncio.gather(*(post(daemon, FAX_SENT_PATH, {"ID": str(job.gofax_id)})
                                     for _ in range(30)))
    assert all(status == 200 for status, _ in results)
    await until(lambda: True, 0.1)
    assert [r for r in daemon.sim.requests if r.method == "PUT"] == puts_before  # never a resend
    assert daemon.job(job.id).state is State.SENT and len(daemon.sink.messages) == 1
