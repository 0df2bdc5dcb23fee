"""The web listener: GoFax webhooks, ``/healthz`` and ``/metrics``.

A webhook is only a hint. It can make the sender poll a job now, or the receiver look for new
faxes now; nothing it says is written to a job. So a forged, late, duplicated or malformed
webhook can at worst cause one extra API read.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from bridge.config import Config

log = structlog.get_logger(__name__)

MAX_WEBHOOK_BYTES = 16 * 1024

FAX_SENT_PATH = "/webhooks/gofax/fax-sent"
SMS_SENT_PATH = "/webhooks/gofax/sms-sent"
FAX_RECEIVED_PATH = "/webhooks/gofax/fax-received"


class Health(Protocol):
    def health(self) -> Awaitable[dict[str, Any]]: ...
    def metrics(self) -> Awaitable[dict[str, float]]: ...


def basic_auth_ok(header: str | None, user: str, password: str) -> bool:
    """Constant-time check of an ``Authorization: Basic`` header."""
    expected = f"{user}:{password}".encode()
    supplied = b""
    if header and header[:6].lower() == "basic ":
        try:
            supplied = base64.b64decode(header[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            supplied = b""
    return hmac.compare_digest(supplied, expected)


def _gofax_id(form: Any) -> int | None:
    raw = str(form.get("ID", "")).strip()
    return int(raw) if raw.isdigit() and len(raw) <= 18 else None


def make_app(config: Config, *, on_sent_hint: Callable[[str, int], Awaitable[bool]],
             on_received_hint: Callable[[], None], health: Health) -> web.Application:
    user, password = config.web.webhook_user, config.web.webhook_password

    @web.middleware
    async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        if request.path.startswith("/webhooks/"):
            if user and not basic_auth_ok(request.headers.get("Authorization"), user, password):
                return web.Response(status=401, text="unauthorised\n",
                                    headers={"WWW-Authenticate": 'Basic realm="faxbridge"'})
            if (request.content_length or 0) > MAX_WEBHOOK_BYTES:
                return web.Response(status=413, text="too large\n")
        return await handler(request)

    async def read_form(request: web.Request) -> Any:
        try:
            return await request.post()
        except web.HTTPRequestEntityTooLarge:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_WEBHOOK_BYTES,
                                                actual_size=request.content_length or 0,
                                                text="too large\n") from None
        except (ValueError, HttpProcessingError):
            # A broken form or multipart body (aiohttp raises BadHttpMessage for the latter).
            raise web.HTTPBadRequest(text="malformed form body\n") from None

    def sent_hook(kind: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def hook(request: web.Request) -> web.Response:
            form = await read_form(request)
            gofax_id = _gofax_id(form)
            if gofax_id is None:
                return web.Response(status=400, text="missing or malformed ID\n")
            known = await on_sent_hint(kind, gofax_id)
            log.info("webhook", hook=f"{kind}_sent", gofax_id=gofax_id, known=known)
            return web.Response(text="ok\n" if known else "ignored: unknown id\n")
        return hook

    async def fax_received(request: web.Request) -> web.Response:
        form = await read_form(request)
        log.info("webhook", hook="fax_received", gofax_id=_gofax_id(form))
        on_received_hint()
        return web.Response(text="ok\n")

    async def healthz(_request: web.Request) -> web.Response:
        body = await health.health()
        return web.json_response(body, status=200 if body.get("ok") else 503)

    async def metrics(_request: web.Request) -> web.Response:
        values = await health.metrics()
        lines = []
        for name, value in sorted(values.items()):
            lines.append(f"{name} {value:g}")
        return web.Response(text="\n".join(lines) + "\n",
                            content_type="text/plain", charset="utf-8")

    app = web.Application(middlewares=[guard], client_max_size=MAX_WEBHOOK_BYTES)
    app.router.add_post(FAX_SENT_PATH, sent_hook("fax"))
    app.router.add_post(SMS_SENT_PATH, sent_hook("sms"))
    app.router.add_post(FAX_RECEIVED_PATH, fax_received)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app
