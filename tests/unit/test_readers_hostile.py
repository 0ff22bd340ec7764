"""Hostile files in a source (issue 14): a FIFO, a deeply nested PDF, a huge JSONL metadata
field, a link out of the source folder.

In a folder or glob each is skipped with its reason while the other files are read; named
directly each is an InputError (exit 2 in the CLI). The index job reads through the same code
(`_read_shard`, also with several shards), so a test here covers the job.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from pdf_fixtures import pdf_with_content

from stackwise import InputError
from stackwise.documents import MAX_METADATA_BYTES, Source, read_documents
from stackwise.specs import IndexSpec
from stackwise.workloads.index import IndexReport, Shard, _read_shard

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
needs_symlink = pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")


def uri(path: Path) -> str:
    return f"file://{path.resolve()}"


def link_uri(path: Path) -> str:
    """The URI of a link itself (its folder resolved, not the link)."""
    return f"file://{path.parent.resolve()}/{path.name}"


def folder(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "good.txt").write_text("A readable document about bushfires.", encoding="utf-8")
    return root


def read(source: str, **options) -> tuple[list[str], dict[str, str]]:
    documents, skipped = read_documents(Source(source, **options))
    return [d.doc_id for d in documents], {s.path: s.reason for s in skipped}


def read_sharded(source: str, count: int, **options) -> tuple[set[str], dict[str, str]]:
    """What the index job's `count` workers read together."""
    resolved = Source(source, **options)
    ids, skipped = set(), {}
    for index in range(count):
        documents, files = _read_shard(resolved, Shard(index, count))
        ids |= {d.doc_id for d in documents}
        skipped |= {s.path: s.reason for s in files}
    return ids, skipped


def deep_pdf(depth: int = 5000) -> bytes:
    """A PDF, written by pypdf, whose page content holds arrays nested `depth` deep."""
    return pdf_with_content(b"BT /F1 24 Tf 72 720 Td (hello) Tj ET " + b"[" * depth + b"]" * depth + b" TJ")


# -- item 5: a FIFO or other non-regular file --------------------------------------------------
@needs_fifo
@pytest.mark.timeout(20)
@pytest.mark.parametrize("pattern", ["", "*.txt"])
def test_a_fifo_in_a_folder_or_glob_is_skipped_and_reported_not_waited_on(tmp_path, pattern):
    root = folder(tmp_path)
    os.mkfifo(root / "pipe.txt")  # nothing ever writes to it: a blocking read never returns
    ids, skipped = read(str(root / pattern) if pattern else str(root))
    assert ids == [uri(root / "good.txt")]
    assert "FIFO" in skipped[uri(root / "pipe.txt")] and "not a regular file" in skipped[uri(root / "pipe.txt")]


@needs_fifo
@pytest.mark.timeout(20)
def test_the_sharded_job_skips_a_fifo_too(tmp_path):
    root = folder(tmp_path)
    os.mkfifo(root / "pipe.txt")
    os.mkfifo(root / "pipe.jsonl")  # every shard opens JSONL files
    ids, skipped = read_sharded(str(root), 3)
    assert ids == {uri(root / "good.txt")}
    assert set(skipped) == {uri(root / "pipe.txt"), uri(root / "pipe.jsonl")}


@needs_fifo
@pytest.mark.timeout(20)
def test_a_fifo_named_directly_is_an_input_error_saying_what_it_is(tmp_path):
    os.mkfifo(tmp_path / "pipe.txt")
    with pytest.raises(InputError, match="FIFO") as caught:
        read(str(tmp_path / "pipe.txt"))
    assert caught.value.where == uri(tmp_path / "pipe.txt") and caught.value.fix


@needs_fifo
@pytest.mark.timeout(60)
def test_the_cli_refuses_a_fifo_named_directly_with_exit_2(tmp_path, run_cli):
    os.mkfifo(tmp_path / "pipe.txt")
    proc = run_cli("index", "pipe.txt", "--index", "kb")
    assert proc.returncode == 2, proc.stderr
    assert "FIFO" in proc.stderr and "Traceback" not in proc.stderr


