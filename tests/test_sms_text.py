"""SMS text extraction and segment counting (bridge.sms_text).

Mails are built with EmailMessage, serialised for SMTP (CRLF) and parsed back with
policy.default, so the text parts carry CRLF exactly as they do when they arrive over SMTP.
"""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from bridge.sms_text import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    SmsParts,
    count_parts,
    extract_sms_text,
    html_to_text,
    is_gsm7,
    strip_reply_and_signature,
    to_gsm7_friendly,
)

SAMPLES = Path(__file__).parent / "samples" / "sms"

CY = "ж"  # a BMP character outside GSM-7: one UCS-2 unit
EMOJI = "😀"  # U+1F600, a surrogate pair: two UCS-2 units


def over_smtp(msg: EmailMessage) -> EmailMessage:
    raw = msg.as_bytes(policy=policy.SMTP)
    assert b"\r\n" in raw
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def plain_mail(body: str, subject: str = "Re: Delivery tomorrow") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Bob Smith <bob@example.com>"
    msg["To"] = "0412345678@sms.local"
    msg["Subject"] = subject
    msg.set_content(body)
    return over_smtp(msg)


def html_mail(html: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Bob Smith <bob@example.com>"
    msg["To"] = "0412345678@sms.local"
    msg["Subject"] = "Re: Delivery tomorrow"
    msg.set_content(html, subtype="html")
    return over_smtp(msg)


def alternative_mail(plain: str, html: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Bob Smith <bob@example.com>"
    msg["To"] = "0412345678@sms.local"
    msg["Subject"] = "Re: Delivery tomorrow"
    msg.set_content(plain)
    msg.add_alternative(html, subtype="html")
    return over_smtp(msg)


def sample(name: str) -> EmailMessage:
    raw = (SAMPLES / name).read_bytes()
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # whatever a checkout did to it
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


# --- GSM-7 tables ---------------------------------------------------------------------------


def test_gsm7_tables_match_the_spec_layout() -> None:
    assert len(GSM7_BASIC) == 128
    assert len(set(GSM7_BASIC)) == 128
    assert GSM7_BASIC[0x00] == "@"
    assert GSM7_BASIC[0x09] == "Ç"
    assert GSM7_BASIC[0x1B] == "\x1b"
    assert GSM7_BASIC[0x24] == "¤"
    assert GSM7_BASIC[0x40] == "¡"
    assert GSM7_BASIC[0x60] == "¿"
    assert GSM7_BASIC[0x7F] == "à"
    assert set(GSM7_EXTENSION) == set("\f^{}\\[~]|€")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", True),
        ("Hello, world! 0-9 @£$¥", True),
        ("èéùìòÇØøÅåÆæßÉÄÖÑÜäöñüà§¿¡", True),
        ("ΔΦΓΛΩΠΨΣΘΞ_", True),
        ("^{}\\[~]|€", True),
        ("line\nbreak\rcarriage", True),
        ("ç", False),  # only the capital Ç is in the table
        ("á", False),
        ("`", False),  # ASCII, but not GSM-7
        ("\t", False),
        ("’", False),
        (EMOJI, False),
        ("\x1b", False),  # the escape code is not a character
    ],
)
def test_is_gsm7(text: str, expected: bool) -> None:
    assert is_gsm7(text) is expected


