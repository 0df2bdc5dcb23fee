"""The GoFax REST API: client, typed results, error classes and a faithful simulator."""

from bridge.gofax.client import DEFAULT_BASE_URL, GoFaxClient
from bridge.gofax.errors import GoFaxError, Permanent, Transient, Unauthorised, Uncertain
from bridge.gofax.models import (
    DocumentResult,
    FaxDocument,
    FaxStatus,
    ReceivedFax,
    SmsReply,
    SmsStatus,
    SubmitResult,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "DocumentResult",
    "FaxDocument",
    "FaxStatus",
    "GoFaxClient",
    "GoFaxError",
    "Permanent",
    "ReceivedFax",
    "SmsReply",
    "SmsStatus",
    "SubmitResult",
    "Transient",
    "Unauthorised",
    "Uncertain",
]