@needs_fifo
@pytest.mark.timeout(20)
def test_a_fifo_as_a_dataset_is_refused_not_waited_on(tmp_path):
    from stackwise.jsonl import read_bytes

    os.mkfifo(tmp_path / "train.jsonl")
    with pytest.raises(InputError, match="FIFO"):
        read_bytes(str(tmp_path / "train.jsonl"), "dataset")


def test_a_file_over_the_size_bound_is_skipped_unread(tmp_path, monkeypatch):
    import stackwise.documents as documents

    root = folder(tmp_path)
    (root / "huge.txt").write_text("x" * 5000, encoding="utf-8")
    monkeypatch.setattr(documents, "MAX_FILE_BYTES", 1000)
    ids, skipped = read(str(root))
    assert ids == [uri(root / "good.txt")]
    assert "too large" in skipped[uri(root / "huge.txt")]


# -- item 8: a hostile PDF ---------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_deeply_nested_pdf_in_a_folder_is_skipped_and_the_others_are_read(tmp_path):
    root = folder(tmp_path)
    (root / "deep.pdf").write_bytes(deep_pdf())
    ids, skipped = read(str(root))
    assert ids == [uri(root / "good.txt")]
    assert "unreadable PDF" in skipped[uri(root / "deep.pdf")]


@pytest.mark.timeout(60)
def test_a_deeply_nested_pdf_named_directly_is_an_input_error(tmp_path):
    (tmp_path / "deep.pdf").write_bytes(deep_pdf())
    with pytest.raises(InputError, match="unreadable PDF"):
        read(str(tmp_path / "deep.pdf"))


@pytest.mark.timeout(60)
def test_the_cli_refuses_a_deeply_nested_pdf_with_exit_2_and_no_traceback(tmp_path, run_cli):
    (tmp_path / "deep.pdf").write_bytes(deep_pdf())
    proc = run_cli("index", "deep.pdf", "--index", "kb")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "unreadable PDF" in proc.stderr and "Traceback" not in proc.stderr


