"""Typed GoFax results and the ONE place that knows the JSON shapes.

GoFax publishes only part of its response shapes (see shared/gofax-api.md), so every parse
function here is lenient: unknown fields are ignored, missing optional fields become
``None``/empty, keys are matched case-insensitively, booleans may be ``true``/``"True"``,
numbers may be numeric strings, and timestamps are UTC without a zone ("2026-12-04T10:10:45").
Adapting to the real API should be a change to this file only.

A shape that cannot be made sense of at all (no id where one is required) raises
``ParseError``; the client turns that into the right error class for the call.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = [
    "DocumentResult",
    "Envelope",
    "FaxDocument",
    "FaxStatus",
    "ParseError",
    "ReceivedFax",
    "SmsOutcome",
    "SmsReply",
    "SmsStatus",
    "SubmitResult",
    "parse_check_access",
    "parse_envelope",
    "parse_fax_document",
    "parse_received_faxes",
    "parse_resend_fax",
    "parse_send_fax",
    "parse_send_fax_status",
    "parse_send_sms",
    "parse_sms_replies",
    "parse_sms_status",
    "render_validation_error",
]


class ParseError(ValueError):
    """A GoFax answer that does not have the shape we rely on."""


# --------------------------------------------------------------------------- lenient scalars


def _field(obj: Any, *names: str) -> Any:
    """``obj[name]`` for the first of ``names`` present, matching keys case-insensitively."""
    if not isinstance(obj, Mapping):
        return None
    for name in names:
        if name in obj:
            return obj[name]
    lowered = {str(key).lower(): value for key, value in obj.items()}
    for name in names:
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


def as_bool(value: Any) -> bool | None:
    """true/True/"true"/"True"/1/"1"/"yes" → True; the false spellings → False; else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in {"true", "1", "yes", "y"}:
            return True
        if word in {"false", "0", "no", "n"}:
            return False
    return None


def as_int(value: Any) -> int | None:
    """An int from an int, an integral float, or a numeric string; else None."""
    if isinstance(value, bool):  # bool is an int subclass, but True is not a page count
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        if re.fullmatch(r"[+-]?\d+\.0*", text):
            return int(float(text))
    return None


def as_str(value: Any) -> str:
    """The value as text; None → ""."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def as_opt_str(value: Any) -> str | None:
    """The value as text, or None when missing or empty."""
    text = as_str(value).strip()
    return text or None


_DOTNET_DATE = re.compile(r"/Date\((-?\d+)(?:[+-]\d{4})?\)/")
_FRACTION = re.compile(r"(\.\d{6})\d+")


def as_utc(value: Any) -> datetime | None:
    """Parse a GoFax timestamp into an aware UTC datetime, or None.

    GoFax writes UTC without a zone ("2026-12-04T10:10:45"); we also accept a trailing "Z",
    an explicit offset, 7-digit .NET fractions and the old "/Date(ms)/" form.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    dotnet = _DOTNET_DATE.fullmatch(text)
    if dotnet:
        return datetime.fromtimestamp(int(dotnet.group(1)) / 1000, tz=UTC)
    text = _FRACTION.sub(r"\1", text)  # Python accepts at most microseconds
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _required_int(obj: Any, *names: str, what: str) -> int:
    value = as_int(_field(obj, *names))
    if value is None:
        raise ParseError(f"GoFax's answer has no usable {what}")
    return value


