"""`stackwise offers` end to end through the CLI's own entry point (stackwise.cli.main: errors -> exit codes).

Until the command is wired into stackwise.cli, the fixture registers stackwise.cli.offers.offers on
the CLI's app for the test and removes it afterwards.
"""

from __future__ import annotations

import json
import sys
from importlib import resources

import pytest
import yaml

import stackwise.cli as cli
from stackwise.cli.offers import offers as offers_command


@pytest.fixture
def run(monkeypatch, capsys):
    names = [c.name for c in cli.app.registered_commands]
    added = "offers" not in names
    if added:
        cli.app.command("offers")(offers_command)
    monkeypatch.setenv("COLUMNS", "220")

    def invoke(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["stackwise", "offers", *args])
        with pytest.raises(SystemExit) as done:
            cli.main()
        out = capsys.readouterr()
        code = done.value.code
        return (0 if code is None else int(code)), out.out, out.err

    yield invoke
    if added:
        cli.app.registered_commands.pop()


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(resources.files("stackwise").joinpath("data/gpu_catalog.yaml").read_text("utf-8"))


def test_json_ranks_a100_8_cheapest_first(run, raw):
    code, out, _ = run("A100:8", "--json")
    assert code == 0
    data = json.loads(out)
    by_hand = sorted((o for o in raw["offers"] if o["gpu"] == "A100-40GB" and o["count"] == 8),
                     key=lambda o: o["on_demand"])
    assert [o["instance"] for o in data["offers"]] == [o["instance"] for o in by_hand]
    first = data["offers"][0]
    assert first["hourly_usd"] == by_hand[0]["on_demand"] and first["price_note"] == by_hand[0]["checked"]["on_demand"]
    assert first["as_of"] == raw["clouds"][first["cloud"]]["as_of"] and first["source"].startswith(
        raw["clouds"][first["cloud"]]["source"][:20])


def test_table_shows_prices_with_their_source_and_date(run):
    code, out, _ = run("L4", "--spot", "--clouds", "aws,gcp")
    assert code == 0
    for column in ("cloud", "instance", "on-demand $/h", "spot $/h", "price", "us-east-1", "us-central1"):
        assert column in out
    assert "ml.g6.xlarge" in out and "g2-standard-8" in out and "Standard_" not in out
    assert "unverified: SageMaker publishes no spot price" in out and "github.com/Cyclenerd" in out
    assert out.index("ml.g6.xlarge") < out.index("g2-standard-8")  # spot: aws $0.302 < gcp $0.337


def test_memory_spec_with_job_ranks_by_estimated_cost_and_breaks_ties_by_fewer_gpus(run):
    code, out, _ = run("40GB", "--clouds", "azure", "--spot", "--params", "8B", "--tokens", "20M",
                       "--method", "qlora", "--json")
    assert code == 0
    rows = json.loads(out)["offers"]
    costs = [r["estimate"]["usd"] for r in rows]
    assert costs == sorted(costs) and [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    # 1, 2 and 4 x A100-80GB cost the same job (GPUs x price scale together): fewer GPUs first
    a100 = [r["count"] for r in rows if r["gpu"] == "A100-80GB" and r["count"] < 8]
    assert a100 == [1, 2, 4]


@pytest.mark.parametrize("args, words", [
    (("A10O",), ["unknown GPU 'A10O'", "did you mean A10G"]),
    (("H100", "--clouds", "aws,gpc"), ["unknown cloud 'gpc'", "did you mean gcp"]),
    (("A100:x",), ["GPU count 'x'", "1, 8"]),
    (("A100:3",), ["no instance offers 3 x A100-40GB", "1, 8"]),
    (("L4", "--params", "8B"), ["both --params and --tokens"]),
    (("L4", "--params", "eight", "--tokens", "1M"), ["--params 'eight' is not a positive number"]),
])
def test_bad_input_exits_2_with_what_where_fix(run, args, words):
    code, out, err = run(*args)
    assert code == 2 and out == ""
    assert "where:" in err and "fix:" in err
    for word in words:
        assert word in " ".join(err.split()), err


def test_job_above_max_job_cost_is_refused_with_exit_3(run):
    # A10G on aws, QLoRA 8B x 10M tokens x 2 epochs at MFU 0.4: 6.3492 h x $1.408 = $8.94 (hand-computed)
    job = ("A10G:1", "--clouds", "aws", "--params", "8B", "--tokens", "10M", "--method", "qlora", "--epochs", "2",
           "--mfu", "0.4")
    code, out, err = run(*job, "--max-job-cost", "5")
    assert code == 3 and out == ""
    text = " ".join(err.split())
    assert "estimated job cost $8.94" in text and "above the limit $5.00" in text and "maxJobCostUsd" in text
    code, out, _ = run(*job, "--max-job-cost", "10", "--json")
    assert code == 0 and json.loads(out)["offers"][0]["estimate"]["usd"] == pytest.approx(8.9397, abs=1e-3)
