"""Finding, reading and chunking documents from a file, folder or glob on any fsspec URI.

A file named directly that cannot be read is an error (InputError, exit 2). A file met inside a
folder or glob that cannot be read is skipped and reported, never silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError
from .jsonl import read_file
from .jsonl import records as jsonl_records

SUPPORTED = (".txt", ".md", ".markdown", ".html", ".htm", ".jsonl", ".pdf")
_GLOB_CHARS = set("*?[")
# Every read is bounded: one file of a source is read whole into memory.
MAX_FILE_BYTES = 256 * 2**20
# A JSONL record's metadata is copied into each of its chunks and returned with every hit.
MAX_METADATA_BYTES = 32 * 2**10


# -- source identity ---------------------------------------------------------------------------
# Document ids derive from canonical URIs only: `index D`, `index D/./x/../x`, `index ../D` from a
# subfolder, `index LINK_TO_D` and `index file://D/` are one source with one set of ids.
_LOCAL = ("file", "local")
# Other names fsspec gives one filesystem: one spelling of an object, one document id.
_SCHEME_ALIASES = {"gcs": "gs", "s3a": "s3", "abfs": "az", "abfss": "az"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.S)


def canonical_source(source: str) -> str:
    """The one spelling of a source (a file, folder or glob): what `Source` lists and ids derive from.

    Local paths (plain, `~/...`, `file://`, `file:`, `local://`) become `file://` + the absolute
    path with `.`, `..` and symbolic links resolved in every folder of it: the folder named, the
    fixed folders before a glob's pattern, the folder of a file named directly (a file that is
    itself a link keeps its own name, as it does when its folder is listed). Object-store URIs
    (`s3://b//k/`) lose empty and `.` segments and a trailing slash (`s3://b/k`), and take one
    scheme per filesystem (`gcs://` is `gs://`, `s3a://` is `s3://`, `abfs://` and `abfss://` are
    `az://`). Chained fsspec URLs (`a::b`) are left as given.
    """
    return _canonical(source, glob=True)


def canonical_doc_id(doc_id: str) -> str:
    """The canonical form of a document id: its file's URI as `canonical_source` spells it (no
    glob reading), with a JSONL record's `#key` kept. Ids that are not URIs are returned as given."""
    file = doc_file(doc_id)
    if not _SCHEME.match(file) and not file.startswith("file:"):
        return doc_id
    return _canonical(file, glob=False) + doc_id[len(file):]


def doc_file(doc_id: str) -> str:
    """The file part of a document id: the id itself, or for a JSONL record `URI.jsonl#key` the URI."""
    start = 0
    while (at := doc_id.find("#", start)) != -1:
        if doc_id[:at].lower().endswith(".jsonl"):
            return doc_id[:at]
        start = at + 1
    return doc_id


def _canonical(source: str, glob: bool) -> str:
    if "::" in source:
        return source
    match = _SCHEME.match(source)
    if match and match.group(1).lower() not in _LOCAL:
        segments = [s for s in match.group(2).split("/") if s not in ("", ".")]
        scheme = match.group(1).lower()
        return f"{_SCHEME_ALIASES.get(scheme, scheme)}://" + "/".join(segments)
    path = match.group(2) if match else source.removeprefix("file:") if source.startswith("file:") else source
    # Joined, not normalized: `LINK/..` must climb from where the link leads, as the OS does.
    path = os.path.join(os.getcwd(), os.path.expanduser(path))
    parts = path.split("/")
    pattern = next((i for i, p in enumerate(parts) if glob and _GLOB_CHARS & set(p)), None)
    if pattern is not None:
        fixed = os.path.realpath("/".join(parts[:pattern]) or "/")
        rest = [p for p in parts[pattern:] if p not in ("", ".")]
        return "file://" + posixpath.join(fixed, *rest)
    path = path.rstrip("/") or "/"
    if os.path.isdir(path):
        return "file://" + os.path.realpath(path)
    folder, name = os.path.split(path)
    if name in (".", ".."):
        return "file://" + os.path.realpath(path)
    return "file://" + posixpath.join(os.path.realpath(folder or "/"), name)


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

    def __init__(self, source: str, follow_links: bool = False):
        from fsspec.core import url_to_fs

        self.given = source
        # Under a folder or glob, a symbolic link is read only if it leads inside `root`,
        # unless `follow_links`; a file named directly is read wherever it leads.
        self.follow_links = follow_links
        self.root: str | None = None
        canonical = canonical_source(source)
        try:
            # The canonical spelling, so every spelling of one source gives the same document ids.
            self.fs, path = url_to_fs(canonical)
        except (ImportError, ValueError) as exc:
            raise InputError(
                f"cannot open source {source!r}: {exc}",
                where="SOURCE",
                fix="use a local path or an fsspec URI whose filesystem is installed (s3fs, gcsfs, adlfs)",
            ) from None
        self.path = path
        protocols = (self.fs.protocol,) if isinstance(self.fs.protocol, str) else tuple(self.fs.protocol)
        written = _SCHEME.match(canonical)
        # The canonical scheme where the filesystem answers to it (adlfs names `abfs` first, ids say `az`).
        protocol = written.group(1) if written and written.group(1) in protocols else protocols[0]
        self.protocol = protocol
        self.uri = f"{protocol}://{path}" if protocol not in ("file", "local") else f"file://{path}"
        self.direct = False
        if _GLOB_CHARS & set(path):
            # Not only regular files: a FIFO or broken link matched is skipped and reported.
            files = [p for p in self.fs.glob(path) if not self.fs.isdir(p)]
        elif self.fs.isdir(path):
            files = self.fs.find(path)
        elif self.fs.exists(path):  # a FIFO named directly is refused by the reader, with its kind
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
            self.root = root
            self.files = sorted(
                f for f in files if not any(p.startswith(".") for p in f.removeprefix(root).split("/"))
            )

    def file_uri(self, path: str) -> str:
        """The document id of the file at `path` (found under this source): its canonical URI."""
        return canonical_doc_id(f"{self.protocol}://{path}" if self.protocol not in _LOCAL else f"file://{path}")

    def covers(self, doc_id: str) -> bool:
        """Whether a stored document belongs to this source, whichever spelling indexed it: its
        file is the file named, or lies under the folder, or matches the glob (hidden paths
        below the folder excepted, as when listing). The scope of `--prune`."""
        file = doc_file(canonical_doc_id(doc_id))
        if self.direct:
            return file == self.file_uri(self.path)
        scheme, _, path = file.partition("://")
        scope = canonical_source(self.uri)
        if scheme != scope.partition("://")[0]:
            return False
        if _GLOB_CHARS & set(self.path):
            from fsspec.utils import glob_translate

            if not re.fullmatch(glob_translate(scope.partition("://")[2]), path):
                return False
        root = canonical_source(self.file_uri(self.root or self.path)).partition("://")[2].rstrip("/") + "/"
        return path.startswith(root) and not any(p.startswith(".") for p in path.removeprefix(root).split("/"))


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
    outside = _link_outside_root(source, path)
    if outside is not None:
        raise InputError(
            f"symbolic link to {outside}, outside the source folder",
            where=uri,
            fix="pass --follow-links (IndexSpec follow_links) to read what links lead to, or copy the file in",
        )
    raw = read_file(source.fs, path, uri, "document", MAX_FILE_BYTES)
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
        text = _html_text(text, uri)
    if not text.strip():
        raise InputError("empty document", where=uri, fix="remove the file or give it text")
    yield Document(uri, text, base, markdown=ext in (".md", ".markdown"))


