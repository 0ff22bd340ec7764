"""stackwise.serve_metrics and the shipped monitoring files (infra/monitoring/).

Values are read back the way Prometheus reads them: the exposition is parsed with prometheus-client's
own text parser, and the expected counts, sums and bucket placements are worked out here by hand.
The alert rules are checked and unit-tested by the real `promtool` (Debian package `prometheus`);
without it those tests skip, unless STACKWISE_REQUIRE_CONTAINERS=1 (CI), which makes that a failure.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from stackwise.errors import InputError
from stackwise.serve_metrics import QueueLabels, ServeMetrics

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "infra" / "monitoring"
REQUEST_LABELS = {"model_name", "version", "app"}

# Families the dashboard deliberately does not chart (none today); anything else must have a panel.
NOT_CHARTED: set[str] = set()


def samples(metrics: ServeMetrics) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of the exposition as (name, labels, value), parsed by prometheus-client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    body, _ = metrics.exposition()
    return [(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(body.decode()) for s in family.samples]


def value(metrics: ServeMetrics, name: str, **labels: str) -> float:
    """The one sample named `name` whose labels include `labels`."""
    found = [v for n, ls, v in samples(metrics) if n == name and labels.items() <= ls.items()]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


def buckets(metrics: ServeMetrics, family: str, **labels: str) -> dict[float, float]:
    """{upper bound: cumulative count} of one histogram series."""
    return {float(ls["le"]): v for n, ls, v in samples(metrics)
            if n == family + "_bucket" and labels.items() <= ls.items()}


def cumulative(observations: list[float], bounds: list[float]) -> dict[float, float]:
    """What Prometheus's cumulative buckets must read for `observations`, worked out independently."""
    return {le: float(sum(1 for o in observations if o <= le)) for le in bounds}


PLAIN = {"model_name": "tiny", "version": "3", "app": ""}
RAG = {"model_name": "tiny", "version": "3", "app": "faq"}
TTFT = [0.05, 0.3]
TOKEN_TIMES = [1.0, 1.002, 1.009, 1.189]  # gaps 0.002, 0.007, 0.18: none on a bucket boundary
E2E = [0.7, 3.2, 0.01]


@pytest.fixture()
def recorded() -> ServeMetrics:
    m = ServeMetrics()
    m.observe_request(**PLAIN, status=200, finish_reason="stop", prompt_tokens=11, completion_tokens=4,
                      ttft_s=TTFT[0], token_times=TOKEN_TIMES, e2e_s=E2E[0])
    m.observe_request(**RAG, status=200, finish_reason="length", prompt_tokens=30, completion_tokens=1,
                      ttft_s=TTFT[1], token_times=[5.0], e2e_s=E2E[1])
    m.observe_request(**PLAIN, status=500, finish_reason=None, prompt_tokens=7, completion_tokens=0,
                      ttft_s=None, token_times=[], e2e_s=E2E[2])
    m.observe_retrieval(0.004, app="faq", index="docs")
    m.observe_retrieval(0.03, app="faq", index="docs")
    m.set_queue(2, 5, **PLAIN)
    return m


def test_counters_read_back_by_hand(recorded):
    assert value(recorded, "stackwise:requests_total", **PLAIN, status="200") == 1
    assert value(recorded, "stackwise:requests_total", **PLAIN, status="500") == 1
    assert value(recorded, "stackwise:requests_total", **RAG, status="200") == 1
    assert value(recorded, "stackwise:prompt_tokens_total", **PLAIN) == 11 + 7
    assert value(recorded, "stackwise:prompt_tokens_total", **RAG) == 30
    assert value(recorded, "stackwise:generation_tokens_total", **PLAIN) == 4
    assert value(recorded, "stackwise:request_success_total", **PLAIN, finished_reason="stop") == 1
    assert value(recorded, "stackwise:request_success_total", **RAG, finished_reason="length") == 1
    # The 500 is no success, under any reason.
    success = [(ls, v) for n, ls, v in samples(recorded) if n == "stackwise:request_success_total"]
    assert sum(v for _, v in success) == 2