def _list_of_objects(value: Any, what: str) -> list[Mapping[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ParseError(f"GoFax's answer for {what} is not a list")
    return [item for item in value if isinstance(item, Mapping)]


# --------------------------------------------------------------------------- envelope


@dataclass(frozen=True)
class Envelope:
    """``{"Success", "Message", "ValidationErrors", "Response"}``."""

    success: bool
    message: str
    validation_errors: tuple[str, ...]
    response: Any
    raw: Any


def render_validation_error(item: Any) -> str:
    """One ``ValidationErrors`` entry as readable text (entries may be strings or objects)."""
    if isinstance(item, Mapping):
        where = as_opt_str(_field(item, "PropertyName", "Field", "Key", "Name", "Property"))
        why = as_opt_str(_field(item, "ErrorMessage", "Message", "Error", "Reason", "Description"))
        if where and why:
            return f"{where}: {why}"
        if why or where:
            return why or where or ""
        return "; ".join(f"{key}={as_str(value)}" for key, value in item.items())
    if isinstance(item, list):
        return "; ".join(render_validation_error(sub) for sub in item)
    return as_str(item)


def _validation_errors(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, Mapping):
        # ASP.NET ModelState style: {"SendTo": ["must be digits"], ...}
        rendered = []
        for key, reasons in value.items():
            reasons = reasons if isinstance(reasons, list) else [reasons]
            rendered.extend(f"{key}: {render_validation_error(reason)}" for reason in reasons)
        return tuple(rendered)
    if not isinstance(value, list):
        value = [value]
    return tuple(text for text in (render_validation_error(item) for item in value) if text)


# "Message" alone does not make an envelope: a bare status object has one too.
_ENVELOPE_KEYS = frozenset({"success", "response", "validationerrors"})


def _is_envelope(obj: Any) -> bool:
    return isinstance(obj, Mapping) and any(str(key).lower() in _ENVELOPE_KEYS for key in obj)


def parse_envelope(obj: Any) -> Envelope:
    """Read the standard envelope. A bare value (not an object) counts as a successful
    ``Response``; a missing ``Success`` counts as success unless errors are listed."""
    if not _is_envelope(obj):
        return Envelope(True, "", (), obj, obj)
    errors = _validation_errors(_field(obj, "ValidationErrors", "Errors"))
    success = as_bool(_field(obj, "Success"))
    if success is None:
        success = not errors
    return Envelope(
        success=success,
        message=as_str(_field(obj, "Message")),
        validation_errors=errors,
        response=_field(obj, "Response"),
        raw=obj,
    )


# --------------------------------------------------------------------------- submissions


@dataclass(frozen=True)
class DocumentResult:
    filename: str
    message: str
    submitted: bool | None


@dataclass(frozen=True)
class SubmitResult:
    id: int
    message: str
    documents: tuple[DocumentResult, ...] = ()


def parse_check_access(obj: Any) -> bool:
    """``CheckHaveAccess``: the body is ``true`` (assumed) or an envelope around it."""
    envelope = parse_envelope(obj)
    if not envelope.success:
        return False
    value = envelope.response if envelope.response is not None else envelope.raw
    verdict = as_bool(value)
    # A 200 with an odd body still means the token was accepted (a bad one gets 401).
    return True if verdict is None else verdict


def _parse_documents(value: Any) -> tuple[DocumentResult, ...]:
    return tuple(
        DocumentResult(
            filename=as_str(_field(item, "Filename", "FileName", "Name")),
            message=as_str(_field(item, "Message", "Status")),
            submitted=as_bool(_field(item, "Submitted")),
        )
        for item in _list_of_objects(value, "Documents")
    )


def _submitted_id(envelope: Envelope) -> int:
    # Response is the bare id (documented); tolerate an object holding it.
    response = envelope.response
    if isinstance(response, Mapping):
        return _required_int(response, "ID", "Id", "SendFaxID", "MessageID", what="job id")
    value = as_int(response)
    if value is None:
        raise ParseError("GoFax's answer has no usable job id")
    return value


def parse_send_fax(obj: Any) -> SubmitResult:
    """``PUT /v1.0/SendFax``: ``Response`` = Send Fax ID; ``Documents`` beside it (or inside
    ``Response`` when that is an object)."""
    envelope = parse_envelope(obj)
    documents = _field(envelope.raw, "Documents")
    if documents is None and isinstance(envelope.response, Mapping):
        documents = _field(envelope.response, "Documents")
    return SubmitResult(
        id=_submitted_id(envelope),
        message=envelope.message,
        documents=_parse_documents(documents),
    )


def parse_send_sms(obj: Any) -> SubmitResult:
    """``PUT /v1.0/SMS``: ``Response`` = message id."""
    envelope = parse_envelope(obj)
    return SubmitResult(id=_submitted_id(envelope), message=envelope.message)


def parse_resend_fax(obj: Any) -> int:
    """``POST /v1.0/SendFax/{id}/Resend``: ``Response`` = the new fax id."""
    return _submitted_id(parse_envelope(obj))


# --------------------------------------------------------------------------- fax status

FINAL_FAX_STATUSES = frozenset({"sent", "failed"})


@dataclass(frozen=True)
class FaxStatus:
    id: int
    send_to: str
    client_reference: str | None
    status: str
    message: str
    pages: int | None
    attempts: int | None
    submitted_utc: datetime | None
    completed_utc: datetime | None

    @property
    def is_final(self) -> bool:
        return self.status.strip().lower() in FINAL_FAX_STATUSES

    @property
    def is_success(self) -> bool:
        return self.status.strip().lower() == "sent"


def parse_send_fax_status(obj: Any) -> FaxStatus:
    """``GET /v1.0/SendFax/{id}`` (shape assumed)."""
    item = parse_envelope(obj).response
    if not isinstance(item, Mapping):
        raise ParseError("GoFax's fax status is not an object")
    return FaxStatus(
        id=_required_int(item, "ID", "Id", "SendFaxID", what="fax id"),
        send_to=as_str(_field(item, "SendTo", "Recipient")),
        client_reference=as_opt_str(_field(item, "ClientReference")),
        status=as_str(_field(item, "Status")).strip(),
        message=as_str(_field(item, "Message")),
        pages=as_int(_field(item, "Pages")),
        attempts=as_int(_field(item, "Attempts")),
        submitted_utc=as_utc(_field(item, "SubmittedUtc", "Submitted")),
        completed_utc=as_utc(_field(item, "CompletedUtc", "Completed")),
    )


# --------------------------------------------------------------------------- received faxes


@dataclass(frozen=True)
class ReceivedFax:
    id: int
    from_number: str  # "" when the caller id was withheld
    to_number: str
    csid: str
    pages: int | None
    received_utc: datetime | None
    retrieved: bool | None  # only the Details list carries it


def _parse_received_fax(item: Mapping[str, Any]) -> ReceivedFax:
    return ReceivedFax(
        id=_required_int(item, "ID", "Id", "FaxID", what="received fax id"),
        from_number=as_str(_field(item, "FromNumber", "From")).strip(),
        to_number=as_str(_field(item, "ToNumber", "To")).strip(),
        csid=as_str(_field(item, "CSID", "Csid")).strip(),
        pages=as_int(_field(item, "Pages")),
        received_utc=as_utc(_field(item, "ReceivedUtc", "Received")),
        retrieved=as_bool(_field(item, "Retrieved")),
    )


def parse_received_faxes(obj: Any) -> list[ReceivedFax]:
    """``GET …/UnretrievedFaxes`` and ``GET …/Details/{number}`` (shape assumed)."""
    items = _list_of_objects(parse_envelope(obj).response, "received faxes")
    return [_parse_received_fax(item) for item in items]


@dataclass(frozen=True)
class FaxDocument:
    filename: str
    content_type: str
    data: bytes


def _decode_base64(text: str) -> bytes:
    # Tolerate a data: URL prefix, line breaks and missing padding; refuse real garbage.
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    compact = re.sub(r"\s+", "", text)
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        try:
            return base64.urlsafe_b64decode(compact)
        except (binascii.Error, ValueError) as exc:
            raise ParseError("GoFax's document data is not valid base64") from exc


def parse_fax_document(obj: Any) -> FaxDocument:
    """``GET /v1.0/ReceiveFax/{faxId}/Document`` (shape assumed)."""
    item = parse_envelope(obj).response
    if isinstance(item, str):  # a bare base64 string
        item = {"Data": item}
    if not isinstance(item, Mapping):
        raise ParseError("GoFax's fax document is not an object")
    data = _field(item, "Data", "Content", "Document")
    if not isinstance(data, str):
        raise ParseError("GoFax's fax document has no Data")
    return FaxDocument(
        filename=as_str(_field(item, "Filename", "FileName", "Name")),
        content_type=as_str(_field(item, "ContentType", "MimeType")) or "application/pdf",
        data=_decode_base64(data),
    )


# --------------------------------------------------------------------------- SMS

SmsOutcome = Literal["sent", "failed", "pending"]

# GoFax's published status strings (gofax-api.md), lower-cased, without a trailing full stop.
_SMS_OUTCOMES: dict[str, SmsOutcome] = {
    "initialised": "pending",
    "preparing for transmission": "pending",
    "transmission in progress": "pending",
    "sent to carrier for delivery": "pending",
    "message successfully delivered": "sent",
    # A reply can only come from a handset that received the message.
    "message reply received ok": "sent",
    "failed to deliver the message": "failed",
    "message not delivered in allowable time frame": "failed",
    "the destination mobile number is invalid": "failed",
    "insufficient credit. please check your account status": "failed",
    "account is unverified": "failed",
    "cancelled": "failed",
    "error sending message": "failed",
}


def sms_outcome(status: str) -> SmsOutcome:
    """Map a GoFax SMS status string to sent/failed/pending; unknown strings are pending."""
    key = " ".join(status.split()).lower().rstrip(".")
    return _SMS_OUTCOMES.get(key, "pending")


@dataclass(frozen=True)
class SmsStatus:
    message_id: int
    status: str
    sender: str = ""
    message: str = ""
    from_number: str = ""
    issued_utc: datetime | None = None

    @property
    def outcome(self) -> SmsOutcome:
        return sms_outcome(self.status)

    @property
    def is_final(self) -> bool:
        return self.outcome != "pending"


def parse_sms_status(obj: Any) -> SmsStatus:
    """``GET /v1.0/SMS/{id}`` (documented in part)."""
    item = parse_envelope(obj).response
    if isinstance(item, list) and item and isinstance(item[0], Mapping):
        item = item[0]  # tolerate a one-element list
    if not isinstance(item, Mapping):
        raise ParseError("GoFax's SMS status is not an object")
    return SmsStatus(
        message_id=_required_int(item, "MessageID", "ID", "Id", what="SMS id"),
        status=as_str(_field(item, "Status")).strip(),
        sender=as_str(_field(item, "Sender")),
        message=as_str(_field(item, "Message", "Body")),
        from_number=as_str(_field(item, "FromNumber")),
        issued_utc=as_utc(_field(item, "IssuedUtc")),
    )


@dataclass(frozen=True)
class SmsReply:
    id: int
    message_id: int | None  # the SMS replied to, when GoFax knows it
    from_number: str
    to_number: str
    message: str
    received_utc: datetime | None


def parse_sms_replies(obj: Any) -> list[SmsReply]:
    """``GET /v1.0/SMS/Replies/{number}`` (shape assumed)."""
    items = _list_of_objects(parse_envelope(obj).response, "SMS replies")
    return [
        SmsReply(
            id=_required_int(item, "ID", "Id", "ReplyID", what="SMS reply id"),
            message_id=as_int(_field(item, "MessageID", "MessageId")),
            from_number=as_str(_field(item, "From", "FromNumber")).strip(),
            to_number=as_str(_field(item, "To", "ToNumber")).strip(),
            message=as_str(_field(item, "Message", "Body")),
            received_utc=as_utc(_field(item, "ReceivedUtc", "Received")),
        )
        for item in items
    ]
