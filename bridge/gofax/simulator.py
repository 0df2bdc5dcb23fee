"""A faithful GoFax simulator (aiohttp.web) for the sandbox daemon, ``faxbridge sim`` and tests.

It implements every endpoint of shared/gofax-api.md with the documented envelope, answers a
bad token with ``401`` and an empty body, validates submissions the way GoFax does, moves sent
faxes and SMS through their states on a clock that tests can advance, fires form-encoded
webhooks (with Basic auth) when a job reaches a final state or a fax arrives, and can inject
faults: an HTTP status, ``429`` with ``Retry-After``, a delay, a dropped connection before or
after the request was processed.

Assumptions beyond the published API (kept consistent with the client's models):
- An id or number that is not the account's gets ``401`` with an empty body, as GoFax
  documents for "a fax/SMS of another account".
- A per-job ``CallbackURL`` replaces the account's fax-sent webhook for that job (no Basic auth).
- The SMS-sent webhook is one POST per message; ``Recipient`` lists the recipients, comma-separated.
- Resending a fax that is still queued or sending is refused (``Success:false``).

Everything the simulator is asked is kept in ``sim.requests`` (token removed) so tests can
assert on what a client really sent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fnmatch
import hashlib
import hmac
import io
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any, Literal, cast
from urllib.parse import urlencode, urlsplit

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from bridge.gofax.samplepdf import sample_pdf
from bridge.redact import redact

__all__ = [
    "FAX_EXTENSIONS",
    "Fault",
    "GoFaxSimulator",
    "RedactingAccessLogger",
    "RequestRecord",
    "WebhookAttempt",
    "count_pages",
    "run_standalone",
    "serve",
    "usage_text",
]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FaultKind = Literal["status", "429", "delay", "drop", "drop_after_processing"]
FAULT_KINDS: tuple[str, ...] = ("status", "429", "delay", "drop", "drop_after_processing")

FAX_EXTENSIONS = (
    ".pdf",
    ".docx",
    ".doc",
    ".tif",
    ".tiff",
    ".jpg",
    ".jpeg",
    ".png",
    ".txt",
    ".html",
    ".rtf",
    ".xls",
    ".xlsx",
    ".odt",
)

# behaviour → (fax failure message, SMS failure message); None = delivered.
NUMBER_BEHAVIOURS: dict[str, tuple[str | None, str | None]] = {
    "ok": (None, None),
    "busy": ("Busy", "Failed to deliver the message"),
    "no_answer": ("No answer", "Failed to deliver the message"),
    "not_a_fax": ("Not a fax machine", "Failed to deliver the message"),
    "invalid": ("Invalid number", "The destination mobile number is invalid"),
    "undeliverable": ("Failed to send", "Failed to deliver the message"),
    "expired": ("No answer", "Message not delivered in allowable time frame"),
    "no_credit": ("Insufficient credit", "Insufficient credit. Please check your account status"),
}
# GoFax redials busy and unanswered numbers before it gives up.
_REDIALLED = frozenset({"busy", "no_answer", "expired"})

FAX_SENT_MESSAGE = "Fax successfully sent"
SMS_DELIVERED = "Message successfully delivered"
_FINAL_FAX = frozenset({"Sent", "Failed"})
_SECRET_HEADERS = frozenset({"x-api-token", "authorization", "cookie", "proxy-authorization"})
_DIGITS = re.compile(r"\d{8,15}")
_SENDER_ID = re.compile(r"[A-Za-z0-9]{1,11}")

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S"  # GoFax: UTC, no zone suffix


def _timestamp(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime(TIMESTAMP_FORMAT) if value else None


def count_pages(filename: str, data: bytes) -> int:
    """Pages GoFax would bill: the PDF page count, 1 for any other document."""
    if not filename.lower().endswith(".pdf"):
        return 1
    if not data.lstrip().startswith(b"%PDF"):
        return 1  # not a PDF at all (GoFax would still try); spare pypdf the warnings
    try:
        from pypdf import PdfReader  # imported late: only PDFs need it

        return max(1, len(PdfReader(io.BytesIO(data), strict=False).pages))
    except Exception:  # a damaged PDF: fall back to counting page objects
        return max(1, len(re.findall(rb"/Type\s*/Page(?![s\w])", data)))


# --------------------------------------------------------------------------- records


@dataclass
class RequestRecord:
    """One API request as the simulator saw it (token and secret headers removed)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    documents: list[tuple[str, bytes]] | None = None
    at_utc: datetime = field(default_factory=lambda: datetime.now(UTC))

    def summary(self) -> dict[str, Any]:
        """JSON-friendly form with document contents replaced by name, size and sha256."""
        body = self.json
        if isinstance(body, dict) and isinstance(body.get("Documents"), list):
            body = {**body, "Documents": [_summarise_document(d) for d in body["Documents"]]}
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "json": body,
            "documents": [_document_summary(name, data) for name, data in self.documents or ()],
            "at_utc": _timestamp(self.at_utc),
        }


