"""Attachments → fax documents: which types GoFax can fax, safe file names, PDF checks. Pure.

GoFax converts each document with a converter it picks **by the file name's extension**, so the
name we send must end in the extension of what the bytes really are. A type is judged from
three witnesses: the declared content type, the file name's extension and the first bytes of the
content (its signature). Mail clients often get the first two wrong (``application/octet-stream``,
a PNG saved as ``.jpg``); the content does not lie, so it decides when the others disagree or
say nothing. Text files have no signature and are taken at their word.
"""

from __future__ import annotations

import io
import re
import unicodedata
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from bridge import replies
from bridge.replies import Refused

__all__ = [
    "ACCEPTED",
    "TYPES",
    "DocType",
    "classify",
    "display_filename",
    "pdf_pages",
    "safe_filename",
]

log = structlog.get_logger(__name__)

# Longest file name we hand to GoFax (and store); the extension always survives the cut.
MAX_FILENAME_CHARS = 100

# Content types that say nothing about the content: judged by extension and signature instead.
GENERIC_TYPES = frozenset({
    "", "application/octet-stream", "binary/octet-stream", "application/x-download",
    "application/download", "application/force-download", "application/unknown",
    "application/x-unknown", "application/binary",
})


def _starts(*signatures: bytes) -> Callable[[bytes], bool]:
    return lambda data: data.startswith(signatures)


def _pdf_signature(data: bytes) -> bool:
    # PDF readers (and pypdf) accept a header anywhere in the first 1024 bytes.
    return b"%PDF-" in data[:1024]


def _zip_member(prefix: str) -> Callable[[bytes], bool]:
    """An Office Open XML / OpenDocument file: a zip with a telling member."""
    def check(data: bytes) -> bool:
        if not data.startswith(b"PK\x03\x04"):
            return False
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                if prefix == "mimetype":
                    return (z.read("mimetype").strip()
                            == b"application/vnd.oasis.opendocument.text")
                return any(n.startswith(prefix) for n in z.namelist())
        except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError, RuntimeError):
            return False
    return check


def _any(_: bytes) -> bool:
    return True


_OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # the container of .doc and .xls


@dataclass(frozen=True)
class DocType:
    label: str                       # "PDF", shown to people
    ext: str                         # canonical extension, what GoFax sees
    exts: frozenset[str]             # extensions that mean this type
    content_type: str                # canonical content type, what we store
    content_types: frozenset[str]    # content types that mean this type
    signature: Callable[[bytes], bool]
    # A signature unique to this type (so it may override a wrong name or content type).
    # OLE and zip containers hold several types; text has no signature at all.
    distinctive: bool = True


def _t(label: str, exts: str, types: str, signature: Callable[[bytes], bool],
       distinctive: bool = True) -> DocType:
    ext_list, type_list = exts.split(), types.split()
    return DocType(label, ext_list[0], frozenset(ext_list), type_list[0], frozenset(type_list),
                   signature, distinctive)


# In the order people read the accepted list.
TYPES: tuple[DocType, ...] = (
    _t("PDF", "pdf", "application/pdf application/x-pdf application/acrobat", _pdf_signature),
    _t("TIFF", "tif tiff", "image/tiff image/tif image/x-tiff application/x-tiff",
       _starts(b"II*\x00", b"MM\x00*")),
    _t("JPEG", "jpg jpeg jpe", "image/jpeg image/jpg image/pjpeg", _starts(b"\xff\xd8\xff")),
    _t("PNG", "png", "image/png image/x-png", _starts(b"\x89PNG\r\n\x1a\n")),
    _t("DOC", "doc", "application/msword application/vnd.ms-word application/doc",
       _starts(_OLE), distinctive=False),
    _t("DOCX", "docx",
       "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
       _zip_member("word/")),
    _t("RTF", "rtf", "application/rtf text/rtf application/x-rtf text/richtext", _starts(b"{\\rtf")),
    _t("TXT", "txt", "text/plain", _any, distinctive=False),
    _t("XLS", "xls", "application/vnd.ms-excel application/excel application/x-msexcel",
       _starts(_OLE), distinctive=False),
    _t("XLSX", "xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
       _zip_member("xl/")),
    _t("ODT", "odt", "application/vnd.oasis.opendocument.text", _zip_member("mimetype")),
)

ACCEPTED = ", ".join(t.label for t in TYPES)
_BY_EXT = {ext: t for t in TYPES for ext in t.exts}
_BY_TYPE = {ct: t for t in TYPES for ct in t.content_types}


def _extension(filename: str) -> str:
    stem, dot, ext = filename.rpartition(".")
    return ext.lower() if dot and stem else ""


