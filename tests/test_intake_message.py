"""The pure intake core: a raw mail → documents, cover page, jobs (no sockets, no store).

The builders at the top (make_pdf, make_mail, raw_mime, ...) are also used by
test_intake_smtp.py.
"""

from __future__ import annotations

import base64
import dataclasses
import email.policy
import io
from collections.abc import Sequence
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from fpdf import FPDF
from pypdf import PdfReader, PdfWriter

from bridge import replies
from bridge.config import Config, FaxConfig, NoticesConfig, SmtpConfig, defaults
from bridge.intake import cover as cover_mod
from bridge.intake.addresses import Recipient, parse_recipient, unique_by_number
from bridge.intake.documents import ACCEPTED, TYPES, classify, display_filename, safe_filename
from bridge.intake.message import (
    Limits,
    body_hash,
    build_mail,
    cover_body,
    has_bare_line_ending,
    html_to_text,
)
from bridge.replies import Refused
from bridge.store import NewMail

# --- builders (shared with test_intake_smtp.py) ---------------------------------------------

FIXED_DATE = datetime(2024, 5, 14, 10, 32)


def make_pdf(pages: int = 1, text: str = "page") -> bytes:
    pdf = FPDF()
    pdf.set_creation_date(FIXED_DATE)
    pdf.set_font("helvetica", size=14)
    for i in range(pages):
        pdf.add_page()
        pdf.cell(text=f"{text} {i + 1}")
    return bytes(pdf.output())


def encrypted_pdf(*, user_password: str = "secret", pages: int = 1) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf(pages))))
    writer.encrypt(user_password=user_password, owner_password="owner")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(40)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(40)
TIFF = b"II*\x00" + bytes(40)


def docx_bytes(member: str = "word/document.xml") -> bytes:
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr(member, "<x/>")
    return out.getvalue()


Attachment = tuple[bytes, str, str | None]  # data, content type, filename