# --- Counting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoding", "units", "parts"),
    [
        pytest.param("", "GSM-7", 0, 1, id="empty"),
        pytest.param("a" * 160, "GSM-7", 160, 1, id="gsm-160"),
        pytest.param("a" * 161, "GSM-7", 161, 2, id="gsm-161"),
        pytest.param("a" * 306, "GSM-7", 306, 2, id="gsm-306"),
        pytest.param("a" * 307, "GSM-7", 307, 3, id="gsm-307"),
        pytest.param("a" * 153 * 3, "GSM-7", 459, 3, id="gsm-153x3"),
        pytest.param("a" * (153 * 3 + 1), "GSM-7", 460, 4, id="gsm-153x3+1"),
        pytest.param("a" * 153 * 6, "GSM-7", 918, 6, id="gsm-153x6"),
        pytest.param("€" * 80, "GSM-7", 160, 1, id="gsm-ext-160"),
        pytest.param("a" * 159 + "€", "GSM-7", 161, 2, id="gsm-ext-pushes-over-160"),
        # 152 + escape pair: the pair cannot straddle, so part 1 holds 152 and part 2 overflows.
        pytest.param("a" * 152 + "€" + "a" * 152, "GSM-7", 306, 3, id="gsm-ext-at-boundary"),
        pytest.param("a" * 151 + "€" + "a" * 153, "GSM-7", 306, 2, id="gsm-ext-fits-boundary"),
        pytest.param("a" * 153 + "{" + "a" * 151, "GSM-7", 306, 2, id="gsm-ext-starts-part"),
        pytest.param(CY * 70, "UCS-2", 70, 1, id="ucs2-70"),
        pytest.param(CY * 71, "UCS-2", 71, 2, id="ucs2-71"),
        pytest.param(CY * 134, "UCS-2", 134, 2, id="ucs2-134"),
        pytest.param(CY * 135, "UCS-2", 135, 3, id="ucs2-135"),
        pytest.param(CY * 67 * 4, "UCS-2", 268, 4, id="ucs2-67x4"),
        pytest.param(CY * (67 * 4 + 1), "UCS-2", 269, 5, id="ucs2-67x4+1"),
        pytest.param(EMOJI * 35, "UCS-2", 70, 1, id="emoji-70"),
        pytest.param(CY * 69 + EMOJI, "UCS-2", 71, 2, id="emoji-pushes-over-70"),
        # A surrogate pair at unit 67/68 cannot be split: it opens the second part.
        pytest.param(CY * 66 + EMOJI + CY * 66, "UCS-2", 134, 3, id="emoji-at-boundary"),
        pytest.param(CY * 65 + EMOJI + CY * 67, "UCS-2", 134, 2, id="emoji-fits-boundary"),
        pytest.param("a" * 69 + "ç", "UCS-2", 70, 1, id="one-c-cedilla-makes-ucs2"),
        pytest.param("a" * 158 + "…", "GSM-7", 161, 2, id="ellipsis-expands-to-3"),
    ],
)
def test_count_parts(text: str, encoding: str, units: int, parts: int) -> None:
    result = count_parts(text)
    assert (result.encoding, result.units, result.parts) == (encoding, units, parts)


def test_smart_quotes_keep_a_body_in_one_gsm7_part() -> None:
    body = "We’ll be there at 9 – “if the gate’s open”… bring the ×2 keys •\u00a0thanks" + "." * 80
    assert len(body) <= 160
    result = count_parts(body)
    assert result == SmsParts(
        text="We'll be there at 9 - \"if the gate's open\"... bring the x2 keys - thanks" + "." * 80,
        encoding="GSM-7",
        parts=1,
        units=len(body) + 2,
    )
    # Without the substitution the same body would be three UCS-2 parts.
    assert len(body) > 134


def test_mixed_body_stays_ucs2_with_its_own_typography() -> None:
    body = "Ça marche — “à demain” 👍"
    result = count_parts(body)
    assert result.encoding == "UCS-2"
    assert result.text == body  # no point swapping quotes: UCS-2 costs the same
    assert result.units == len(body) + 1  # the emoji is a surrogate pair
    assert result.parts == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("‘single’ ‚low‛", "'single' 'low'"),
        ("“double” „low‟ «guillemets»", '"double" "low" "guillemets"'),
        ("en – em — minus − bar ―", "en - em - minus - bar -"),
        ("wait…", "wait..."),
        ("a\u00a0b\u202fc\u2009d\u3000e\tf", "a b c d e f"),
        ("• one\n◦ two", "- one\n- two"),
        ("3 × 4", "3 x 4"),
        ("zero\u200bwidth\u2060joined\ufeff soft\u00adhyphen", "zerowidthjoined softhyphen"),
        ("don´t `quote`", "don't 'quote'"),
        ("cafe\u0301", "café"),  # NFC: one GSM-7 character instead of two UCS-2 ones
        ("ç é 😀 ł", "ç é 😀 ł"),  # no obvious equivalent: left for count_parts to report
    ],
)
def test_to_gsm7_friendly(text: str, expected: str) -> None:
    assert to_gsm7_friendly(text) == expected