def _document_summary(name: str, data: bytes) -> dict[str, Any]:
    return {"filename": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _summarise_document(item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    data = item.get("Data")
    return {**item, "Data": f"<{len(data)} base64 chars>"} if isinstance(data, str) else item


@dataclass
class SimFax:
    id: int
    send_to: str
    documents: list[tuple[str, bytes]]
    subject: str | None
    client_reference: str | None
    callback_url: str | None
    pages: int
    submitted_at: float  # simulator clock
    submitted_utc: datetime
    status: str = "Queued"
    message: str = "Queued"
    attempts: int = 0
    completed_utc: datetime | None = None
    resent_from: int | None = None
    notified: bool = False

    def to_api(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "SendTo": self.send_to,
            "ClientReference": self.client_reference,
            "Subject": self.subject,
            "Status": self.status,
            "Message": self.message,
            "Pages": self.pages,
            "Attempts": self.attempts,
            "SubmittedUtc": _timestamp(self.submitted_utc),
            "CompletedUtc": _timestamp(self.completed_utc),
        }


@dataclass
class SimSms:
    id: int
    to: list[str]
    sender: str
    body: str
    client_reference: str | None
    submitted_at: float
    submitted_utc: datetime
    status: str = "Initialised"
    final: bool = False
    success: bool | None = None
    notified: bool = False

    def to_api(self) -> dict[str, Any]:
        return {
            "MessageID": self.id,
            "Sender": self.sender,
            "Message": self.body,
            "Issued": _timestamp(self.submitted_utc),
            "IssuedUtc": _timestamp(self.submitted_utc),
            "FromNumber": self.sender if self.sender.isdigit() else "",
            "To": self.to,
            "ClientReference": self.client_reference,
            "Status": self.status,
        }


@dataclass
class SimReceivedFax:
    id: int
    from_number: str
    to_number: str
    csid: str
    pages: int
    pdf: bytes
    received_utc: datetime
    retrieved: bool = False

    def to_api(self, *, with_retrieved: bool) -> dict[str, Any]:
        item: dict[str, Any] = {
            "ID": self.id,
            "FromNumber": self.from_number or None,  # withheld caller id comes as null
            "ToNumber": self.to_number,
            "CSID": self.csid or None,
            "Pages": self.pages,
            "ReceivedUtc": _timestamp(self.received_utc),
        }
        if with_retrieved:
            item["Retrieved"] = self.retrieved
        return item


@dataclass
class SimSmsReply:
    id: int
    message_id: int | None
    from_number: str
    to_number: str
    message: str
    received_utc: datetime

    def to_api(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "MessageID": self.message_id,
            "From": self.from_number,
            "To": self.to_number,
            "Message": self.message,
            "ReceivedUtc": _timestamp(self.received_utc),
        }


@dataclass
class Fault:
    """An injected fault; ``times=None`` means until cleared."""

    pattern: str
    kind: FaultKind
    status: int = 503
    retry_after: float | str | None = None
    delay_seconds: float = 0.0
    times: int | None = 1

    def matches(self, method: str, path: str) -> bool:
        if self.pattern.strip() == "*":
            return True
        want_method, _, want_path = self.pattern.strip().rpartition(" ")
        if want_method and want_method.upper() not in ("*", method.upper()):
            return False
        return fnmatch.fnmatchcase(path.lower(), want_path.lower())


@dataclass
class WebhookAttempt:
    event: str
    url: str  # redacted
    fields: dict[str, str]
    status: int | None = None  # HTTP status, None when not delivered
    error: str | None = None
    at_utc: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class _Webhook:
    event: str
    url: str
    fields: dict[str, str]
    authorization: str | None  # the Authorization header value, when Basic auth applies


class _BadRequest(Exception):
    """A request GoFax would refuse with ``Success:false`` (HTTP 400)."""

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or []


class _NotYours(Exception):
    """An id or number outside the account: GoFax answers 401 with an empty body."""


# --------------------------------------------------------------------------- the simulator


class GoFaxSimulator:
    """See the module docstring. Construct, then serve ``sim.app`` (or call ``serve``)."""

    tick_seconds = 0.05  # how often the background task advances states and fires webhooks

    def __init__(
        self,
        token: str = "sandbox-token",  # noqa: S107 - the simulator's well-known sandbox token
        *,
        fax_seconds: float = 0.0,
        sms_seconds: float | None = None,
        webhooks: Mapping[str, str] | None = None,
        webhook_auth: tuple[str, str] | None = None,
        account_numbers: tuple[str, ...] = ("61298765432",),
        sms_reply_numbers: tuple[str, ...] = ("61400000000",),
    ) -> None:
        self.token = token
        self.fax_seconds = float(fax_seconds)
        self.sms_seconds = self.fax_seconds if sms_seconds is None else float(sms_seconds)
        self.webhooks: dict[str, str] = dict(webhooks or {})
        self.webhook_auth = webhook_auth
        self.account_numbers = tuple(account_numbers)
        self.sms_reply_numbers = tuple(sms_reply_numbers)
        self.suppress_webhooks = False
        self.duplicate_webhooks = False
        self.base_url: str | None = None  # set by serve() / the test fixture

        self.requests: list[RequestRecord] = []
        self.faxes: dict[int, SimFax] = {}
        self.sms: dict[int, SimSms] = {}
        self.received: dict[int, SimReceivedFax] = {}
        self.replies: dict[int, SimSmsReply] = {}
        self.faults: list[Fault] = []
        self.webhook_attempts: list[WebhookAttempt] = []
        self.behaviours: dict[str, str] = {}

        self._offset = 0.0
        self._ids = {"fax": 41340000, "sms": 77000, "received": 9000, "reply": 555}
        self._webhook_queue: list[_Webhook] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._http: aiohttp.ClientSession | None = None
        self._app: web.Application | None = None

    def __repr__(self) -> str:
        return f"GoFaxSimulator(base_url={self.base_url!r}, faxes={len(self.faxes)})"

    # ------------------------------------------------------------------ clock

    def now(self) -> float:
        """Simulator time: the real monotonic clock plus everything ``advance`` added."""
        return time.monotonic() + self._offset

    def utcnow(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self._offset)

    def advance(self, seconds: float) -> None:
        """Move the clock forward and bring every job's state up to date."""
        self._offset += float(seconds)
        self.refresh()

    def _next_id(self, kind: str) -> int:
        self._ids[kind] += 1
        return self._ids[kind]

    # ------------------------------------------------------------------ test controls

    def set_number_behaviour(self, number: str, behaviour: str) -> None:
        """Make faxes/SMS to ``number`` succeed ("ok") or fail like GoFax reports it."""
        if behaviour not in NUMBER_BEHAVIOURS:
            known = ", ".join(NUMBER_BEHAVIOURS)
            raise ValueError(f"unknown number behaviour {behaviour!r} (known: {known})")
        if behaviour == "ok":
            self.behaviours.pop(number, None)
        else:
            self.behaviours[number] = behaviour

    def inject(
        self,
        endpoint_pattern: str,
        kind: FaultKind,
        *,
        status: int = 503,
        retry_after: float | str | None = None,
        delay_seconds: float = 1.0,
        times: int | None = 1,
    ) -> Fault:
        """Inject a fault for requests matching ``"METHOD /path/glob"`` (or ``"*"``).

        ``status`` answers that status unprocessed; ``429`` answers 429 with ``Retry-After``
        (default 2); ``delay`` sleeps then processes (a PUT still creates its fax); ``drop``
        closes the connection unprocessed; ``drop_after_processing`` processes, then drops.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r} (known: {', '.join(FAULT_KINDS)})")
        fault = Fault(endpoint_pattern, kind, status, retry_after, delay_seconds, times)
        self.faults.append(fault)
        log.info("simulator: fault injected %s", fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    def receive_fax(
        self,
        from_number: str = "61733334444",
        to_number: str | None = None,
        csid: str = "ACME LEGAL",
        pdf: bytes | None = None,
        pages: int | None = None,
    ) -> int:
        """Make a fax arrive; returns its id. Without ``pdf`` a real small PDF is generated."""
        to_number = to_number or self.account_numbers[0]
        fax_id = self._next_id("received")
        if pdf is None:
            pdf = sample_pdf(
                pages or 1,
                title=f"Received fax {fax_id}",
                lines=[f"From: {from_number or 'withheld'}", f"To: {to_number}", f"CSID: {csid}"],
            )
        record = SimReceivedFax(
            id=fax_id,
            from_number=from_number or "",
            to_number=to_number,
            csid=csid or "",
            pages=pages or count_pages("fax.pdf", pdf),
            pdf=pdf,
            received_utc=self.utcnow(),
        )
        self.received[fax_id] = record
        log.info("simulator: fax %s received from %s for %s", fax_id, from_number, to_number)
        self._queue_webhook(
            "fax_received",
            {
                "ID": str(fax_id),
                "FromNumber": record.from_number,
                "ToNumber": record.to_number,
                "Pages": str(record.pages),
            },
        )
        return fax_id

    def sms_reply(
        self, from_number: str, to_number: str | None, message: str, message_id: int | None = None
    ) -> int:
        """Make an SMS reply arrive on one of the account's numbers; returns its id."""
        reply_id = self._next_id("reply")
        self.replies[reply_id] = SimSmsReply(
            id=reply_id,
            message_id=message_id,
            from_number=from_number,
            to_number=to_number or self.sms_reply_numbers[0],
            message=message,
            received_utc=self.utcnow(),
        )
        log.info("simulator: SMS reply %s from %s", reply_id, from_number)
        return reply_id

    # ------------------------------------------------------------------ state machine

    def refresh(self) -> None:
        """Bring every fax and SMS to the state the clock says; queue final webhooks."""
        for fax in self.faxes.values():
            self._refresh_fax(fax)
        for sms in self.sms.values():
            self._refresh_sms(sms)

    def _refresh_fax(self, fax: SimFax) -> None:
        if fax.status in _FINAL_FAX:
            return
        elapsed = self.now() - fax.submitted_at
        if elapsed >= self.fax_seconds:
            self._finish_fax(fax)
        elif elapsed >= self.fax_seconds / 2:
            fax.status, fax.message, fax.attempts = "Sending", "Sending", max(fax.attempts, 1)

    def _finish_fax(self, fax: SimFax) -> None:
        behaviour = self.behaviours.get(fax.send_to, "ok")
        failure = NUMBER_BEHAVIOURS[behaviour][0]
        fax.status = "Failed" if failure else "Sent"
        fax.message = failure or FAX_SENT_MESSAGE
        fax.attempts = 3 if behaviour in _REDIALLED else 1
        fax.completed_utc = self.utcnow()
        log.info("simulator: fax %s to %s %s (%s)", fax.id, fax.send_to, fax.status, fax.message)
        if not fax.notified:
            fax.notified = True
            fields = {
                "Recipient": fax.send_to,
                "ID": str(fax.id),
                "Success": "False" if failure else "True",
                "Message": fax.message,
                "Subject": fax.subject or "",
            }
            # A per-job CallbackURL cannot carry Basic auth (gofax-api.md).
            self._queue_webhook("fax_sent", fields, url=fax.callback_url)

    def _refresh_sms(self, sms: SimSms) -> None:
        if sms.final:
            return
        elapsed = self.now() - sms.submitted_at
        if elapsed < self.sms_seconds / 2:
            return
        if elapsed < self.sms_seconds:
            sms.status = "Sent to carrier for delivery"
            return
        failures = [
            message
            for number in sms.to
            if (message := NUMBER_BEHAVIOURS[self.behaviours.get(number, "ok")][1])
        ]
        sms.final, sms.success = True, not failures
        sms.status = failures[0] if failures else SMS_DELIVERED
        log.info("simulator: SMS %s %s", sms.id, sms.status)
        if not sms.notified:
            sms.notified = True
            self._queue_webhook(
                "sms_sent",
                {
                    "Recipient": ",".join(sms.to),
                    "ID": str(sms.id),
                    "Success": "True" if sms.success else "False",
                    "Message": sms.status,
                },
            )

    # ------------------------------------------------------------------ webhooks

    def _queue_webhook(self, event: str, fields: dict[str, str], url: str | None = None) -> None:
        authorization = None
        if url is None:
            url = self.webhooks.get(event)
            if self.webhook_auth:
                authorization = _basic_auth(*self.webhook_auth)
        if not url:
            return
        self._webhook_queue.append(_Webhook(event, url, fields, authorization))

    async def process_due(self) -> None:
        """Advance states and deliver queued webhooks now (the background task does this
        every ``tick_seconds``; tests call it to be deterministic)."""
        self.refresh()
        queue, self._webhook_queue = self._webhook_queue, []
        for hook in queue:
            await self._deliver(hook)

    async def _deliver(self, hook: _Webhook) -> None:
        if self.suppress_webhooks:
            self._note_attempt(hook, error="suppressed (sim.suppress_webhooks)")
            return
        for _ in range(2 if self.duplicate_webhooks else 1):
            await self._post_webhook(hook)

    async def _post_webhook(self, hook: _Webhook) -> None:
        url = hook.url
        if urlsplit(url).query:  # GoFax appends its fields to an existing query string
            url = f"{url}&{urlencode(hook.fields)}"
        session = self._http
        owned = session is None or session.closed
        if owned:
            session = aiohttp.ClientSession()
        assert session is not None
        try:
            headers = {"Authorization": hook.authorization} if hook.authorization else {}
            async with session.post(
                url, data=hook.fields, headers=headers, timeout=aiohttp.ClientTimeout(total=5)
            ) as response:
                await response.read()
                self._note_attempt(hook, status=response.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # GoFax does not reliably retry: a failed webhook is simply lost.
            self._note_attempt(hook, error=f"{type(exc).__name__}: {exc}")
        finally:
            if owned:
                await session.close()

    def _note_attempt(self, hook: _Webhook, *, status: int | None = None, error: str | None = None) -> None:
        attempt = WebhookAttempt(
            hook.event, redact(hook.url), dict(hook.fields), status, redact(error or "") or None
        )
        self.webhook_attempts.append(attempt)
        log.info(
            "simulator: webhook %s ID=%s to %s: %s",
            hook.event,
            hook.fields.get("ID"),
            attempt.url,
            status or attempt.error,
        )

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick_seconds)
            try:
                await self.process_due()
            except Exception:  # the ticker must survive anything a test throws at it
                log.exception("simulator: background tick failed")

    async def _lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        self._http = aiohttp.ClientSession()
        ticker = asyncio.create_task(self._ticker())
        yield
        for task in [ticker, *self._tasks]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._http.close()
        self._http = None

    # ------------------------------------------------------------------ the aiohttp app

    @property
    def app(self) -> web.Application:
        """The application (created once; use ``make_app`` for a fresh one)."""
        if self._app is None:
            self._app = self.make_app()
        return self._app

    def make_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._record_middleware, self._fault_middleware, self._auth_middleware],
            client_max_size=64 * 1024 * 1024,  # faxes of many pages, base64-inflated
        )
        app.cleanup_ctx.append(self._lifecycle)
        api = [
            web.put("/v1.0/Account/CheckHaveAccess", self._check_access),
            web.put("/v1.0/SendFax", self._send_fax),
            web.get("/v1.0/SendFax/{id}", self._fax_status),
            web.post("/v1.0/SendFax/{id}/Resend", self._resend_fax),
            web.get("/v1.0/ReceiveFaxes/UnretrievedFaxes", self._unretrieved),
            web.get("/v1.0/ReceiveFaxes/Details/{number}", self._received_details),
            web.get("/v1.0/ReceiveFax/{id}/Document", self._document),
            web.put("/v1.0/SMS", self._send_sms),
            web.get("/v1.0/SMS/Replies/{number}", self._sms_replies),
            web.get("/v1.0/SMS/{id}", self._sms_status),
        ]
        admin = [
            web.get("/_sim", self._admin_usage),
            web.get("/_sim/", self._admin_usage),
            web.post("/_sim/receive-fax", self._admin_receive_fax),
            web.post("/_sim/sms-reply", self._admin_sms_reply),
            web.post("/_sim/fault", self._admin_fault),
            web.delete("/_sim/fault", self._admin_clear_faults),
            web.post("/_sim/number", self._admin_number),
            web.post("/_sim/token", self._admin_token),
            web.post("/_sim/advance", self._admin_advance),
            web.get("/_sim/requests", self._admin_requests),
            web.get("/_sim/faxes", self._admin_faxes),
            web.get("/_sim/sms", self._admin_sms),
            web.get("/_sim/webhooks", self._admin_webhooks),
        ]
        app.add_routes(api + admin)
        return app

    # ------------------------------------------------------------------ middlewares

    @staticmethod
    def _is_admin(request: web.Request) -> bool:
        return request.path == "/_sim" or request.path.startswith("/_sim/")

    @web.middleware
    async def _record_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self._is_admin(request):
            self.requests.append(await self._record(request))
        return await handler(request)

    async def _record(self, request: web.Request) -> RequestRecord:
        raw = await request.read()  # cached by aiohttp: handlers can read it again
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        documents = None
        if request.method == "PUT" and request.path.rstrip("/").lower() == "/v1.0/sendfax":
            documents = _decodable_documents(body)
        return RequestRecord(
            method=request.method,
            path=request.path,
            query={k: v for k, v in request.query.items() if k.lower() != "token"},
            headers={k: v for k, v in request.headers.items() if k.lower() not in _SECRET_HEADERS},
            json=body,
            documents=documents,
        )

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.matches(method, path):
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                return fault
        return None

    @web.middleware
    async def _fault_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        fault = None if self._is_admin(request) else self._take_fault(request.method, request.path)
        if fault is None:
            return await handler(request)
        log.info("simulator: applying fault %s to %s %s", fault.kind, request.method, request.path)
        if fault.kind == "status":
            return _plain_status(fault.status, fault.retry_after)
        if fault.kind == "429":
            return _plain_status(429, 2 if fault.retry_after is None else fault.retry_after)
        if fault.kind == "delay":
            return await self._delayed(request, handler, fault.delay_seconds)
        if fault.kind == "drop":
            _drop_connection(request)
        response = await handler(request)  # drop_after_processing
        _drop_connection(request)
        return response  # not reached

    async def _delayed(self, request: web.Request, handler: Handler, seconds: float) -> web.StreamResponse:
        async def later() -> web.StreamResponse:
            await asyncio.sleep(seconds)
            return await handler(request)

        # Shielded: when the client gives up, the server still processes the request, as a
        # slow GoFax would. That is what makes a timed-out PUT "uncertain".
        task = asyncio.create_task(later())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(task)

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._is_admin(request):
            return await handler(request)
        given = request.query.get("token") or request.headers.get("x-api-token") or ""
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return web.Response(status=401)  # GoFax: 401 with an empty body
        try:
            return await handler(request)
        except _NotYours:
            return web.Response(status=401)
        except _BadRequest as exc:
            return _envelope(None, success=False, message=exc.message, errors=exc.errors, status=400)

    # ------------------------------------------------------------------ API handlers

    async def _check_access(self, request: web.Request) -> web.Response:
        return web.json_response(True)

    async def _send_fax(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        send_to, documents, options = _validate_send_fax(body)
        fax = self._create_fax(send_to, documents, **options)
        return _envelope(
            fax.id,
            message="Fax submitted",
            Documents=[
                {"Filename": name, "Message": "Initialised", "Submitted": True} for name, _ in documents
            ],
        )

    def _create_fax(
        self,
        send_to: str,
        documents: list[tuple[str, bytes]],
        *,
        subject: str | None = None,
        client_reference: str | None = None,
        callback_url: str | None = None,
        resent_from: int | None = None,
    ) -> SimFax:
        fax = SimFax(
            id=self._next_id("fax"),
            send_to=send_to,
            documents=documents,
            subject=subject,
            client_reference=client_reference,
            callback_url=callback_url,
            pages=sum(count_pages(name, data) for name, data in documents),
            submitted_at=self.now(),
            submitted_utc=self.utcnow(),
            resent_from=resent_from,
        )
        self.faxes[fax.id] = fax
        log.info("simulator: fax %s to %s queued (%s pages)", fax.id, send_to, fax.pages)
        return fax

    def _own_fax(self, request: web.Request) -> SimFax:
        fax = self.faxes.get(_path_id(request))
        if fax is None:
            raise _NotYours
        self._refresh_fax(fax)
        return fax

    async def _fax_status(self, request: web.Request) -> web.Response:
        return _envelope(self._own_fax(request).to_api())

    async def _resend_fax(self, request: web.Request) -> web.Response:
        old = self._own_fax(request)
        if old.status not in _FINAL_FAX:
            raise _BadRequest(f"Fax {old.id} is still being sent and cannot be resent")
        new = self._create_fax(
            old.send_to,
            list(old.documents),
            subject=old.subject,
            client_reference=old.client_reference,
            callback_url=old.callback_url,
            resent_from=old.id,
        )
        return _envelope(new.id, message="Fax resubmitted")

    async def _unretrieved(self, request: web.Request) -> web.Response:
        items = [f.to_api(with_retrieved=False) for f in self.received.values() if not f.retrieved]
        return _envelope(items)

    def _own_fax_number(self, number: str) -> None:
        if number not in self.account_numbers and not any(
            f.to_number == number for f in self.received.values()
        ):
            raise _NotYours

    async def _received_details(self, request: web.Request) -> web.Response:
        number = request.match_info["number"]
        self._own_fax_number(number)
        items = [f.to_api(with_retrieved=True) for f in self.received.values() if f.to_number == number]
        return _envelope(items)

    async def _document(self, request: web.Request) -> web.Response:
        fax = self.received.get(_path_id(request))
        if fax is None:
            raise _NotYours
        fax.retrieved = True  # assumed GoFax behaviour: a download marks it retrieved
        return _envelope(
            {
                "Filename": f"{fax.id}.pdf",
                "ContentType": "application/pdf",
                "Data": base64.b64encode(fax.pdf).decode("ascii"),
            }
        )

    async def _send_sms(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        to, sender, text, reference = _validate_sms(body)
        sms = SimSms(
            id=self._next_id("sms"),
            to=to,
            sender=sender,
            body=text,
            client_reference=reference,
            submitted_at=self.now(),
            submitted_utc=self.utcnow(),
        )
        self.sms[sms.id] = sms
        log.info("simulator: SMS %s to %s queued", sms.id, ",".join(to))
        return _envelope(sms.id, message="SMS Submitted")

    async def _sms_status(self, request: web.Request) -> web.Response:
        sms = self.sms.get(_path_id(request))
        if sms is None:
            raise _NotYours
        self._refresh_sms(sms)
        return _envelope(sms.to_api())

    async def _sms_replies(self, request: web.Request) -> web.Response:
        number = request.match_info["number"]
        ours = (
            number in self.sms_reply_numbers
            or any(s.sender == number for s in self.sms.values())
            or any(r.to_number == number for r in self.replies.values())
        )
        if not ours:
            raise _NotYours
        return _envelope([r.to_api() for r in self.replies.values() if r.to_number == number])

    # ------------------------------------------------------------------ admin handlers

    async def _admin_usage(self, request: web.Request) -> web.Response:
        base = self.base_url or f"{request.scheme}://{request.host}"
        return web.Response(text=usage_text(base))

    async def _admin_receive_fax(self, request: web.Request) -> web.Response:
        fields, upload = await _admin_fields(request, file_field="pdf")
        try:
            fax_id = self.receive_fax(
                from_number=str(fields.get("from", "61733334444")),
                to_number=_opt_str(fields.get("to")),
                csid=str(fields.get("csid", "")),
                pdf=upload,
                pages=_opt_int(fields.get("pages"), "pages"),
            )
        except ValueError as exc:
            return _admin_error(str(exc))
        return web.json_response({"id": fax_id})

    async def _admin_sms_reply(self, request: web.Request) -> web.Response:
        fields, _ = await _admin_fields(request)
        if not fields.get("from") or not fields.get("message"):
            return _admin_error("'from' and 'message' are required")
        try:
            message_id = _opt_int(fields.get("message_id"), "message_id")
        except ValueError as exc:
            return _admin_error(str(exc))
        reply_id = self.sms_reply(
            str(fields["from"]), _opt_str(fields.get("to")), str(fields["message"]), message_id
        )
        return web.json_response({"id": reply_id})

    async def _admin_fault(self, request: web.Request) -> web.Response:
        fields, _ = await _admin_fields(request)
        try:
            times_text = str(fields.get("times", "1")).strip().lower()
            times = None if times_text in {"0", "forever", "always", ""} else int(times_text)
            self.inject(
                str(fields.get("endpoint", "*")),
                cast(FaultKind, str(fields.get("kind", ""))),  # inject() validates it
                status=int(fields.get("status", 503)),
                retry_after=_opt_str(fields.get("retry_after")),
                delay_seconds=float(fields.get("delay_seconds", 1.0)),
                times=times,
            )
        except (TypeError, ValueError) as exc:
            return _admin_error(str(exc))
        return web.json_response({"faults": [asdict(f) for f in self.faults]})

    async def _admin_clear_faults(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return web.json_response({"faults": []})

    async def _admin_number(self, request: web.Request) -> web.Response:
        fields, _ = await _admin_fields(request)
        try:
            self.set_number_behaviour(str(fields.get("number", "")), str(fields.get("behaviour")))
        except ValueError as exc:
            return _admin_error(str(exc))
        return web.json_response({"behaviours": self.behaviours})

    async def _admin_token(self, request: web.Request) -> web.Response:
        fields, _ = await _admin_fields(request)
        token = str(fields.get("token", "")).strip()
        if not token:
            return _admin_error("'token' is required")
        self.token = token
        return web.json_response({"ok": True})

    async def _admin_advance(self, request: web.Request) -> web.Response:
        fields, _ = await _admin_fields(request)
        try:
            self.advance(float(fields.get("seconds", 0)))
        except ValueError as exc:
            return _admin_error(str(exc))
        return web.json_response({"ok": True})

    async def _admin_requests(self, request: web.Request) -> web.Response:
        return web.json_response([record.summary() for record in self.requests])

    async def _admin_faxes(self, request: web.Request) -> web.Response:
        self.refresh()
        sent = [
            {
                **fax.to_api(),
                "ResentFrom": fax.resent_from,
                "Documents": [_document_summary(n, d) for n, d in fax.documents],
            }
            for fax in self.faxes.values()
        ]
        received = [fax.to_api(with_retrieved=True) for fax in self.received.values()]
        return web.json_response({"sent": sent, "received": received})

    async def _admin_sms(self, request: web.Request) -> web.Response:
        self.refresh()
        return web.json_response(
            {
                "sent": [sms.to_api() for sms in self.sms.values()],
                "replies": [reply.to_api() for reply in self.replies.values()],
            }
        )

    async def _admin_webhooks(self, request: web.Request) -> web.Response:
        return web.json_response(
            [{**asdict(a), "at_utc": _timestamp(a.at_utc)} for a in self.webhook_attempts]
        )


# --------------------------------------------------------------------------- helpers


def _envelope(
    response: Any,
    *,
    success: bool = True,
    message: str = "",
    errors: list[str] | None = None,
    status: int = 200,
    **extra: Any,
) -> web.Response:
    body = {
        "Success": success,
        "Message": message,
        "ValidationErrors": errors or [],
        "Response": response,
        **extra,
    }
    return web.json_response(body, status=status)


def _basic_auth(user: str, password: str) -> str:
    # Built by hand: aiohttp.BasicAuth is deprecated in newer aiohttp, absent helpers in older.
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _plain_status(status: int, retry_after: float | str | None) -> web.Response:
    headers = {} if retry_after is None else {"Retry-After": _retry_after_text(retry_after)}
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    # A proxy in front of GoFax answers in plain text, not with the JSON envelope.
    return web.Response(status=status, text=f"{status} {phrase}\n", headers=headers)


def _retry_after_text(value: float | str) -> str:
    if isinstance(value, int | float):
        return str(int(value)) if float(value).is_integer() else str(value)
    return str(value)


def _drop_connection(request: web.Request) -> None:
    """Close the connection without answering. Raising CancelledError takes aiohttp's own
    "client went away" path, so nothing is written and no 200 is logged."""
    if request.transport is not None:
        request.transport.close()
    raise asyncio.CancelledError


def _path_id(request: web.Request) -> int:
    text = request.match_info["id"]
    if not text.isdigit():
        raise _BadRequest(f"'{text}' is not a valid id", [f"ID '{text}' must be a number"])
    return int(text)


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read() or b"null")
    except ValueError:
        raise _BadRequest("The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object")
    return body


def _decode_strict(text: Any) -> bytes | None:
    if not isinstance(text, str):
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _decodable_documents(body: Any) -> list[tuple[str, bytes]] | None:
    if not isinstance(body, dict) or not isinstance(body.get("Documents"), list):
        return None
    documents = []
    for item in body["Documents"]:
        if isinstance(item, dict):
            data = _decode_strict(item.get("Data"))
            if data is not None:
                documents.append((str(item.get("Filename", "")), data))
    return documents


def _validate_number(value: Any, field_name: str) -> tuple[str | None, list[str]]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        return None, [f"{field_name} is required"]
    if not _DIGITS.fullmatch(value):
        return None, [
            f"{field_name} '{value}' must be 8 to 15 digits with the country code, "
            "no '+', spaces or punctuation"
        ]
    return value, []


def _validate_document(index: int, item: Any) -> tuple[tuple[str, bytes] | None, list[str]]:
    where = f"Documents[{index}]"
    if not isinstance(item, dict):
        return None, [f"{where} must be an object with Filename and Data"]
    name = item.get("Filename")
    if not isinstance(name, str) or not name.strip():
        return None, [f"{where}: Filename is required"]
    errors = []
    if not name.lower().endswith(FAX_EXTENSIONS):
        errors.append(
            f"{where} ({name}): the file extension is not one GoFax can convert ({' '.join(FAX_EXTENSIONS)})"
        )
    data = _decode_strict(item.get("Data"))
    if data is None:
        errors.append(f"{where} ({name}): Data is missing or not valid base64")
    elif not data:
        errors.append(f"{where} ({name}): Data is empty")
    return (None if errors else (name, data or b"")), errors


def _optional_strings(body: dict[str, Any], *names: str) -> tuple[dict[str, str | None], list[str]]:
    values: dict[str, str | None] = {}
    errors = []
    for name in names:
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            errors.append(f"{name} must be text")
        values[name] = value if isinstance(value, str) and value else None
    return values, errors


def _validate_send_fax(
    body: dict[str, Any],
) -> tuple[str, list[tuple[str, bytes]], dict[str, str | None]]:
    send_to, errors = _validate_number(body.get("SendTo"), "SendTo")
    raw_documents = body.get("Documents")
    documents: list[tuple[str, bytes]] = []
    if not isinstance(raw_documents, list) or not raw_documents:
        errors.append("Documents must contain at least one document")
    else:
        for index, item in enumerate(raw_documents):
            document, problems = _validate_document(index, item)
            errors.extend(problems)
            if document:
                documents.append(document)
    options, problems = _optional_strings(body, "Subject", "ClientReference", "CallbackURL")
    errors.extend(problems)
    if errors or send_to is None:
        raise _BadRequest("The fax was not submitted: the request is invalid", errors)
    return (
        send_to,
        documents,
        {
            "subject": options["Subject"],
            "client_reference": options["ClientReference"],
            "callback_url": options["CallbackURL"],
        },
    )


def _validate_sms(body: dict[str, Any]) -> tuple[list[str], str, str, str | None]:
    errors: list[str] = []
    raw_to = body.get("To")
    to: list[str] = []
    if not isinstance(raw_to, list) or not raw_to:
        errors.append("To must list at least one mobile number")
    else:
        for index, value in enumerate(raw_to):
            number, problems = _validate_number(value, f"To[{index}]")
            errors.extend(problems)
            if number:
                to.append(number)
    sender = body.get("From")
    if not isinstance(sender, str) or not (_SENDER_ID.fullmatch(sender) or _DIGITS.fullmatch(sender)):
        errors.append(
            f"From '{sender}' must be a sender id of at most 11 letters or digits without "
            "spaces, or a mobile number"
        )
    text = body.get("Body")
    if not isinstance(text, str) or not text.strip():
        errors.append("Body must not be empty")
    options, problems = _optional_strings(body, "ClientReference")
    errors.extend(problems)
    if errors:
        raise _BadRequest("The SMS was not submitted: the request is invalid", errors)
    return to, str(sender), str(text), options["ClientReference"]


async def _admin_fields(
    request: web.Request, *, file_field: str | None = None
) -> tuple[dict[str, Any], bytes | None]:
    """Fields of an admin POST: JSON, urlencoded or multipart (with an optional upload)."""
    upload: bytes | None = None
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="the body is not valid JSON\n") from None
        fields = dict(body) if isinstance(body, dict) else {}
        if file_field and isinstance(fields.get(f"{file_field}_base64"), str):
            upload = _decode_strict(fields[f"{file_field}_base64"])
        return fields, upload
    form = await request.post()
    fields = {}
    for key, value in form.items():
        if isinstance(value, web.FileField):
            if key == file_field:
                upload = value.file.read()
        else:
            fields[key] = value
    return fields, upload


def _admin_error(text: str) -> web.Response:
    return web.json_response({"error": text}, status=400)


def _opt_str(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _opt_int(value: Any, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"'{name}' must be a whole number") from None


# --------------------------------------------------------------------------- running it


class RedactingAccessLogger(AbstractAccessLogger):
    """aiohttp access log without the ``token=`` query value (v1.0 puts it in the URL)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %.3fs", request.method, redact(request.path_qs), response.status, time)


async def serve(sim: GoFaxSimulator, host: str = "127.0.0.1", port: int = 0) -> web.AppRunner:
    """Start ``sim`` on host:port (0 = any free port); sets ``sim.base_url``."""
    runner = web.AppRunner(sim.app, access_log_class=RedactingAccessLogger)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = runner.addresses[0][1] if runner.addresses else port  # port 0 → real port
    shown_host = f"[{host}]" if ":" in host else host
    sim.base_url = f"http://{shown_host}:{bound_port}"
    log.info("GoFax simulator listening on %s", sim.base_url)
    return runner


async def run_standalone(
    host: str = "127.0.0.1", port: int = 8090, *, announce: bool = True, **kw: Any
) -> None:
    """Run a simulator until cancelled (``faxbridge sim``). ``kw`` go to GoFaxSimulator.

    With ``announce`` the usage page (with the simulator's token, which the user must put in
    the client's config) is printed to stdout once the port is open.
    """
    sim = GoFaxSimulator(**kw)
    runner = await serve(sim, host, port)
    if announce and sim.base_url:
        print(usage_text(sim.base_url, token=sim.token), flush=True)  # the CLI's output, not a log
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def usage_text(base_url: str, token: str | None = None) -> str:
    """The help page of the admin interface, with curl examples against ``base_url``."""
    base = base_url.rstrip("/")
    token_line = (
        f'API token: {token}  (client: base_url = "{base}")'
        if token
        else f'Point the client at base_url = "{base}" with the simulator\'s token.'
    )
    return f"""GoFax simulator — {base}

{token_line}
API: the /v1.0/... endpoints of gofax-api.md (token in ?token= or the x-api-token header).
Admin (no token): form fields or a JSON body.

  Make a fax arrive (a sample PDF is generated unless you upload one):
    curl -X POST {base}/_sim/receive-fax -F from=61733334444 -F to=61298765432 -F csid="ACME LEGAL"
    curl -X POST {base}/_sim/receive-fax -F from=61733334444 -F pdf=@letter.pdf

  Make an SMS reply arrive (message_id = the SMS it answers, optional):
    curl -X POST {base}/_sim/sms-reply -d from=61412345678 -d to=61400000000 \\
         -d message="Yes, see you then" -d message_id=77001

  Inject a fault (kind: status | 429 | delay | drop | drop_after_processing; times=0: forever):
    curl -X POST {base}/_sim/fault -d endpoint="PUT /v1.0/SendFax" -d kind=status -d status=503
    curl -X POST {base}/_sim/fault -d endpoint="GET /v1.0/SendFax/*" -d kind=429 -d retry_after=5
    curl -X POST {base}/_sim/fault -d endpoint="*" -d kind=delay -d delay_seconds=40
    curl -X DELETE {base}/_sim/fault            # clear all faults

  Make a number fail (busy | no_answer | not_a_fax | invalid | undeliverable | expired |
  no_credit | ok):
    curl -X POST {base}/_sim/number -d number=61299999999 -d behaviour=busy

  Change the accepted token (simulate an expired one):
    curl -X POST {base}/_sim/token -d token=new-token

  Move the simulator clock forward:
    curl -X POST {base}/_sim/advance -d seconds=60

  Look inside:
    curl {base}/_sim/requests     # every API request (token removed, documents summarised)
    curl {base}/_sim/faxes        # sent and received faxes
    curl {base}/_sim/sms          # sent SMS and replies
    curl {base}/_sim/webhooks     # webhook attempts
"""