def test_time_to_first_token_histogram(recorded):
    family = "stackwise:time_to_first_token_seconds"
    assert value(recorded, family + "_count", **PLAIN) == 1  # the 500 produced no token: no observation
    assert value(recorded, family + "_sum", **PLAIN) == pytest.approx(0.05)
    assert value(recorded, family + "_sum", **RAG) == pytest.approx(0.3)
    got = buckets(recorded, family, **PLAIN)
    assert got[0.04] == 0 and got[0.06] == 1 and got[math.inf] == 1  # 50 ms lands between 40 and 60 ms
    assert got == cumulative([TTFT[0]], list(got))
    assert buckets(recorded, family, **RAG) == cumulative([TTFT[1]], list(got))


def test_inter_token_latency_one_observation_per_gap(recorded):
    family = "stackwise:inter_token_latency_seconds"
    gaps = [0.002, 0.007, 0.18]
    assert value(recorded, family + "_count", **PLAIN) == len(TOKEN_TIMES) - 1
    assert value(recorded, family + "_sum", **PLAIN) == pytest.approx(sum(gaps))
    got = buckets(recorded, family, **PLAIN)
    assert got == cumulative(gaps, list(got))
    assert got[0.0025] == 1 and got[0.01] == 2 and got[0.15] == 2 and got[0.2] == 3
    # One token: no gap, so no observation at all for that series.
    assert value(recorded, family + "_count", **RAG) == 0


def test_e2e_latency_counts_every_outcome(recorded):
    family = "stackwise:e2e_request_latency_seconds"
    assert value(recorded, family + "_count", **PLAIN) == 2  # the 200 and the 500
    assert value(recorded, family + "_sum", **PLAIN) == pytest.approx(E2E[0] + E2E[2])
    got = buckets(recorded, family, **PLAIN)
    assert got == cumulative([E2E[0], E2E[2]], list(got))
    assert got[0.05] == 1 and got[0.5] == 1 and got[0.8] == 2


def test_retrieval_latency_labels_and_buckets(recorded):
    family = "stackwise:retrieval_latency_seconds"
    assert value(recorded, family + "_count", app="faq", index="docs") == 2
    assert value(recorded, family + "_sum", app="faq", index="docs") == pytest.approx(0.034)
    got = buckets(recorded, family, app="faq", index="docs")
    assert got == cumulative([0.004, 0.03], list(got))
    assert got[0.0025] == 0 and got[0.005] == 1 and got[0.025] == 1 and got[0.05] == 2


def test_every_sample_carries_its_labels(recorded):
    for name, labels, _ in samples(recorded):
        expected = {"app", "index"} if name.startswith("stackwise:retrieval_latency_seconds") else REQUEST_LABELS
        assert expected <= set(labels), f"{name} lacks {expected - set(labels)}: {labels}"
        if name.startswith("stackwise:requests_total"):
            assert re.fullmatch(r"[1-5]\d\d", labels["status"])
    # A plain model's series carry app="" (and Prometheus then stores them without the label).
    assert value(recorded, "stackwise:num_requests_running", **PLAIN) == 2


def test_queue_gauges_read_sources_at_scrape_time():
    m = ServeMetrics()
    engine = {"running": 1, "waiting": 0}
    labels = QueueLabels(model_name="tiny", version="3")
    m.add_queue_source(lambda: [(labels, engine["running"], engine["waiting"])])
    assert value(m, "stackwise:num_requests_waiting", model_name="tiny", version="3", app="") == 0
    engine.update(running=4, waiting=9)
    assert value(m, "stackwise:num_requests_running", model_name="tiny") == 4
    assert value(m, "stackwise:num_requests_waiting", model_name="tiny") == 9
    # Two readings of the same labels add up; a source that raises is left out, the rest still served.
    m.set_queue(1, 1, model_name="tiny", version="3")
    m.add_queue_source(lambda: 1 / 0)
    assert value(m, "stackwise:num_requests_waiting", model_name="tiny") == 10
    m.observe_retrieval(0.01, app="faq", index="docs")
    assert value(m, "stackwise:retrieval_latency_seconds_count", app="faq") == 1