# --- strip_reply_and_signature on text ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("Hello\n-- \nBob Smith\n0412 345 678", "Hello", id="sig-dash-dash-space"),
        pytest.param("Hello\r\n-- \r\nBob", "Hello", id="sig-crlf"),
        pytest.param("Hello\r-- \rBob", "Hello", id="sig-bare-cr"),
        pytest.param("Hello\n--\nBob", "Hello", id="sig-trailing-space-stripped"),
        pytest.param("a -- b\n-- not a separator\nc", "a -- b\n-- not a separator\nc", id="not-sig"),
        pytest.param("-- \nonly a signature", "", id="only-sig"),
        pytest.param("> quoted\n> more", "", id="only-quote"),
        pytest.param("Yes\n> did you?\nNo\n>> older", "Yes\nNo", id="quoted-lines-anywhere"),
        pytest.param(
            "On second thought, here is what I wrote:\nkeep this",
            "On second thought, here is what I wrote:\nkeep this",
            id="on-wrote-without-date-kept",
        ),
        pytest.param("4pm is fine.\n\nOn Fri, Bob wrote:\n> Make it 4pm?", "4pm is fine.\n",
                     id="on-wrote-without-date-above-a-quote"),
        pytest.param(
            "Ja\n\nAm 03.12.2026 um 10:00 schrieb Jane Doe <jane@example.com>:\n\nOriginal",
            "Ja\n",
            id="german-attribution",
        ),
        pytest.param(
            "Oui\n\nLe jeu. 3 déc. 2026 à 10:00, Jane Doe <jane@example.com> a écrit\u00a0:\n> Original",
            "Oui\n",
            id="french-attribution",
        ),
        pytest.param(
            "On Thu, 3 Dec 2026 at 10:00, Jane <jane@example.com> wrote:\n"
            "> Can you come at 9?\nYes, 9 is fine.\n> Bring the keys?\nWill do.",
            "Yes, 9 is fine.\nWill do.",
            id="inline-reply-keeps-answers",
        ),
        pytest.param(
            "Sure\n\nOn 03/12/2026 10:00, Jane Doe wrote:\nunquoted original\nmore",
            "Sure\n",
            id="attribution-with-unquoted-original",
        ),
        pytest.param("Sure\n----- Original Message -----\nFrom: Jane", "Sure", id="original-message-spaced"),
        pytest.param(
            "Sure\n-------- Original message --------\nFrom: Jane", "Sure", id="original-message-android"
        ),
        pytest.param("Yes\n\nSent from my iPhone", "Yes\n", id="iphone-footer"),
        pytest.param("Yes\nGet Outlook for iOS<https://aka.ms/o0ukef>", "Yes", id="outlook-ios-footer"),
        pytest.param("Yes\n\nSent from Yahoo Mail on Android\n", "Yes\n\n", id="yahoo-footer"),
        pytest.param("Yes\nSent from Mail for Windows", "Yes", id="windows-mail-footer"),
        pytest.param("Yes\nSent from my BlackBerry® smartphone on Telstra", "Yes", id="blackberry-footer"),
        pytest.param(
            "Yes\nSent with BlackBerry Work (www.blackberry.com)", "Yes", id="blackberry-work-footer"
        ),
        pytest.param(
            "Sent from my iPhone\nline 1\nline 2\nline 3\nline 4",
            "Sent from my iPhone\nline 1\nline 2\nline 3\nline 4",
            id="footer-text-far-from-end-kept",
        ),
        pytest.param(
            "I sent from my iPhone earlier", "I sent from my iPhone earlier", id="footer-words-in-a-sentence"
        ),
        pytest.param(
            "From: the desk of Bob\nPlease call", "From: the desk of Bob\nPlease call", id="lone-from-kept"
        ),
        pytest.param(
            "Notes\n____________________\nmore",
            "Notes\n____________________\nmore",
            id="lone-underscore-rule-kept",
        ),
        pytest.param(
            "Ja\n\nVon: Jane Doe <jane@example.com>\nGesendet: Donnerstag, 3. Dezember 2026 10:00\n"
            "An: Bob\nBetreff: Lieferung\n\nOriginal",
            "Ja\n",
            id="outlook-german-header-block",
        ),
    ],
)
def test_strip_reply_and_signature(text: str, expected: str) -> None:
    assert strip_reply_and_signature(text) == expected


