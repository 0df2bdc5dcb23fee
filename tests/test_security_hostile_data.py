"""Hostile data from GoFax (and from senders) never breaks the mails we build.

Caller ids, CSIDs, SMS texts, file names, GoFax's result texts and the sender's own subject can
carry CR/LF, encoded words, HTML, path separators and huge lengths. Whatever they carry, every
mail we build has exactly the headers we meant (one To, one Subject of bounded length, no
injected Bcc), HTML bodies escape it, file names are sanitised, and lengths in headers are
capped. Tested through bridge.notices directly, through the intake's file-name code, and through
the whole daemon (simulator → receiver → notice in the SMTP sink).
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from daemon import Daemon, start, until
from hypothesis import given, settings
from hypothesis import strategies as st
from smtp_sink import SmtpSink
from test_intake_message import build, make_mail, make_pdf, raw_mime, raw_part

from bridge import config as cfg
from bridge.intake.documents import MAX_FILENAME_CHARS, TYPES, display_filename, safe_filename
from bridge.notices import IncomingFax, IncomingSms, Notices
from bridge.states import State
from bridge.store import Document, Job, NewOutgoing

# --- the hostile values ---------------------------------------------------------------------------

HOSTILE = {
    "crlf-bcc": "ACME\r\nBcc: victim@evil.example\r\nX-Evil: 1",
    "lf-bcc": "ACME\nBcc: victim@evil.example",
    "cr": "ACME\rBcc: victim@evil.example",
    "encoded-word": "=?utf-8?q?ACME=0D=0ABcc:_victim@evil.example?=",
    "html": "<script>alert('x')</script><b onmouseover=x>ACME</b>&amp;",
    "path": "../../../etc/passwd\\..\\boot.ini",
    "nul-and-controls": "AC\x00ME\x07\x1b[31m\u202eevil\u2028line",
    "huge": "A" * 200_000,
    "unicode": "Zürich – 東京 – 🦊" * 50,
}


def parsed(out: NewOutgoing) -> EmailMessage:
    msg = email.message_from_bytes(out.message, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def assert_well_formed(out: NewOutgoing, rcpt: str, *, extra: set[str] = frozenset()) -> EmailMessage:  # type: ignore[assignment]
    """Exactly our headers, one recipient, one-line bounded subject, CRLF only, no injected text
    in any header."""
    msg = parsed(out)
    names = [k.lower() for k in msg]
    expected = {"from", "to", "subject", "date", "message-id", "auto-submitted",
                "x-auto-response-suppress", "mime-version", "content-type"} | extra
    assert set(names) <= expected | {"in-reply-to", "references", "reply-to", "x-faxbridge-job",
                                     "x-faxbridge-fax", "x-faxbridge-sms", "x-faxbridge-alert"}
    assert len(names) == len(set(names)), names  # no header twice
    assert "bcc" not in names and "x-evil" not in names
    assert [a.addr_spec for a in msg["To"].addresses] == [rcpt]
    assert out.rcpt_to == [rcpt]
    subject = str(msg["Subject"])
    # Ours ("Fax to … FAILED: <reason, ≤100>: <their subject, ≤200>") stays well under 400.
    assert "\r" not in subject and "\n" not in subject and len(subject) <= 400
    assert b"\n" not in out.message.replace(b"\r\n", b"")  # CRLF line ends only
    head = out.message.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        assert len(line) <= 998
        # The hostile text may be *inside* a header value (harmless), never start a header.
        assert not line.lower().startswith((b"bcc:", b"x-evil:"))
    return msg


def bodies(msg: EmailMessage) -> tuple[str, str]:
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


@pytest.fixture
def notices() -> Notices:
    return Notices(cfg.defaults(), clock=lambda: 1_800_000_000.0)


# --- received faxes --------------------------------------------------------------------------------

@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_received_fax_with_hostile_caller_id_csid_and_file_name(notices: Notices, value: str) -> None:
    fax = IncomingFax(gofax_id=9001, from_number=value, to_number="61298765432", csid=value,
                      pages=1, received_utc=datetime(2026, 12, 4, 10, 0, tzinfo=UTC),
                      filename=value + ".pdf", data=make_pdf())
    out = notices.received_fax(fax, "reception@example.com")
    msg = assert_well_formed(out, "reception@example.com")
    [attachment] = list(msg.iter_attachments())
    name = attachment.get_filename()
    assert name is not None
    # Our own name, built from digits and time: nothing of GoFax's file name or CSID survives.
    assert name.startswith("fax-from-") and name.endswith(".pdf")
    assert "/" not in name and "\\" not in name and ".." not in name and len(name) < 80
    text, html = bodies(msg)
    assert "<script>" not in html and "onmouseover=x>" not in html
    if value == HOSTILE["html"]:
        assert "&lt;script&gt;" in html
    assert len(text) < 5_000 and len(html) < 20_000  # the CSID is capped, not copied whole
    assert attachment.get_content() == make_pdf()


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_sms_reply_with_hostile_text_and_number(notices: Notices, value: str) -> None:
    reply = IncomingSms(gofax_id=77, from_number=value, to_number=value, message=value,
                        received_utc=None)
    out = notices.sms_reply(reply, "alice@example.com", in_reply_to=value)
    msg = assert_well_formed(out, "alice@example.com")
    assert "In-Reply-To" not in msg  # a hostile Message-ID is not threaded under
    _text, html = bodies(msg)
    assert "<script>" not in html
    reply_to = msg["Reply-To"]
    if reply_to is not None:  # only digits survive into the address that answers by SMS
        [address] = reply_to.addresses
        local, _, domain = address.addr_spec.partition("@")
        assert local.isdigit() and domain == "sms.local"


# --- job notices: the sender's subject, file names, GoFax's result ---------------------------------

def job(**changes: object) -> Job:
    now = time.time()
    base = Job(id=1, mail_id=1, kind="fax", to_number="61298765432", state=State.FAILED,
               attempts=1, gofax_id=41340078, created_at=now, updated_at=now, next_attempt_at=now,
               first_attempt_at=now, final_at=now, last_error="", result="Busy", pages=2,
               sms_text="Hello", sms_parts=1, mail_from="alice@example.com",
               header_from="alice@example.com", message_id="<m1@example.com>", subject="Report",
               notify=True)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
@pytest.mark.parametrize("state", [State.SENT, State.FAILED, State.UNCERTAIN])
def test_job_notice_with_hostile_subject_result_and_file_names(notices: Notices, value: str,
                                                              state: State) -> None:
    docs = [Document(0, value, "application/pdf", b"%PDF-", 1, False),
            Document(1, "cover.pdf", "application/pdf", b"%PDF-", 1, True)]
    out = notices.job_outcome(job(state=state, subject=value, result=value, last_error=value,
                                  message_id=value), documents=docs)
    assert out is not None
    msg = assert_well_formed(out, "alice@example.com", extra={"x-faxbridge-job"})
    assert "In-Reply-To" not in msg
    _, html = bodies(msg)
    assert "<script>" not in html


def test_an_sms_job_notice_with_hostile_sms_text(notices: Notices) -> None:
    for value in HOSTILE.values():
        out = notices.job_outcome(job(kind="sms", state=State.FAILED, sms_text=value,
                                      to_number="61412345678"))
        assert out is not None
        msg = assert_well_formed(out, "alice@example.com", extra={"x-faxbridge-job"})
        assert "<script>" not in bodies(msg)[1]


def test_operator_alert_with_hostile_key_and_text(notices: Notices) -> None:
    for value in HOSTILE.values():
        out = notices.operator_alert(value, value, value, ["postmaster@example.com"])
        msg = assert_well_formed(out, "postmaster@example.com", extra={"x-faxbridge-alert"})
        assert "<script>" not in bodies(msg)[1]


_NOTICES = Notices(cfg.defaults(), clock=lambda: 1_800_000_000.0)


@given(st.text(max_size=400), st.text(max_size=200))
@settings(max_examples=200, deadline=None)
def test_any_csid_and_number_make_a_well_formed_mail(csid: str, number: str) -> None:
    notices = _NOTICES
    fax = IncomingFax(gofax_id=1, from_number=number, to_number="61298765432", csid=csid,
                      pages=None, received_utc=None, filename=csid, data=b"%PDF-1.4\n")
    assert_well_formed(notices.received_fax(fax, "reception@example.com"), "reception@example.com")


# --- file names a sender gives (they go to GoFax and into notices) ---------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    ("../../etc/passwd.pdf", "passwd.pdf"),
    ("C:\\Windows\\system32\\evil.pdf", "evil.pdf"),
    ("a\r\nBcc: x@evil.example.pdf", "a_Bcc_ x@evil.example.pdf"),
    ("<script>x</script>.pdf", "script_.pdf"),  # "/" splits: the base name is "script>.pdf"
    ("report\u202efdp.exe", "report_fdp.exe.pdf"),
    ("...hidden.pdf", "hidden.pdf"),
    ("CON.pdf", "CON_.pdf"),
    ("", "attachment-3.pdf"),
])
def test_sender_file_names_are_sanitised(raw: str, expected: str) -> None:
    pdf = next(t for t in TYPES if t.ext == "pdf")
    assert safe_filename(raw, pdf, 3) == expected


@given(st.text(max_size=500))
@settings(max_examples=500, deadline=None)
def test_any_file_name_becomes_safe(raw: str) -> None:
    pdf = next(t for t in TYPES if t.ext == "pdf")
    name = safe_filename(raw, pdf, 1)
    assert name.endswith(".pdf") and len(name) <= MAX_FILENAME_CHARS
    assert not any(c in name for c in '/\\\r\n\x00<>:"|?*')
    assert name.isprintable() and not name.startswith(".")
    shown = display_filename(raw)
    assert "\n" not in shown and "\r" not in shown and "/" not in shown


def test_an_encoded_hostile_file_name_through_the_intake() -> None:
    """RFC 2231-encoded CR/LF and path separators in an attachment's name."""
    part = raw_part("application/pdf", make_pdf(),
                    params="; filename*=utf-8''..%2F..%2Fx%0D%0ABcc%3A%20y%40evil.example.pdf")
    mail = build(raw_mime([part]))
    [doc] = mail.documents
    assert doc.filename == "x_Bcc_ y@evil.example.pdf"


