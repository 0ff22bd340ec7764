"""The promotion gate compares candidate and champion on the same data only (sdk/model_registry.py:
`gate_metrics` selects evaluation runs by the data's sha256). Evaluation runs are logged straight
into a real MLflow registry (SQLite, local stack) as the evaluation workload tags them, so no
model is loaded or evaluated: fast."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("mlflow")


@pytest.fixture
def world(tmp_path, monkeypatch):
    from stackwise.evaluation.data import read_eval_data
    from stackwise.model_registry import CHAMPION, Registry

    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / "sw"))
    monkeypatch.setenv("STACKWISE_THREADS", "2")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    reg = Registry()
    assert reg.register(str(model), "demo", copy=False) == "1"
    assert reg.register(str(model), "demo", copy=False) == "2"
    data = {}
    for name, texts in {"a": ["first eval set"], "b": ["another eval set", "with two records"]}.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        data[name] = (path, read_eval_data(str(path)).sha256)
    assert data["a"][1] != data["b"][1]

    def gate(*metrics: str, on: str | None = "a") -> str:
        path = tmp_path / f"gate-{on}-{'-'.join(metrics)}.yaml"
        lines = ([f"data: {data[on][0]}"] if on else []) + ["metrics:"] + [f"  {m}: {{}}" for m in metrics]
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    # version 1 is the champion (the first promotion needs no comparison)
    first = reg.promote("demo", gate("perplexity"), version="1")
    assert first.promoted and reg.alias_version("demo", CHAMPION) == "1"
    return reg, data, gate


def _evaluated(reg, version: str, data_sha: str, **metrics: float) -> None:
    """An evaluation run tagged as the evaluation workload tags it (stackwise.workloads.evaluate)."""
    from stackwise.model_registry import EVAL_EXPERIMENT

    run = reg.client.create_run(reg.experiment_id(EVAL_EXPERIMENT), tags={
        "stackwise.model_name": "demo", "stackwise.model_version": version, "stackwise.data_sha256": data_sha,
        "stackwise.data": "test"})
    for key, value in metrics.items():
        reg.client.log_metric(run.info.run_id, key, value)
    reg.client.set_terminated(run.info.run_id)


def test_the_gate_compares_only_evaluations_on_the_gate_data(world):
    from stackwise.model_registry import CHAMPION

    reg, data, gate = world
    _evaluated(reg, "2", data["a"][1], perplexity=10.0)
    _evaluated(reg, "1", data["a"][1], perplexity=20.0)
    # The champion's newest evaluation is on other data, where it looks far better: not compared.
    _evaluated(reg, "1", data["b"][1], perplexity=2.0)
    result = reg.promote("demo", gate("perplexity", on="a"), version="2")
    assert result.promoted and result.data_sha256 == data["a"][1]
    assert (result.rows[0]["candidate"], result.rows[0]["champion"]) == (10.0, 20.0)
    assert reg.alias_version("demo", CHAMPION) == "2"


def test_evaluations_on_different_data_are_not_compared(world):
    from stackwise.model_registry import CHAMPION, GateFailed

    reg, data, gate = world
    _evaluated(reg, "2", data["b"][1], perplexity=1.0)  # far better, but on b
    _evaluated(reg, "1", data["a"][1], perplexity=20.0)
    with pytest.raises(GateFailed) as refused:
        reg.promote("demo", gate("perplexity", on="a"), version="2")
    [row] = refused.value.result.rows
    assert row["passed"] is False and row["candidate"] is None and row["champion"] == 20.0
    assert "not measured for the candidate" in row["reason"]
    # Without `data:` the gate takes the candidate's newest evaluation's data (b): the champion
    # has none there.
    with pytest.raises(GateFailed) as refused:
        reg.promote("demo", gate("perplexity", on=None), version="2")
    assert refused.value.result.data_sha256 == data["b"][1]
    [row] = refused.value.result.rows
    assert row["champion"] is None and "not measured for the champion" in row["reason"]
    assert reg.alias_version("demo", CHAMPION) == "1"


def test_a_metric_missing_on_one_side_fails_the_gate(world):
    from stackwise.model_registry import CHAMPION, GateFailed

    reg, data, gate = world
    _evaluated(reg, "2", data["a"][1], perplexity=10.0, **{"rouge.rougeL": 0.5})
    _evaluated(reg, "1", data["a"][1], perplexity=20.0)  # no rouge for the champion on a
    _evaluated(reg, "1", data["b"][1], **{"rouge.rougeL": 0.1})  # ... only on b
    with pytest.raises(GateFailed) as refused:
        reg.promote("demo", gate("perplexity", "rouge.rougeL", on="a"), version="2")
    rows = {r["metric"]: r for r in refused.value.result.rows}
    assert rows["perplexity"]["passed"] is True
    assert rows["rouge.rougeL"]["passed"] is False and rows["rouge.rougeL"]["champion"] is None
    assert "not measured for the champion" in rows["rouge.rougeL"]["reason"]
    assert "rouge.rougeL" in str(refused.value) and reg.alias_version("demo", CHAMPION) == "1"
    # The refusal reports what it did: nothing promoted, and exactly the metrics that failed.
    result = refused.value.result
    assert (result.promoted, result.champion_before, result.champion_after) == (False, "1", "1")
    assert "on 1 of 2 gated metrics: rouge.rougeL" in refused.value.what
    assert "perplexity" not in refused.value.what.split("metrics:")[1]


def test_the_first_promotion_and_a_repeated_one_say_what_they_did(world):
    """The first champion needs no comparison; promoting the champion again changes nothing and
    never makes it its own previous champion."""
    from stackwise.model_registry import CHAMPION, PREVIOUS_CHAMPION

    reg, data, gate = world
    assert reg.alias_version("demo", PREVIOUS_CHAMPION) is None  # the first champion had none before it
    again = reg.promote("demo", gate("perplexity"), version="1")
    assert again.promoted and again.note == "the candidate is already the champion"
    assert (reg.alias_version("demo", CHAMPION), reg.alias_version("demo", PREVIOUS_CHAMPION)) == ("1", None)
    _evaluated(reg, "2", data["a"][1], perplexity=10.0)
    _evaluated(reg, "1", data["a"][1], perplexity=20.0)
    assert reg.promote("demo", gate("perplexity"), version="2").promoted
    assert (reg.alias_version("demo", CHAMPION), reg.alias_version("demo", PREVIOUS_CHAMPION)) == ("2", "1")
    assert reg.promote("demo", gate("perplexity"), version="2").note == "the candidate is already the champion"
    assert (reg.alias_version("demo", CHAMPION), reg.alias_version("demo", PREVIOUS_CHAMPION)) == ("2", "1")


def test_the_first_champion_is_named_so(tmp_path, monkeypatch):
    from stackwise.model_registry import CHAMPION, Registry

    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / "sw"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    gate = tmp_path / "gate.yaml"
    gate.write_text("metrics:\n  perplexity: {}\n")
    reg = Registry()
    reg.register(str(model), "solo", copy=False)
    first = reg.promote("solo", str(gate), version="1")
    assert first.note == "no champion yet: the candidate becomes the first champion"
    assert (first.champion_before, first.champion_after, reg.alias_version("solo", CHAMPION)) == (None, "1", "1")
