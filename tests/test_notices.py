"""Notices: headers, threading, subjects, escaping, templates, attachments."""

from __future__ import annotations

import dataclasses
import email
import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import jinja2
import pytest

from bridge import config as cfg
from bridge.notices import (
    IncomingFax,
    IncomingSms,
    NoticeError,
    Notices,
    advice_for,
    clean_header_text,
    clean_message_id,
)
from bridge.states import State
from bridge.store import Document, Job, NewOutgoing

NOW = 1796374800.0  # 2026-12-04 09:00 UTC (20:00 in Sydney)
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n\x00\xff\r\n\n\r"


def make_job(**changes: Any) -> Job:
    job = Job(id=42, mail_id=7, kind="fax", to_number="61298765432", state=State.SENT, attempts=1,
              gofax_id=41340078, created_at=NOW - 600, updated_at=NOW, next_attempt_at=NOW,
              first_attempt_at=NOW - 590, final_at=NOW, last_error="",
              result="Fax successfully sent", pages=3, sms_text=None, sms_parts=None,
              mail_from="alice@example.com", header_from="Alice <alice@example.com>",
              message_id="<orig-1@example.com>", subject="Quarterly report", notify=True)
    return dataclasses.replace(job, **changes)


def sms_job(**changes: Any) -> Job:
    base = {"kind": "sms", "to_number": "61412345678", "pages": None, "sms_parts": 1,
            "sms_text": "See you at 10?", "result": "Message successfully delivered"}
    return make_job(**{**base, **changes})


@pytest.fixture
def notices() -> Notices:
    return Notices(cfg.defaults(), clock=lambda: NOW)


def parse(out: NewOutgoing) -> EmailMessage:
    msg = email.message_from_bytes(out.message, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def subject_of(msg: EmailMessage) -> str:
    # A subject that just fits on a line of its own is folded as "Subject:\r\n Fax to …", which
    # is valid; Python's parser then keeps the fold's space, mail clients drop it.
    return str(msg["Subject"]).strip()


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return part.get_content().replace("\r\n", "\n")


def html_of(msg: EmailMessage) -> str:
    part = msg.get_body(("html",))
    assert part is not None
    return part.get_content()


def override_config(folder: Path) -> cfg.Config:
    return cfg.defaults(notices=cfg.NoticesConfig(templates=str(folder)))


# --- subjects -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("job", "subject"), [
    (make_job(), "Fax to +61 2 9876 5432 sent (3 pages): Quarterly report"),
    (make_job(pages=1), "Fax to +61 2 9876 5432 sent (1 page): Quarterly report"),
    (make_job(pages=None), "Fax to +61 2 9876 5432 sent: Quarterly report"),
    (make_job(subject=""), "Fax to +61 2 9876 5432 sent (3 pages)"),
    (make_job(state=State.FAILED, result="Busy"),
     "Fax to +61 2 9876 5432 FAILED: Busy: Quarterly report"),
    (make_job(state=State.FAILED, result="", last_error="Validation failed: SendTo is invalid",
              subject=""),
     "Fax to +61 2 9876 5432 FAILED: Validation failed: SendTo is invalid"),
    (make_job(state=State.FAILED, result="", last_error=""),
     "Fax to +61 2 9876 5432 FAILED: no reason was given: Quarterly report"),
    (make_job(state=State.UNCERTAIN, result="", gofax_id=None),
     "Fax to +61 2 9876 5432 may not have been sent (uncertain): Quarterly report"),
    (sms_job(), "SMS to +61 412 345 678 delivered (1 part)"),
    (sms_job(sms_parts=3), "SMS to +61 412 345 678 delivered (3 parts)"),
    (sms_job(state=State.FAILED, result="The destination mobile number is invalid"),
     "SMS to +61 412 345 678 FAILED: The destination mobile number is invalid"),
    (sms_job(state=State.UNCERTAIN, result=""),
     "SMS to +61 412 345 678 may not have been sent (uncertain)"),
])
def test_subject_per_outcome(notices: Notices, job: Job, subject: str) -> None:
    out = notices.job_outcome(job)
    assert out is not None
    assert subject_of(parse(out)) == subject


def test_notice_headers_are_threaded_under_the_original(notices: Notices) -> None:
    out = notices.job_outcome(make_job())
    assert out is not None
    assert (out.kind, out.ref) == ("notice", "job:42:sent:1")
    assert out.mail_from == "faxbridge@localhost"   # bounces of notices reach the operator
    assert list(out.rcpt_to) == ["alice@example.com"]
    msg = parse(out)
    assert msg["From"] == "Fax Bridge <faxbridge@localhost>"
    assert msg["To"] == "alice@example.com"
    assert msg["In-Reply-To"] == "<orig-1@example.com>"
    assert msg["References"] == "<orig-1@example.com>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Faxbridge-Job"] == "42"
    assert msg["Message-ID"].endswith("@localhost>")
    assert msg["Date"].datetime.timestamp() == NOW
    assert msg.get_content_type() == "multipart/alternative"


