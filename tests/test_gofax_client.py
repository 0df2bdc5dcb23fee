"""The GoFax client: lenient models, every endpoint against the simulator over real loopback
HTTP, and the classification of every failure (DESIGN.md "Error classes")."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import pypdf
import pytest
from aiohttp import web
from conftest import SIM_TOKEN
from daemon import until

from bridge.gofax import models
from bridge.gofax.client import GoFaxClient, parse_retry_after
from bridge.gofax.errors import GoFaxError, Permanent, Transient, Unauthorised, Uncertain
from bridge.gofax.samplepdf import sample_pdf
from bridge.gofax.simulator import GoFaxSimulator, RedactingAccessLogger
from bridge.redact import redact, register_secret

NUMBER = "61298765432"


def client_for(sim: GoFaxSimulator, *, timeout: float = 2, **kw: Any) -> GoFaxClient:
    assert sim.base_url
    return GoFaxClient(sim.base_url, sim.token, timeout_seconds=timeout, **kw)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# =============================================================================== models


class TestLenientScalars:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (True, True),
            ("true", True),
            ("True", True),
            (" TRUE ", True),
            (1, True),
            ("1", True),
            (False, False),
            ("false", False),
            ("False", False),
            (0, False),
            (None, None),
            ("maybe", None),
            ([], None),
        ],
    )
    def test_bool(self, value: Any, expected: bool | None) -> None:
        assert models.as_bool(value) is expected

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (3, 3),
            ("3", 3),
            (" 12 ", 12),
            (3.0, 3),
            ("4.0", 4),
            (3.5, None),
            ("x", None),
            (None, None),
            (True, None),
            ("", None),
        ],
    )
    def test_int(self, value: Any, expected: int | None) -> None:
        assert models.as_int(value) == expected

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("2026-12-04T10:10:45", datetime(2026, 12, 4, 10, 10, 45, tzinfo=UTC)),
            ("2026-12-04T10:10:45Z", datetime(2026, 12, 4, 10, 10, 45, tzinfo=UTC)),
            ("2026-12-04T20:10:45+10:00", datetime(2026, 12, 4, 10, 10, 45, tzinfo=UTC)),
            ("2026-12-04T10:10:45.1234567", datetime(2026, 12, 4, 10, 10, 45, 123456, tzinfo=UTC)),
            ("/Date(1764843045000)/", datetime(2025, 12, 4, 10, 10, 45, tzinfo=UTC)),
            (None, None),
            ("", None),
            ("yesterday", None),
            (12345, None),
        ],
    )
    def test_timestamp(self, value: Any, expected: datetime | None) -> None:
        assert models.as_utc(value) == expected


class TestParsers:
    def test_fax_status_odd_but_valid(self) -> None:
        status = models.parse_send_fax_status(
            {
                "success": "True",
                "message": "",
                "Response": {
                    "id": "41340078",
                    "SENDTO": 61298765432,
                    "Status": "sent ",
                    "Message": "Fax successfully sent",
                    "Pages": "3",
                    "Attempts": 1.0,
                    "SubmittedUtc": "2026-12-04T10:10:45",
                    "CompletedUtc": None,
                    "SomethingNew": {"nested": True},
                },
            }
        )
        assert status.id == 41340078
        assert status.send_to == "61298765432"
        assert status.pages == 3 and status.attempts == 1
        assert status.is_final and status.is_success
        assert status.submitted_utc == datetime(2026, 12, 4, 10, 10, 45, tzinfo=UTC)
        assert status.completed_utc is None and status.client_reference is None

    def test_fax_status_minimal(self) -> None:
        status = models.parse_send_fax_status({"Success": True, "Response": {"ID": 7}})
        assert status.status == "" and not status.is_final and status.pages is None

    @pytest.mark.parametrize(
        ("text", "final", "success"),
        [
            ("Queued", False, False),
            ("Sending", False, False),
            ("Failed", True, False),
            ("FAILED", True, False),
        ],
    )
    def test_fax_status_finality(self, text: str, final: bool, success: bool) -> None:
        status = models.parse_send_fax_status({"Response": {"ID": 1, "Status": text}})
        assert (status.is_final, status.is_success) == (final, success)

    def test_missing_id_is_a_parse_error(self) -> None:
        with pytest.raises(models.ParseError):
            models.parse_send_fax_status({"Success": True, "Response": {"Status": "Sent"}})
        with pytest.raises(models.ParseError):
            models.parse_send_fax({"Success": True, "Response": "abc"})

    def test_submit_result_documents_beside_or_inside_response(self) -> None:
        beside = models.parse_send_fax(
            {
                "Success": True,
                "Message": "ok",
                "Response": "41",
                "Documents": [{"Filename": "a.pdf", "Message": "Initialised", "Submitted": "true"}],
            }
        )
        inside = models.parse_send_fax(
            {"Success": True, "Response": {"ID": 41, "Documents": [{"FileName": "a.pdf", "Submitted": 1}]}}
        )
        assert beside.id == inside.id == 41
        assert beside.documents[0] == models.DocumentResult("a.pdf", "Initialised", True)
        assert inside.documents[0].submitted is True

    def test_received_faxes_withheld_caller(self) -> None:
        faxes = models.parse_received_faxes(
            {
                "Success": True,
                "Response": [
                    {
                        "ID": 9001,
                        "FromNumber": None,
                        "ToNumber": NUMBER,
                        "CSID": None,
                        "Pages": "2",
                        "ReceivedUtc": "2026-12-04T09:00:00",
                    },
                    {"ID": "9002", "FromNumber": " 61733334444 ", "Retrieved": "False"},
                    "not an object",
                ],
            }
        )
        assert [f.id for f in faxes] == [9001, 9002]
        assert faxes[0].from_number == "" and faxes[0].csid == "" and faxes[0].pages == 2
        assert faxes[0].retrieved is None and faxes[1].retrieved is False
        assert faxes[1].from_number == "61733334444"

    def test_received_faxes_null_response_is_empty(self) -> None:
        assert models.parse_received_faxes({"Success": True, "Response": None}) == []

    def test_fax_document_tolerates_line_breaks_and_missing_padding(self) -> None:
        data = b"%PDF-1.4 any bytes \x00\xff"
        encoded = base64.b64encode(data).decode().rstrip("=")
        wrapped = "\n".join(encoded[i : i + 8] for i in range(0, len(encoded), 8))
        document = models.parse_fax_document({"Response": {"FileName": "9001.pdf", "Data": wrapped}})
        assert document.data == data
        assert document.content_type == "application/pdf"
        with pytest.raises(models.ParseError):
            models.parse_fax_document({"Response": {"Data": "!!not base64!!"}})

    def test_validation_errors_as_objects(self) -> None:
        envelope = models.parse_envelope(
            {
                "Success": "false",
                "Message": "Invalid",
                "ValidationErrors": [
                    "plain text",
                    {"PropertyName": "Documents[0].Filename", "ErrorMessage": "Unknown extension"},
                    {"Message": "only a message"},
                    {"Code": 12, "Detail": "x"},
                ],
            }
        )
        assert not envelope.success
        assert envelope.validation_errors == (
            "plain text",
            "Documents[0].Filename: Unknown extension",
            "only a message",
            "Code=12; Detail=x",
        )

    def test_validation_errors_as_model_state(self) -> None:
        envelope = models.parse_envelope(
            {"Success": False, "ValidationErrors": {"SendTo": ["must be digits", "too short"]}}
        )
        assert envelope.validation_errors == ("SendTo: must be digits", "SendTo: too short")

    @pytest.mark.parametrize("body", [True, "true", {"Success": True, "Response": True}, None])
    def test_check_access_true(self, body: Any) -> None:
        assert models.parse_check_access(body) is True

    def test_check_access_false(self) -> None:
        assert models.parse_check_access(False) is False
        assert models.parse_check_access({"Success": False}) is False

    @pytest.mark.parametrize(
        ("status", "outcome"),
        [
            ("Initialised", "pending"),
            ("Sent to carrier for delivery", "pending"),
            ("Message successfully delivered", "sent"),
            ("MESSAGE SUCCESSFULLY DELIVERED", "sent"),
            ("Message reply received ok", "sent"),
            ("Failed to deliver the message", "failed"),
            ("Message not delivered in allowable time frame", "failed"),
            ("The destination mobile number is invalid.", "failed"),
            ("Insufficient credit. Please check your account status", "failed"),
            ("Account is unverified", "failed"),
            ("cancelled", "failed"),
            ("Error sending message", "failed"),
            ("Something brand new", "pending"),
            ("", "pending"),
        ],
    )
    def test_sms_outcome(self, status: str, outcome: str) -> None:
        sms = models.parse_sms_status({"Response": {"MessageID": "77", "Status": status}})
        assert sms.message_id == 77
        assert sms.outcome == outcome
        assert sms.is_final == (outcome != "pending")

    def test_sms_replies(self) -> None:
        replies = models.parse_sms_replies(
            {
                "Success": True,
                "Response": [
                    {
                        "ID": 555,
                        "MessageID": None,
                        "From": "61412345678",
                        "To": "61400000000",
                        "Message": "Yes",
                        "ReceivedUtc": "2026-12-04T09:05:00",
                    },
                    {"ID": "556", "MessageID": "77", "From": "61412345678", "Message": None},
                ],
            }
        )
        assert replies[0].message_id is None and replies[1].message_id == 77
        assert replies[1].message == "" and replies[1].received_utc is None


class TestRetryAfter:
    def test_seconds(self) -> None:
        assert parse_retry_after("7") == 7.0
        assert parse_retry_after(" 1.5 ") == 1.5
        assert parse_retry_after("-3") == 0.0

    def test_http_date(self) -> None:
        now = datetime(2026, 12, 4, 10, 0, 0, tzinfo=UTC)
        date = format_datetime(now + timedelta(seconds=90), usegmt=True)
        assert parse_retry_after(date, now=now) == 90.0

    @pytest.mark.parametrize("value", [None, "", "soon"])
    def test_bad(self, value: str | None) -> None:
        assert parse_retry_after(value) is None


# =============================================================================== happy paths


async def test_check_access(simulator: GoFaxSimulator) -> None:
    assert simulator.token == SIM_TOKEN
    async with client_for(simulator) as gofax:
        assert await gofax.check_access() is True
    async with GoFaxClient(simulator.base_url or "", "wrong-token") as gofax:
        assert await gofax.check_access() is False


async def test_send_fax_round_trips_documents_in_order(simulator: GoFaxSimulator) -> None:
    pdf = sample_pdf(2)
    documents = [
        ("cover.txt", "Hello\r\nWorld ✓".encode()),
        ("letter.pdf", pdf),
        ("scan.tiff", bytes(range(256)) * 10),
    ]
    async with client_for(simulator) as gofax:
        result = await gofax.send_fax(
            NUMBER,
            documents,
            subject="Quarterly",
            client_reference="job-42",
            callback_url="http://example.invalid/cb",
        )
    assert result.id in simulator.faxes
    assert [d.filename for d in result.documents] == ["cover.txt", "letter.pdf", "scan.tiff"]
    assert all(d.submitted for d in result.documents)
    fax = simulator.faxes[result.id]
    assert fax.documents == documents  # byte-exact, order kept
    assert fax.pages == 1 + 2 + 1
    assert (fax.subject, fax.client_reference, fax.callback_url) == (
        "Quarterly",
        "job-42",
        "http://example.invalid/cb",
    )
    request = simulator.requests[-1]
    assert request.documents == documents
    assert request.headers["Content-Type"].startswith("application/json")
    assert request.headers["Accept"] == "application/json"
    assert "token" not in request.query  # the simulator strips it from its log


async def test_send_fax_omits_unset_optional_fields(simulator: GoFaxSimulator) -> None:
    async with client_for(simulator) as gofax:
        await gofax.send_fax(NUMBER, [("a.pdf", b"%PDF-1.4")])
    assert set(simulator.requests[-1].json) == {"SendTo", "Documents"}


async def test_header_auth(simulator: GoFaxSimulator) -> None:
    async with client_for(simulator, auth="header") as gofax:
        assert await gofax.check_access()
        result = await gofax.send_fax(NUMBER, [("a.pdf", b"%PDF-1.4")])
        assert (await gofax.get_fax_status(result.id)).is_success
    assert all("token" not in r.query and "x-api-token" not in r.headers for r in simulator.requests)


async def test_fax_status_and_resend(simulator: GoFaxSimulator) -> None:
    simulator.set_number_behaviour("61299999999", "busy")
    async with client_for(simulator) as gofax:
        sent = await gofax.send_fax("61299999999", [("a.pdf", b"%PDF-1.4")], client_reference="job-7")
        status = await gofax.get_fax_status(sent.id)
        assert (status.id, status.status, status.message) == (sent.id, "Failed", "Busy")
        assert status.is_final and not status.is_success
        assert status.client_reference == "job-7" and status.send_to == "61299999999"
        assert status.attempts == 3 and status.pages == 1
        assert status.submitted_utc is not None and status.completed_utc is not None
        simulator.set_number_behaviour("61299999999", "ok")
        new_id = await gofax.resend_fax(sent.id)
        assert new_id != sent.id
        assert (await gofax.get_fax_status(new_id)).is_success
    assert simulator.faxes[new_id].resent_from == sent.id
    assert simulator.faxes[new_id].documents == simulator.faxes[sent.id].documents


async def test_received_fax_flow(simulator: GoFaxSimulator) -> None:
    fax_id = simulator.receive_fax(from_number="61733334444", csid="ACME LEGAL", pages=2)
    withheld = simulator.receive_fax(from_number="", csid="")
    async with client_for(simulator) as gofax:
        waiting = await gofax.unretrieved_faxes()
        assert [f.id for f in waiting] == [fax_id, withheld]
        first = waiting[0]
        assert (first.from_number, first.to_number, first.csid, first.pages) == (
            "61733334444",
            NUMBER,
            "ACME LEGAL",
            2,
        )
        assert first.received_utc is not None and first.retrieved is None
        assert waiting[1].from_number == "" and waiting[1].csid == ""

        document = await gofax.fax_document(fax_id)
        assert document.filename == f"{fax_id}.pdf"
        assert document.content_type == "application/pdf"
        assert document.data == simulator.received[fax_id].pdf
        assert len(pypdf.PdfReader(io.BytesIO(document.data)).pages) == 2

        assert [f.id for f in await gofax.unretrieved_faxes()] == [withheld]
        details = {f.id: f.retrieved for f in await gofax.received_faxes(NUMBER)}
        assert details == {fax_id: True, withheld: False}


async def test_sms_flow(simulator: GoFaxSimulator) -> None:
    async with client_for(simulator) as gofax:
        result = await gofax.send_sms(["61412345678"], "FaxBridge", "See you at 3", client_reference="job-9")
        assert result.message == "SMS Submitted"
        status = await gofax.get_sms_status(result.id)
        assert status.message_id == result.id
        assert status.outcome == "sent" and status.status == "Message successfully delivered"
        assert status.sender == "FaxBridge" and status.message == "See you at 3"
        reply_id = simulator.sms_reply("61412345678", "61400000000", "Yes", message_id=result.id)
        simulator.sms_reply("61412345679", "61400000000", "No")
        replies = await gofax.sms_replies("61400000000")
        assert len(replies) == 2 and replies[0].id == reply_id
        assert (replies[0].message_id, replies[0].from_number, replies[0].message) == (
            result.id,
            "61412345678",
            "Yes",
        )
        assert replies[1].message_id is None
    assert simulator.sms[result.id].client_reference == "job-9"


async def test_send_sms_accepts_a_single_string(simulator: GoFaxSimulator) -> None:
    async with client_for(simulator) as gofax:
        result = await gofax.send_sms("61412345678", "FaxBridge", "hi")
    assert simulator.sms[result.id].to == ["61412345678"]


async def test_caller_supplied_session_is_used_and_left_open(simulator: GoFaxSimulator) -> None:
    async with aiohttp.ClientSession() as session:
        async with client_for(simulator, session=session) as gofax:
            assert await gofax.check_access()
            simulator.inject("PUT /v1.0/SendFax", "drop")
            with pytest.raises(Uncertain):  # no tracing available: conservative
                await gofax.send_fax(NUMBER, [("a.pdf", b"x")])
        assert not session.closed


@pytest.mark.parametrize(
    ("exc", "sent", "submission", "expected"),
    [
        # A total timeout while still resolving/connecting: tracing says nothing was written.
        (TimeoutError(), False, True, Transient),
        (TimeoutError(), True, True, Uncertain),
        (TimeoutError(), None, True, Uncertain),  # unknown (caller's session): conservative
        (TimeoutError(), True, False, Transient),
        (aiohttp.ConnectionTimeoutError(), None, True, Transient),
        (aiohttp.ServerDisconnectedError(), True, True, Uncertain),
        (aiohttp.ClientPayloadError("truncated"), True, True, Uncertain),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), True, True, Uncertain),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), True, False, Transient),
    ],
)
def test_classification_of_lost_answers(
    exc: BaseException,
    sent: bool | None,
    submission: bool,
    expected: type[GoFaxError],
) -> None:
    from bridge.gofax.client import _Call

    gofax = GoFaxClient("http://127.0.0.1:9", SIM_TOKEN)
    call = _Call("PUT", "/v1.0/SendFax", submission=submission, what="the fax")
    assert type(gofax._lost(call, exc, sent)) is expected


def test_constructor_refuses_a_non_http_url() -> None:
    with pytest.raises(ValueError, match="http"):
        GoFaxClient("sandbox", "t")


# =============================================================================== refusals


async def test_success_false_is_permanent_with_validation_errors(
    simulator: GoFaxSimulator,
) -> None:
    async with client_for(simulator) as gofax:
        with pytest.raises(Permanent) as caught:
            await gofax.send_fax("0298765432x", [("notes", b"x"), ("ok.pdf", b"")])
    error = caught.value
    assert error.http_status == 400
    assert "request is invalid" in error.message
    assert any("SendTo" in item for item in error.validation_errors)
    assert any("Documents[0] (notes)" in item for item in error.validation_errors)
    assert any("Documents[1] (ok.pdf)" in item for item in error.validation_errors)
    assert str(error).startswith("GoFax refused PUT /v1.0/SendFax (400 Bad Request)")
    assert not simulator.faxes


async def test_unauthorised_then_fixed_token(simulator: GoFaxSimulator) -> None:
    async with client_for(simulator) as gofax:
        simulator.token = "rotated-token-2027"  # the old token "expired"
        with pytest.raises(Unauthorised) as caught:
            await gofax.get_fax_status(1)
        assert caught.value.http_status == 401
        assert "token is wrong or expired" in str(caught.value)
        with pytest.raises(Unauthorised):
            await gofax.send_fax(NUMBER, [("a.pdf", b"x")])
        assert await gofax.check_access() is False
        gofax.set_token("rotated-token-2027")
        assert await gofax.check_access() is True
        assert (await gofax.send_fax(NUMBER, [("a.pdf", b"x")])).id in simulator.faxes


async def test_another_accounts_fax_is_unauthorised(simulator: GoFaxSimulator) -> None:
    async with client_for(simulator) as gofax:
        with pytest.raises(Unauthorised, match="belongs to another account"):
            await gofax.get_fax_status(999)


@pytest.mark.parametrize("status", [400, 404, 409, 422])
async def test_other_4xx_is_permanent(simulator: GoFaxSimulator, status: int) -> None:
    simulator.inject("GET /v1.0/SendFax/*", "status", status=status)
    async with client_for(simulator) as gofax:
        with pytest.raises(Permanent) as caught:
            await gofax.get_fax_status(1)
    assert caught.value.http_status == status


# =============================================================================== transient


async def test_429_with_retry_after(simulator: GoFaxSimulator) -> None:
    simulator.inject("GET /v1.0/SendFax/*", "429", retry_after=7)
    async with client_for(simulator) as gofax:
        with pytest.raises(Transient) as caught:
            await gofax.get_fax_status(1)
    assert caught.value.retry_after == 7
    assert caught.value.http_status == 429
    assert str(caught.value) == (
        "GoFax answered 429 Too Many Requests to GET /v1.0/SendFax/1 (will retry after 7 s)"
    )


async def test_429_on_a_submission_is_transient(simulator: GoFaxSimulator) -> None:
    simulator.inject("PUT /v1.0/SendFax", "429")
    async with client_for(simulator) as gofax:
        with pytest.raises(Transient) as caught:
            await gofax.send_fax(NUMBER, [("a.pdf", b"x")])
    assert caught.value.retry_after == 2
    assert not simulator.faxes


@pytest.mark.parametrize("status", [408, 502, 503, 504])
async def test_gateway_statuses_are_transient_even_for_submissions(
    simulator: GoFaxSimulator,
    status: int,
) -> None:
    simulator.inject("PUT /v1.0/SendFax", "status", status=status, retry_after=3)
    async with client_for(simulator) as gofax:
        with pytest.raises(Transient) as caught:
            await gofax.send_fax(NUMBER, [("a.pdf", b"x")])
    assert caught.value.http_status == status and caught.value.retry_after == 3


async def test_503_message(simulator: GoFaxSimulator) -> None:
    simulator.inject("GET /v1.0/SendFax/*", "status", status=503)
    async with client_for(simulator) as gofax:
        with pytest.raises(Transient) as caught:
            await gofax.get_fax_status(123)
    assert str(caught.value) == (
        "GoFax answered 503 Service Unavailable to GET /v1.0/SendFax/123 (will retry)"
    )
    assert caught.value.retry_after is None


async def test_500_on_a_read_is_transient(simulator: GoFaxSimulator) -> None:
    simulator.inject("GET /v1.0/ReceiveFaxes/*", "status", status=500)
    async with client_for(simulator) as gofax:
        with pytest.raises(Transient):
            await gofax.unretrieved_faxes()


@pytest.mark.parametrize(
    ("pattern", "submit"),
    [
        ("PUT /v1.0/SendFax", lambda g: g.send_fax(NUMBER, [("a.pdf", b"x")])),
        ("PUT /v1.0/SMS", lambda g: g.send_sms(["61412345678"], "ACME", "hi")),
        ("POST /v1.0/SendFax/*/Resend", lambda g: g.resend_fax(41340001)),
    ],
)
async def test_500_on_a_submission_is_uncertain(
    simulator: GoFaxSimulator,
    pattern: str,
    submit: Callable[[GoFaxClient], Any],
) -> None:
    async with client_for(simulator) as gofax:
        if "Resend" in pattern:
            await gofax.send_fax(NUMBER, [("a.pdf", b"x")])
        simulator.inject(pattern, "status", status=500)
        with pytest.raises(Uncertain) as caught:
            await submit(gofax)
    assert "may or may not have been created" in str(caught.value)
    assert caught.value.http_status == 500


async def test_connection_refused_is_transient() -> None:
    async with GoFaxClient(f"http://127.0.0.1:{closed_port()}", SIM_TOKEN) as gofax:
        with pytest.raises(Transient, match="nothing was sent"):
            await gofax.send_fax(NUMBER, [("a.pdf", b"x")])
        with pytest.raises(Transient, match="Could not reach GoFax"):
            await gofax.get_fax_status(1)


async def test_dns_failure_is_transient() -> None:
    # Whether the resolver fails fast or hangs until the timeout, nothing was sent.
    async with GoFaxClient("http://gofax.invalid", SIM_TOKEN, timeout_seconds=1) as gofax:
        with pytest.raises(Transient, match="nothing was sent"):
            await gofax.send_fax(NUMBER, [("a.pdf", b"x")])


# =============================================================================== lost answers


async def test_timeout_on_a_submission_is_uncertain_and_the_fax_exists(
    simulator: GoFaxSimulator,
) -> None:
    simulator.inject("PUT /v1.0/SendFax", "delay", delay_seconds=0.8)
    async with client_for(simulator, timeout=0.3) as gofax:
        with pytest.raises(Uncertain) as caught:
            await gofax.send_fax(NUMBER, [("a.pdf", b"x")])
    assert "did not answer PUT /v1.0/SendFax within 0.3 s" in str(caught.value)
    await until(lambda: len(simulator.faxes) == 1)


async def test_timeout_on_a_read_is_transient(simulator: GoFaxSimulator) -> None:
    simulator.inject("GET /v1.0/SendFax/*", "delay", delay_seconds=0.8)
    async with client_for(simulator, timeout=0.3) as gofax:
        with pytest.raises(Transient, match=r"did not answer GET /v1\.0/SendFax/5"):
            await gofax.get_fax_status(5)


async def test_drop_before_processing_on_a_submission_is_uncertain(
    simulator: GoFaxSimulator,
) -> None:
    # The client cannot tell "dropped before processing" from "dropped after": once the
    # request was written, a lost answer is uncertain. Here GoFax did NOT create the fax.
    simulator.inject("PUT /v1.0/SendFax", "drop")
    async with client_for(simulator) as gofax:
        with pytest.raises(Uncertain, match="connection to GoFax broke"):
            await gofax.send_fax(NUMBER, [("a.pdf", b"x")])
    await asyncio.sleep(0.1)
    assert not simulator.faxes
    assert len(simulator.requests) == 1  # and the client did not try again


async def test_drop_after_processing_is_uncertain_and_not_silently_resent(
    simulator: GoFaxSimulator,
) -> None:
    # aiohttp resends an idempotent method (PUT) once after a disconnect; for SendFax that
    # would fax twice. The client must stop it.
    simulator.inject("PUT /v1.0/SendFax", "drop_after_processing")
    async with client_for(simulator) as gofax:
        with pytest.raises(Uncertain):
            await gofax.send_fax(NUMBER, [("a.pdf", b"x")])
    assert len(simulator.faxes) == 1
    assert len(simulator.requests) == 1


async def test_drop_on_a_sms_submission_is_uncertain(simulator: GoFaxSimulator) -> None:
    simulator.inject("PUT /v1.0/SMS", "drop_after_processing")
    async with client_for(simulator) as gofax:
        with pytest.raises(Uncertain, match="the SMS may or may not have been created"):
            await gofax.send_sms(["61412345678"], "ACME", "hi")
    assert len(simulator.sms) == 1


async def test_drop_on_a_read_is_transient(simulator: GoFaxSimulator) -> None:
    simulator.inject("GET /v1.0/ReceiveFaxes/UnretrievedFaxes", "drop", times=5)
    async with client_for(simulator) as gofax:
        with pytest.raises(Transient):
            await gofax.unretrieved_faxes()


# =============================================================================== odd servers


def odd_app(status: int, body: bytes, content_type: str = "application/json") -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(
            status=status,
            body=body,
            content_type=content_type,
            headers={"Location": "http://elsewhere.invalid/"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


@pytest.mark.parametrize("body", [b"<html>maintenance</html>", b"{not json"])
async def test_non_json_2xx(aiohttp_server: Any, body: bytes) -> None:
    server = await aiohttp_server(odd_app(200, body, "text/html"))
    async with GoFaxClient(str(server.make_url("")), SIM_TOKEN) as gofax:
        with pytest.raises(Transient, match="not JSON"):
            await gofax.get_fax_status(1)
        with pytest.raises(Uncertain, match="not JSON"):
            await gofax.send_fax(NUMBER, [("a.pdf", b"x")])


async def test_unexpected_shape_2xx(aiohttp_server: Any) -> None:
    server = await aiohttp_server(odd_app(200, b'{"Success": true, "Response": {"no": "id"}}'))
    async with GoFaxClient(str(server.make_url("")), SIM_TOKEN) as gofax:
        with pytest.raises(Transient, match="unexpected shape"):
            await gofax.get_fax_status(1)
        with pytest.raises(Uncertain, match="its id is unknown"):
            await gofax.send_fax(NUMBER, [("a.pdf", b"x")])


async def test_success_false_with_200_and_object_errors(aiohttp_server: Any) -> None:
    body = (
        b'{"Success": false, "Message": "Invalid document", "ValidationErrors": '
        b'[{"PropertyName": "Documents[0]", "ErrorMessage": "Cannot convert"}]}'
    )
    server = await aiohttp_server(odd_app(200, body))
    async with GoFaxClient(str(server.make_url("")), SIM_TOKEN) as gofax:
        with pytest.raises(Permanent) as caught:
            await gofax.send_fax(NUMBER, [("a.pdf", b"x")])
    assert caught.value.message == "Invalid document"
    assert caught.value.validation_errors == ["Documents[0]: Cannot convert"]
    assert str(caught.value) == (
        "GoFax refused PUT /v1.0/SendFax (200 OK): Invalid document — Documents[0]: Cannot convert"
    )


async def test_status_beats_success_false(aiohttp_server: Any) -> None:
    server = await aiohttp_server(odd_app(503, b'{"Success": false, "Message": "Busy"}'))
    async with GoFaxClient(str(server.make_url("")), SIM_TOKEN) as gofax:
        with pytest.raises(Transient):
            await gofax.send_fax(NUMBER, [("a.pdf", b"x")])


async def test_redirect_is_not_followed(aiohttp_server: Any) -> None:
    server = await aiohttp_server(odd_app(302, b""))
    async with GoFaxClient(str(server.make_url("")), SIM_TOKEN) as gofax:
        with pytest.raises(Permanent, match="redirect"):
            await gofax.get_fax_status(1)


async def test_html_error_page_is_quoted_briefly(aiohttp_server: Any) -> None:
    server = await aiohttp_server(odd_app(404, b"<h1>Not\n Found</h1>", "text/html"))
    async with GoFaxClient(str(server.make_url("")), SIM_TOKEN) as gofax:
        with pytest.raises(Permanent, match=r"\(404 Not Found\): <h1>Not Found</h1>"):
            await gofax.get_fax_status(1)


# =============================================================================== secrecy


async def test_token_never_leaks(
    simulator: GoFaxSimulator,
    caplog: pytest.LogCaptureFixture,
    aiohttp_server: Any,
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[GoFaxError] = []

    async def collect(call: Any) -> None:
        try:
            await call
        except GoFaxError as exc:
            errors.append(exc)

    simulator.inject("*", "status", status=500)
    simulator.inject("*", "429")
    simulator.inject("PUT /v1.0/SendFax", "drop")
    simulator.inject("PUT /v1.0/SendFax", "delay", delay_seconds=0.6)
    simulator.inject("GET *", "status", status=404)
    async with client_for(simulator, timeout=0.3) as gofax:
        for _ in range(6):
            await collect(gofax.send_fax(NUMBER, [("a.pdf", b"x")]))
        await collect(gofax.get_fax_status(1))
        await collect(gofax.send_fax("bad", []))
    async with GoFaxClient(f"http://127.0.0.1:{closed_port()}", SIM_TOKEN) as gofax:
        await collect(gofax.get_fax_status(1))
    odd = await aiohttp_server(
        odd_app(400, f"token={SIM_TOKEN} echoed".encode(), "text/plain"),
        access_log_class=RedactingAccessLogger,
    )
    async with GoFaxClient(str(odd.make_url("")), SIM_TOKEN) as gofax:
        await collect(gofax.get_fax_status(1))
    simulator.token = "another"
    async with client_for(simulator) as gofax:
        await collect(gofax.get_fax_status(1))

    kinds = {type(e) for e in errors}
    assert kinds == {Transient, Uncertain, Permanent, Unauthorised}
    for error in errors:
        for text in (str(error), repr(error), *map(str, error.args)):
            assert SIM_TOKEN not in text
        # The aiohttp exception (whose text may quote the URL) is not chained.
        assert error.__cause__ is None
        assert error.__context__ is None or error.__suppress_context__
    assert SIM_TOKEN not in caplog.text
    assert "GoFaxClient" in repr(gofax) and SIM_TOKEN not in repr(gofax)


def test_error_text_is_redacted() -> None:
    register_secret("pa55-word-xyz")
    error = Transient("GET https://h/v1.0/SendFax/1?token=abc-123&x=1 with pa55-word-xyz")
    assert str(error) == "GET https://h/v1.0/SendFax/1?token=***&x=1 with ***"
    assert "abc-123" not in repr(error)
    permanent = Permanent("refused", message="bad token=zzz", validation_errors=["x-api-token: q1"])
    assert permanent.message == "bad token=***"
    assert permanent.validation_errors == ["x-api-token: ***"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET /x?token=0b3f-1&a=2", "GET /x?token=***&a=2"),
        ("url='https://h/p?token=abc' next", "url='https://h/p?token=***' next"),
        ("https://h/cb?access_token=abc&x=1", "https://h/cb?access_token=***&x=1"),
        ("{'x-api-token': 'abc-def', 'Accept': 'json'}", "{'x-api-token': '***', 'Accept': 'json'}"),
        ("X-Api-Token: abc-def\r\nHost: h", "X-Api-Token: ***\r\nHost: h"),
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: Basic ***"),
        ("{'Authorization': 'Basic dXNlcjpwYXNz'}", "{'Authorization': 'Basic ***'}"),
        ("nothing secret here", "nothing secret here"),
    ],
)
def test_redact_patterns(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redact_given_and_registered_secrets() -> None:
    assert redact("user hunter22 and hunter22", ["hunter22"]) == "user *** and ***"
    assert redact("short abc stays", ["abc"]) == "short abc stays"
    assert redact("p%40ss%21word in a URL", ["p@ss!word"]) == "*** in a URL"
    register_secret("registered-secret-99")
    assert redact("see registered-secret-99") == "see ***"
    register_secret("")  # ignored
    assert redact("") == ""


def test_the_fax_body_is_the_json_gofax_expects() -> None:
    from bridge.gofax.client import _FaxBody

    documents = [('brief "A"\\ü.pdf', b"%PDF-1.4 \x00\xff"), ("b.txt", b"")]
    body = _FaxBody({"SendTo": "61298765432", "Subject": 'Re: "x" — y'}, documents)
    text = body.decode()
    assert json.loads(text) == {
        "SendTo": "61298765432", "Subject": 'Re: "x" — y',
        "Documents": [{"Filename": name, "Data": base64.b64encode(data).decode()}
                      for name, data in documents]}
    assert body.size == len(text.encode())


@pytest.mark.parametrize("sizes", [[0], [1], [2], [3], [196_607, 196_608, 196_609], [500_001, 7]])
async def test_the_fax_body_is_streamed_in_pieces_that_add_up(sizes: list[int]) -> None:
    """Written piece by piece (never one base64 text of the whole document), the body is the
    same JSON, exactly as long as the Content-Length it announced."""
    from bridge.gofax.client import _FaxBody

    class Writer:
        def __init__(self) -> None:
            self.pieces: list[bytes] = []

        async def write(self, chunk: bytes) -> None:
            self.pieces.append(bytes(chunk))

    documents = [(f"d{i}.pdf", bytes(range(256)) * (n // 256) + b"x" * (n % 256))
                 for i, n in enumerate(sizes)]
    body = _FaxBody({"SendTo": "61298765432"}, documents)
    writer = Writer()
    await body.write_with_length(writer, body.size)  # type: ignore[arg-type]
    data = b"".join(writer.pieces)
    assert len(data) == body.size
    assert json.loads(data)["Documents"] == [
        {"Filename": name, "Data": base64.b64encode(doc).decode()} for name, doc in documents]
    assert max(map(len, writer.pieces)) <= 4 * 196_608 // 3 + 64  # one piece at a time
    short = Writer()
    await body.write_with_length(short, 10)  # type: ignore[arg-type]
    assert b"".join(short.pieces) == data[:10]
