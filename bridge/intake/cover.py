"""The fax cover page: a Jinja text template rendered into a one-or-more-page PDF with fpdf2.

Why text and not HTML: a fax is black on white at 200 dpi; a fixed-width text page is legible,
the template is trivial for an operator to change (``[notices] templates`` may hold an override
``cover.txt.j2``), and no HTML-to-PDF engine is needed. Why PDF: it is the one format GoFax is
known to convert faithfully, so the cover looks the same whatever converter GoFax picks.

The template is text going into a PDF, not into a mail or a web page, so it is rendered without
autoescape; ``StrictUndefined`` makes a typo in an override template fail loudly (in tests and
``faxbridge check``) rather than print an empty field on every fax.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2

from bridge.store import NewDocument

__all__ = ["COVER_FILENAME", "SHIPPED_TEMPLATES", "CoverFields", "make_cover", "render_text",
           "text_to_pdf"]

SHIPPED_TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
TEMPLATE_NAME = "cover.txt.j2"
COVER_FILENAME = "cover.pdf"

# A cover page is not a letter-printing service: a mail body longer than this (a few pages in
# the mono font) is cut, so that a pasted log file cannot turn into a 300-page fax.
MAX_BODY_CHARS = 20_000
TRUNCATED_NOTE = "\n\n[... the rest of the message is not shown on this cover page]"

# DejaVu Sans Mono covers Latin, Greek and Cyrillic; where it is installed (Debian/Ubuntu,
# Fedora, Arch paths) we embed it. Otherwise the PDF core font Courier, which knows Latin-1 only.
_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/usr/share/fonts/TTF")
_FONT_FILES = ("DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf")

BODY_SIZE_PT = 10  # 89 columns on A4 in the mono font
TITLE_SIZE_PT = 24


@dataclass(frozen=True)
class CoverFields:
    to: str
    sender: str
    subject: str
    date: str
    pages: int | None  # total including the cover, when every page count is known
    body: str


@lru_cache(maxsize=8)
def _environment(dirs: tuple[str, ...]) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(list(dirs)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - text for a PDF page, not HTML: nothing to escape for
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


def render_text(fields: CoverFields, template_dirs: Sequence[str | Path] = ()) -> str:
    """The cover page as text; the first folder in ``template_dirs`` holding the template wins,
    the shipped ``templates/`` is always last."""
    dirs = (*(str(d) for d in template_dirs), str(SHIPPED_TEMPLATES))
    body = fields.body
    if len(body) > MAX_BODY_CHARS:
        body = body[:MAX_BODY_CHARS].rstrip() + TRUNCATED_NOTE
    template = _environment(dirs).get_template(TEMPLATE_NAME)
    return template.render(**{
        "to": fields.to, "from": fields.sender, "subject": fields.subject, "date": fields.date,
        "pages": "" if fields.pages is None else str(fields.pages), "body": body,
    })


@lru_cache(maxsize=1)
def _ttf_fonts() -> tuple[str, str] | None:
    for folder in _FONT_DIRS:
        paths = [Path(folder) / f for f in _FONT_FILES]
        if all(p.is_file() for p in paths):
            return str(paths[0]), str(paths[1])
    return None


# Typography the Latin-1 core font lacks, spelled the way a typewriter would.
_LATIN1_FALLBACK = str.maketrans({
    "‘": "'", "’": "'", "“": '"', "”": '"', "–": "-", "—": "--", "…": "...", "•": "*",
    "€": "EUR", "™": "(TM)", "\u00a0": " ",
})


def _printable(text: str, fits: set[int] | None) -> str:
    """Text the font can draw: tabs expanded, control characters dropped, and characters the
    font has no glyph for replaced by '?' (an emoji must not abort a fax)."""
    out = []
    for ch in text.expandtabs(8):
        if ch == "\n":
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            continue
        elif fits is None:
            # Latin-1 core font.
            folded = ch.translate(_LATIN1_FALLBACK)
            out.append(folded if all(ord(c) < 256 for c in folded) else "?")
        else:
            out.append(ch if ord(ch) in fits else "?")
    return "".join(out)


def _needs_unicode(text: str) -> bool:
    return any(ord(c) > 255 for c in text.translate(_LATIN1_FALLBACK)
               if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn"))


def text_to_pdf(text: str, *, title_lines: int = 1) -> tuple[bytes, int]:
    """Lays out text on A4 pages; the first ``title_lines`` are the title. → (PDF, pages)."""
    # Imported here: fpdf2 (with Pillow and fontTools) is ~35 MB of memory that a daemon
    # whose mails carry no text to put on a cover page never needs.
    from fpdf import FPDF
    from fpdf.enums import XPos, YPos

    pdf = FPDF(format="A4", unit="mm")
    pdf.set_creator("faxbridge")
    pdf.set_auto_page_break(auto=True, margin=15)
    # Loading and subsetting a TrueType font costs ~100 ms a page; the core Courier font costs
    # nothing, so the TTF is used only for text that Latin-1 cannot show.
    fonts = _ttf_fonts() if _needs_unicode(text) else None
    if fonts:
        pdf.add_font("body", fname=fonts[0])
        pdf.add_font("body", style="B", fname=fonts[1])
        family = "body"
    else:
        family = "courier"
    pdf.add_page()
    lines = text.strip("\n").split("\n")
    title, rest = lines[:title_lines], lines[title_lines:]

    pdf.set_font(family, style="B", size=TITLE_SIZE_PT)
    fits = set(pdf.current_font.cmap) if fonts else None  # type: ignore[union-attr]
    for line in title:
        pdf.multi_cell(0, TITLE_SIZE_PT * 0.5, _printable(line, fits) or " ",
                       new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(4)
    pdf.set_font(family, size=BODY_SIZE_PT)
    fits = set(pdf.current_font.cmap) if fonts else None  # type: ignore[union-attr]
    body = _printable("\n".join(rest), fits)
    if body.strip():
        pdf.multi_cell(0, BODY_SIZE_PT * 0.45, body, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    return bytes(pdf.output()), pdf.pages_count


def make_cover(fields: CoverFields, *, attachment_pages: int | None,
               template_dirs: Sequence[str | Path] = ()) -> NewDocument:
    """The cover page document. ``attachment_pages`` is the sum of the attachments' pages when
    all are known: the cover then says "Pages: N (including this page)"."""
    def render(total: int | None) -> tuple[bytes, int]:
        text = render_text(CoverFields(fields.to, fields.sender, fields.subject, fields.date,
                                       total, fields.body), template_dirs)
        return text_to_pdf(text)

    if attachment_pages is None:
        data, pages = render(None)
    else:
        # The count includes the cover itself, which may run to several pages: render, count,
        # and render again if the guess of one cover page was wrong.
        data, pages = render(attachment_pages + 1)
        if pages != 1:
            data, pages = render(attachment_pages + pages)
    return NewDocument(filename=COVER_FILENAME, content_type="application/pdf", data=data,
                       pages=pages, is_cover=True)