def make_mail(*, body: str | None = "Please fax the attached.",
              attachments: Sequence[Attachment] = (), html: str | None = None,
              subject: str = "Quarterly report", sender: str = "Alice <alice@example.com>",
              to: str = "0298765432@fax.local", message_id: str | None = "<m1@example.com>",
              headers: dict[str, str] | None = None) -> bytes:
    """A mail as a client would send it, serialised for SMTP (CRLF)."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = "Tue, 14 May 2024 10:32:00 +1000"
    if message_id:
        msg["Message-ID"] = message_id
    for name, value in (headers or {}).items():
        msg[name] = value
    if body is not None:
        msg.set_content(body)
        if html is not None:
            msg.add_alternative(html, subtype="html")
    elif html is not None:
        msg.set_content(html, subtype="html")
    for data, ctype, filename in attachments:
        maintype, _, subtype = ctype.partition("/")
        if maintype == "text":
            msg.add_attachment(data.decode(), subtype=subtype, filename=filename)
        else:
            msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes(policy=email.policy.SMTP)


def raw_part(ctype: str, data: bytes, *, params: str = "", disposition: str = "attachment",
             extra: str = "") -> bytes:
    """One MIME part written by hand (for what EmailMessage refuses to build: hostile names)."""
    b64 = base64.encodebytes(data).replace(b"\n", b"\r\n")
    head = f"Content-Type: {ctype}\r\nContent-Transfer-Encoding: base64\r\n"
    if disposition:
        head += f"Content-Disposition: {disposition}{params}\r\n"
    head += extra
    return head.encode() + b"\r\n" + b64


def raw_mime(parts: Sequence[bytes], *, subtype: str = "mixed", close: bool = True,
             headers: str = "") -> bytes:
    boundary = b"==b0undary=="
    out = [b"From: alice@example.com\r\nTo: 0298765432@fax.local\r\nSubject: raw\r\n"
           b"Message-ID: <raw@example.com>\r\nMIME-Version: 1.0\r\n", headers.encode(),
           b"Content-Type: multipart/" + subtype.encode() + b'; boundary="' + boundary + b'"\r\n\r\n']
    for part in parts:
        out += [b"--" + boundary + b"\r\n", part, b"\r\n"]
    if close:
        out.append(b"--" + boundary + b"--\r\n")
    return b"".join(out)


def text_part(text: str, subtype: str = "plain", extra: str = "") -> bytes:
    body = text.replace("\r\n", "\n").replace("\n", "\r\n")
    return (f"Content-Type: text/{subtype}; charset=utf-8\r\n{extra}\r\n{body}\r\n").encode()


def pdf_text(data: bytes) -> str:
    return "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(data)).pages)


# --- helpers for these tests ---------------------------------------------------------------

def config(cover: str = "auto", **smtp: object) -> Config:
    return defaults(smtp=SmtpConfig(**smtp), fax=FaxConfig(cover=cover))  # type: ignore[arg-type]


def rcpt(address: str = "0298765432@fax.local") -> Recipient:
    return parse_recipient(address, fax_domain="fax.local", sms_domain="sms.local")


def build(raw: bytes, *, cfg: Config | None = None, recipients: Sequence[str] = ("0298765432@fax.local",),
          mail_from: str = "alice@example.com", **kw: object) -> NewMail:
    return build_mail(raw, mail_from=mail_from, recipients=[rcpt(r) for r in recipients],
                      config=cfg or config(), **kw)  # type: ignore[arg-type]


def refused(raw: bytes, **kw: object) -> str:
    with pytest.raises(Refused) as info:
        build(raw, **kw)  # type: ignore[arg-type]
    return info.value.reply


def reply_is(reply: str, expected: replies.Reply) -> bool:
    code, _, text = reply.partition(" ")
    return expected.matches(int(code), text)


# --- recipients ------------------------------------------------------------------------------

@pytest.mark.parametrize("address", [
    "0298765432@fax.local", "0298765432@FAX.LOCAL", "+61298765432@fax.local",
    '"02 9876 5432"@fax.local', "(02)9876-5432@fax.local",
])
def test_recipient_forms(address: str) -> None:
    r = rcpt(address)
    assert (r.kind, r.number.digits, r.address) == ("fax", "61298765432", address)


@pytest.mark.parametrize("address", [
    "0298765432@example.com", "0298765432@fax.local.evil.com", "0298765432@evilfax.local",
    "0298765432@fax.local.", "0298765432@sub.fax.local", "0298765432", "@fax.local",
])
def test_relay_attempts_are_refused(address: str) -> None:
    with pytest.raises(Refused) as info:
        rcpt(address)
    assert reply_is(info.value.reply, replies.RELAY_DENIED)


@pytest.mark.parametrize("address", ["0298765432%evil.com@fax.local", "12@fax.local",
                                     "abc@fax.local", "1900123456@fax.local"])
def test_bad_numbers_name_the_problem(address: str) -> None:
    with pytest.raises(Refused) as info:
        rcpt(address)
    assert reply_is(info.value.reply, replies.BAD_NUMBER)
    assert info.value.reply.startswith("553 5.1.3 cannot fax this number: ")


def test_sms_domain_is_recognised() -> None:
    assert rcpt("0412345678@sms.local").kind == "sms"


def test_unique_by_number_keeps_order() -> None:
    rs = [rcpt("0298765432@fax.local"), rcpt("0398765432@fax.local"), rcpt("+61298765432@fax.local")]
    assert [r.number.digits for r in unique_by_number(rs)] == ["61298765432", "61398765432"]


# --- classification and file names -----------------------------------------------------------

@pytest.mark.parametrize(("filename", "ctype", "data", "ext"), [
    ("a.pdf", "application/pdf", make_pdf(), "pdf"),
    ("a.pdf", "application/octet-stream", make_pdf(), "pdf"),   # generic type: by extension
    ("scan", "application/pdf", make_pdf(), "pdf"),              # no extension: by type
    ("scan", "application/octet-stream", make_pdf(), "pdf"),     # neither: by content
    ("photo.jpg", "image/jpeg", PNG, "png"),                     # content wins over both
    ("photo.JPEG", "image/jpeg", JPEG, "jpg"),
    ("fax.tiff", "image/tiff", TIFF, "tif"),
    ("letter.docx", "application/octet-stream", docx_bytes(), "docx"),
    ("sheet.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
     docx_bytes("xl/workbook.xml"), "xlsx"),
    ("old.doc", "application/msword", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(20), "doc"),
    ("old.xls", "application/vnd.ms-excel", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(20), "xls"),
    ("memo.rtf", "application/rtf", b"{\\rtf1 hello}", "rtf"),
    ("notes.txt", "text/plain", b"hello", "txt"),
    ("notes.log", "text/plain", b"hello", "txt"),
])
def test_classify(filename: str, ctype: str, data: bytes, ext: str) -> None:
    assert classify(filename, ctype, data).ext == ext


@pytest.mark.parametrize(("filename", "ctype", "data"), [
    ("archive.zip", "application/zip", b"PK\x03\x04" + bytes(30)),
    ("page.html", "text/html", b"<p>hi</p>"),
    ("photo.heic", "image/heic", b"\x00\x00\x00\x18ftypheic"),
    ("mystery", "application/octet-stream", b"\x00\x01\x02"),
    ("letter.docx", "application/octet-stream", b"not a zip at all"),
])
def test_unsupported_types_are_refused_naming_the_file(filename: str, ctype: str, data: bytes) -> None:
    with pytest.raises(Refused) as info:
        classify(filename, ctype, data)
    assert reply_is(info.value.reply, replies.UNSUPPORTED_ATTACHMENT)
    assert filename in info.value.reply
    assert ACCEPTED in info.value.reply


def test_accepted_list_names_every_type() -> None:
    assert ACCEPTED == "PDF, TIFF, JPEG, PNG, DOC, DOCX, RTF, TXT, XLS, XLSX, ODT"
    assert len(TYPES) == 11


PDF_TYPE = TYPES[0]


@pytest.mark.parametrize(("raw", "safe"), [
    ("report.pdf", "report.pdf"),
    ("REPORT.PDF", "REPORT.pdf"),
    ("../../etc/passwd.pdf", "passwd.pdf"),
    ("C:\\Users\\bob\\scan.pdf", "scan.pdf"),
    ("a\r\nb.pdf", "a_b.pdf"),
    ("a\x00b.pdf", "a_b.pdf"),
    ("evil\u202efdp.exe", "evil_fdp.exe.pdf"),       # right-to-left override
    ('what?<is>"this"|*.pdf', "what__is__this___.pdf"),
    ("  .hidden.pdf  ", "hidden.pdf"),
    ("...", "attachment-3.pdf"),
    ("", "attachment-3.pdf"),
    (None, "attachment-3.pdf"),
    ("dir/", "attachment-3.pdf"),
    ("scan", "scan.pdf"),
    ("report.final", "report.final.pdf"),
    ("photo.jpg", "photo.pdf"),                       # a known other extension is replaced
    ("CON.pdf", "CON_.pdf"),
    ("Grüße.pdf", "Grüße.pdf"),
    ("tab\there.pdf", "tab_here.pdf"),
])
def test_safe_filename(raw: str | None, safe: str) -> None:
    assert safe_filename(raw, PDF_TYPE, 3) == safe


def test_safe_filename_caps_the_length_and_keeps_the_extension() -> None:
    name = safe_filename("x" * 500 + ".pdf", PDF_TYPE, 1)
    assert len(name) == 100 and name.endswith("x.pdf")
    assert safe_filename("y" * 500, PDF_TYPE, 1) == "y" * 96 + ".pdf"


def test_display_filename_keeps_a_readable_name() -> None:
    assert display_filename("../x/\r\nreport 2024 .txt") == "_report 2024 .txt"


# --- attachments from whole mails -------------------------------------------------------------

def test_attachments_become_documents_in_order_byte_exact() -> None:
    one, two = make_pdf(1, "one"), make_pdf(3, "two")
    raw = make_mail(body=None, attachments=[(one, "application/pdf", "one.pdf"),
                                            (PNG, "image/png", "logo.png"),
                                            (two, "application/pdf", "two.pdf")])
    mail = build(raw)
    assert [(d.filename, d.content_type, d.pages, d.is_cover) for d in mail.documents] == [
        ("one.pdf", "application/pdf", 1, False),
        ("logo.png", "image/png", None, False),
        ("two.pdf", "application/pdf", 3, False),
    ]
    assert [d.data for d in mail.documents] == [one, PNG, two]
    assert mail.subject == "Quarterly report"
    assert mail.header_from == "Alice <alice@example.com>"
    assert mail.message_id == "<m1@example.com>"
    assert mail.notify is True
    assert [j.to_number for j in mail.jobs] == ["61298765432"]


def test_hostile_filenames_from_the_wire() -> None:
    parts = [
        raw_part("application/pdf", make_pdf(), params="; filename*=utf-8''a%0D%0Ab.pdf"),
        raw_part("application/pdf", make_pdf(), params='; filename="../../etc/passwd.pdf"'),
        raw_part("application/pdf", make_pdf(), params=f'; filename="{"n" * 300}.pdf"'),
        raw_part("application/octet-stream", make_pdf(), params='; filename="=?utf-8?q?sc=0Aan?="'),
    ]
    names = [d.filename for d in build(raw_mime(parts)).documents]
    assert names == ["a_b.pdf", "passwd.pdf", "n" * 96 + ".pdf", "sc_an.pdf"]


def test_text_plain_attachment_is_a_txt_document() -> None:
    raw = make_mail(body=None, attachments=[(b"line one\nline two\n", "text/plain", "notes")])
    [doc] = build(raw).documents
    assert (doc.filename, doc.content_type) == ("notes.txt", "text/plain")
    assert doc.data == b"line one\r\nline two\r\n"


def test_text_attachment_is_transcoded_to_utf8() -> None:
    part = (b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Disposition: attachment;"
            b' filename="gruss.txt"\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGr\xfc\xdfe\r\n')
    [doc] = build(raw_mime([part])).documents
    assert doc.data == "Grüße\r\n".encode()


def test_inline_logo_referenced_by_cid_is_skipped() -> None:
    html = '<p>Hello</p><p>--<br><img src="cid:logo-1@example.com"> ACME</p>'
    related = (b'Content-Type: multipart/related; boundary="rel"\r\n\r\n'
               b"--rel\r\n" + text_part(html, "html") +
               b"--rel\r\n" + raw_part("image/png", PNG, disposition="inline",
                                       params='; filename="logo.png"',
                                       extra="Content-ID: <logo-1@example.com>\r\n") +
               b"\r\n--rel--\r\n")
    alternative = (b'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n'
                   b"--alt\r\n" + text_part("Hello\n\n-- \nACME") +
                   b"--alt\r\n" + related + b"\r\n--alt--\r\n")
    pdf = make_pdf(2)
    raw = raw_mime([alternative, raw_part("application/pdf", pdf, params='; filename="doc.pdf"')])
    mail = build(raw, cfg=config("never"))
    assert [(d.filename, d.data) for d in mail.documents] == [("doc.pdf", pdf)]


def test_an_unreferenced_inline_image_is_faxed() -> None:
    raw = raw_mime([text_part("see picture"),
                    raw_part("image/jpeg", JPEG, disposition="inline", params='; filename="p.jpg"',
                             extra="Content-ID: <unused@x>\r\n")])
    assert [d.filename for d in build(raw, cfg=config("never")).documents] == ["p.jpg"]


def test_signatures_keys_and_vcards_are_ignored() -> None:
    signed = (b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";'
              b' boundary="sig"\r\n\r\n'
              b"--sig\r\n" + raw_part("application/pdf", make_pdf(), params='; filename="a.pdf"') +
              b"\r\n--sig\r\n" + raw_part("application/pkcs7-signature", b"\x30\x82sig",
                                          params='; filename="smime.p7s"') +
              b"\r\n--sig--\r\n")
    raw = raw_mime([signed,
                    raw_part("application/pgp-keys", b"-----BEGIN PGP", params='; filename="k.asc"'),
                    raw_part("text/vcard", b"BEGIN:VCARD", params='; filename="alice.vcf"')])
    assert [d.filename for d in build(raw, cfg=config("never")).documents] == ["a.pdf"]


def test_unsupported_attachment_refuses_the_whole_mail() -> None:
    raw = make_mail(attachments=[(make_pdf(), "application/pdf", "ok.pdf"),
                                 (b"PK\x03\x04" + bytes(30), "application/zip", "files.zip")])
    reply = refused(raw)
    assert reply_is(reply, replies.UNSUPPORTED_ATTACHMENT)
    assert "files.zip" in reply and "type application/zip" in reply and ACCEPTED in reply


def test_forwarded_message_is_refused() -> None:
    part = (b"Content-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n"
            b"From: x@y\r\nSubject: fwd\r\n\r\nhello\r\n")
    assert reply_is(refused(raw_mime([text_part("fyi"), part])), replies.UNSUPPORTED_ATTACHMENT)


def test_corrupt_pdf_is_refused_naming_the_file() -> None:
    broken = make_pdf(2)[:300]
    reply = refused(make_mail(attachments=[(broken, "application/pdf", "broken.pdf")]))
    assert reply_is(reply, replies.BAD_PDF) and "broken.pdf" in reply


def test_a_pdf_that_is_not_a_pdf_is_refused() -> None:
    reply = refused(make_mail(attachments=[(b"<html>oops</html>", "application/pdf", "x.pdf")]))
    assert reply_is(reply, replies.BAD_PDF) and "x.pdf" in reply


def test_password_protected_pdf_is_refused_naming_the_file() -> None:
    reply = refused(make_mail(attachments=[(encrypted_pdf(), "application/pdf", "locked.pdf")]))
    assert reply_is(reply, replies.ENCRYPTED_PDF) and "locked.pdf" in reply


def test_owner_password_only_pdf_is_accepted_with_its_page_count() -> None:
    data = encrypted_pdf(user_password="", pages=2)
    [doc] = build(make_mail(body=None, attachments=[(data, "application/pdf", "form.pdf")])).documents
    assert (doc.pages, doc.data) == (2, data)


def test_broken_base64_is_refused() -> None:
    part = (b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
            b'Content-Disposition: attachment; filename="b.pdf"\r\n\r\nJVBERi0xLj=x=\r\n')
    reply = refused(raw_mime([part]))
    assert reply_is(reply, replies.DAMAGED_ATTACHMENT) and "b.pdf" in reply and "base64" in reply


def test_truncated_multipart_is_refused() -> None:
    raw = raw_mime([text_part("hi"), raw_part("application/pdf", make_pdf(), params='; filename="t.pdf"')],
                   close=False)
    reply = refused(raw)
    assert reply_is(reply, replies.DAMAGED_ATTACHMENT) and "t.pdf" in reply


def test_empty_attachment_is_refused() -> None:
    reply = refused(make_mail(attachments=[(b"", "application/pdf", "empty.pdf")]))
    assert reply_is(reply, replies.DAMAGED_ATTACHMENT) and "empty" in reply


def test_too_many_parts_is_refused() -> None:
    parts = [raw_part("image/png", PNG, params=f'; filename="{i}.png"') for i in range(12)]
    reply = refused(raw_mime(parts), limits=Limits(max_parts=10))
    assert reply_is(reply, replies.TOO_COMPLEX)


def test_deep_nesting_is_refused() -> None:
    inner = text_part("deep")
    for i in range(15):
        inner = (f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
                 + inner + f"\r\n--b{i}--\r\n".encode())
    assert reply_is(refused(raw_mime([inner])), replies.TOO_COMPLEX)


# --- body text and the cover page -------------------------------------------------------------

def test_cover_page_comes_first_and_says_who_what_when() -> None:
    pdf = make_pdf(2)
    raw = make_mail(body="Hi Bob,\r\nplease sign page 2.\r\n\r\n-- \r\nAlice, ACME\r\n",
                    attachments=[(pdf, "application/pdf", "contract.pdf")])
    mail = build(raw, recipients=["0298765432@fax.local", "0398765432@fax.local"])
    cover, doc = mail.documents
    assert (cover.filename, cover.is_cover, cover.pages, cover.content_type) == (
        "cover.pdf", True, 1, "application/pdf")
    assert doc.data == pdf
    text = pdf_text(cover.data)
    for expected in ["FAX", "+61 2 9876 5432, +61 3 9876 5432", "Alice <alice@example.com>",
                     "Quarterly report", "Tue 14 May 2024 10:32 +1000",
                     "Pages:    3 (including this page)", "Hi Bob,", "please sign page 2."]:
        assert expected in text
    assert "ACME" not in text  # the signature is not on the cover


def test_pages_line_is_left_out_when_a_count_is_unknown() -> None:
    mail = build(make_mail(attachments=[(PNG, "image/png", "x.png")]))
    assert "Pages:" not in pdf_text(mail.documents[0].data)


@pytest.mark.parametrize(("mode", "body", "cover"), [
    ("auto", "Some text", True),
    ("auto", "  \r\n\r\n  ", False),
    ("auto", "\r\n-- \r\nAlice\r\nACME Pty Ltd\r\n", False),  # only a signature
    ("auto", "\r\n--\r\nAlice\r\n", False),                   # signature without the space
    ("always", "  ", True),
    ("always", "Some text", True),
    ("never", "Some text", False),
])
def test_cover_modes(mode: str, body: str, cover: bool) -> None:
    raw = make_mail(body=body, attachments=[(make_pdf(), "application/pdf", "a.pdf")])
    docs = build(raw, cfg=config(mode)).documents
    assert [d.is_cover for d in docs] == ([True, False] if cover else [False])


def test_body_only_mail_is_a_cover_page() -> None:
    [cover] = build(make_mail(body="Just this note, please.")).documents
    assert cover.is_cover and "Just this note, please." in pdf_text(cover.data)


def test_html_only_body_is_converted_to_text() -> None:
    html = ("<html><head><style>p{color:red}</style><title>t</title></head><body>"
            "<p>Dear&nbsp;Bob,</p><p>the <b>totals</b> are:</p><ul><li>one</li><li>two</li></ul>"
            "<script>alert(1)</script></body></html>")
    [cover] = build(make_mail(body=None, html=html)).documents
    text = pdf_text(cover.data)
    assert "Dear Bob," in text and "the totals are:" in text and "- one" in text
    assert "alert" not in text and "color" not in text


def test_plain_alternative_is_preferred_over_html() -> None:
    raw = make_mail(body="plain words", html="<p>html words</p>")
    text = pdf_text(build(raw).documents[0].data)
    assert "plain words" in text and "html words" not in text


@pytest.mark.parametrize(("mode", "body", "detail"), [
    ("auto", None, "no attachment and no text"),
    ("auto", " \r\n ", "no attachment and no text"),
    ("always", "", "no attachment and no text"),
    ("never", "Some text", "cover"),
])
def test_nothing_to_send(mode: str, body: str | None, detail: str) -> None:
    reply = refused(make_mail(body=body), cfg=config(mode))
    assert reply_is(reply, replies.NOTHING_TO_SEND) and detail in reply


def test_cover_handles_any_characters() -> None:
    body = "Grüße — naïve café 😀 日本語 \x00\x07 tab\there\r\n" + "long line " * 40
    [cover] = build(make_mail(body=body)).documents
    text = pdf_text(cover.data)
    assert "Grüße" in text and "café" in text


def test_a_latin_text_cover_needs_no_embedded_font() -> None:
    [cover] = build(make_mail(body="Grüße — naïve café, 5 € total")).documents
    text = pdf_text(cover.data)
    assert "Grüße" in text and "naïve café" in text and "EUR" in text
    assert b"/FontFile2" not in cover.data       # the core Courier font: fast and small


def test_a_long_body_makes_a_multipage_cover_that_counts_itself() -> None:
    body = "\r\n".join(f"line {i}" for i in range(150))
    cover, _ = build(make_mail(body=body, attachments=[(make_pdf(2), "application/pdf", "a.pdf")])).documents
    assert cover.pages == 3
    assert "Pages:    5 (including this page)" in pdf_text(cover.data)


def test_a_huge_body_is_cut() -> None:
    body = "word " * 50_000
    [cover] = build(make_mail(body=body)).documents
    assert "the rest of the message is not shown" in pdf_text(cover.data)
    assert cover.pages is not None and cover.pages < 20


def test_cover_template_override(tmp_path: Path) -> None:
    (tmp_path / "cover.txt.j2").write_text("TELEFAX\nFor {{ to }} re {{ subject }}\n{{ body }}\n")
    cfg = dataclasses.replace(config(), notices=NoticesConfig(templates=str(tmp_path)))
    [cover] = build(make_mail(body="hello"), cfg=cfg).documents
    text = pdf_text(cover.data)
    assert "TELEFAX" in text and "For +61 2 9876 5432 re Quarterly report" in text


def test_cover_template_typo_fails_loudly(tmp_path: Path) -> None:
    (tmp_path / "cover.txt.j2").write_text("{{ recipient }}\n")
    cfg = dataclasses.replace(config(), notices=NoticesConfig(templates=str(tmp_path)))
    cover_mod._environment.cache_clear()
    with pytest.raises(Exception, match="recipient"):
        build(make_mail(body="hello"), cfg=cfg)


def test_cover_body_strips_signature_and_crlf() -> None:
    assert cover_body("Hello\r\n\r\nthere  \r\n-- \r\nsig\r\n") == "Hello\n\nthere"
    assert cover_body("-- \nonly sig") == ""


def test_html_to_text() -> None:
    assert html_to_text("<div>a<br>b</div><table><tr><td>x</td><td>y</td></tr></table>") == "a\nb\nx y"
    assert html_to_text("<pre>  keep\n  this</pre>") == "  keep\n  this"
    assert html_to_text("&lt;tag&gt; &amp; &#8364;") == "<tag> & €"


# --- envelope, headers, dedupe ----------------------------------------------------------------

def test_bare_line_endings() -> None:
    assert has_bare_line_ending(b"Subject: x\nBcc: y\r\n\r\nbody\r\n")
    assert has_bare_line_ending(b"Subject: x\rBcc: y\r\n\r\nbody\r\n")
    assert has_bare_line_ending(b"Subject: x\r\n\r\nbody\n")
    assert not has_bare_line_ending(b"Subject: x\r\n\r\nbody\r\n\r\n")
    reply = refused(b"From: alice@example.com\r\nSubject: x\nBcc: y\r\n\r\nbody\r\n")
    assert reply_is(reply, replies.BARE_LINE_ENDING)


def test_size_is_checked_before_parsing() -> None:
    reply = refused(make_mail(body="x" * 3000), cfg=config(max_message_bytes=2000))
    assert reply_is(reply, replies.TOO_BIG) and "2000" in reply


def test_header_from_must_be_allowed() -> None:
    cfg = config(allowed_senders=("*@example.com",))
    assert build(make_mail(), cfg=cfg).jobs
    reply = refused(make_mail(sender="Eve <eve@evil.com>"), cfg=cfg)
    assert reply_is(reply, replies.SENDER_NOT_ALLOWED) and "eve@evil.com" in reply


def test_header_from_is_checked_before_the_content() -> None:
    cfg = config(allowed_senders=("*@example.com",))
    reply = refused(make_mail(sender="eve@evil.com",
                              attachments=[(b"PK\x03\x04", "application/zip", "x.zip")]), cfg=cfg)
    assert reply_is(reply, replies.SENDER_NOT_ALLOWED)


def test_auto_replies_are_refused_but_auto_generated_mail_is_faxed_and_notified() -> None:
    reply = refused(make_mail(headers={"Auto-Submitted": "auto-replied"}))
    assert reply_is(reply, replies.AUTO_REPLY)
    mail = build(make_mail(headers={"Auto-Submitted": "auto-generated", "Precedence": "bulk"}))
    assert mail.jobs and mail.notify is True


def test_one_job_per_distinct_number_sharing_the_documents() -> None:
    mail = build(make_mail(attachments=[(make_pdf(), "application/pdf", "a.pdf")]),
                 recipients=["0298765432@fax.local", "0398765432@fax.local", "+61298765432@fax.local"])
    assert [j.to_number for j in mail.jobs] == ["61298765432", "61398765432"]
    assert len({j.dedupe_key for j in mail.jobs}) == 2
    assert all(j.kind == "fax" for j in mail.jobs)


def test_dedupe_key_is_stable_for_a_resent_copy() -> None:
    raw = make_mail(attachments=[(make_pdf(), "application/pdf", "a.pdf")])
    first = build(raw).jobs[0].dedupe_key
    # An MTA re-sending may add trace headers; the body and Message-ID are the same.
    assert build(b"Received: from mta by us\r\n" + raw).jobs[0].dedupe_key == first
    assert build(make_mail(attachments=[(make_pdf(), "application/pdf", "a.pdf")],
                           message_id="<m2@example.com>")).jobs[0].dedupe_key != first
    assert build(make_mail(body="other", attachments=[(make_pdf(), "application/pdf", "a.pdf")])
                 ).jobs[0].dedupe_key != first


def test_without_message_id_one_is_made_and_dedupe_falls_back() -> None:
    raw = make_mail(message_id=None)
    a, b = build(raw), build(raw)
    assert a.message_id.startswith("<") and a.message_id.endswith("@faxbridge.localhost>")
    assert a.message_id != b.message_id                     # generated per copy...
    assert a.jobs[0].dedupe_key == b.jobs[0].dedupe_key     # ...yet the copies dedupe
    other_sender = build(raw, mail_from="bob@example.com")
    assert other_sender.jobs[0].dedupe_key != a.jobs[0].dedupe_key
    # Nor does it depend on the time of arrival (the cover date is "now" without a Date:).
    no_date = raw.replace(b"Date: Tue, 14 May 2024 10:32:00 +1000\r\n", b"")
    assert b"Date:" not in no_date
    early = build(no_date, now=datetime(2024, 1, 1).astimezone())
    late = build(no_date, now=datetime(2024, 1, 2).astimezone())
    assert early.jobs[0].dedupe_key == late.jobs[0].dedupe_key


def test_body_hash_ignores_headers() -> None:
    assert body_hash(b"A: 1\r\n\r\nbody") == body_hash(b"B: 2\r\nC: 3\r\n\r\nbody")
    assert body_hash(b"A: 1\r\n\r\nbody") != body_hash(b"A: 1\r\n\r\nbody2")


def test_subject_and_from_become_one_line() -> None:
    raw = make_mail(subject="a very long subject " * 5)
    mail = build(raw)
    assert "\n" not in mail.subject and "\r" not in mail.subject
    assert mail.subject.startswith("a very long subject a very")