def test_each_outcome_has_its_own_ref(notices: Notices) -> None:
    refs = {notices.job_outcome(make_job(state=s)).ref  # type: ignore[union-attr]
            for s in (State.SENT, State.FAILED, State.UNCERTAIN)}
    assert refs == {"job:42:sent:1", "job:42:failed:1", "job:42:uncertain:1"}
    # Failed, retried by the operator (a new submission), failed again: a second notice.
    again = notices.job_outcome(make_job(state=State.FAILED, attempts=2))
    assert again is not None and again.ref == "job:42:failed:2"


# --- who is (not) told --------------------------------------------------------------------------

def test_no_notice_to_the_null_sender(notices: Notices) -> None:
    assert notices.job_outcome(make_job(mail_from="")) is None


def test_no_notice_when_notify_is_off(notices: Notices) -> None:
    # Intake sets notify=False for auto-submitted or list mail (RFC 3834).
    assert notices.job_outcome(make_job(notify=False, state=State.FAILED)) is None


def test_sms_success_can_be_kept_quiet() -> None:
    quiet = Notices(cfg.defaults(sms=cfg.SmsConfig(notify_success=False)), clock=lambda: NOW)
    assert quiet.job_outcome(sms_job()) is None
    assert quiet.job_outcome(sms_job(state=State.FAILED, result="Cancelled")) is not None
    assert quiet.job_outcome(make_job()) is not None   # faxes are always confirmed


def test_only_final_or_uncertain_jobs_are_notified(notices: Notices) -> None:
    with pytest.raises(ValueError, match="queued"):
        notices.job_outcome(make_job(state=State.QUEUED))


# --- header injection and escaping ----------------------------------------------------------------

@pytest.mark.parametrize("subject", [
    "Hello\r\nBcc: evil@x.example",
    "Hello\nBcc: evil@x.example",
    "Hello\rBcc: evil@x.example",
    "Hello\x00\x0b\x0c\x1b\x85\u2028Bcc: evil@x.example",
    # EmailMessage decodes encoded words in values it is given: this would inject a header.
    "=?utf-8?q?Hello=0D=0ABcc:_evil@x.example?=",
    "a =?utf-8?b?DQpCY2M6IGV2aWxAeC5leGFtcGxl?= b",
])
def test_hostile_subject_stays_in_one_header(notices: Notices, subject: str) -> None:
    out = notices.job_outcome(make_job(subject=subject))
    assert out is not None
    msg = parse(out)
    assert "Bcc" not in msg
    assert b"\nBcc:" not in out.message
    assert len(msg.get_all("Subject") or []) == 1
    assert "\n" not in subject_of(msg) and "\r" not in subject_of(msg)
    assert subject_of(msg).startswith("Fax to +61 2 9876 5432 sent (3 pages): ")


@pytest.mark.parametrize("message_id", [
    "<a@b>\r\nBcc: evil@x.example",
    "<a@b>=?utf-8?q?=0D=0ABcc:_evil@x.example?=",
    "<=?utf-8?q?a=0D=0ABcc:_evil@x.example?=@x>",
    "not-a-msgid",
    "",
])
def test_hostile_message_id_is_not_threaded(notices: Notices, message_id: str) -> None:
    out = notices.job_outcome(make_job(message_id=message_id))
    assert out is not None
    msg = parse(out)
    assert "Bcc" not in msg
    assert "In-Reply-To" not in msg and "References" not in msg


