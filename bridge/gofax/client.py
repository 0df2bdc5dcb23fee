"""Async client for the GoFax REST API (shared/gofax-api.md): one method per endpoint.

The client does transport and classification only, no business logic. Every failure becomes
one of the classes in ``bridge.gofax.errors`` (DESIGN.md, "Error classes"):

=====================================================  ==============  ==================
what happened                                          read / action   submission
=====================================================  ==============  ==================
connect refused, DNS, TLS, connect timeout             Transient       Transient
(anything before the request headers were written)
timeout / reset / disconnect / broken body after the   Transient       **Uncertain**
request was written
408, 429, 502, 503, 504 (``Retry-After`` honoured)     Transient       Transient
500 and other 5xx                                      Transient       **Uncertain**
401                                                    Unauthorised    Unauthorised
``Success:false`` (any other status), other 3xx/4xx    Permanent       Permanent
2xx whose body is not JSON / not the expected shape    Transient       **Uncertain**
=====================================================  ==============  ==================

Submissions are the calls that create something: ``PUT SendFax``, ``PUT SMS`` and
``POST SendFax/{id}/Resend``. GoFax has no idempotency key, so once such a request has left
this process and its answer is lost, only a human (or a later status read) can tell whether
the fax exists. Two details keep that rule honest:

- aiohttp silently resends *idempotent* methods (PUT included) once when the connection drops;
  for submissions a client middleware turns the drop into an error before aiohttp can retry.
- Submissions use a connection of their own (no keep-alive), so a pooled connection that the
  server already closed cannot turn an ordinary submission into an "uncertain" one.

The API token rides in the query string (v1.0) or the ``x-api-token`` header; it never
appears in an exception, a ``repr`` or a log line (messages name the method and path only,
and pass through ``bridge.redact``).
"""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from types import SimpleNamespace, TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import quote

import aiohttp
import aiohttp.abc
import aiohttp.payload
from multidict import CIMultiDictProxy

from bridge.gofax import models
from bridge.gofax.errors import GoFaxError, Permanent, Transient, Unauthorised, Uncertain
from bridge.redact import redact

__all__ = ["DEFAULT_BASE_URL", "GoFaxClient", "parse_retry_after"]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://restful-api.gofax.com.au"

AuthMode = Literal["query", "header"]
T = TypeVar("T")

# Statuses that say "not now" without having done anything.
_TRANSIENT_STATUSES = frozenset({408, 429, 502, 503, 504})


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    submission: bool = False
    what: str = "the request"  # what a submission creates, for "may have been created"

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class _Answer:
    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    body: bytes