# --- Whole mails: realistic reply layouts -------------------------------------------------------

OUTLOOK_RULE_BODY = (
    "Hi Jane, we’ll be there between 9 and 11.\n"
    "\n"
    "Bob Smith\n"
    "Dispatch\n"
    "\n"
    "________________________________\n"
    "From: Jane Doe <jane@example.com>\n"
    "Sent: Thursday, 3 December 2026 10:00 AM\n"
    "To: Bob Smith <bob@example.com>\n"
    "Subject: Delivery tomorrow\n"
    "\n"
    "What time will you arrive?\n"
)

OUTLOOK_ORIGINAL_MESSAGE_BODY = (
    "Confirmed for Friday.\n"
    "\n"
    "-----Original Message-----\n"
    "From: Jane Doe [mailto:jane@example.com] \n"
    "Sent: Thursday, December 03, 2026 10:00 AM\n"
    "To: Bob Smith\n"
    "Subject: Friday\n"
    "\n"
    "Is Friday still OK?\n"
)

GMAIL_WRAPPED_BODY = (
    "Sounds good, see you at 10.\n"
    "\n"
    "On Thu, 3 Dec 2026 at 10:00, Jane Doe <jane@example.com>\n"
    "wrote:\n"
    "\n"
    "> Are we still on for Friday?\n"
    ">\n"
    "> Jane\n"
    ">\n"
)

GMAIL_WRAPPED_INSIDE_ADDRESS_BODY = (
    "Yes.\n"
    "\n"
    "On Thu, Dec 3, 2026 at 10:00 AM Jane Alexandra Doe-Smithson <\n"
    "jane.alexandra.doe-smithson@example.com> wrote:\n"
    "\n"
    "> Friday?\n"
)

APPLE_IPHONE_BODY = (
    "Yes, 3pm works.\n"
    "\n"
    "Sent from my iPhone\n"
    "\n"
    "> On 3 Dec 2026, at 10:00, Jane <jane@example.com> wrote:\n"
    "> \n"
    "> Can you do 3pm?\n"
)

