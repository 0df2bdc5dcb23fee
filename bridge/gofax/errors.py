"""The four ways a GoFax call can fail, as DESIGN.md "Error classes" defines them.

The class decides what the caller does:

- ``Transient``    – nothing happened (or a read failed): retry later, honour ``retry_after``.
- ``Permanent``    – GoFax refused the request (``Success:false`` or a 4xx): do not retry.
- ``Uncertain``    – a submission was sent but its answer was lost: the fax/SMS may exist.
                     Never resend automatically.
- ``Unauthorised`` – 401: the token is wrong or expired; hold everything.

Every message is a sentence for an operator and is passed through ``bridge.redact`` so that
the API token (which v1.0 carries in the URL) can never leak through ``str()`` or ``repr()``.
"""

from __future__ import annotations

from collections.abc import Iterable

from bridge.redact import redact


class GoFaxError(Exception):
    """Base class. ``str(error)`` is a redacted, human-readable sentence."""

    def __init__(
        self,
        text: str,
        *,
        method: str | None = None,
        path: str | None = None,
        http_status: int | None = None,
    ) -> None:
        self.text = redact(text)
        self.method = method
        self.path = redact(path) if path else path
        self.http_status = http_status
        super().__init__(self.text)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.text!r})"


class Transient(GoFaxError):
    """Retry later: nothing was created (or it was only a read)."""

    def __init__(
        self,
        text: str,
        *,
        retry_after: float | None = None,
        method: str | None = None,
        path: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(text, method=method, path=path, http_status=http_status)
        self.retry_after = retry_after


class Permanent(GoFaxError):
    """GoFax refused the request; retrying the same request cannot help.

    ``message`` is GoFax's own ``Message`` (may be empty) and ``validation_errors`` its
    per-item reasons, both redacted and ready to quote in a notice.
    """

    def __init__(
        self,
        text: str,
        *,
        message: str = "",
        validation_errors: Iterable[str] = (),
        method: str | None = None,
        path: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(text, method=method, path=path, http_status=http_status)
        self.message = redact(message)
        self.validation_errors = [redact(item) for item in validation_errors]


class Uncertain(GoFaxError):
    """A submission whose answer was lost: GoFax may or may not have created the job."""


class Unauthorised(GoFaxError):
    """GoFax answered 401: the API token is wrong, expired, or not allowed this object."""
