"""`stackwise curate` end to end, through the real entry point in a subprocess (exit codes, stderr)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import lee_articles


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "ignore", "-m", "stackwise.cli.curate", *args],
                          capture_output=True, text=True, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "STACKWISE_THREADS": "1", "PATH": "/usr/bin:/bin",
                               "HOME": str(Path.home())})


def test_curate_folder_writes_outputs_and_cross_run_state(tmp_path: Path) -> None:
    articles, other = lee_articles()[:40], lee_articles()[60]
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, a in enumerate(articles):
        (docs / f"a{i:02d}.txt").write_text(a)
    (docs / "copy.txt").write_text(articles[4])
    card = "4111 1111 1111 1111"
    (docs / "pii.txt").write_text(other[:300] + f" Pay with {card} now. " + other[300:])
    out, state = tmp_path / "out", tmp_path / "state"
    result = run(str(docs), "--out", str(out), "--state", str(state), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dropped_by_reason"].get("exact_duplicate") == 1
    assert report["redacted"] == {"CREDIT_CARD": 1}
    assert card not in result.stdout + result.stderr + (out / "report.json").read_text()
    kept = [json.loads(line) for line in (out / "curated.jsonl").read_text().splitlines()]
    assert not [k for k in kept if card in k["text"]]
    excluded = [json.loads(line) for line in (out / "exclusions.jsonl").read_text().splitlines()]
    assert len(excluded) == report["dropped"] and all({"id", "reason", "text"} <= set(e) for e in excluded)
    assert "<svg" in (out / "report.html").read_text()
    # A second run over a new folder: a copy of a document kept before is a duplicate across runs.
    more = tmp_path / "more"
    more.mkdir()
    (more / "again.txt").write_text(articles[7])
    second = run(str(more), "--out", str(tmp_path / "out2"), "--state", str(state), "--json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["dropped_by_reason"] == {"exact_duplicate": 1}


def test_bad_input_exits_2_with_what_where_fix(tmp_path: Path) -> None:
    bad = tmp_path / "curate.yaml"
    bad.write_text("dedup:\n  threshold: 3\n")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text(lee_articles()[0])
    cases = [
        (run(str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--config", str(bad)), "dedup.threshold",
         "allowed: 0.5 to 1.0"),
        (run(str(tmp_path / "missing"), "--out", str(tmp_path / "o")), "source not found", "fix:"),
        (run(str(tmp_path / "d" / "empty.jsonl"), "--out", str(tmp_path / "o")), "empty.jsonl", "fix:"),
    ]
    (tmp_path / "d" / "empty.jsonl").write_text("")
    cases[2] = (run(str(tmp_path / "d" / "empty.jsonl"), "--out", str(tmp_path / "o")), "empty", "fix:")
    bad.write_text("quality:\n  min_wrods: 3\n")
    cases.append((run(str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--config", str(bad)),
                  "quality.min_wrods: unknown key", "where:"))
    for result, what, more in cases:
        assert result.returncode == 2, result.stderr
        assert what in result.stderr and more in result.stderr and "Traceback" not in result.stderr