def test_a_hostile_subject_through_the_intake_stays_one_line() -> None:
    mail = build(make_mail(subject="=?utf-8?q?Hi=0D=0ABcc:_victim@evil.example?=",
                           attachments=[(make_pdf(), "application/pdf", "a.pdf")]))
    assert "\r" not in mail.subject and "\n" not in mail.subject
    assert len(build(make_mail(subject="S" * 5000)).subject) <= 300


# --- through the whole daemon: GoFax (the simulator) → receiver → mail -----------------------------

async def test_hostile_received_fax_and_sms_reply_through_the_daemon(tmp_path: Path, sink: SmtpSink,
                                                                   daemons: list[Daemon]) -> None:
    d = await start(tmp_path, sink,
                    receive={"route": [{"number": "61298765432", "to": ["reception@example.com"]},
                                       {"number": "61400000000", "to": ["sms-desk@example.com"]}]},
                    sms={"reply_numbers": ["61400000000"]})
    daemons.append(d)
    evil = "<b>ACME</b>\r\nBcc: victim@evil.example\r\n" + "Z" * 5000
    d.sim.receive_fax(from_number="61733334444", csid=evil)
    d.sim.sms_reply(from_number="61412345678", to_number="61400000000", message=evil)
    received = await d.notices(2, timeout=15)
    for got in received:
        assert got.rcpt_tos in (["reception@example.com"], ["sms-desk@example.com"])
        msg = got.message
        names = [k.lower() for k in msg]
        assert "bcc" not in names and len(names) == len(set(names))
        assert b"victim@evil" not in got.data.split(b"\r\n\r\n", 1)[0]
        assert "\n" not in str(msg["Subject"])
        html = msg.get_body(("html",))
        assert html is not None and "<b>ACME</b>" not in html.get_content()
    await until(lambda: len(sink.messages) == 2, 2)