def test_names_exposed_are_metric_names_and_all_prefixed(recorded):
    exposed = {name for name, _, _ in samples(recorded)}
    assert exposed == recorded.metric_names()
    assert all(name.startswith("stackwise:") for name in exposed)
    for family, series in recorded.metric_families().items():
        assert family.startswith("stackwise:") and all(s.startswith(family) for s in series)
    body, content_type = recorded.exposition()
    assert content_type.startswith("text/plain; version=0.0.4")
    assert b"_created" not in body


def test_instances_share_nothing():
    a, b = ServeMetrics(), ServeMetrics()
    assert a.registry is not b.registry
    a.observe_request(**PLAIN, status=200, finish_reason="stop", prompt_tokens=3, completion_tokens=2,
                      ttft_s=0.1, token_times=[0.0, 0.1], e2e_s=0.2)
    a.set_queue(1, 2, **PLAIN)
    assert value(a, "stackwise:requests_total", **PLAIN, status="200") == 1
    assert samples(b) == []
    # Nothing lands in the process-wide default registry either.
    from prometheus_client import REGISTRY

    assert not any(name.startswith("stackwise:") for name in REGISTRY._names_to_collectors)


@pytest.mark.parametrize("bad", [
    {"prompt_tokens": -1}, {"e2e_s": -0.1}, {"ttft_s": -1.0}, {"token_times": [2.0, 1.0]},
])
def test_impossible_observations_are_refused(bad):
    args: dict[str, Any] = dict(PLAIN, status=200, finish_reason="stop", prompt_tokens=1, completion_tokens=1,
                                ttft_s=0.1, token_times=[0.0], e2e_s=0.2)
    with pytest.raises(InputError):
        ServeMetrics().observe_request(**{**args, **bad})


def test_bad_namespace_is_refused_and_import_stays_light(tmp_path):
    with pytest.raises(InputError, match="namespace"):
        ServeMetrics("stack-wise")
    code = "import sys, stackwise.serve_metrics; print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# -- the shipped monitoring files ---------------------------------------------------------------------