APPLE_MAC_BODY = (
    "Yes, 3pm works.\n"
    "\n"
    "On 3 Dec 2026, at 10:00, Jane <jane@example.com> wrote:\n"
    "\n"
    "Can you do 3pm?\n"
    "\n"
    "Sent from my iPhone\n"
)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            OUTLOOK_RULE_BODY,
            "Hi Jane, we’ll be there between 9 and 11.\n\nBob Smith\nDispatch",
            id="outlook-underscore-rule-header-block",
        ),
        pytest.param(OUTLOOK_ORIGINAL_MESSAGE_BODY, "Confirmed for Friday.", id="outlook-original-message"),
        pytest.param(GMAIL_WRAPPED_BODY, "Sounds good, see you at 10.", id="gmail-wrapped-attribution"),
        pytest.param(GMAIL_WRAPPED_INSIDE_ADDRESS_BODY, "Yes.", id="gmail-wrapped-inside-address"),
        pytest.param(APPLE_IPHONE_BODY, "Yes, 3pm works.", id="apple-iphone"),
        pytest.param(APPLE_MAC_BODY, "Yes, 3pm works.", id="apple-mac-unquoted-original"),
        pytest.param(
            "Running late, 10 min.\n-- \nBob Smith\nDispatch | Example Pty Ltd\n",
            "Running late, 10 min.",
            id="signature-crlf",
        ),
        pytest.param("> Are we still on?\n>\n> Jane\n", "", id="only-a-quote"),
        pytest.param(
            "On Thu, 3 Dec 2026 at 10:00, Jane <jane@example.com> wrote:\n> Are we still on?\n",
            "",
            id="only-attribution-and-quote",
        ),
        pytest.param(
            "\n\n  Line one   \n\n\n\n\nLine two\n\n\n",
            "Line one\n\nLine two",
            id="blank-runs-and-edges",
        ),
        pytest.param("x" * 100 + " long line\n-- \nsig\n", "x" * 100 + " long line", id="qp-long-line"),
    ],
)
def test_extract_from_plain_replies(body: str, expected: str) -> None:
    msg = plain_mail(body)
    assert extract_sms_text(msg) == expected


def test_signature_separator_arrives_with_crlf() -> None:
    msg = plain_mail("Running late.\n-- \nBob\n")
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None
    assert "\r\n-- \r\n" in body.get_content()  # the pitfall this module has to handle
    assert extract_sms_text(msg) == "Running late."


def test_outlook_sample_prefers_plain_part() -> None:
    msg = sample("outlook_reply.eml")
    text = extract_sms_text(msg)
    assert text == (
        "Hi Jane, we’ll be there between 9 and 11 – please leave the gate open.\n\nBob Smith\nDispatch"
    )
    assert count_parts(text).encoding == "GSM-7"


def test_outlook_sample_html_part_strips_the_same() -> None:
    msg = sample("outlook_reply.eml")
    html = msg.get_body(preferencelist=("html",))
    assert html is not None
    text = strip_reply_and_signature(html_to_text(html.get_content())).strip()
    assert text == (
        "Hi Jane, we’ll be there between 9 and 11 – please leave the gate open.\n\nBob Smith\nDispatch"
    )


def test_gmail_html_only_sample() -> None:
    assert extract_sms_text(sample("gmail_html_only.eml")) == "Yes – 9 to 11 is fine.\n\nThanks!"


def test_html_only_mail() -> None:
    html = (
        "<html><head><title>Ignored title</title><style>p { color: red; }</style>"
        "<script>alert('no')</script></head><body>"
        "<p>Gate code is&nbsp;<b>4821</b> &amp; the   dock\nis on the left.</p>"
        "<div>Call me<br>if lost</div><div><br></div><div><br></div><div><br></div>"
        "<ul><li>Pallets: 2</li><li>Boxes: 5</li></ul>"
        "<p>-- <br>Bob Smith</p>"
        "</body></html>"
    )
    assert extract_sms_text(html_mail(html)) == (
        "Gate code is 4821 & the dock is on the left.\nCall me\nif lost\n\n- Pallets: 2\n- Boxes: 5"
    )


