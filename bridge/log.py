"""structlog set-up: readable on a terminal, JSON lines otherwise, secrets always redacted."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

from bridge.redact import redact

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    if isinstance(value, Mapping):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def redact_secrets(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Runs last before rendering, so it also sees formatted tracebacks and exception text."""
    for key, value in list(event.items()):
        event[key] = _scrub(value)
    return event


def setup(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configures structlog and routes stdlib logging (aiohttp, aiosmtpd) through it."""
    out = stream or sys.stderr
    json_lines = fmt == "json" or (fmt == "auto" and not out.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if json_lines:
        # No local variables in tracebacks: they would carry mail bodies, documents and
        # objects that hold the token, past any redaction of known strings.
        tail: list[Any] = [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)),
            redact_secrets,
        ]
        renderer = structlog.processors.JSONRenderer()
    else:
        tail = [structlog.processors.format_exc_info, redact_secrets]
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty(),
                                                 exception_formatter=structlog.dev.plain_traceback)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail, renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    # aiosmtpd logs every SMTP line at INFO/DEBUG (including AUTH exchanges): keep it quiet.
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, _LEVELS[level]))
    logging.getLogger("aiohttp.access").setLevel(max(logging.WARNING, _LEVELS[level]))
    # fpdf2 subsets fonts through fontTools, which narrates every table at INFO.
    logging.getLogger("fontTools").setLevel(max(logging.WARNING, _LEVELS[level]))
