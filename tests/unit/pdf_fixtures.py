"""PDFs written by pypdf for the reader tests: one page, Helvetica as /F1, and the content stream given."""

from __future__ import annotations

import io


def pdf_with_content(content: bytes) -> bytes:
    """A one-page PDF whose page content stream is `content` (font /F1 is Helvetica)."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    def name_dict(**items) -> DictionaryObject:
        return DictionaryObject({NameObject(f"/{k}"): v for k, v in items.items()})

    writer = PdfWriter()
    page = writer.add_blank_page(612, 792)
    font = name_dict(Type=NameObject("/Font"), Subtype=NameObject("/Type1"), BaseFont=NameObject("/Helvetica"))
    page[NameObject("/Resources")] = name_dict(Font=name_dict(F1=writer._add_object(font)))
    stream = DecodedStreamObject()
    stream.set_data(content)
    page.replace_contents(stream)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