def _link_outside_root(source: Source, path: str) -> str | None:
    """Where `path` really is, if a link takes it out of a folder source that links may not leave."""
    if source.root is None or source.follow_links or source.protocol not in ("file", "local"):
        return None
    real, root = os.path.realpath(path), os.path.realpath(source.root)
    try:
        inside = os.path.commonpath([real, root]) == root
    except ValueError:  # another drive (Windows)
        inside = False
    return None if inside else real


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
        size = len(json.dumps(metadata, ensure_ascii=False).encode())
        if size > MAX_METADATA_BYTES:
            largest = max((n for n in metadata if n != "path"), default="path",
                          key=lambda n: len(json.dumps(metadata[n], ensure_ascii=False)))
            raise InputError(
                f"the metadata of line {number} is {size:,} bytes (field {largest!r} is the largest); at most "
                f"{MAX_METADATA_BYTES:,} are allowed, because metadata is copied into every chunk and every hit",
                where=where,
                fix="put long text in 'text' (it is chunked), or keep a short reference (a URL or an id) "
                "in the metadata instead of the content",
            )
        parsed.append(Document(f"{uri}#{key}", record["text"], metadata))
    if not parsed:
        raise InputError("no records in JSONL file", where=uri, fix="add lines with a 'text' field")
    ids = [d.doc_id for d in parsed]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InputError(f"duplicate record id {dup.split('#', 1)[1]!r}", where=uri, fix="give each line a unique 'id'")
    yield from parsed


def _html_text(html: str, uri: str) -> str:
    from .registry import require

    require("bs4", "local", "reading HTML")
    from bs4 import BeautifulSoup

    try:
        soup = BeautifulSoup(html, "html.parser")
        for tag in soup(["script", "style", "noscript"]):
            tag.decompose()
        return soup.get_text("\n", strip=True)
    except RecursionError:
        raise InputError("HTML nested too deeply to read", where=uri, fix="simplify the page's markup") from None


def _pdf_text(raw: bytes, uri: str) -> str:
    import io

    from .registry import require

    require("pypdf", "local", "reading PDF")
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(raw))
        text = "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except PdfReadError as exc:
        raise InputError(f"unreadable PDF: {exc}", where=uri, fix="check the file opens in a PDF viewer") from None
    except RecursionError:
        raise InputError("unreadable PDF: objects nested too deeply", where=uri,
                         fix="check the file opens in a PDF viewer; re-save or print it to a new PDF") from None
    except Exception as exc:  # noqa: BLE001 - pypdf on hostile input fails in many ways; each means unreadable
        raise InputError(f"unreadable PDF: {type(exc).__name__}: {str(exc)[:200]}", where=uri,
                         fix="check the file opens in a PDF viewer") from None
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
        chunks.append(Chunk(id=chunk_id(doc.doc_id, text, occurrence, meta_key), doc_id=doc.doc_id, chunk=number,
                            text=text, metadata=doc.metadata))
    return chunks


def chunk_id(doc_id: str, text: str, occurrence: int, metadata: dict[str, Any] | str) -> str:
    """The id of a chunk: a hash of its document id, its text, how many times that text occurred
    before in the document, and the document's metadata (a dict, or its sorted JSON)."""
    meta_key = metadata if isinstance(metadata, str) else json.dumps(metadata, sort_keys=True)
    return hashlib.sha256("\x00".join([doc_id, text, str(occurrence), meta_key]).encode()).hexdigest()[:32]
