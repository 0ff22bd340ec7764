"""Finding, reading and chunking documents.

A bad file named directly is an InputError; inside a folder or glob it is skipped and listed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stackwise import InputError
from stackwise.documents import Document, Skipped, Source, chunk_document, read_documents


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def uri(path: Path) -> str:
    return f"file://{path.resolve()}"


def make_pdf(text: str) -> bytes:
    """A minimal one-page PDF (Helvetica, one text line) with a correct xref table."""
    stream = f"BT /F1 24 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >>"
        b" /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n".encode() + b"0000000000 65535 f \n"
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def read(path: Path | str) -> tuple[list[Document], list[Skipped]]:
    return read_documents(Source(str(path)))


# -- Source --------------------------------------------------------------------------------------
def test_source_on_a_file_is_direct(tmp_path):
    path = write(tmp_path / "a.txt", "hello")
    source = Source(str(path))
    assert source.direct
    assert source.files == [str(path.resolve())]
    assert source.uri == uri(path)


def test_source_on_a_folder_is_recursive_and_skips_hidden_entries(tmp_path):
    root = tmp_path / "docs"
    for name in ("a.txt", "sub/b.md", "sub/deeper/c.html", ".hidden.txt", ".git/config.txt",
                 "sub/.cache/d.txt", "sub/.DS_Store"):
        write(root / name, "x")
    source = Source(str(root))
    assert not source.direct
    assert source.uri == uri(root)
    assert source.files == sorted(str((root / n).resolve()) for n in ("a.txt", "sub/b.md", "sub/deeper/c.html"))


def test_source_on_a_hidden_folder_named_directly_reads_it(tmp_path):
    # Only what is hidden *below* the source is skipped, not the folder the user named.
    write(tmp_path / ".notes" / "a.txt", "x")
    write(tmp_path / ".notes" / ".b.txt", "x")
    assert Source(str(tmp_path / ".notes")).files == [str((tmp_path / ".notes" / "a.txt").resolve())]
    assert Source(".notes").files == [str((tmp_path / ".notes" / "a.txt").resolve())]


def test_source_on_a_glob(tmp_path):
    root = tmp_path / "docs"
    for name in ("a.md", "b.txt", "sub/c.md", "sub/.hidden/d.md", ".e.md"):
        write(root / name, "x")
    assert Source(str(root / "**" / "*.md")).files == sorted(
        str((root / n).resolve()) for n in ("a.md", "sub/c.md")
    )
    assert Source(str(root / "*.txt")).files == [str((root / "b.txt").resolve())]
    assert not Source(str(root / "*.txt")).direct


def test_source_relative_to_the_working_directory(tmp_path):
    write(tmp_path / "docs" / "a.txt", "x")
    assert Source("docs").files == [str((tmp_path / "docs" / "a.txt").resolve())]


def test_missing_source_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="source not found") as caught:
        Source(str(tmp_path / "nope"))
    assert caught.value.fix


# -- reading each format -------------------------------------------------------------------------
def test_read_text_and_markdown(tmp_path):
    txt = write(tmp_path / "a.txt", "plain text\n")
    md = write(tmp_path / "b.md", "# Title\n\nbody\n")
    (doc,), skipped = read(txt)
    assert (doc.doc_id, doc.text, doc.metadata, doc.markdown) == (uri(txt), "plain text\n", {"path": uri(txt)}, False)
    assert skipped == []
    (doc,), _ = read(md)
    assert doc.markdown and doc.text.startswith("# Title")


def test_read_strips_a_utf8_bom(tmp_path):
    (doc,), _ = read(write(tmp_path / "a.txt", "\ufeffhello".encode("utf-8")))
    assert doc.text == "hello"


def test_read_html_drops_script_and_style(tmp_path):
    html = write(tmp_path / "page.html", """<html><head><title>T</title><style>body { color: red }</style>
        <script>var secret = "tracking";</script></head>
        <body><h1>Heading</h1><p>First paragraph.</p><noscript>enable js</noscript><p>Second.</p></body></html>""")
    (doc,), _ = read(html)
    assert "Heading" in doc.text and "First paragraph." in doc.text and "Second." in doc.text
    for gone in ("color: red", "tracking", "var secret", "enable js", "<p>"):
        assert gone not in doc.text


def test_read_jsonl_records(tmp_path):
    lines = [
        {"id": "a", "text": "first", "lang": "en", "year": 2020, "score": 0.5, "ok": True, "tags": ["x", "y"],
         "nested": {"k": 1}, "objects": [{"k": 1}], "nothing": None},
        {"text": "second, no id"},
        {"id": 7, "text": "third"},
    ]
    path = write(tmp_path / "data.jsonl", "\n".join(json.dumps(x) for x in lines[:2]) + "\n\n" + json.dumps(lines[2]))
    docs, skipped = read(path)
    assert skipped == []
    assert [d.doc_id for d in docs] == [f"{uri(path)}#a", f"{uri(path)}#2", f"{uri(path)}#7"]
    assert [d.text for d in docs] == ["first", "second, no id", "third"]
    assert docs[0].metadata == {"path": uri(path), "lang": "en", "year": 2020, "score": 0.5, "ok": True,
                                "tags": ["x", "y"]}
    assert docs[1].metadata == {"path": uri(path)}


def test_read_pdf(tmp_path):
    pytest.importorskip("pypdf")
    path = write(tmp_path / "report.pdf", make_pdf("Quarterly revenue grew"))
    (doc,), _ = read(path)
    assert "Quarterly revenue grew" in doc.text
    assert doc.doc_id == uri(path) and doc.metadata == {"path": uri(path)}


# -- bad files named directly: InputError --------------------------------------------------------
BAD_FILES = {
    "binary": ("blob.txt", b"abc\x00def", "binary file"),
    "latin-1": ("latin.txt", "caf\u00e9".encode("latin-1"), "not valid UTF-8"),
    "malformed jsonl": ("bad.jsonl", b'{"text": "ok"}\n{"text": oops}\n', "invalid JSON on line 2"),
    "jsonl without text": ("notext.jsonl", b'{"text": "ok"}\n\n{"id": 3, "body": "x"}\n', "'text'"),
    "jsonl blank text": ("blank.jsonl", b'{"text": "   "}\n', "'text'"),
    "jsonl not an object": ("list.jsonl", b'["text"]\n', "line 1 is a JSON list, not an object"),
    "duplicate ids": ("dup.jsonl", b'{"id": "a", "text": "1"}\n{"id": "b", "text": "2"}\n{"id": "a", "text": "3"}\n',
                      "duplicate record id 'a'"),
    "empty jsonl": ("empty.jsonl", b"\n\n", "no records"),
    "unsupported extension": ("table.csv", b"a,b\n1,2\n", "unsupported file type '.csv'"),
    "no extension": ("README", b"hello", "unsupported file type"),
    "empty text": ("empty.txt", b"  \n", "empty document"),
    "broken pdf": ("broken.pdf", b"%PDF-1.4\nnot really a pdf", "PDF"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_named_directly_is_an_input_error(tmp_path, case):
    name, content, message = BAD_FILES[case]
    if name.endswith(".pdf"):
        pytest.importorskip("pypdf")
    path = write(tmp_path / name, content)
    with pytest.raises(InputError) as caught:
        read(path)
    assert message in caught.value.what
    assert uri(path) in caught.value.where
    assert caught.value.fix


@pytest.mark.parametrize(("name", "line"), [("malformed jsonl", 2), ("jsonl without text", 3)])
def test_jsonl_errors_name_the_line(tmp_path, name, line):
    filename, content, _ = BAD_FILES[name]
    path = write(tmp_path / filename, content)
    with pytest.raises(InputError) as caught:
        read(path)
    assert caught.value.where == f"{uri(path)} line {line}"
    assert f"line {line}" in str(caught.value)


def test_empty_folder_is_an_input_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no documents to index"):
        read(tmp_path / "empty")


def test_folder_of_only_bad_files_is_an_input_error_listing_them(tmp_path):
    write(tmp_path / "docs" / "blob.txt", b"\x00\x01")
    write(tmp_path / "docs" / "data.csv", "a,b")
    with pytest.raises(InputError) as caught:
        read(tmp_path / "docs")
    assert "blob.txt" in caught.value.what and "data.csv" in caught.value.what


# -- bad files inside a folder: skipped and listed -----------------------------------------------
def test_bad_files_in_a_folder_are_skipped_and_listed(tmp_path):
    root = tmp_path / "docs"
    write(root / "good.txt", "good text")
    write(root / "good.jsonl", '{"id": "r1", "text": "record"}\n')
    for name, content, _ in BAD_FILES.values():
        if not name.endswith(".pdf"):
            write(root / "bad" / name, content)
    docs, skipped = read(root)
    assert [d.doc_id for d in docs] == [uri(root / "good.jsonl") + "#r1", uri(root / "good.txt")]
    reasons = {Path(s.path.removeprefix("file://")).name: s.reason for s in skipped}
    expected = {name: message for name, _, message in BAD_FILES.values() if not name.endswith(".pdf")}
    assert set(reasons) == set(expected)
    for name, message in expected.items():
        assert message in reasons[name], (name, reasons[name])
    assert all(s.path.startswith("file://") for s in skipped)
    assert reasons["bad.jsonl"].endswith("at line 2")
    assert reasons["notext.jsonl"].endswith("at line 3")


def test_bad_files_matched_by_a_glob_are_skipped(tmp_path):
    write(tmp_path / "a.txt", "good")
    write(tmp_path / "b.txt", b"\x00")
    docs, skipped = read(tmp_path / "*.txt")
    assert [d.doc_id for d in docs] == [uri(tmp_path / "a.txt")]
    assert skipped == [Skipped(uri(tmp_path / "b.txt"), "binary file (contains NUL bytes)")]


# -- chunking ------------------------------------------------------------------------------------
PARAGRAPHS = [
    f"Paragraph {n} talks about topic {n}. " + " ".join(f"word{n}x{i}" for i in range(25)) for n in range(8)
]


def doc(paragraphs=PARAGRAPHS, doc_id="file:///kb/a.txt", metadata=None) -> Document:
    return Document(doc_id, "\n\n".join(paragraphs), metadata if metadata is not None else {"path": doc_id})


def ids(chunks) -> list[str]:
    return [c.id for c in chunks]


def test_chunks_fit_the_size_and_cover_the_text():
    chunks = chunk_document(doc(), size=300, overlap=50)
    assert len(chunks) > 3
    assert all(0 < len(c.text) <= 300 for c in chunks)
    assert [c.chunk for c in chunks] == list(range(len(chunks)))
    assert all(c.doc_id == "file:///kb/a.txt" and c.metadata == {"path": "file:///kb/a.txt"} for c in chunks)
    for paragraph in PARAGRAPHS:
        for word in paragraph.split():
            assert any(word in c.text for c in chunks), word


def test_chunk_ids_are_deterministic_and_unique():
    first = chunk_document(doc(), size=300, overlap=50)
    again = chunk_document(doc(), size=300, overlap=50)
    assert ids(first) == ids(again)
    assert len(set(ids(first))) == len(first)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids(first))


def test_editing_one_paragraph_changes_only_some_ids():
    before = chunk_document(doc(), size=300, overlap=0)
    edited = list(PARAGRAPHS)
    edited[3] = edited[3].replace("topic 3", "a rewritten topic")
    after = chunk_document(doc(edited), size=300, overlap=0)
    kept = set(ids(before)) & set(ids(after))
    assert kept, "unchanged paragraphs must keep their chunk ids"
    assert set(ids(after)) - set(ids(before)), "the edited paragraph must get a new id"
    changed = [c.text for c in after if c.id not in set(ids(before))]
    assert all("rewritten" in text for text in changed)


def test_appending_a_paragraph_keeps_the_earlier_ids():
    before = chunk_document(doc(), size=300, overlap=0)
    after = chunk_document(doc([*PARAGRAPHS, "A new closing paragraph."]), size=300, overlap=0)
    assert set(ids(before)) - set(ids(after)) <= {before[-1].id}


def test_metadata_and_document_id_are_part_of_the_ids():
    base = ids(chunk_document(doc(), size=300, overlap=50))
    other_meta = ids(chunk_document(doc(metadata={"path": "file:///kb/a.txt", "lang": "en"}), size=300, overlap=50))
    other_doc = ids(chunk_document(doc(doc_id="file:///kb/b.txt", metadata={"path": "file:///kb/a.txt"}),
                                   size=300, overlap=50))
    assert not set(base) & set(other_meta)
    assert not set(base) & set(other_doc)


def test_repeated_identical_paragraphs_get_distinct_ids():
    repeated = ["The same boilerplate footer line, again."] * 5
    chunks = chunk_document(doc(["Intro.", *repeated]), size=45, overlap=0)
    footers = [c for c in chunks if c.text == repeated[0]]
    assert len(footers) == 5
    assert len({c.id for c in footers}) == 5



def _expected_id(doc_id: str, text: str, occurrence: int, metadata: dict) -> str:
    """The documented chunk-id formula (stackwise.documents.chunk_id), written out here: the first
    32 hex digits of SHA-256 over doc id, text, occurrence and the metadata's sorted JSON, NUL-joined."""
    import hashlib
    import json

    key = "\x00".join([doc_id, text, str(occurrence), json.dumps(metadata, sort_keys=True)])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def test_chunk_ids_follow_the_documented_formula():
    # One chunk: the whole (trimmed) text; its id by hand.
    meta = {"path": "file:///kb/a.txt", "lang": "en"}
    single = chunk_document(Document("file:///kb/a.txt", "  Short note.\n\nSecond line.  ", meta), size=500, overlap=0)
    assert [c.text for c in single] == ["Short note.\n\nSecond line."]
    assert single[0].id == _expected_id("file:///kb/a.txt", "Short note.\n\nSecond line.", 0, meta)
    assert single[0].id == _expected_id("file:///kb/a.txt", single[0].text, 0, {"lang": "en", "path": "file:///kb/a.txt"})
    # Many chunks, repeated texts counted by occurrence: every id by the formula.
    repeated = ["The same boilerplate footer line, again."] * 3
    for document, size, overlap in ((doc(), 300, 50), (doc(["Intro.", *repeated, "Outro."]), 45, 0)):
        chunks = chunk_document(document, size=size, overlap=overlap)
        seen: dict[str, int] = {}
        expected = []
        for c in chunks:
            expected.append(_expected_id(document.doc_id, c.text, seen.get(c.text, 0), document.metadata))
            seen[c.text] = seen.get(c.text, 0) + 1
        assert [c.id for c in chunks] == expected
    footers = [c.id for c in chunks if c.text == repeated[0]]
    assert footers == [_expected_id("file:///kb/a.txt", repeated[0], n, {"path": "file:///kb/a.txt"}) for n in range(3)]


