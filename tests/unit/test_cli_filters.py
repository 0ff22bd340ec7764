"""`stackwise search --filter ... --where-json ...` through the real entry point: comparison
items and the full JSON syntax select the right chunks; bad filters exit 2 with what, where and
how to fix, before the embedding model is loaded."""

from __future__ import annotations

import json
import math

import pytest

from test_cli_errors import MODEL_MODULES, imported, user_stderr

BAD = {
    "json syntax": (["--where-json", '{"year": '], "not valid JSON", "--where-json"),
    "json not an object": (["--where-json", "[1, 2]"], "must be a JSON object", "--where-json"),
    "unknown operator": (["--where-json", '{"year": {"$between": [1, 2]}}'], "unknown operator '$between'", "--where-json"),
    "mixed range": (["--filter", "year>=2019", "--filter", "year<abc"], "mixes number and string", "--filter"),
    "range without value": (["--filter", "year>="], "takes one value", "--filter"),
    "range of a list": (["--filter", "year>1,2"], "takes one value", "--filter"),
    "boolean range": (["--filter", "draft<true"], "boolean", "--filter"),
    "reserved key in json": (["--where-json", '{"$or": [{"text": "x"}, {"a": 1}]}'], "'text' is not filterable", "--where-json"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_filters_exit_2_with_a_fix(case, run_cli):
    extra, expected, where = BAD[case]
    proc = run_cli("search", "hello", "--index", "kb", *extra, python_flags=("-X", "importtime"))
    stderr = user_stderr(proc.stderr)
    assert proc.returncode == 2, (proc.returncode, stderr[-2000:])
    assert "Traceback" not in stderr and proc.stdout == ""
    assert expected in stderr and f"where: {where}" in stderr, stderr
    assert any(line.strip().startswith("fix: ") for line in stderr.splitlines()), stderr
    assert not imported(proc.stderr) & MODEL_MODULES


def _vector(i: int) -> list[float]:
    values = [math.sin(i * 7.0 + d) for d in range(384)]
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def test_search_applies_comparison_items_and_json(tmp_path, run_cli, monkeypatch):
    pytest.importorskip("sentence_transformers")
    import stackwise
    from stackwise.vectors import Record

    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / ".stackwise"))
    store = stackwise.connect("local").vector_store
    store.create_index("kb", 384, "all-MiniLM-L6-v2")
    years = {"a": 2017, "b": 2019, "c": 2021, "d": 2023}
    langs = {"a": "en", "b": "de", "c": "en", "d": "fr"}
    store.upsert("kb", [Record(id=f"{d}-0", vector=_vector(i), text=f"text {d}", doc_id=d,
                               metadata={"year": years[d], "lang": langs[d]}) for i, d in enumerate(years)])

    def search(*extra: str) -> set[str]:
        proc = run_cli("search", "anything", "--index", "kb", "-k", "10", "--json", *extra)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return {hit["doc_id"] for hit in json.loads(proc.stdout)}

    assert search("--filter", "year>=2019", "--filter", "year<2023",
                  "--where-json", '{"$or": [{"lang": "en"}, {"lang": {"$nin": ["de", "fr"]}}]}') == {"c"}
    assert search("--filter", "lang!=en", "--filter", "year>2017") == {"b", "d"}
    assert search("--filter", "year<=2019", "--filter", "lang=en,de") == {"a", "b"}
