"""`stackwise index` under other spellings of one folder, and `stackwise indexes rebuild`, end to end
(real jobs, the shipped model; three short documents so each job is quick)."""

from __future__ import annotations

import shutil
from pathlib import Path

from .conftest import doc_chunks, file_uri, run_cli, store_rows

TEXTS = ["Bushfires burned homes near Sydney.", "The cricket team won the test match.",
         "Parliament passed the budget on Tuesday."]


def test_spellings_of_one_folder_share_ids_and_rebuild_reindexes_its_sources(sw_home: Path, tmp_path: Path) -> None:
    docs = tmp_path / "data" / "docs"
    docs.mkdir(parents=True)
    (tmp_path / "data" / "sub").mkdir()
    for number, text in enumerate(TEXTS):
        (docs / f"d{number}.txt").write_text(text, encoding="utf-8")
    (tmp_path / "link").symlink_to(docs, target_is_directory=True)

    first = run_cli(sw_home, "index", str(docs), "--index", "kb", "--json").json()
    assert first["added"] == 3
    rows = store_rows(sw_home, "kb")
    assert set(doc_chunks(rows)) == {file_uri(docs / f"d{n}.txt") for n in range(3)}
    for spelled, cwd in ((f"{docs}/./x/..", None), ("../docs", tmp_path / "data" / "sub"), (str(tmp_path / "link"), None)):
        report = run_cli(sw_home, "index", spelled, "--index", "kb", "--json", cwd=cwd).json()
        assert (report["added"], report["unchanged"]) == (0, 3), spelled
    assert store_rows(sw_home, "kb") == rows
    hits = run_cli(sw_home, "search", "bushfire", "--index", "kb", "-k", "3", "--json").json()
    assert len({h["doc_id"] for h in hits}) == 3  # three documents, not one document three times

    reports = run_cli(sw_home, "indexes", "rebuild", "kb", "--yes", "--json").json()
    assert [(r["added"], r["source"]) for r in reports] == [(3, f"file://{docs.resolve()}")]
    assert store_rows(sw_home, "kb") == rows

    shutil.rmtree(docs)
    refused = run_cli(sw_home, "indexes", "rebuild", "kb", "--yes", expect=2)
    assert "is gone" in refused.stderr and "Traceback" not in refused.stderr
    assert store_rows(sw_home, "kb") == rows  # nothing dropped
