"""Small, real, valid PDFs for the simulator's received faxes and for tests (fpdf2)."""

from __future__ import annotations

from collections.abc import Sequence


def _latin1(text: str) -> str:
    # The PDF core fonts only cover Latin-1; a sample must never fail on an odd caller id.
    return text.encode("latin-1", "replace").decode("latin-1")


def sample_pdf(
    pages: int = 1,
    *,
    title: str = "GoFax simulator - sample fax",
    lines: Sequence[str] = (),
) -> bytes:
    """An A4 PDF of ``pages`` pages (at least 1), each with the title, ``lines`` and
    "Page n of N"."""
    from fpdf import FPDF  # here: the daemon imports the simulator, rarely runs it

    pages = max(1, int(pages))
    pdf = FPDF(format="A4")
    pdf.set_creator("faxbridge GoFax simulator")
    for number in range(1, pages + 1):
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 16)
        pdf.cell(0, 12, _latin1(title), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=11)
        for line in lines:
            pdf.cell(0, 7, _latin1(line), new_x="LMARGIN", new_y="NEXT")
        pdf.cell(0, 7, f"Page {number} of {pages}", new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())