def test_blank_document_has_no_chunks():
    assert chunk_document(doc(["   ", "\n"]), size=100, overlap=0) == []


def test_markdown_documents_chunk_on_structure():
    text = "# A\n\n" + "alpha " * 30 + "\n\n# B\n\n" + "beta " * 30
    chunks = chunk_document(Document("d", text, {}, markdown=True), size=200, overlap=0)
    assert all(len(c.text) <= 200 for c in chunks)
    assert not any("alpha" in c.text and "beta" in c.text for c in chunks)


@pytest.mark.parametrize(("given", "canonical"), [
    ("gcs://bucket/a//b/", "gs://bucket/a/b"),
    ("S3A://bucket/./k", "s3://bucket/k"),
    ("abfs://container/docs/x.txt", "az://container/docs/x.txt"),
    ("abfss://container/docs", "az://container/docs"),
    ("az://container/docs/", "az://container/docs"),
])
def test_one_filesystem_has_one_scheme(given, canonical):
    """fsspec's other names for one filesystem (gcsfs's gcs, s3fs's s3a, adlfs's abfs/abfss) are
    spellings of one object: one document id, whichever a user wrote."""
    from stackwise.documents import canonical_doc_id, canonical_source

    assert canonical_source(given) == canonical
    assert canonical_doc_id(given) == canonical
    assert canonical_doc_id(given.rstrip("/") + "/d.jsonl#r1") == canonical + "/d.jsonl#r1"