def classify(filename: str, content_type: str, data: bytes) -> DocType:
    """The type of an attachment, or :class:`Refused` (554 5.6.1) naming the file.

    ``filename`` should already be a display-safe name (see :func:`display_filename`).
    """
    content_type = (content_type or "").lower()
    by_ext = _BY_EXT.get(_extension(filename))
    by_type = _BY_TYPE.get(content_type)
    # The extension first: GoFax goes by it, and people choose names more carefully than
    # their mail client chooses content types.
    claims = [t for t in dict.fromkeys((by_ext, by_type)) if t is not None]
    for t in claims:
        if t.distinctive and t.signature(data):
            return t
    # What the content says, when it says it unambiguously (a PNG named .jpg, a PDF sent as
    # application/octet-stream without a name, a PDF called .txt).
    for t in TYPES:
        if t.distinctive and t.signature(data):
            return t
    # Claims the content can only weakly confirm (any OLE file for .doc/.xls; any text).
    for t in claims:
        if t.signature(data):
            return t
    if not claims:
        what = f"type {content_type}" if content_type not in GENERIC_TYPES else "unknown type"
        raise Refused(replies.UNSUPPORTED_ATTACHMENT.format(
            filename=filename, detail=what, accepted=ACCEPTED))
    claimed = claims[0]
    if claimed.label == "PDF":
        raise Refused(replies.BAD_PDF.format(filename=filename, detail="the file is not a PDF"))
    raise Refused(replies.UNSUPPORTED_ATTACHMENT.format(
        filename=filename, detail=f"the content is not a {claimed.label} file", accepted=ACCEPTED))


# --- file names -------------------------------------------------------------------------------

# Characters Windows refuses in names (GoFax runs its converters on files), plus the separators.
_RESERVED_CHARS = re.compile(r'[<>:"|?*]')
# Unicode categories never wanted in a name: controls (CR, LF, NUL), format characters (the
# right-to-left override that makes "fdp.exe" look like "exe.pdf"), surrogates, private use,
# unassigned, line/paragraph separators.
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_WINDOWS_DEVICES = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                              *(f"LPT{i}" for i in range(1, 10))})


def display_filename(raw: str | None) -> str:
    """A sender's file name made harmless: base name only, no control or reserved characters,
    no leading dots, collapsed whitespace. The extension is left as it is (may be empty)."""
    name = unicodedata.normalize("NFC", str(raw or ""))
    # Base name: the last path segment, whatever the sender's OS used as separator.
    name = re.split(r"[/\\]", name)[-1]
    name = "".join("\x00" if unicodedata.category(c) in _BAD_CATEGORIES else c for c in name)
    name = re.sub("\x00+", "_", name)
    name = _RESERVED_CHARS.sub("_", name)
    name = re.sub(r"\s+", " ", name)
    # Leading dots make hidden files and "..", trailing dots and spaces vanish on Windows.
    return name.strip(" .")


def safe_filename(raw: str | None, doc_type: DocType, index: int) -> str:
    """The name a document gets in the store and at GoFax.

    Safe base name (:func:`display_filename`), with the extension of ``doc_type`` in lower case:
    kept when it already means that type (``.jpeg`` stays), replaced when it names another type
    we know (a PNG called ``photo.jpg`` becomes ``photo.png``), appended otherwise
    (``scan`` → ``scan.pdf``, ``notes.log`` → ``notes.log.txt``). Never longer than
    ``MAX_FILENAME_CHARS``; ``index`` names a document whose name was empty.
    """
    name = display_filename(raw)
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    ext = ext.lower()
    if ext not in doc_type.exts:
        if ext not in _BY_EXT:
            stem = name if ext else stem
        ext = doc_type.ext
    stem = stem.strip(" .") or f"attachment-{index}"
    if stem.upper() in _WINDOWS_DEVICES:
        stem += "_"
    stem = stem[: MAX_FILENAME_CHARS - len(ext) - 1].rstrip(" .") or f"attachment-{index}"
    return f"{stem}.{ext}"


# --- PDF --------------------------------------------------------------------------------------

def pdf_pages(data: bytes, filename: str) -> int:
    """The page count of a PDF we can fax, or :class:`Refused` naming the file.

    Refused: anything pypdf cannot open, a PDF without pages, and a PDF that needs a password
    to open. A PDF encrypted only with an *owner* password (copy/print restrictions, an empty
    user password: common for statements and forms) opens in every viewer and is accepted.
    """
    from pypdf import PdfReader  # local: a heavy import only DATA needs
    from pypdf.errors import FileNotDecryptedError

    try:
        # Buffered: pypdf sizes a stream with BytesIO.getbuffer(), which makes the BytesIO copy
        # the bytes it shared (20 MB for a 20 MB fax); a BufferedReader has no getbuffer.
        stream = io.BufferedReader(io.BytesIO(data))  # type: ignore[arg-type]
        reader = PdfReader(stream)  # tries the empty user password by itself
        try:
            pages = len(reader.pages)
        except FileNotDecryptedError:
            raise Refused(replies.ENCRYPTED_PDF.format(filename=filename)) from None
    except Refused:
        raise
    except Exception as exc:  # hostile input: any failure to read means "cannot open"
        log.info("intake_pdf_unreadable", filename=filename, error=f"{type(exc).__name__}: {exc}")
        raise Refused(replies.BAD_PDF.format(
            filename=filename, detail="it is damaged or not a PDF")) from None
    if pages < 1:
        raise Refused(replies.BAD_PDF.format(filename=filename, detail="it has no pages"))
    return pages
