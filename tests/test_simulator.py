"""The GoFax simulator: raw HTTP behaviour, validation, the state clock, number behaviours,
webhooks, fault injection, the request log and the /_sim/ admin interface."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json as json_module
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pypdf
import pytest
from aiohttp import web
from daemon import until

from bridge.gofax.client import GoFaxClient
from bridge.gofax.samplepdf import sample_pdf
from bridge.gofax.simulator import (
    Fault,
    GoFaxSimulator,
    count_pages,
    run_standalone,
    serve,
    usage_text,
)

NUMBER = "61298765432"
PDF = b"%PDF-1.4 tiny"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def fax_body(**overrides: Any) -> dict[str, Any]:
    return {"SendTo": NUMBER, "Documents": [{"Filename": "a.pdf", "Data": b64(PDF)}], **overrides}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def api(
    http: aiohttp.ClientSession,
    sim: GoFaxSimulator,
    method: str,
    path: str,
    json: Any = None,
    token: str | None = "default",
) -> tuple[int, bytes, Any]:
    params = {"token": sim.token if token == "default" else token} if token else {}
    async with http.request(method, f"{sim.base_url}{path}", params=params, json=json) as response:
        raw = await response.read()
        try:
            decoded = json_module.loads(raw) if raw else None
        except ValueError:
            decoded = None
        return response.status, raw, decoded


# =============================================================================== auth


@pytest.mark.parametrize("token", [None, "wrong"])
async def test_bad_or_missing_token_is_401_with_empty_body(
    simulator: GoFaxSimulator,
    http: aiohttp.ClientSession,
    token: str | None,
) -> None:
    status, raw, _ = await api(http, simulator, "PUT", "/v1.0/SendFax", fax_body(), token=token)
    assert (status, raw) == (401, b"")
    assert not simulator.faxes


async def test_header_token_and_runtime_token_change(
    simulator: GoFaxSimulator,
    http: aiohttp.ClientSession,
) -> None:
    url = f"{simulator.base_url}/v1.0/Account/CheckHaveAccess"
    async with http.put(url, headers={"x-api-token": simulator.token}) as response:
        assert response.status == 200 and await response.json() is True
    old = simulator.token
    simulator.token = "new-token"
    assert (await api(http, simulator, "PUT", "/v1.0/Account/CheckHaveAccess", token=old))[0] == 401
    assert (await api(http, simulator, "PUT", "/v1.0/Account/CheckHaveAccess"))[0] == 200


async def test_ids_and_numbers_of_another_account_are_401(
    simulator: GoFaxSimulator,
    http: aiohttp.ClientSession,
) -> None:
    for path in (
        "/v1.0/SendFax/1",
        "/v1.0/SMS/1",
        "/v1.0/ReceiveFax/1/Document",
        "/v1.0/ReceiveFaxes/Details/61311112222",
        "/v1.0/SMS/Replies/61411112222",
    ):
        status, raw, _ = await api(http, simulator, "GET", path)
        assert (status, raw) == (401, b""), path
    status, raw, _ = await api(http, simulator, "POST", "/v1.0/SendFax/1/Resend")
    assert (status, raw) == (401, b"")


async def test_non_numeric_id_is_refused(
    simulator: GoFaxSimulator,
    http: aiohttp.ClientSession,
) -> None:
    status, _, body = await api(http, simulator, "GET", "/v1.0/SendFax/abc")
    assert status == 400 and body["Success"] is False


# =============================================================================== SendFax


async def test_send_fax_envelope(simulator: GoFaxSimulator, http: aiohttp.ClientSession) -> None:
    status, _, body = await api(http, simulator, "PUT", "/v1.0/SendFax", fax_body())
    assert status == 200
    assert body["Success"] is True and body["ValidationErrors"] == []
    assert isinstance(body["Response"], int)
    assert body["Documents"] == [{"Filename": "a.pdf", "Message": "Initialised", "Submitted": True}]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"SendTo": "+61298765432"}, "SendTo '+61298765432'"),
        ({"SendTo": "02 9876 5432"}, "SendTo '02 9876 5432'"),
        ({"SendTo": "6129876"}, "SendTo '6129876'"),
        ({"SendTo": "6129876543210000"}, "SendTo '6129876543210000'"),
        ({"SendTo": None}, "SendTo is required"),
        ({"Documents": []}, "at least one document"),
        ({"Documents": None}, "at least one document"),
        (
            {"Documents": [{"Filename": "a.pdf", "Data": b64(PDF)}, {"Filename": "notes", "Data": "eA=="}]},
            "Documents[1] (notes): the file extension",
        ),
        ({"Documents": [{"Filename": "virus.exe", "Data": "eA=="}]}, "Documents[0] (virus.exe)"),
        (
            {"Documents": [{"Filename": "a.pdf", "Data": "%%%"}]},
            "Documents[0] (a.pdf): Data is missing or not valid base64",
        ),
        ({"Documents": [{"Filename": "a.pdf"}]}, "Documents[0] (a.pdf): Data is missing"),
        ({"Documents": [{"Filename": "a.pdf", "Data": ""}]}, "Documents[0] (a.pdf): Data is empty"),
        ({"Documents": [{"Data": "eA=="}]}, "Documents[0]: Filename is required"),
        ({"Documents": ["a.pdf"]}, "Documents[0] must be an object"),
        ({"Subject": 12}, "Subject must be text"),
    ],
)
async def test_send_fax_validation(
    simulator: GoFaxSimulator,
    http: aiohttp.ClientSession,
    overrides: dict[str, Any],
    expected: str,
) -> None:
    status, _, body = await api(http, simulator, "PUT", "/v1.0/SendFax", fax_body(**overrides))
    assert status == 400
    assert body["Success"] is False and body["Response"] is None
    assert any(expected in item for item in body["ValidationErrors"]), body["ValidationErrors"]
    assert not simulator.faxes


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]"])
async def test_send_fax_body_must_be_a_json_object(
    simulator: GoFaxSimulator,
    http: aiohttp.ClientSession,
    raw: bytes,
) -> None:
    url = f"{simulator.base_url}/v1.0/SendFax"
    async with http.put(url, params={"token": simulator.token}, data=raw) as response:
        assert response.status == 400
        assert (await response.json())["Success"] is False


async def test_known_extensions_accepted(
    simulator: GoFaxSimulator,
    http: aiohttp.ClientSession,
) -> None:
    names = [
        "a.PDF",
        "b.docx",
        "c.doc",
        "d.tif",
        "e.tiff",
        "f.jpg",
        "g.jpeg",
        "h.png",
        "i.txt",
        "j.html",
        "k.rtf",
        "l.xls",
        "m.xlsx",
        "n.odt",
    ]
    documents = [{"Filename": name, "Data": "eA=="} for name in names]
    status, _, _ = await api(http, simulator, "PUT", "/v1.0/SendFax", fax_body(Documents=documents))
    assert status == 200


def test_count_pages() -> None:
    assert count_pages("a.pdf", sample_pdf(3)) == 3
    assert count_pages("a.txt", sample_pdf(3)) == 1
    assert count_pages("a.pdf", b"not a pdf") == 1
    broken = b"%PDF-1.4\n1 0 obj <</Type /Page>> 2 0 obj <</Type/Page>> 3 0 obj <</Type /Pages>>"
    assert count_pages("a.pdf", broken) == 2


# =============================================================================== the clock


async def test_fax_progresses_with_the_clock(simulator_factory: Any) -> None:
    sim = await simulator_factory(fax_seconds=60)
    async with GoFaxClient(sim.base_url, sim.token) as gofax:
        fax_id = (await gofax.send_fax(NUMBER, [("a.pdf", sample_pdf(2))])).id
        first = await gofax.get_fax_status(fax_id)
        assert (first.status, first.is_final, first.pages, first.completed_utc) == ("Queued", False, 2, None)
        sim.advance(30)
        assert (await gofax.get_fax_status(fax_id)).status == "Sending"
        sim.advance(30)
        final = await gofax.get_fax_status(fax_id)
    assert (final.status, final.message, final.is_success) == ("Sent", "Fax successfully sent", True)
    assert final.completed_utc and final.submitted_utc
    assert (final.completed_utc - final.submitted_utc).total_seconds() >= 59


async def test_instant_fax_is_final_on_first_read(simulator: GoFaxSimulator) -> None:
    async with GoFaxClient(simulator.base_url or "", simulator.token) as gofax:
        fax_id = (await gofax.send_fax(NUMBER, [("a.pdf", PDF)])).id
        assert (await gofax.get_fax_status(fax_id)).is_final


@pytest.mark.parametrize(
    ("behaviour", "message", "attempts"),
    [
        ("busy", "Busy", 3),
        ("no_answer", "No answer", 3),
        ("not_a_fax", "Not a fax machine", 1),
        ("ok", "Fax successfully sent", 1),
    ],
)
async def test_number_behaviours(
    simulator: GoFaxSimulator,
    behaviour: str,
    message: str,
    attempts: int,
) -> None:
    simulator.set_number_behaviour("61299999999", behaviour)
    async with GoFaxClient(simulator.base_url or "", simulator.token) as gofax:
        fax_id = (await gofax.send_fax("61299999999", [("a.pdf", PDF)])).id
        status = await gofax.get_fax_status(fax_id)
    assert (status.message, status.attempts) == (message, attempts)
    assert status.is_success == (behaviour == "ok")


def test_unknown_behaviour_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown number behaviour"):
        GoFaxSimulator().set_number_behaviour("612", "on_fire")


async def test_resend_of_a_fax_in_progress_is_refused(simulator_factory: Any) -> None:
    sim = await simulator_factory(fax_seconds=60)
    async with GoFaxClient(sim.base_url, sim.token) as gofax:
        fax_id = (await gofax.send_fax(NUMBER, [("a.pdf", PDF)])).id
        with pytest.raises(Exception, match="still being sent"):
            await gofax.resend_fax(fax_id)


# =============================================================================== SMS


async def test_sms_progress_and_failure(simulator_factory: Any) -> None:
    sim = await simulator_factory(sms_seconds=10)
    sim.set_number_behaviour("61411111111", "invalid")
    async with GoFaxClient(sim.base_url, sim.token) as gofax:
        good = (await gofax.send_sms(["61412345678"], "ACME", "hello")).id
        bad = (await gofax.send_sms(["61412345678", "61411111111"], "61400000000", "hi")).id
        assert (await gofax.get_sms_status(good)).status == "Initialised"
        sim.advance(5)
        assert (await gofax.get_sms_status(good)).status == "Sent to carrier for delivery"
        sim.advance(5)
        delivered = await gofax.get_sms_status(good)
        failed = await gofax.get_sms_status(bad)
    assert (delivered.status, delivered.outcome) == ("Message successfully delivered", "sent")
    assert (failed.status, failed.outcome) == ("The destination mobile number is invalid", "failed")
    assert failed.from_number == "61400000000"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"To": []}, "To must list"),
        ({"To": "61412345678"}, "To must list"),
        ({"To": ["0412 345 678"]}, "To[0] '0412 345 678'"),
        ({"From": "Fax Bridge"}, "From 'Fax Bridge'"),
        ({"From": "TwelveChars1"}, "From 'TwelveChars1'"),
        ({"From": None}, "From 'None'"),
        ({"Body": "  "}, "Body must not be empty"),
    ],
)
async def test_sms_validation(
    simulator: GoFaxSimulator,
    http: aiohttp.ClientSession,
    overrides: dict[str, Any],
    expected: str,
) -> None:
    body = {"To": ["61412345678"], "From": "ACME", "Body": "hi", **overrides}
    status, _, answer = await api(http, simulator, "PUT", "/v1.0/SMS", body)
    assert status == 400 and answer["Success"] is False
    assert any(expected in item for item in answer["ValidationErrors"]), answer["ValidationErrors"]
    assert not simulator.sms


async def test_sms_replies_stay_listed(simulator: GoFaxSimulator, http: aiohttp.ClientSession) -> None:
    simulator.sms_reply("61412345678", None, "first")
    simulator.sms_reply("61412345678", "61400000000", "second", message_id=77001)
    for _ in range(2):
        _, _, body = await api(http, simulator, "GET", "/v1.0/SMS/Replies/61400000000")
        assert [r["Message"] for r in body["Response"]] == ["first", "second"]
    assert body["Response"][1]["MessageID"] == 77001
    assert body["Response"][0]["MessageID"] is None


# =============================================================================== received


async def test_received_fax_lifecycle_raw(
    simulator: GoFaxSimulator,
    http: aiohttp.ClientSession,
) -> None:
    fax_id = simulator.receive_fax()
    _, _, listing = await api(http, simulator, "GET", "/v1.0/ReceiveFaxes/UnretrievedFaxes")
    assert [f["ID"] for f in listing["Response"]] == [fax_id]
    assert "Retrieved" not in listing["Response"][0]
    _, _, document = await api(http, simulator, "GET", f"/v1.0/ReceiveFax/{fax_id}/Document")
    pdf = base64.b64decode(document["Response"]["Data"])
    assert pdf.startswith(b"%PDF") and len(pypdf.PdfReader(io.BytesIO(pdf)).pages) == 1
    _, _, listing = await api(http, simulator, "GET", "/v1.0/ReceiveFaxes/UnretrievedFaxes")
    assert listing["Response"] == []
    _, _, details = await api(http, simulator, "GET", f"/v1.0/ReceiveFaxes/Details/{NUMBER}")
    assert details["Response"][0]["Retrieved"] is True


async def test_received_fax_with_given_pdf(simulator: GoFaxSimulator) -> None:
    pdf = sample_pdf(4)
    fax_id = simulator.receive_fax(pdf=pdf)
    assert simulator.received[fax_id].pages == 4 and simulator.received[fax_id].pdf == pdf


# =============================================================================== webhooks


class HookCatcher:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.status = 200

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append(
            {
                "path": request.path,
                "content_type": request.content_type,
                "authorization": request.headers.get("Authorization"),
                "form": dict(await request.post()),
                "query": dict(request.query),
            }
        )
        return web.Response(status=self.status, text="ok")


@pytest.fixture
async def hooks(aiohttp_server: Any) -> tuple[HookCatcher, str]:
    catcher = HookCatcher()
    app = web.Application()
    app.router.add_post("/{name}", catcher.handle)
    server = await aiohttp_server(app)
    return catcher, str(server.make_url("")).rstrip("/")


def webhook_config(base: str) -> dict[str, str]:
    return {"fax_sent": f"{base}/fax", "sms_sent": f"{base}/sms", "fax_received": f"{base}/in"}


async def test_webhooks_fire_form_encoded_with_basic_auth(
    simulator_factory: Any,
    hooks: tuple[HookCatcher, str],
) -> None:
    catcher, base = hooks
    sim = await simulator_factory(webhooks=webhook_config(base), webhook_auth=("gofax", "s3cret"))
    sim.set_number_behaviour("61299999999", "busy")
    async with GoFaxClient(sim.base_url, sim.token) as gofax:
        ok = (await gofax.send_fax(NUMBER, [("a.pdf", PDF)], subject="Report")).id
        busy = (await gofax.send_fax("61299999999", [("a.pdf", PDF)])).id
        sms = (await gofax.send_sms(["61412345678"], "ACME", "hi")).id
    received = sim.receive_fax(from_number="61733334444", pages=2)
    # The background task delivers them without any poll.
    await until(lambda: len(catcher.calls) == 4)

    by_path: dict[str, list[dict[str, Any]]] = {}
    for call in catcher.calls:
        by_path.setdefault(call["path"], []).append(call)
    expected_auth = "Basic " + b64(b"gofax:s3cret")
    assert all(c["authorization"] == expected_auth for c in catcher.calls)
    assert all(c["content_type"] == "application/x-www-form-urlencoded" for c in catcher.calls)
    fax_forms = {c["form"]["ID"]: c["form"] for c in by_path["/fax"]}
    assert fax_forms[str(ok)] == {
        "Recipient": NUMBER,
        "ID": str(ok),
        "Success": "True",
        "Message": "Fax successfully sent",
        "Subject": "Report",
    }
    assert fax_forms[str(busy)]["Success"] == "False"
    assert fax_forms[str(busy)]["Message"] == "Busy"
    assert by_path["/sms"][0]["form"] == {
        "Recipient": "61412345678",
        "ID": str(sms),
        "Success": "True",
        "Message": "Message successfully delivered",
    }
    assert by_path["/in"][0]["form"] == {
        "ID": str(received),
        "FromNumber": "61733334444",
        "ToNumber": NUMBER,
        "Pages": "2",
    }
    assert [a.status for a in sim.webhook_attempts] == [200] * 4


async def test_webhook_fires_once_when_the_clock_says_final(
    simulator_factory: Any,
    hooks: tuple[HookCatcher, str],
) -> None:
    catcher, base = hooks
    sim = await simulator_factory(webhooks=webhook_config(base), fax_seconds=60)
    sim.tick_seconds = 3600  # only explicit process_due() calls from here on
    async with GoFaxClient(sim.base_url, sim.token) as gofax:
        await gofax.send_fax(NUMBER, [("a.pdf", PDF)])
    await sim.process_due()
    assert catcher.calls == []
    sim.advance(60)
    await sim.process_due()
    await sim.process_due()
    assert len(catcher.calls) == 1
    assert catcher.calls[0]["authorization"] is None  # no webhook_auth configured


async def test_suppressed_and_duplicated_webhooks(
    simulator_factory: Any,
    hooks: tuple[HookCatcher, str],
) -> None:
    catcher, base = hooks
    sim = await simulator_factory(webhooks=webhook_config(base))
    sim.suppress_webhooks = True
    sim.receive_fax()
    await until(lambda: len(sim.webhook_attempts) == 1)
    assert catcher.calls == [] and "suppressed" in (sim.webhook_attempts[0].error or "")

    sim.suppress_webhooks, sim.duplicate_webhooks = False, True
    fax_id = sim.receive_fax()
    await until(lambda: len(catcher.calls) == 2)
    assert [c["form"]["ID"] for c in catcher.calls] == [str(fax_id)] * 2


async def test_callback_url_replaces_account_webhook_and_keeps_query(
    simulator_factory: Any,
    hooks: tuple[HookCatcher, str],
) -> None:
    catcher, base = hooks
    sim = await simulator_factory(webhooks=webhook_config(base), webhook_auth=("u", "p"))
    async with GoFaxClient(sim.base_url, sim.token) as gofax:
        fax_id = (await gofax.send_fax(NUMBER, [("a.pdf", PDF)], callback_url=f"{base}/job?job=42")).id
    await until(lambda: len(catcher.calls) == 1)
    call = catcher.calls[0]
    assert call["path"] == "/job" and call["authorization"] is None
    assert call["query"]["job"] == "42" and call["query"]["ID"] == str(fax_id)
    assert call["form"]["ID"] == str(fax_id)


async def test_failed_webhook_is_logged_and_ignored(
    simulator_factory: Any,
    hooks: tuple[HookCatcher, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    catcher, base = hooks
    catcher.status = 500
    sim = await simulator_factory(
        webhooks={"fax_received": f"{base}/in", "fax_sent": "http://127.0.0.1:1/nowhere?token=abcd"}
    )
    caplog.set_level(logging.INFO, logger="bridge.gofax.simulator")
    sim.receive_fax()
    async with GoFaxClient(sim.base_url, sim.token) as gofax:
        await gofax.send_fax(NUMBER, [("a.pdf", PDF)])
    await until(lambda: len(sim.webhook_attempts) == 2)
    statuses = {a.event: (a.status, a.error) for a in sim.webhook_attempts}
    assert statuses["fax_received"] == (500, None)
    assert statuses["fax_sent"][0] is None and "ClientConnectorError" in statuses["fax_sent"][1]
    assert len(catcher.calls) == 1  # not retried
    assert "webhook fax_sent" in caplog.text and "token=abcd" not in caplog.text


# =============================================================================== faults


def test_fault_matching() -> None:
    assert Fault("*", "drop").matches("GET", "/v1.0/SMS/1")
    assert Fault("PUT /v1.0/SendFax", "drop").matches("PUT", "/v1.0/SendFax")
    assert not Fault("PUT /v1.0/SendFax", "drop").matches("GET", "/v1.0/SendFax")
    assert Fault("GET /v1.0/SendFax/*", "drop").matches("GET", "/v1.0/SendFax/12")
    assert not Fault("GET /v1.0/SendFax/*", "drop").matches("GET", "/v1.0/SendFax")
    assert Fault("/v1.0/sms*", "drop").matches("PUT", "/v1.0/SMS")
    assert Fault("* /v1.0/SMS", "drop").matches("PUT", "/v1.0/SMS")


async def test_fault_times_and_forever(simulator: GoFaxSimulator, http: aiohttp.ClientSession) -> None:
    simulator.inject("PUT /v1.0/Account/CheckHaveAccess", "status", status=502, times=2)
    statuses = [(await api(http, simulator, "PUT", "/v1.0/Account/CheckHaveAccess"))[0] for _ in range(3)]
    assert statuses == [502, 502, 200]
    simulator.inject("*", "429", retry_after=9, times=None)
    for _ in range(3):
        url = f"{simulator.base_url}/v1.0/SMS/1"
        async with http.get(url, params={"token": simulator.token}) as response:
            assert response.status == 429 and response.headers["Retry-After"] == "9"
    assert len(simulator.faults) == 1
    simulator.clear_faults()
    assert (await api(http, simulator, "PUT", "/v1.0/Account/CheckHaveAccess"))[0] == 200


async def test_faults_apply_before_auth(simulator: GoFaxSimulator, http: aiohttp.ClientSession) -> None:
    simulator.inject("*", "status", status=503)
    assert (await api(http, simulator, "GET", "/v1.0/SMS/1", token="wrong"))[0] == 503


def test_unknown_fault_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        GoFaxSimulator().inject("*", "explode")  # type: ignore[arg-type]


async def test_drop_closes_without_answer(simulator: GoFaxSimulator, http: aiohttp.ClientSession) -> None:
    simulator.inject("GET *", "drop", times=3)  # aiohttp may retry a GET once by itself
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await api(http, simulator, "GET", "/v1.0/ReceiveFaxes/UnretrievedFaxes")


# =============================================================================== request log


async def test_request_log_strips_secrets(simulator: GoFaxSimulator) -> None:
    async with GoFaxClient(simulator.base_url or "", simulator.token, auth="header") as gofax:
        await gofax.send_fax(NUMBER, [("a.pdf", PDF), ("b.txt", b"hi")])
    async with GoFaxClient(simulator.base_url or "", simulator.token) as gofax:
        await gofax.check_access()
    fax_request, access_request = simulator.requests
    assert fax_request.method == "PUT" and fax_request.path == "/v1.0/SendFax"
    assert fax_request.documents == [("a.pdf", PDF), ("b.txt", b"hi")]
    assert fax_request.json["SendTo"] == NUMBER
    assert "x-api-token" not in {k.lower() for k in fax_request.headers}
    assert access_request.query == {}
    summary = fax_request.summary()
    assert summary["documents"][0] == {
        "filename": "a.pdf",
        "size": len(PDF),
        "sha256": hashlib.sha256(PDF).hexdigest(),
    }
    assert summary["json"]["Documents"][0]["Data"].startswith("<")
    assert simulator.token not in repr(simulator.requests)


# =============================================================================== admin


async def test_admin_usage_page(simulator: GoFaxSimulator, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{simulator.base_url}/_sim/") as response:
        text = await response.text()
    assert response.status == 200 and response.content_type == "text/plain"
    assert f"curl -X POST {simulator.base_url}/_sim/receive-fax" in text
    assert simulator.token not in text
    for path in (
        "/_sim/sms-reply",
        "/_sim/fault",
        "/_sim/number",
        "/_sim/token",
        "/_sim/requests",
        "/_sim/faxes",
    ):
        assert path in text


def test_usage_text_shows_a_given_token() -> None:
    text = usage_text("http://127.0.0.1:8090/", token="sandbox-token")
    assert "sandbox-token" in text and "http://127.0.0.1:8090/_sim/fault" in text


async def test_admin_receive_fax_form_and_upload(
    simulator: GoFaxSimulator,
    http: aiohttp.ClientSession,
) -> None:
    async with http.post(
        f"{simulator.base_url}/_sim/receive-fax", data={"from": "61733334444", "csid": "ACME"}
    ) as response:
        first = (await response.json())["id"]
    upload = aiohttp.FormData()
    upload.add_field("from", "61755556666")
    upload.add_field("pdf", sample_pdf(3), filename="x.pdf", content_type="application/pdf")
    async with http.post(f"{simulator.base_url}/_sim/receive-fax", data=upload) as response:
        second = (await response.json())["id"]
    async with http.post(
        f"{simulator.base_url}/_sim/receive-fax", json={"from": "", "pdf_base64": b64(sample_pdf(2))}
    ) as response:
        third = (await response.json())["id"]
    assert simulator.received[first].csid == "ACME"
    assert simulator.received[second].pages == 3
    assert simulator.received[second].from_number == "61755556666"
    assert simulator.received[third].pages == 2 and simulator.received[third].from_number == ""
    async with http.get(f"{simulator.base_url}/_sim/faxes") as response:
        listing = await response.json()
    assert [f["ID"] for f in listing["received"]] == [first, second, third]


async def test_admin_controls(simulator: GoFaxSimulator, http: aiohttp.ClientSession) -> None:
    base = f"{simulator.base_url}/_sim"

    async def post(path: str, **data: Any) -> tuple[int, Any]:
        async with http.post(f"{base}/{path}", data=data) as response:
            return response.status, await response.json()

    assert (
        await post(
            "sms-reply",
            **{"from": "61412345678", "to": "61400000000", "message": "Yes", "message_id": "77001"},
        )
    )[0] == 200
    assert next(iter(simulator.replies.values())).message_id == 77001
    assert (await post("sms-reply", message="no sender"))[0] == 400

    status, body = await post("fault", endpoint="GET /v1.0/SMS/*", kind="429", retry_after="4", times="0")
    assert status == 200 and body["faults"][0]["times"] is None
    assert simulator.faults[0].kind == "429"
    assert (await post("fault", kind="meteor"))[0] == 400
    async with http.delete(f"{base}/fault") as response:
        assert response.status == 200 and not simulator.faults

    assert (await post("number", number="61299999999", behaviour="no_answer"))[0] == 200
    assert simulator.behaviours == {"61299999999": "no_answer"}
    assert (await post("number", number="61299999999", behaviour="bogus"))[0] == 400

    assert (await post("token", token="fresh-token"))[0] == 200
    assert simulator.token == "fresh-token"
    assert (await post("token"))[0] == 400

    before = simulator.now()
    assert (await post("advance", seconds="120"))[0] == 200
    assert simulator.now() - before >= 120


async def test_admin_listings(simulator: GoFaxSimulator, http: aiohttp.ClientSession) -> None:
    async with GoFaxClient(simulator.base_url or "", simulator.token) as gofax:
        fax_id = (await gofax.send_fax(NUMBER, [("a.pdf", PDF)])).id
        sms_id = (await gofax.send_sms(["61412345678"], "ACME", "hi")).id
    for path in ("requests", "faxes", "sms", "webhooks"):
        async with http.get(f"{simulator.base_url}/_sim/{path}") as response:
            assert response.status == 200, path
            body = await response.json()
            assert simulator.token not in await response.text()
        if path == "requests":
            assert body[0]["documents"][0]["sha256"] == hashlib.sha256(PDF).hexdigest()
            assert all(not r["path"].startswith("/_sim") for r in body)
        if path == "faxes":
            assert body["sent"][0]["ID"] == fax_id and body["sent"][0]["Status"] == "Sent"
        if path == "sms":
            assert body["sent"][0]["MessageID"] == sms_id


# =============================================================================== running


async def test_serve_on_a_free_port_with_redacted_access_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    sim = GoFaxSimulator(token="tok-abcdef")
    runner = await serve(sim, "127.0.0.1", 0)
    try:
        assert sim.base_url and not sim.base_url.endswith(":0")
        async with GoFaxClient(sim.base_url, sim.token) as gofax:
            assert await gofax.check_access()
    finally:
        await runner.cleanup()
    assert "token=***" in caplog.text and "tok-abcdef" not in caplog.text


async def test_run_standalone_until_cancelled(
    unused_tcp_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    task = asyncio.create_task(run_standalone("127.0.0.1", unused_tcp_port, token="t-1234"))
    url = f"http://127.0.0.1:{unused_tcp_port}"
    async with GoFaxClient(url, "t-1234") as gofax:
        for _ in range(100):
            try:
                assert await gofax.check_access()
                break
            except Exception:
                await asyncio.sleep(0.02)
        else:
            raise AssertionError("standalone simulator did not start")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    printed = capsys.readouterr().out
    assert f"http://127.0.0.1:{unused_tcp_port}/_sim/receive-fax" in printed
    assert "API token: t-1234" in printed