def test_structure_check_catches_what_a_sanitiser_misses(notices: Notices,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Defence in depth: with the Message-ID check switched off, the encoded-word trick gets
    # through EmailMessage, and the final re-parse refuses the message.
    monkeypatch.setattr("bridge.notices.clean_message_id", lambda value: value)
    with pytest.raises(NoticeError, match="malformed"):
        notices.job_outcome(make_job(message_id="<a@b>=?utf-8?q?=0D=0ABcc:_evil@x.example?="))


def test_long_subject_is_capped(notices: Notices) -> None:
    out = notices.job_outcome(make_job(subject="word " * 200))
    assert out is not None
    subject = subject_of(parse(out))
    assert subject.endswith("…")
    assert len(subject) <= len("Fax to +61 2 9876 5432 sent (3 pages): ") + 200


def test_html_is_escaped_in_the_html_part_only(notices: Notices) -> None:
    hostile = "<script>alert(1)</script> & <b>bold</b>"
    out = notices.job_outcome(make_job(subject=hostile, state=State.FAILED, result="<i>Busy</i>",
                                       last_error="<img src=x onerror=alert(2)>"))
    assert out is not None
    msg = parse(out)
    html, text = html_of(msg), text_of(msg)
    assert "<script>" not in html and "<img" not in html and "<i>Busy" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html
    assert hostile in text                        # plain text needs no escaping
    assert "<img src=x onerror=alert(2)>" in text
    assert subject_of(msg).endswith(hostile)


def test_non_ascii_subject_survives_and_the_message_is_7bit(notices: Notices) -> None:
    out = notices.job_outcome(make_job(subject="Überweisung – März 🧾", sms_text="é"))
    assert out is not None
    out.message.decode("ascii")   # no 8-bit bytes: any smarthost takes it, 8BITMIME or not
    msg = parse(out)
    assert subject_of(msg).endswith("Überweisung – März 🧾")
    assert "Überweisung – März 🧾" in text_of(msg)


def test_serialised_with_crlf_only(notices: Notices) -> None:
    outs = [notices.job_outcome(make_job(state=State.FAILED, result="Busy",
                                         last_error="line one\nline two")),
            notices.received_fax(IncomingFax(9001, "61733334444", "61298765432", "ACME", 2,
                                             datetime(2026, 12, 3, 22, 0), "9001.pdf", PDF),
                                 "reception@example.com"),
            notices.sms_reply(IncomingSms(555, "61412345678", "61400000000", "a\nb\rc\r\nd", None),
                              "alice@example.com", in_reply_to="<orig-1@example.com>",
                              sms_domain="sms.local")]
    for out in outs:
        assert out is not None
        data = out.message
        assert data.count(b"\n") == data.count(b"\r\n") > 0
        assert data.count(b"\r") == data.count(b"\r\n")
        assert max(len(line) for line in data.split(b"\r\n")) <= 998
        msg = parse(out)
        assert not msg.defects
        assert all(not part.defects for part in msg.walk())


# --- content ------------------------------------------------------------------------------------

def test_sent_notice_body(notices: Notices) -> None:
    docs = [Document(0, "cover.pdf", "application/pdf", b"", 1, True),
            Document(1, "report.pdf", "application/pdf", b"", 2, False)]
    out = notices.job_outcome(make_job(), documents=docs)
    assert out is not None
    text = text_of(parse(out))
    assert "Your fax to +61 2 9876 5432 has been sent (3 pages)." in text
    assert 'GoFax reported: "Fax successfully sent".' in text
    assert "cover page (1 page), report.pdf (2 pages)" in text
    assert "Fri 4 Dec 2026, 20:00 AEDT" in text        # [receive] timezone, Australia/Sydney
    assert "41340078" in text and "42" in text


@pytest.mark.parametrize(("reason", "expected"), [
    ("Busy", "The line was busy"),
    ("No answer", "Nothing answered the call"),
    ("Not a fax machine", "not as a fax machine"),
    ("Validation failed: SendTo is invalid", "The number seems to be wrong"),
    ("Validation failed: Document 'x.exe' has an unsupported extension", "supported type"),
    ("Insufficient credit. Please check your account status", "fax service account"),
    ("gave up after 9 attempts: connection refused", "gave up"),
    ("Something odd", "If you expected this fax to go through"),
])
def test_failed_notice_says_what_to_do(notices: Notices, reason: str, expected: str) -> None:
    out = notices.job_outcome(make_job(state=State.FAILED, result="", last_error=reason))
    assert out is not None
    msg = parse(out)
    assert expected in " ".join(text_of(msg).split())
    assert expected in " ".join(html_of(msg).split())


def test_failed_notice_quotes_validation_errors(notices: Notices) -> None:
    error = ("Validation failed: Document 'a.doc' could not be converted; "
             "Document 'b.xyz' has an unsupported extension")
    out = notices.job_outcome(make_job(state=State.FAILED, result="Failed", last_error=error))
    assert out is not None
    text = text_of(parse(out))
    assert "Reason: Failed" in text
    assert f"  > {error}" in text


def test_sms_failed_advice(notices: Notices) -> None:
    out = notices.job_outcome(sms_job(state=State.FAILED,
                                      result="The destination mobile number is invalid"))
    assert out is not None
    text = " ".join(text_of(parse(out)).split())
    assert "The mobile number seems to be invalid" in text
    assert "@sms.local" in text
    assert "> See you at 10?" in text


def test_uncertain_notice_explains_and_points_to_the_portal(notices: Notices) -> None:
    out = notices.job_outcome(make_job(state=State.UNCERTAIN, result="", gofax_id=None,
                                       last_error="timeout after the request was sent"))
    assert out is not None
    text = " ".join(text_of(parse(out)).split())
    assert "may or may not have been sent" in text
    assert "will NOT be sent again automatically" in text
    assert "GoFax portal" in text and "faxbridge retry 42" in text
    known = notices.job_outcome(make_job(state=State.UNCERTAIN, result="", gofax_id=777))
    assert known is not None
    assert "fax ID 777" in " ".join(text_of(parse(known)).split())


@pytest.mark.parametrize(("text", "key"), [
    ("Busy", "busy"), ("No answer", "no_answer"), ("Not a fax machine", "not_fax"),
    ("The destination mobile number is invalid", "number"),
    ("Message not delivered in allowable time frame", "unreachable"),
    ("Account is unverified", "account"), ("Error during transmission", "other"),
    ("Validation failed: Document x.pdf is password protected", "document"),
])
def test_advice_for(text: str, key: str) -> None:
    assert advice_for(text) == key


# --- templates ----------------------------------------------------------------------------------

def test_override_folder_wins(tmp_path: Path) -> None:
    (tmp_path / "fax_sent.txt.j2").write_text(
        '{% extends "base.txt.j2" %}{% block content %}CUSTOM {{ number }}\n{% endblock %}')
    notices = Notices(override_config(tmp_path), clock=lambda: NOW)
    out = notices.job_outcome(make_job())
    assert out is not None
    msg = parse(out)
    assert text_of(msg).startswith("CUSTOM +61 2 9876 5432\n")
    assert "has been sent" in html_of(msg)            # not overridden: the shipped one


def test_strict_undefined_raises_on_a_missing_variable(tmp_path: Path) -> None:
    (tmp_path / "fax_failed.txt.j2").write_text("Oops: {{ no_such_variable }}\n")
    notices = Notices(override_config(tmp_path), clock=lambda: NOW)
    with pytest.raises(NoticeError, match=r"fax_failed\.txt\.j2") as caught:
        notices.job_outcome(make_job(state=State.FAILED, result="Busy"))
    assert isinstance(caught.value.__cause__, jinja2.UndefinedError)
    with pytest.raises(NoticeError):
        notices.self_test()            # what `faxbridge check` would run


def test_override_with_a_syntax_error_fails_at_start(tmp_path: Path) -> None:
    (tmp_path / "alert.html.j2").write_text("{% if %}\n")
    with pytest.raises(NoticeError, match=r"alert\.html\.j2 line 1"):
        Notices(override_config(tmp_path))


def test_missing_override_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NoticeError, match="is not a folder"):
        Notices(override_config(tmp_path / "nope"))


