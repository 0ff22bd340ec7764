"""Group fairness with AIF360 as the reference: hand-computed values on small tables, agreement with
fairlearn on random data, the loud failure when the two disagree, dataset-level label bias, and the
bias suite's metric names. Also: `redteam.*attack_success_rate` gates lower-is-better."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys

import pytest

pytest.importorskip("aif360", reason="install stackwise[eval]")
fm = pytest.importorskip("fairlearn.metrics", reason="install stackwise[eval]")

from stackwise.errors import InputError  # noqa: E402
from stackwise.evaluation import fairness  # noqa: E402
from stackwise.evaluation.gate import GateRule  # noqa: E402

# (group, y_true, y_pred); "m" is privileged. Unprivileged pooled (f + x): y_true 1,1,0,1,0,0, y_pred 0,1,0,0,1,0.
TABLE = [("m", 1, 1), ("m", 1, 1), ("m", 0, 1), ("m", 0, 0),
         ("f", 1, 0), ("f", 1, 1), ("f", 0, 0),
         ("x", 1, 0), ("x", 0, 1), ("x", 0, 0)]
GROUPS = [g for g, _, _ in TABLE]
Y_TRUE = [t for _, t, _ in TABLE]
Y_PRED = [p for _, _, p in TABLE]
PRIV = [g == "m" for g in GROUPS]


def test_aif360_metrics_equal_hand_values():
    # selection rate: priv 3/4, unpriv 2/6; TPR: priv 2/2, unpriv 1/3; FPR: priv 1/2, unpriv 1/3
    found = fairness.cross_checked(Y_TRUE, Y_PRED, PRIV)
    assert found["statistical_parity_difference"] == pytest.approx(1 / 3 - 3 / 4, abs=1e-12)
    assert found["disparate_impact"] == pytest.approx((1 / 3) / (3 / 4), abs=1e-12)
    assert found["equal_opportunity_difference"] == pytest.approx(1 / 3 - 1, abs=1e-12)
    assert found["average_odds_difference"] == pytest.approx(0.5 * ((1 / 3 - 1 / 2) + (1 / 3 - 1)), abs=1e-12)


def test_bias_suite_reports_aif360_and_fairlearn_under_bias_names():
    from stackwise.evaluation.runner import _bias

    records = [(i + 1, {"group": g, "label": t, "prediction": p, "privileged": g == "m"})
               for i, (g, t, p) in enumerate(TABLE)]
    metrics, rows = _bias(None, records, None, None, None, "bias.jsonl")
    assert metrics["bias.statistical_parity_difference"] == pytest.approx(-5 / 12, abs=1e-12)
    assert metrics["bias.disparate_impact"] == pytest.approx(4 / 9, abs=1e-12)
    assert metrics["bias.average_odds_difference"] == pytest.approx(-5 / 12, abs=1e-12)
    # fairlearn's between-groups gap over the three raw groups: 3/4 - 1/3
    assert metrics["bias.demographic_parity_difference"] == pytest.approx(5 / 12, abs=1e-12)
    assert metrics["bias.demographic_parity_difference"] == pytest.approx(
        fm.demographic_parity_difference(Y_TRUE, Y_PRED, sensitive_features=GROUPS), abs=1e-12)
    assert all(k.startswith("bias.") for k in metrics)
    assert {r["reference"] for r in rows} == {"aif360"} and [r["privileged"] for r in rows] == PRIV


def test_privileged_group_from_marks_config_or_largest_group():
    assert fairness.privileged_flags(GROUPS)[1:] == (["m"], "largest group")
    assert fairness.privileged_flags(GROUPS, privileged=["f", "x"])[0] == [not p for p in PRIV]
    with pytest.raises(InputError, match="disagree on `privileged`"):
        fairness.privileged_flags(["a", "a", "b"], [True, False, False])
    with pytest.raises(InputError, match="not a group in the data"):
        fairness.privileged_flags(GROUPS, privileged=["z"])


@pytest.mark.parametrize("seed", range(25))
def test_aif360_agrees_with_fairlearn_on_random_tables(seed):
    rng = random.Random(seed)
    n = rng.randint(12, 80)
    groups = [rng.choice("abcd") for _ in range(n)]
    y_true = [rng.random() < 0.4 + 0.1 * "abcd".index(g) for g in groups]
    y_pred = [int(rng.random() < (0.7 if t else 0.3)) for t in y_true]
    y_true = [int(t) for t in y_true]
    priv = [g in ("a", "b") for g in groups]
    if all(priv) or not any(priv):
        pytest.skip("one side empty")
    found = fairness.cross_checked(y_true, y_pred, priv)  # raises on any disagreement beyond 1e-9
    side = ["p" if p else "u" for p in priv]
    assert abs(found["statistical_parity_difference"]) == pytest.approx(
        fm.demographic_parity_difference(y_true, y_pred, sensitive_features=side), abs=1e-9)
    if not math.isnan(found["equal_opportunity_difference"]):
        assert abs(found["equal_opportunity_difference"]) == pytest.approx(
            fm.equal_opportunity_difference(y_true, y_pred, sensitive_features=side), abs=1e-9)


def test_a_disagreement_fails_loudly_naming_both_values(monkeypatch):
    real = fairness.aif360_metrics

    def off_by_a_little(*args):
        out = real(*args)
        return {**out, "average_odds_difference": out["average_odds_difference"] + 1e-6}

    monkeypatch.setattr(fairness, "aif360_metrics", off_by_a_little)
    with pytest.raises(fairness.FairnessCrossCheckError) as err:
        fairness.cross_checked(Y_TRUE, Y_PRED, PRIV)
    text = str(err.value)
    assert "average_odds_difference" in text and repr(-5 / 12 + 1e-6) in text and repr(-5 / 12) in text


def test_undefined_rates_are_nan_not_a_false_alarm():
    # the unprivileged side has no actual positive: TPR is undefined there (aif360 nan, fairlearn 0)
    found = fairness.cross_checked([1, 1, 0, 0, 0], [1, 0, 1, 0, 1], [True, True, True, False, False])
    assert math.isnan(found["equal_opportunity_difference"]) and math.isnan(found["average_odds_difference"])
    assert found["statistical_parity_difference"] == pytest.approx(1 / 2 - 2 / 3, abs=1e-12)


def test_dataset_bias_of_training_labels_by_hand():
    labels = {"m": [1, 1, 1, 0], "f": [1, 0, 0], "x": [0, 0, 1, 1]}
    records = [{"who": g, "y": y} for g, ys in labels.items() for y in ys]
    found = fairness.dataset_bias(records, "who", "y", "m")
    # privileged base rate 3/4; unprivileged pooled 3/7
    assert found.base_rate_privileged == pytest.approx(3 / 4) and found.base_rate_unprivileged == pytest.approx(3 / 7)
    assert found.disparate_impact == pytest.approx((3 / 7) / (3 / 4), abs=1e-12)
    assert found.statistical_parity_difference == pytest.approx(3 / 7 - 3 / 4, abs=1e-12)
    assert {g: r.base_rate for g, r in found.groups.items()} == pytest.approx({"m": 0.75, "f": 1 / 3, "x": 0.5})
    assert found.num_instances == 11 and found.privileged == ["m"]
    with pytest.raises(InputError, match="must be 0/1"):
        fairness.dataset_bias([{"who": "m", "y": "yes"}], "who", "y", "m")
    with pytest.raises(InputError, match="no `y`"):
        fairness.dataset_bias([{"who": "m"}], "who", "y", "m")
    with pytest.raises(InputError, match="not a group"):
        fairness.dataset_bias(records, "who", "y", "nobody")


def test_aif360_loads_lazily_and_quietly(tmp_path):
    code = ("import logging, sys\nfrom stackwise.evaluation import bias\n"
            "assert 'aif360' not in sys.modules\n"
            "r = bias.evaluate([1, 0, 1, 0], [1, 0, 0, 0], ['a', 'a', 'b', 'b'])\n"
            "print(r.reference, logging.getLogger().handlers)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STACKWISE_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "aif360 []"
    assert "tensorflow" not in out.stderr and "inFairness" not in out.stderr, out.stderr


def test_redteam_attack_success_rate_gates_lower_is_better():
    assert GateRule(metric="redteam.attack_success_rate").lower_is_better
    assert GateRule(metric="redteam.dan.attack_success_rate").lower_is_better
    assert not GateRule(metric="redteam.attack_success_rate", direction="higher").lower_is_better
    from stackwise.evaluation.gate import Gate, compare

    rows = compare(Gate(rules=[GateRule(metric="redteam.attack_success_rate")]),
                   {"redteam.attack_success_rate": 0.2}, {"redteam.attack_success_rate": 0.3})
    assert rows[0].passed and rows[0].direction == "lower"