def test_html_only_reply_with_blockquote() -> None:
    html = (
        "<div>Friday works.</div><div><br></div>"
        "<div>Sent from my iPad</div>"
        '<blockquote type="cite">On 3 Dec 2026, at 10:00, Jane &lt;jane@example.com&gt; wrote:'
        "<br><br><div>Is Friday OK?</div></blockquote>"
    )
    assert extract_sms_text(html_mail(html)) == "Friday works."


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        pytest.param(
            "<pre>  keep   this\n    indent</pre>after", "  keep   this\n    indent\nafter", id="pre"
        ),
        pytest.param(
            "<table><tr><td>Qty</td><td>2</td></tr><tr><td>Item</td><td>pallet</td></tr></table>",
            "Qty 2\nItem pallet",
            id="table",
        ),
        pytest.param("<head><title>t</title><body>no closing head</body>", "no closing head", id="open-head"),
        pytest.param("<!--[if mso]><xml>junk</xml><![endif]--><p>text</p>", "text", id="outlook-comment"),
        pytest.param("caf&eacute; &lt;b&gt; &#8217; &#x1F600;", "café <b> ’ 😀", id="entities"),
        pytest.param(
            "<blockquote><p>q</p><blockquote>qq</blockquote></blockquote>", "> q\n>> qq", id="nested-quote"
        ),
    ],
)
def test_html_to_text(html: str, expected: str) -> None:
    assert html_to_text(html) == expected


def test_html_with_very_many_inline_elements_is_linear() -> None:
    html = "<p>" + "<span>a</span>" * 200_000 + "</p>"
    assert html_to_text(html) == "a" * 200_000


def test_plain_part_preferred_over_html() -> None:
    msg = alternative_mail("Plain wins.\n", "<p>HTML loses.</p>")
    assert extract_sms_text(msg) == "Plain wins."


def test_blank_plain_part_falls_back_to_html() -> None:
    msg = alternative_mail("\n  \n", "<p>Only the HTML has words.</p>")
    assert extract_sms_text(msg) == "Only the HTML has words."


def test_no_text_body_gives_empty_string_not_subject() -> None:
    msg = EmailMessage()
    msg["Subject"] = "Use me instead"
    msg.set_content(b"%PDF-1.4", maintype="application", subtype="pdf", filename="doc.pdf")
    assert extract_sms_text(over_smtp(msg)) == ""


def test_text_attachment_is_not_the_body() -> None:
    msg = EmailMessage()
    msg["Subject"] = "Report"
    msg.set_content("<p>See attached.</p>", subtype="html")
    msg.add_attachment("secret attachment text\n", filename="notes.txt")
    assert extract_sms_text(over_smtp(msg)) == "See attached."


def test_format_flowed_is_unwrapped() -> None:
    raw = (
        b"From: bob@example.com\r\n"
        b"To: 0412345678@sms.local\r\n"
        b"Subject: Re: x\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8; format=flowed\r\n"
        b"Content-Transfer-Encoding: 7bit\r\n"
        b"\r\n"
        b"We will be there between nine and eleven, \r\n"
        b"please leave the gate open.\r\n"
        b" From the dispatch desk.\r\n"
        b"\r\n"
        b"On 03/12/2026 10:00, Jane Doe wrote:\r\n"
        b"> What time will you \r\n"
        b"> arrive?\r\n"
        b"-- \r\n"
        b"Bob\r\n"
    )
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    assert extract_sms_text(msg) == (
        "We will be there between nine and eleven, please leave the gate open.\nFrom the dispatch desk."
    )


def test_unknown_charset_does_not_raise() -> None:
    raw = (
        b"Subject: x\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\n"
        b"Hello there\r\n"
    )
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    assert extract_sms_text(msg) == "Hello there"


def test_reply_text_to_parts_end_to_end() -> None:
    # The Outlook reply's curly apostrophe and en dash would make it UCS-2 on their own.
    parts = count_parts(extract_sms_text(sample("outlook_reply.eml")))
    assert parts.encoding == "GSM-7"
    assert parts.parts == 1
    assert "we'll" in parts.text
    assert " - please" in parts.text


def test_control_characters_are_not_sent() -> None:
    parts = count_parts("Hi\x00 there\x1b!\nBye\x7f")
    assert parts.text == "Hi there!\nBye" and parts.encoding == "GSM-7"