def test_html_autoescape_applies_to_html_j2_templates_only(tmp_path: Path) -> None:
    (tmp_path / "alert.html.j2").write_text("H:{{ text }}")
    (tmp_path / "alert.txt.j2").write_text("T:{{ text }}")
    notices = Notices(override_config(tmp_path), clock=lambda: NOW)
    msg = parse(notices.operator_alert("k", "s", "<x>", ["postmaster@localhost"]))
    assert html_of(msg).strip() == "H:&lt;x&gt;"
    assert text_of(msg).strip() == "T:<x>"


def test_shipped_templates_render(notices: Notices) -> None:
    notices.self_test()


# --- received faxes -----------------------------------------------------------------------------

def test_received_fax_mail(notices: Notices) -> None:
    fax = IncomingFax(gofax_id=9001, from_number="61733334444", to_number="61298765432",
                      csid="ACME LEGAL", pages=2, received_utc=datetime(2026, 12, 3, 22, 0),
                      filename="9001.pdf", data=PDF)
    out = notices.received_fax(fax, "Reception@Example.com")
    assert (out.kind, out.ref) == ("fax_in", "fax:9001:reception@example.com")
    assert list(out.rcpt_to) == ["Reception@Example.com"]
    assert out.mail_from == "faxbridge@localhost"
    msg = parse(out)
    assert subject_of(msg) == "Fax from +61 7 3333 4444 (2 pages)"
    assert msg["To"] == "Reception@Example.com"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Faxbridge-Fax"] == "9001"
    assert "In-Reply-To" not in msg and "References" not in msg
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_filename() == "fax-from-61733334444-20261204-0900.pdf"
    assert attachment.get_content() == PDF                   # byte-exact
    text = " ".join(text_of(msg).split())
    assert "You have received a fax from +61 7 3333 4444" in text
    assert "ACME LEGAL" in text and "2 pages" in text
    assert "Fri 4 Dec 2026, 09:00 AEDT" in text
    assert "+61 2 9876 5432" in text                       # which of our numbers got it