# -- item 9: metadata size per record ----------------------------------------------------------
def test_a_huge_metadata_field_is_refused_with_the_field_and_line(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [{"id": "a", "text": "small", "lang": "en"},
             {"id": "b", "text": "big", "blob": "x" * (MAX_METADATA_BYTES + 1)}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    with pytest.raises(InputError, match="'blob'") as caught:
        read(str(path))
    assert caught.value.where == f"{uri(path)} line 2"
    assert "every chunk" in caught.value.what and caught.value.fix


def test_a_jsonl_file_with_a_huge_metadata_field_is_skipped_in_a_folder(tmp_path):
    root = folder(tmp_path)
    (root / "data.jsonl").write_text(json.dumps({"text": "t", "blob": "x" * 10 * MAX_METADATA_BYTES}) + "\n")
    ids, skipped = read(str(root))
    assert ids == [uri(root / "good.txt")]
    assert "metadata" in skipped[uri(root / "data.jsonl")]


def test_metadata_just_under_the_bound_is_kept(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"text": "t", "note": "x" * (MAX_METADATA_BYTES // 2)}) + "\n")
    documents, _ = read_documents(Source(str(path)))
    assert len(documents[0].metadata["note"]) == MAX_METADATA_BYTES // 2


# -- item 12: links out of the source folder ---------------------------------------------------
@needs_symlink
@pytest.mark.parametrize("pattern", ["", "*.txt", "**/*.txt"])
def test_a_link_out_of_the_folder_is_skipped_and_reported(tmp_path, pattern):
    root = folder(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash", encoding="utf-8")
    (root / "passwd.txt").symlink_to(secret)
    (root / "alias.txt").symlink_to(root / "good.txt")  # stays inside: read
    ids, skipped = read(str(root / pattern) if pattern else str(root))
    assert sorted(ids) == [link_uri(root / "alias.txt"), uri(root / "good.txt")]
    reason = skipped[link_uri(root / "passwd.txt")]
    assert "outside the source folder" in reason and str(secret.resolve()) in reason


@needs_symlink
def test_links_out_are_skipped_by_every_shard_and_read_with_follow_links(tmp_path):
    root = folder(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("a private note", encoding="utf-8")
    (root / "passwd.txt").symlink_to(secret)
    (root / "out.jsonl").symlink_to(tmp_path / "records.jsonl")
    (tmp_path / "records.jsonl").write_text('{"id": "r", "text": "a record"}\n')
    for count in (1, 3):
        ids, skipped = read_sharded(str(root), count)
        assert ids == {uri(root / "good.txt")}, count
        assert set(skipped) == {link_uri(root / "passwd.txt"), link_uri(root / "out.jsonl")}, count
    ids, skipped = read_sharded(str(root), 3, follow_links=True)
    assert ids == {uri(root / "good.txt"), link_uri(root / "passwd.txt"), f"{link_uri(root / 'out.jsonl')}#r"}
    assert skipped == {}


@needs_symlink
def test_a_broken_link_is_skipped_and_reported(tmp_path):
    root = folder(tmp_path)
    (root / "gone.txt").symlink_to(root / "deleted.txt")
    ids, skipped = read(str(root))
    assert ids == [uri(root / "good.txt")]
    assert "broken symbolic link" in skipped[link_uri(root / "gone.txt")]


@needs_symlink
def test_a_link_named_directly_is_read(tmp_path):
    (tmp_path / "real.txt").write_text("hello", encoding="utf-8")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "link.txt").symlink_to(tmp_path / "real.txt")
    ids, skipped = read(str(tmp_path / "docs" / "link.txt"))
    assert len(ids) == 1 and skipped == {}


def test_follow_links_leaves_the_digest_of_specs_that_do_not_set_it_unchanged():
    plain = IndexSpec(source="docs", index="kb")
    assert "follow_links" not in plain.model_dump_json()
    # The digest of this spec before the field existed (the JSON pydantic wrote then).
    assert plain.digest() == "235aee001aab3972"
    following = IndexSpec(source="docs", index="kb", follow_links=True)
    assert following.digest() != plain.digest()
    assert IndexSpec.model_validate_json(following.model_dump_json()).follow_links is True


def test_the_cli_passes_follow_links_into_the_spec(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import stackwise.cli as cli
    import stackwise.cli.index as cli_index

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("hello", encoding="utf-8")
    specs = []

    class Platform:
        class stack:  # noqa: N801 - stands in for the connected stack's attributes
            class outputs:  # noqa: N801
                embedding_model = "all-MiniLM-L6-v2"

        def index(self, spec, new=False, run_name=None, preflight=True):  # Platform.index's signature
            specs.append(spec)
            return "job-1"

    monkeypatch.setattr(cli_index, "connect", lambda stack: Platform())
    monkeypatch.setattr(cli_index, "run_job", lambda *args, **kwargs: None)
    for extra, expected in (([], False), (["--follow-links"], True)):
        result = CliRunner().invoke(cli.app, ["index", "docs", "--index", "kb", *extra])
        assert result.exit_code == 0, result.output
        assert specs[-1].follow_links is expected


def test_the_cli_lists_the_first_skipped_files_and_counts_the_rest(capsys):
    from stackwise.cli.render import SKIPPED_SHOWN, print_index_report as _print_index_report

    skipped = [{"path": f"file:///docs/f{i:03d}.txt", "reason": "not a regular file"} for i in range(45)]
    report = IndexReport(index="kb", source="file:///docs", model="m", documents=1, chunks=1,
                         skipped=skipped).model_dump()
    _print_index_report(report)
    out = capsys.readouterr().out
    assert out.count("skipped file:///docs/") == SKIPPED_SHOWN
    assert f"and {45 - SKIPPED_SHOWN} more skipped files" in out
