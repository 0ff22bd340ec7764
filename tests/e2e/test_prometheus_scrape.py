"""A real Prometheus (Debian package `prometheus`) scrapes stackwise's /metrics on loopback.

`run_prometheus` and `query` are helpers for any test that points Prometheus at a server: here at a
stdlib HTTP server serving `ServeMetrics.exposition()`, elsewhere at a real `stackwise serve`.
Without the prometheus binary the test skips, unless STACKWISE_REQUIRE_CONTAINERS=1 (CI), which
makes that a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "tests" / "emulators") not in sys.path:
    sys.path.insert(0, str(REPO / "tests" / "emulators"))

from _json_http import JsonHttpServer, raw_body  # noqa: E402
MONITORING = REPO / "infra" / "monitoring"
READY_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        reason = "the prometheus server is not installed (Debian package `prometheus`)"
        if os.environ.get("STACKWISE_REQUIRE_CONTAINERS") == "1":
            pytest.fail(f"{reason} (STACKWISE_REQUIRE_CONTAINERS=1 requires it)", pytrace=False)
        pytest.skip(reason)
    return path


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback only)
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@contextmanager
def run_prometheus(targets: list[str], tmp_path: Path, *, rule_files: list[Path] | None = None,
                   metrics_path: str = "/metrics", scrape_interval: str = "1s") -> Iterator[str]:
    """Run a real Prometheus on loopback scraping `targets` ("127.0.0.1:PORT"); yield its base URL.

    Storage, config and log live under `tmp_path/prometheus`. Prometheus is stopped with SIGTERM (a
    clean shutdown) on exit, and killed only if it has not stopped within 20 s; its log is attached
    to any failure to start.
    """
    binary = _prometheus_binary()
    home = tmp_path / "prometheus"
    home.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(p) for p in rule_files or []],
        "scrape_configs": [{"job_name": "stackwise-serve", "metrics_path": metrics_path,
                            "static_configs": [{"targets": targets}]}],
    }
    (home / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = (home / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={home / 'prometheus.yml'}", f"--storage.tsdb.path={home / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        cwd=home, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}:\n{(home / 'prometheus.log').read_text()}")
            try:
                if _get(f"{base}/-/ready", timeout=1.0)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready in {READY_TIMEOUT_S} s:\n{(home / 'prometheus.log').read_text()}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
    # Reached only when the body passed: then a shutdown that was not clean is a failure of its own.
    assert proc.returncode == 0, f"prometheus stopped with {proc.returncode}:\n{(home / 'prometheus.log').read_text()}"


def query(base: str, promql: str) -> list[dict[str, Any]]:
    """The result of an instant query (`/api/v1/query`): [{"metric": {...}, "value": [ts, "str"]}, ...].

    Fails the test with Prometheus's own message when the query is refused (bad PromQL).
    """
    status, body = _get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    answer = json.loads(body)
    assert status == 200 and answer["status"] == "success", f"{promql}: {answer.get('error', body[:500])}"
    return answer["data"]["result"]


def wait_for_value(base: str, promql: str, expected: float, timeout: float = 30.0) -> float:
    """Poll `promql` (one series) until it reads `expected`; fail with the last reading after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = query(base, promql)
        if len(last) == 1 and float(last[0]["value"][1]) == expected:
            return expected
        time.sleep(0.5)
    pytest.fail(f"{promql} read {last} after {timeout} s, expected {expected}")


# -- a loopback server of ServeMetrics ------------------------------------------------------------------
@contextmanager
def serve_metrics(metrics: Any) -> Iterator[str]:
    """Serve `metrics.exposition()` at http://127.0.0.1:PORT/metrics from a thread; yield "127.0.0.1:PORT"."""

    def route(method: str, path: str, body: bytes, headers: Any) -> tuple:
        if (method, path) != ("GET", "/metrics"):
            return 404, "not found"
        data, content_type = metrics.exposition()
        return 200, data, {"Content-Type": content_type}

    server = JsonHttpServer(route, body=raw_body)
    try:
        yield server.host
    finally:
        server.stop()


def _dashboard_exprs() -> list[str]:
    model = json.loads((MONITORING / "dashboard.json").read_text())
    return [t["expr"] for p in model["panels"] for t in p["targets"]]


def _as_grafana_would(expr: str) -> str:
    """The expression Grafana sends with every variable at "All" and a 1 m rate interval."""
    expr = expr.replace("$__rate_interval", "1m")
    return re.sub(r"\$\{?(model_name|version|app)\}?", ".*", expr)


def test_prometheus_scrapes_the_request_count(tmp_path):
    from stackwise.serve_metrics import QueueLabels, ServeMetrics

    metrics = ServeMetrics()
    metrics.add_queue_source(lambda: [(QueueLabels(model_name="tiny", version="3", app="faq"), 2, 7)])
    statuses = [200] * 6 + [500, 400]
    with serve_metrics(metrics) as target, \
            run_prometheus([target], tmp_path, rule_files=[MONITORING / "alerts.yml"]) as base:
        wait_for_value(base, 'up{job="stackwise-serve"}', 1)
        for i, status in enumerate(statuses):
            ok = status == 200
            metrics.observe_request(model_name="tiny", version="3", app="faq" if i % 2 else "", status=status,
                                    finish_reason="stop" if ok else None, prompt_tokens=10,
                                    completion_tokens=3 if ok else 0, ttft_s=0.05 if ok else None,
                                    token_times=[0.0, 0.01, 0.02] if ok else [], e2e_s=0.2)
            metrics.observe_retrieval(0.004, app="faq", index="docs")
        wait_for_value(base, "sum(stackwise:requests_total)", len(statuses))
        assert float(query(base, 'sum(stackwise:requests_total{status="500"})')[0]["value"][1]) == 1
        assert float(query(base, "sum(stackwise:inter_token_latency_seconds_count)")[0]["value"][1]) == 2 * 6
        assert float(query(base, "sum(stackwise:generation_tokens_total)")[0]["value"][1]) == 3 * 6
        waiting = query(base, "stackwise:num_requests_waiting")
        assert [(r["metric"]["app"], r["value"][1]) for r in waiting] == [("faq", "7")]
        # A plain model's app="" is stored as no app label, so `app=~".*"` (the dashboard's "All") keeps it.
        assert float(query(base, 'sum(stackwise:requests_total{app=~".*"})')[0]["value"][1]) == len(statuses)

        # Every panel's query is valid PromQL and, on these series, returns data.
        time.sleep(2.5)  # two more scrapes, so every rate() has two points
        for expr in _dashboard_exprs():
            assert query(base, _as_grafana_would(expr)), f"no data for the panel query: {expr}"

        # The shipped rules loaded and evaluate without error.
        status, body = _get(f"{base}/api/v1/rules")
        groups = json.loads(body)["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert status == 200 and {r["name"] for r in rules} >= {"StackwiseTimeToFirstTokenP99High",
                                                                "StackwiseErrorRateHigh", "StackwiseQueueDepthHigh"}
        assert all(r["health"] in {"ok", "unknown"} for r in rules), [(r["name"], r.get("lastError")) for r in rules]