class _AnswerLost(aiohttp.ClientError):
    """Stands in for a disconnect inside aiohttp, so that aiohttp does not resend a PUT."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(_describe(cause))
        self.cause = cause


async def _never_resend(
    request: aiohttp.ClientRequest,
    handler: Callable[[aiohttp.ClientRequest], Awaitable[aiohttp.ClientResponse]],
) -> aiohttp.ClientResponse:
    # aiohttp retries PUT once on ServerDisconnectedError/ClientOSError (RFC 9112 allows it for
    # idempotent methods), but PUT SendFax is not idempotent in fact: a resend can fax twice.
    # Raising a plain ClientError subclass here makes aiohttp give up instead.
    try:
        return await handler(request)
    except aiohttp.ClientConnectorError:
        raise  # never connected: aiohttp does not retry these, and nothing was sent
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise _AnswerLost(exc) from exc


async def _mark_headers_sent(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    progress = getattr(context, "trace_request_ctx", None)
    if isinstance(progress, _Progress):
        progress.sent = True


class _Progress:
    """Per-request flag set by tracing once the request headers were written.

    ``None`` means unknown (a caller-supplied session has no trace hook): then the
    exception type alone decides, conservatively.
    """

    def __init__(self, traced: bool) -> None:
        self.sent: bool | None = False if traced else None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _reason(status: int, reason: str | None) -> str:
    if reason:
        return reason
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds to wait: delta-seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class GoFaxClient:
    """One method per GoFax endpoint. Use as ``async with GoFaxClient(...) as gofax:``."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout_seconds: float = 30,
        auth: AuthMode = "query",
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("GoFax base_url must start with http:// or https://")
        if auth not in ("query", "header"):
            raise ValueError('GoFax auth must be "query" or "header"')
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.auth: AuthMode = auth
        self.timeout_seconds = float(timeout_seconds)
        self._timeout = aiohttp.ClientTimeout(
            total=self.timeout_seconds, sock_connect=min(10.0, self.timeout_seconds)
        )
        self._external_session = session
        self._session: aiohttp.ClientSession | None = None  # reads: keep-alive pool
        self._submit_session: aiohttp.ClientSession | None = None  # submissions: fresh conns

    def __repr__(self) -> str:
        return f"GoFaxClient(base_url={self.base_url!r}, auth={self.auth!r})"

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the sessions this client created (a caller-supplied session stays open)."""
        for session in (self._session, self._submit_session):
            if session is not None and not session.closed:
                await session.close()
        self._session = self._submit_session = None

    def set_token(self, token: str) -> None:
        """Use a new token from now on (after the operator replaced an expired one)."""
        self._token = token

    def _make_session(self, *, fresh_connections: bool) -> aiohttp.ClientSession:
        tracing = aiohttp.TraceConfig()
        tracing.on_request_headers_sent.append(_mark_headers_sent)
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=fresh_connections),
            timeout=self._timeout,
            trace_configs=[tracing],
        )

    def _session_for(self, call: _Call) -> tuple[aiohttp.ClientSession, bool]:
        """The session to use and whether it reports request progress (tracing)."""
        if self._external_session is not None:
            return self._external_session, False
        # Created lazily: a ClientSession wants a running event loop.
        if call.submission:
            if self._submit_session is None or self._submit_session.closed:
                self._submit_session = self._make_session(fresh_connections=True)
            return self._submit_session, True
        if self._session is None or self._session.closed:
            self._session = self._make_session(fresh_connections=False)
        return self._session, True

    # ------------------------------------------------------------------ transport

    def _auth(self) -> tuple[dict[str, str], dict[str, str]]:
        headers = {"Accept": "application/json"}
        if self.auth == "header":
            return {}, {**headers, "x-api-token": self._token}
        return {"token": self._token}, headers

    async def _send(self, call: _Call, body: Any = None) -> _Answer:
        session, traced = self._session_for(call)
        params, headers = self._auth()
        progress = _Progress(traced)
        started = time.monotonic()
        try:
            async with session.request(
                call.method,
                self.base_url + call.path,
                params=params,
                headers=headers,
                # A fax's documents are streamed (_FaxBody); everything else is small JSON.
                json=None if isinstance(body, _FaxBody) else body,
                data=body if isinstance(body, _FaxBody) else None,
                timeout=self._timeout,
                # A redirect would carry the token to wherever it points.
                allow_redirects=False,
                trace_request_ctx=progress,
                middlewares=(_never_resend,) if call.submission else None,
            ) as response:
                raw = await response.read()
                answer = _Answer(
                    response.status,
                    _reason(response.status, response.reason),
                    response.headers,
                    raw,
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = self._lost(call, exc, progress.sent)
            log.debug("%s", error)
            # "from None": the aiohttp exception's own text may quote the URL with the token.
            raise error from None
        log.debug("GoFax %s answered %s in %.2f s", call, answer.status, time.monotonic() - started)
        return answer

    def _lost(self, call: _Call, exc: BaseException, sent: bool | None) -> GoFaxError:
        """Classify a request that got no HTTP answer."""
        cause = exc.cause if isinstance(exc, _AnswerLost) else exc
        before_sending = isinstance(cause, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
        if before_sending or sent is False:
            return Transient(
                f"Could not reach GoFax for {call} ({_describe(cause)}); nothing was sent (will retry)",
                method=call.method,
                path=call.path,
            )
        if isinstance(cause, TimeoutError):
            what = f"GoFax did not answer {call} within {self.timeout_seconds:g} s"
        else:
            what = f"The connection to GoFax broke during {call} ({_describe(cause)})"
        if call.submission:
            return Uncertain(
                f"{what} after the request was sent: {call.what} may or may not have been "
                "created, so it will not be resent automatically",
                method=call.method,
                path=call.path,
            )
        return Transient(f"{what} (will retry)", method=call.method, path=call.path)

    async def _call(self, call: _Call, body: Any = None) -> Any:
        """Send, classify the HTTP answer, return the decoded JSON (None for an empty body)."""
        answer = await self._send(call, body)
        self._raise_for_status(call, answer)
        decoded = _decode_json(answer.body)
        envelope = None if decoded is _NOT_JSON else models.parse_envelope(decoded)
        if answer.status >= 300 or (envelope is not None and not envelope.success):
            raise _refused(call, answer, envelope)
        if decoded is _NOT_JSON:
            raise self._unreadable(call, f"a {answer.status} answer that is not JSON")
        return decoded

    def _raise_for_status(self, call: _Call, answer: _Answer) -> None:
        """Statuses that decide the class whatever the body says."""
        status, label = answer.status, f"{answer.status} {answer.reason}".strip()
        common = {"method": call.method, "path": call.path, "http_status": status}
        if status == 401:
            raise Unauthorised(
                f"GoFax refused the API token ({label}) for {call}: the token is wrong or "
                "expired, or the object belongs to another account",
                **common,
            )
        if status in _TRANSIENT_STATUSES:
            retry_after = parse_retry_after(answer.headers.get("Retry-After"))
            when = f" after {retry_after:g} s" if retry_after is not None else ""
            raise Transient(
                f"GoFax answered {label} to {call} (will retry{when})",
                retry_after=retry_after,
                **common,
            )
        if status >= 500 and call.submission:
            raise Uncertain(
                f"GoFax answered {label} to {call}: {call.what} may or may not have been "
                "created, so it will not be resent automatically",
                **common,
            )
        if status >= 500:
            raise Transient(f"GoFax answered {label} to {call} (will retry)", **common)

    def _unreadable(self, call: _Call, what: str) -> GoFaxError:
        if call.submission:
            return Uncertain(
                f"GoFax accepted {call} but sent {what}: {call.what} may have been created "
                "and its id is unknown, so it will not be resent automatically",
                method=call.method,
                path=call.path,
            )
        return Transient(f"GoFax sent {what} to {call} (will retry)", method=call.method, path=call.path)

    async def _read(self, call: _Call, parse: Callable[[Any], T], body: Any = None) -> T:
        decoded = await self._call(call, body)
        try:
            return parse(decoded)
        except models.ParseError as exc:
            raise self._unreadable(call, f"an answer of unexpected shape ({exc})") from None

    # ------------------------------------------------------------------ endpoints

    async def check_access(self) -> bool:
        """``PUT /v1.0/Account/CheckHaveAccess``: True when the token works, False on 401."""
        try:
            return await self._read(_Call("PUT", "/v1.0/Account/CheckHaveAccess"), models.parse_check_access)
        except Unauthorised:
            return False

    async def send_fax(
        self,
        send_to: str,
        documents: Sequence[tuple[str, bytes]],
        *,
        subject: str | None = None,
        client_reference: str | None = None,
        callback_url: str | None = None,
    ) -> models.SubmitResult:
        """``PUT /v1.0/SendFax``: one fax of ``documents`` (filename, bytes) in order."""
        fields: dict[str, Any] = {"SendTo": send_to}
        _put_optional(fields, Subject=subject, ClientReference=client_reference, CallbackURL=callback_url)
        call = _Call("PUT", "/v1.0/SendFax", submission=True, what="the fax")
        return await self._read(call, models.parse_send_fax, _FaxBody(fields, documents))

    async def get_fax_status(self, fax_id: int) -> models.FaxStatus:
        """``GET /v1.0/SendFax/{id}``."""
        call = _Call("GET", f"/v1.0/SendFax/{int(fax_id)}")
        return await self._read(call, models.parse_send_fax_status)

    async def resend_fax(self, fax_id: int) -> int:
        """``POST /v1.0/SendFax/{id}/Resend``; returns the new fax id."""
        call = _Call("POST", f"/v1.0/SendFax/{int(fax_id)}/Resend", submission=True, what="the resent fax")
        return await self._read(call, models.parse_resend_fax)

    async def unretrieved_faxes(self) -> list[models.ReceivedFax]:
        """``GET /v1.0/ReceiveFaxes/UnretrievedFaxes``."""
        call = _Call("GET", "/v1.0/ReceiveFaxes/UnretrievedFaxes")
        return await self._read(call, models.parse_received_faxes)

    async def received_faxes(self, number: str) -> list[models.ReceivedFax]:
        """``GET /v1.0/ReceiveFaxes/Details/{number}`` (all recent faxes, with Retrieved)."""
        call = _Call("GET", f"/v1.0/ReceiveFaxes/Details/{_segment(number)}")
        return await self._read(call, models.parse_received_faxes)

    async def fax_document(self, fax_id: int) -> models.FaxDocument:
        """``GET /v1.0/ReceiveFax/{faxId}/Document``. GoFax then counts the fax retrieved:
        store the bytes durably before doing anything else with them."""
        call = _Call("GET", f"/v1.0/ReceiveFax/{int(fax_id)}/Document")
        return await self._read(call, models.parse_fax_document)

    async def send_sms(
        self,
        to: Sequence[str],
        sender: str,
        body: str,
        *,
        client_reference: str | None = None,
    ) -> models.SubmitResult:
        """``PUT /v1.0/SMS``: one message to one or more recipients."""
        recipients = [to] if isinstance(to, str) else list(to)
        payload: dict[str, Any] = {"To": recipients, "From": sender, "Body": body}
        _put_optional(payload, ClientReference=client_reference)
        call = _Call("PUT", "/v1.0/SMS", submission=True, what="the SMS")
        return await self._read(call, models.parse_send_sms, payload)

    async def get_sms_status(self, sms_id: int) -> models.SmsStatus:
        """``GET /v1.0/SMS/{id}``."""
        call = _Call("GET", f"/v1.0/SMS/{int(sms_id)}")
        return await self._read(call, models.parse_sms_status)

    async def sms_replies(self, number: str) -> list[models.SmsReply]:
        """``GET /v1.0/SMS/Replies/{number}`` (replies stay listed: dedupe by id)."""
        call = _Call("GET", f"/v1.0/SMS/Replies/{_segment(number)}")
        return await self._read(call, models.parse_sms_replies)


# ---------------------------------------------------------------------- helpers

_NOT_JSON: Any = object()


def _decode_json(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return _NOT_JSON


def _refused(call: _Call, answer: _Answer, envelope: models.Envelope | None) -> Permanent:
    label = f"{answer.status} {answer.reason}".strip()
    message = envelope.message.strip() if envelope else ""
    errors = list(envelope.validation_errors) if envelope else []
    if 300 <= answer.status < 400:
        text = f"GoFax answered {label} (a redirect) to {call}: check [gofax] base_url"
    else:
        text = f"GoFax refused {call} ({label})"
        if message:
            text += f": {message}"
        if errors:
            text += f" — {'; '.join(errors)}"
        elif not envelope:
            snippet = " ".join(redact(answer.body[:200].decode("utf-8", "replace")).split())
            text += f": {snippet}" if snippet else ""
    return Permanent(
        text,
        message=message,
        validation_errors=errors,
        method=call.method,
        path=call.path,
        http_status=answer.status,
    )


# Document bytes per base64 piece written: a multiple of 3, so the pieces join into one text.
_B64_PIECE_BYTES = 3 * 64 * 1024


class _FaxBody(aiohttp.payload.Payload):
    """The SendFax JSON, base64-encoded piece by piece as it is written to the socket.

    A document is never held as base64 text in full: built whole, the JSON of a 20 MB fax is
    ~27 MB, written from a second copy in the transport's buffer. The size is known up front
    (base64 of n bytes is 4 * ceil(n / 3) characters), so the request has a Content-Length.
    """

    def __init__(self, fields: dict[str, Any], documents: Sequence[tuple[str, bytes]]) -> None:
        super().__init__(None, content_type="application/json")
        head = b"".join(json.dumps(k).encode() + b":" + json.dumps(v).encode() + b","
                        for k, v in fields.items())
        self._head = b"{" + head + b'"Documents":['
        self._documents = [(b'{"Filename":' + json.dumps(name).encode() + b',"Data":"', data)
                           for name, data in documents]
        self._size = (len(self._head) + len(b"]}") + max(len(documents) - 1, 0)
                      + sum(len(prefix) + 4 * -(-len(data) // 3) + len(b'"}')
                            for prefix, data in self._documents))

    def _pieces(self) -> Iterator[bytes]:
        yield self._head
        for i, (prefix, data) in enumerate(self._documents):
            yield (b"," if i else b"") + prefix
            view = memoryview(data)
            for at in range(0, len(view), _B64_PIECE_BYTES):
                yield base64.b64encode(view[at:at + _B64_PIECE_BYTES])
            yield b'"}'
        yield b"]}"

    async def write(self, writer: aiohttp.abc.AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: aiohttp.abc.AbstractStreamWriter,
                                content_length: int | None) -> None:
        left = content_length
        for piece in self._pieces():
            if left is not None:
                piece = piece[:left]
                left -= len(piece)
            # aiohttp's writer waits for the socket to drain past 64 KiB: one piece in memory.
            await writer.write(piece)
            if left == 0:
                return

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._pieces()).decode(encoding, errors)


def _put_optional(body: dict[str, Any], **fields: str | None) -> None:
    for key, value in fields.items():
        if value is not None:
            body[key] = value


def _segment(value: str) -> str:
    return quote(str(value), safe="")
