"""Finding, reading and chunking documents from a file, folder or glob on any fsspec URI.

A file named directly that cannot be read is an error (InputError, exit 2). A file met inside a
folder or glob that cannot be read is skipped and reported, never silently.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError
from .jsonl import records as jsonl_records

SUPPORTED = (".txt", ".md", ".markdown", ".html", ".htm", ".jsonl", ".pdf")
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Document:
    """One logical document: a file, or one record of a JSONL file."""

    doc_id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    markdown: bool = False


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass(frozen=True)
class Chunk:
    id: str
    doc_id: str
    chunk: int
    text: str
    metadata: dict[str, Any]


class Source:
    """A resolved source: its canonical URI (the scope of `--prune`) and the files under it."""

    def __init__(self, source: str):
        from fsspec.core import url_to_fs

        self.given = source
        try:
            self.fs, path = url_to_fs(source)
        except (ImportError, ValueError) as exc:
            raise InputError(
                f"cannot open source {source!r}: {exc}",
                where="SOURCE",
                fix="use a local path or an fsspec URI whose filesystem is installed (s3fs, gcsfs, adlfs)",
            ) from None
        self.path = path
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.protocol = protocol
        self.uri = f"{protocol}://{path}" if protocol not in ("file", "local") else f"file://{path}"
        self.direct = False
        if _GLOB_CHARS & set(path):
            files = [p for p in self.fs.glob(path) if self.fs.isfile(p)]
        elif self.fs.isdir(path):
            files = self.fs.find(path)
        elif self.fs.isfile(path):
            files, self.direct = [path], True
        else:
            raise InputError(
                f"source not found: {source}",
                where="SOURCE",
                fix="check the path or URI; a folder, a file or a glob such as 'docs/**/*.md' works",
            )
        if self.direct:
            self.files = files
        else:
            # Hidden files and folders (.git, .DS_Store) below the source are never documents;
            # the folder named (or the fixed part of a glob) may itself be hidden, e.g. `.notes/`.
            root = path
            if _GLOB_CHARS & set(path):
                root = path.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0]
            root = root.rstrip("/") + "/"
            self.files = sorted(
                f for f in files if not any(p.startswith(".") for p in f.removeprefix(root).split("/"))
            )

    def file_uri(self, path: str) -> str:
        return f"{self.protocol}://{path}" if self.protocol not in ("file", "local") else f"file://{path}"


def read_documents(source: Source) -> tuple[list[Document], list[Skipped]]:
    """Read every supported file under `source`. Raises InputError for a bad file named directly
    and for a source with no readable document."""
    documents: list[Document] = []
    skipped: list[Skipped] = []
    for path in source.files:
        try:
            documents.extend(_read_file(source, path))
        except InputError as exc:
            if source.direct:
                raise
            uri = source.file_uri(path)
            reason = exc.what if exc.where in (None, uri) else f"{exc.what} at {exc.where.removeprefix(uri).strip()}"
            skipped.append(Skipped(uri, reason))
    if not documents:
        listed = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:5])
        raise InputError(
            f"no documents to index in {source.given}" + (f" (skipped: {listed})" if listed else ""),
            where="SOURCE",
            fix=f"point SOURCE at files ending in {', '.join(SUPPORTED)} with text in them",
        )
    return documents, skipped


def _read_file(source: Source, path: str) -> Iterator[Document]:
    uri = source.file_uri(path)
    ext = posixpath.splitext(path)[1].lower()
    if ext not in SUPPORTED:
        raise InputError(
            f"unsupported file type {ext or '(none)'!r}",
            where=uri,
            fix=f"index files ending in {', '.join(SUPPORTED)}",
        )
    with source.fs.open(path, "rb") as handle:
        raw = handle.read()
    base = {"path": uri}
    if ext == ".pdf":
        yield Document(uri, _pdf_text(raw, uri), base)
        return
    if b"\x00" in raw[:8192]:
        raise InputError("binary file (contains NUL bytes)", where=uri, fix="index text files only")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"not valid UTF-8 (byte {exc.start})", where=uri, fix="convert the file to UTF-8"
        ) from None
    if ext == ".jsonl":
        yield from _jsonl(text, uri)
        return
    if ext in (".html", ".htm"):
        text = _html_text(text)
    if not text.strip():
        raise InputError("empty document", where=uri, fix="remove the file or give it text")
    yield Document(uri, text, base, markdown=ext in (".md", ".markdown"))


def _jsonl(text: str, uri: str) -> Iterator[Document]:
    """Each line a JSON object with a `text` field; `id` names the record, other fields are metadata."""
    parsed: list[Document] = []
    fix = 'write lines like {"text": "...", "id": "doc-1", "lang": "en"}'
    for number, record in jsonl_records(text, uri, fix):
        where = f"{uri} line {number}"
        if not isinstance(record.get("text"), str) or not record["text"].strip():
            raise InputError("each line needs a non-empty string field 'text'", where=where, fix=fix)
        key = record.get("id", number)
        metadata = {"path": uri}
        for name, value in record.items():
            if name in ("text", "id"):
                continue
            if isinstance(value, (str, int, float, bool)) or (
                isinstance(value, list) and all(isinstance(v, (str, int, float, bool)) for v in value)
            ):
                metadata[name] = value
        parsed.append(Document(f"{uri}#{key}", record["text"], metadata))
    if not parsed:
        raise InputError("no records in JSONL file", where=uri, fix="add lines with a 'text' field")
    ids = [d.doc_id for d in parsed]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InputError(f"duplicate record id {dup.split('#', 1)[1]!r}", where=uri, fix="give each line a unique 'id'")
    yield from parsed


def _html_text(html: str) -> str:
    from .registry import require

    require("bs4", "local", "reading HTML")
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript"]):
        tag.decompose()
    return soup.get_text("\n", strip=True)


def _pdf_text(raw: bytes, uri: str) -> str:
    import io

    from .registry import require

    require("pypdf", "local", "reading PDF")
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(raw))
        text = "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except (PdfReadError, ValueError, KeyError) as exc:
        raise InputError(f"unreadable PDF: {exc}", where=uri, fix="check the file opens in a PDF viewer") from None
    if not text.strip():
        raise InputError("PDF has no extractable text (scanned?)", where=uri, fix="OCR it first")
    return text


def chunk_document(doc: Document, size: int, overlap: int) -> list[Chunk]:
    """Cut a document into chunks of at most `size` characters with `overlap` characters shared.

    Chunk ids derive from the document id, the chunk's text, its metadata and how many times that
    text occurred before in the document: editing one paragraph changes only the ids of the
    chunks it touches, and identical input always gives identical ids.
    """
    from .registry import require

    require("semantic_text_splitter", "local", "chunking")
    from semantic_text_splitter import MarkdownSplitter, TextSplitter

    splitter_cls = MarkdownSplitter if doc.markdown else TextSplitter
    splitter = splitter_cls(capacity=size, overlap=overlap, trim=True)
    meta_key = json.dumps(doc.metadata, sort_keys=True)
    seen: dict[str, int] = {}
    chunks = []
    for number, text in enumerate(t for t in splitter.chunks(doc.text) if t.strip()):
        occurrence = seen.get(text, 0)
        seen[text] = occurrence + 1
        digest = hashlib.sha256("\x00".join([doc.doc_id, text, str(occurrence), meta_key]).encode()).hexdigest()
        chunks.append(Chunk(id=digest[:32], doc_id=doc.doc_id, chunk=number, text=text, metadata=doc.metadata))
    return chunks