def promql_metric_names(expr: str) -> set[str]:
    """The `stackwise:` metric names an expression reads (string literals dropped first)."""
    code = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return {tok for tok in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", code) if "stackwise:" in tok}


def dashboard() -> dict[str, Any]:
    return json.loads((MONITORING / "dashboard.json").read_text())


def dashboard_exprs(model: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template-variable queries."""
    exprs = [t["expr"] for p in model["panels"] for t in p.get("targets", [])]
    for var in model["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_dashboard_loads_with_the_expected_shape():
    model = dashboard()
    assert model["schemaVersion"] >= 36 and model["uid"]
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"model_name", "app"} <= set(variables)
    for p in model["panels"]:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]
    titles = " | ".join(p["title"].lower() for p in model["panels"])
    for needed in ("status", "running", "waiting", "first token", "inter-token", "end-to-end", "retrieval",
                   "tokens per second", "error"):
        assert needed in titles, needed


def test_dashboard_and_alerts_name_only_exported_metrics():
    exported = ServeMetrics().metric_names()
    for expr in dashboard_exprs(dashboard()) + alert_exprs():
        names = promql_metric_names(expr)
        assert names <= exported, f"unknown metric {names - exported} in: {expr}"


def test_every_exported_family_has_a_panel():
    used = set().union(*(promql_metric_names(e) for p in dashboard()["panels"] for e in
                         (t["expr"] for t in p["targets"])))
    for family, series in ServeMetrics().metric_families().items():
        assert family in NOT_CHARTED or series & used, f"{family} is charted by no panel of dashboard.json"


def test_promql_metric_names_reads_identifiers():
    expr = 'sum(rate(stackwise:requests_total{status=~"5..", app="stackwise:x"}[5m])) / on() stackwise:foo_bar'
    assert promql_metric_names(expr) == {"stackwise:requests_total", "stackwise:foo_bar"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool is not installed (Debian package `prometheus`)"
        if os.environ.get("STACKWISE_REQUIRE_CONTAINERS") == "1":
            pytest.fail(f"{reason} (STACKWISE_REQUIRE_CONTAINERS=1 requires it)", pytrace=False)
        pytest.skip(reason)
    return path


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_every_alert_says_what_and_how_bad():
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert {"StackwiseTimeToFirstTokenP99High", "StackwiseErrorRateHigh", "StackwiseQueueDepthHigh"} <= set(alerts)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name
        assert rule["annotations"]["summary"].strip() and len(rule["annotations"]["description"]) > 40, name
        assert rule.get("for"), f"{name} fires on a single evaluation"


def test_promtool_checks_rules_and_config():
    rules = run_promtool("check", "rules", "alerts.yml", cwd=MONITORING)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = run_promtool("check", "config", "prometheus.yml", cwd=MONITORING)
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout + config.stderr


def _series(name: str, labels: str, per_minute: float, minutes: int = 12) -> dict[str, str]:
    """A counter growing by `per_minute` each minute, in promtool's expanding notation."""
    return {"series": f"{name}{{{labels}}}", "values": f"0+{per_minute:g}x{minutes}"}


def _ttft_buckets(slow_share: float) -> list[dict[str, str]]:
    """TTFT buckets of 100 requests a minute, `slow_share` of them taking 2.5 to 5 s, the rest < 0.25 s."""
    m = 'model_name="tiny", version="3", app="faq"'
    slow = 100 * slow_share
    return [_series("stackwise:time_to_first_token_seconds_bucket", f'{m}, le="{le}"', count)
            for le, count in (("0.25", 100 - slow), ("2.5", 100 - slow), ("5.0", 100), ("+Inf", 100))]


def _requests(error_share: float, client_error_share: float = 0.0) -> list[dict[str, str]]:
    """100 requests a minute: `error_share` answered 500, `client_error_share` 400, the rest 200."""
    m = 'model_name="tiny", version="3", app="faq"'
    return [_series("stackwise:requests_total", f'{m}, status="200"', 100 * (1 - error_share - client_error_share)),
            _series("stackwise:requests_total", f'{m}, status="400"', 100 * client_error_share),
            _series("stackwise:requests_total", f'{m}, status="500"', 100 * error_share)]


def _fires(alert: str, input_series: list[dict[str, str]], firing: bool) -> dict[str, Any]:
    """A promtool test case: at minute 11 `alert` is firing for the one series (or not at all)."""
    labels = {"alertname": alert, "model_name": "tiny", "version": "3", "app": "faq", "severity": _severity(alert)}
    return {"interval": "1m", "input_series": input_series,
            "alert_rule_test": [{"eval_time": "11m", "alertname": alert,
                                 "exp_alerts": [{"exp_labels": labels}] if firing else []}]}


def _severity(alert: str) -> str:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == alert]
    return rule["labels"]["severity"]


def test_alerts_fire_past_their_thresholds_and_not_below(tmp_path):
    """`promtool test rules`: each alert fires on series past its threshold for 5 m, and stays silent below."""
    waiting = 'model_name="tiny", version="3", app="faq"'
    tests = [
        _fires("StackwiseTimeToFirstTokenP99High", _ttft_buckets(0.05), True),    # p99 in 2.5..5 s
        _fires("StackwiseTimeToFirstTokenP99High", _ttft_buckets(0.005), False),  # p99 under 0.25 s
        _fires("StackwiseErrorRateHigh", _requests(0.10), True),
        _fires("StackwiseErrorRateHigh", _requests(0.02), False),
        _fires("StackwiseErrorRateHigh", _requests(0.02, client_error_share=0.2), False),  # 4xx: the client's fault
        _fires("StackwiseQueueDepthHigh", [{"series": f"stackwise:num_requests_waiting{{{waiting}}}",
                                            "values": "20x12"}], True),
        _fires("StackwiseQueueDepthHigh", [{"series": f"stackwise:num_requests_waiting{{{waiting}}}",
                                            "values": "10x12"}], False),
    ]
    # promtool compares annotations verbatim; their wording is checked apart, so the rules run here without them.
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    spec = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    result = run_promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode == 0, textwrap.shorten(result.stdout + result.stderr, 3000)
    assert "SUCCESS" in result.stdout + result.stderr
