"""Logging: JSON lines off a terminal, and secrets never reach a log line."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from bridge import log, redact

TOKEN = "0b3f9a1c-SECRET-TOKEN-77"
PASSWORD = "hunter2-smarthost"


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    """log.setup changes process-wide state; give other tests theirs back."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level,
             {n: logging.getLogger(n).level for n in ("mail.log", "aiohttp.access")})
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)
    structlog.reset_defaults()


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_and_redaction_everywhere() -> None:
    redact.register_secret(TOKEN)
    redact.register_secret(PASSWORD)
    stream = io.StringIO()
    log.setup("debug", "json", stream=stream)
    logger = structlog.get_logger("t")
    logger.info("request", url=f"https://restful-api.gofax.com.au/v1.0/SendFax?token={TOKEN}")
    logger.info("nested", data={"headers": {"x-api-token": TOKEN}, "list": [PASSWORD]})
    logger.warning(f"inline {PASSWORD} in the event text")
    try:
        raise RuntimeError(f"GET /v1.0/SMS/1?token={TOKEN} failed")
    except RuntimeError:
        logger.exception("crash")
    logging.getLogger("aiohttp.client").error("stdlib says %s", f"token={TOKEN}")
    text = stream.getvalue()
    assert TOKEN not in text
    assert PASSWORD not in text
    lines = _lines(stream)
    assert [entry["event"] for entry in lines][:2] == ["request", "nested"]
    assert lines[0]["url"] == "https://restful-api.gofax.com.au/v1.0/SendFax?token=***"
    assert all("timestamp" in entry and "level" in entry for entry in lines)
    assert any(entry.get("event", "").startswith("stdlib says") for entry in lines)


def test_console_format_is_redacted_too() -> None:
    redact.register_secret(TOKEN)
    stream = io.StringIO()
    log.setup("info", "console", stream=stream)
    structlog.get_logger("t").info("hello", token=TOKEN, url=f"x?token={TOKEN}&a=1")
    text = stream.getvalue()
    assert "hello" in text and TOKEN not in text


def test_level_filters() -> None:
    stream = io.StringIO()
    log.setup("warning", "json", stream=stream)
    structlog.get_logger("t").info("quiet")
    structlog.get_logger("t").warning("loud")
    assert [e["event"] for e in _lines(stream)] == ["loud"]


def test_tracebacks_carry_no_local_variables() -> None:
    stream = io.StringIO()
    log.setup("info", "json", stream=stream)
    mail_body = "confidential-patient-record"  # noqa: F841 - a local the traceback must not show
    try:
        raise ValueError("boom")
    except ValueError:
        structlog.get_logger("t").exception("failed")
    [entry] = _lines(stream)
    assert "confidential-patient-record" not in stream.getvalue()
    assert entry["exception"][0]["exc_value"] == "boom"
