"""Remove secrets from text before it reaches a log line, an error or a page.

The GoFax v1.0 API carries its token in the URL (``?token=…``), so any URL, exception
text or header dump may hold it. ``redact`` is deliberately dumb and fast: a few regular
expressions for the places a credential appears, plus a literal replacement of every secret
that the config loader registered at startup. It is applied by the logging processor to every
string value and by the GoFax error classes to their messages.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MASK = "***"

# Secrets shorter than this are not replaced literally: masking "abc" everywhere would mangle
# ordinary words while protecting nothing worth protecting.
MIN_SECRET_LENGTH = 4

# token=<value> in a query string, a form body or free text (also access_token=, api_token=).
# The value ends at "&", whitespace, a quote or a closing bracket (a URL inside a repr).
_QUERY_TOKEN = re.compile(r"(?i)(token=)[^&\s\"'<>)\]}]+")

# "x-api-token: value", "'x-api-token': 'value'", "x-api-token=value" (header dumps, dict reprs).
_HEADER_TOKEN = re.compile(r"(?i)(x-api-token[\"']?\s*[:=]\s*[\"']?)[^\s\"',;}]+")

# "Authorization: Basic dXNlcjpwYXNz" / "Bearer …", in header dumps or dict reprs.
_AUTH_HEADER = re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?(?:basic|bearer)\s+)[^\s\"',;}]+")

_registered: set[str] = set()
_lock = threading.Lock()


def register_secret(secret: str | None) -> None:
    """Remember a secret so that every later ``redact`` call masks it.

    Called by the config loader for the GoFax token and passwords. Empty and very short
    values are ignored (see ``MIN_SECRET_LENGTH``).
    """
    if secret and len(secret) >= MIN_SECRET_LENGTH:
        with _lock:
            _registered.add(secret)


def registered_secrets() -> frozenset[str]:
    """A snapshot of the registered secrets (for tests and diagnostics)."""
    with _lock:
        return frozenset(_registered)


def _variants(secret: str) -> set[str]:
    # A secret may reach a log already URL-encoded (a password in a query string).
    return {secret, quote(secret, safe=""), quote_plus(secret, safe="")}


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Return ``text`` with credentials replaced by ``***``.

    Masks ``token=…`` values, ``x-api-token`` header values, ``Authorization: Basic/Bearer``
    values, and every occurrence of each registered or given secret (length >= 4).
    """
    if not text:
        return text
    text = _QUERY_TOKEN.sub(rf"\g<1>{MASK}", text)
    text = _HEADER_TOKEN.sub(rf"\g<1>{MASK}", text)
    text = _AUTH_HEADER.sub(rf"\g<1>{MASK}", text)
    candidates: set[str] = set()
    for secret in (*registered_secrets(), *secrets):
        if secret and len(secret) >= MIN_SECRET_LENGTH:
            candidates |= _variants(secret)
    # Longest first, so that a secret containing another is masked whole.
    for secret in sorted(candidates, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text
