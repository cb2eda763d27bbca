"""Document-level metadata (title, author, subject, keywords, creation and modification dates),
read from a PDF's Info dictionary / XMP as PyMuPDF reports it, normalized for storing and
filtering: strings stripped (empty -> None), dates as ISO 8601.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass

# PDF date strings (PDF 32000-1 §7.9.4): "D:YYYYMMDDHHmmSSOHH'mm'", every part after the year
# optional, the "D:" prefix and the apostrophes often missing or misplaced in the wild.
_PDF_DATE = re.compile(
    r"^\s*(?:D:)?(?P<Y>\d{4})(?P<m>\d{2})?(?P<d>\d{2})?(?P<H>\d{2})?(?P<M>\d{2})?(?P<S>\d{2})?"
    r"(?:(?P<z>Z)|(?P<sign>[+-])(?P<oh>\d{2})'?(?P<om>\d{2})?'?)?")
_MAX_FIELD = 1000  # a title or author longer than this is junk, not a name; cut it


@dataclass(frozen=True)
class DocumentMetadata:
    """What `ragvl index` stores per document; every field may be None."""

    title: str | None = None
    author: str | None = None
    subject: str | None = None
    keywords: str | None = None
    created: str | None = None   # ISO 8601, e.g. "2024-03-01T09:30:00+01:00" (no offset if none given)
    modified: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def pdf_date_iso(value: str | None) -> str | None:
    """A PDF date string as ISO 8601 ("2024-03-01T09:30:00+01:00"); None if absent or invalid.

    Missing parts default to the start of the period (month 01, day 01, 00:00:00); a time zone
    is kept when given ("Z" -> "+00:00"), and left out otherwise (PDF's "unknown" local time).
    """
    if not value:
        return None
    m = _PDF_DATE.match(value)
    if not m:
        return None
    part = lambda k, default: int(m.group(k)) if m.group(k) else default  # noqa: E731
    try:
        tz = None
        if m.group("z"):
            tz = dt.timezone.utc
        elif m.group("sign"):
            offset = dt.timedelta(hours=part("oh", 0), minutes=part("om", 0))
            tz = dt.timezone(-offset if m.group("sign") == "-" else offset)
        when = dt.datetime(part("Y", 1), part("m", 1), part("d", 1), part("H", 0), part("M", 0), part("S", 0),
                           tzinfo=tz)
    except ValueError:  # month 13, hour 25, an offset of 24 hours or more ...
        return None
    return when.isoformat()


def _text(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    value = " ".join(value.replace("\x00", " ").split())
    return value[:_MAX_FIELD] or None


def document_metadata(raw: dict | None) -> DocumentMetadata:
    """Normalize PyMuPDF's `Document.metadata` dict (keys title, author, ..., creationDate, modDate)."""
    raw = raw or {}
    return DocumentMetadata(title=_text(raw.get("title")), author=_text(raw.get("author")),
                            subject=_text(raw.get("subject")), keywords=_text(raw.get("keywords")),
                            created=pdf_date_iso(raw.get("creationDate")), modified=pdf_date_iso(raw.get("modDate")))