def test_received_fax_with_withheld_caller_id(notices: Notices) -> None:
    fax = IncomingFax(9002, "", "61298765432", "", 1,
                      datetime(2026, 12, 3, 22, 30, tzinfo=UTC), "9002.pdf", PDF)
    out = notices.received_fax(fax, "r@example.com")
    msg = parse(out)
    assert subject_of(msg) == "Fax from withheld number (1 page)"
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_filename() == "fax-from-withheld-20261204-0930.pdf"
    assert "withheld number (no caller ID)" in text_of(msg)
    assert "withheld number" in html_of(msg)


def test_received_fax_csid_cannot_inject(notices: Notices) -> None:
    fax = IncomingFax(9003, "61733334444", "61298765432", "<b>X</b>\r\nBcc: e@x", 1, None,
                      "9003.pdf", PDF)
    msg = parse(notices.received_fax(fax, "r@example.com"))
    assert "Bcc" not in msg
    assert "&lt;b&gt;X&lt;/b&gt;" in html_of(msg)


# --- SMS replies --------------------------------------------------------------------------------

def test_sms_reply_is_threaded_and_answerable(notices: Notices) -> None:
    reply = IncomingSms(gofax_id=555, from_number="61412345678", to_number="61400000000",
                        message="Yes <b>see</b> you then\r\nBcc: evil@x.example",
                        received_utc=datetime(2026, 12, 3, 22, 5))
    out = notices.sms_reply(reply, "Alice@Example.com", in_reply_to="<orig-1@example.com>",
                            sms_domain="sms.example")
    assert (out.kind, out.ref) == ("sms_in", "sms:555:alice@example.com")
    msg = parse(out)
    assert subject_of(msg) == "SMS from +61 412 345 678"
    assert msg["Reply-To"] == "61412345678@sms.example"
    assert msg["In-Reply-To"] == msg["References"] == "<orig-1@example.com>"
    assert "Bcc" not in msg
    text = text_of(msg)
    assert text.startswith("Yes <b>see</b> you then\nBcc: evil@x.example\n")  # body, not header
    assert "Yes &lt;b&gt;see&lt;/b&gt; you then" in html_of(msg)


def test_sms_reply_without_a_matched_sms(notices: Notices) -> None:
    reply = IncomingSms(556, "61412345678", "61400000000", "Who is this?", None)
    msg = parse(notices.sms_reply(reply, "postmaster@localhost", in_reply_to=None))
    assert "In-Reply-To" not in msg
    assert msg["Reply-To"] == "61412345678@sms.local"      # [smtp] sms_domain by default


def test_a_huge_sms_reply_is_cut(notices: Notices) -> None:
    reply = IncomingSms(557, "61412345678", "61400000000", "x" * 100_000, None)
    text = text_of(parse(notices.sms_reply(reply, "a@example.com")))
    assert "x" * 5000 in text and "x" * 5001 not in text and "cut" in text


# --- alerts and helpers -------------------------------------------------------------------------

def test_operator_alert(notices: Notices) -> None:
    out = notices.operator_alert("fax-parked:9004", "Received fax 9004 could not be fetched",
                                 "The document is not a PDF.", ["postmaster@localhost", "ops@x.io"])
    assert (out.kind, out.ref) == ("alert", "fax-parked:9004")
    assert list(out.rcpt_to) == ["postmaster@localhost", "ops@x.io"]
    msg = parse(out)
    assert msg["To"] == "postmaster@localhost, ops@x.io"
    assert subject_of(msg) == "Received fax 9004 could not be fetched"
    assert "The document is not a PDF." in text_of(msg)


def test_clean_header_text() -> None:
    assert clean_header_text(" a\r\n\tb  c ") == "a b c"
    assert clean_header_text("=?utf-8?q?x?=") == "= ?utf-8?q?x?="
    assert clean_header_text("x" * 10, limit=5) == "xxxx…"
    assert clean_header_text(None) == ""


def test_clean_message_id() -> None:
    assert clean_message_id(" <a.b@c.d> ") == "<a.b@c.d>"
    for bad in ("<a b@c>", "a@b", "<a@b>\r\nBcc: x", "<a=?@b>", "<<a@b>>", None):
        assert clean_message_id(bad) is None
