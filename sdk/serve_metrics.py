"""Prometheus metrics of the serving process: what `GET /metrics` answers.

Names follow vLLM's (`vllm:num_requests_running`, `vllm:time_to_first_token_seconds`, ...) under a
`stackwise:` prefix, so dashboards and alerts written for vLLM read almost unchanged, and one
dashboard covers the CPU engine and a vLLM engine behind the same API. Every request series carries
`model_name`, `version` and `app` (the RAG app's name, `""` for a plain model); retrieval carries
`app` and `index`. All latencies are in seconds.

Each `ServeMetrics` owns its `CollectorRegistry` (never the process-wide default one), so two
servers, or two tests, in one process never share counts. prometheus-client is imported when a
`ServeMetrics` is built, not when `stackwise` is imported.

`_created` series are left out of the exposition: prometheus-client emits one per labelled counter
and histogram, which doubles the series Prometheus stores and which no panel or alert uses.

Use in a server:

    metrics = ServeMetrics()
    metrics.add_queue_source(lambda: [(QueueLabels(model_name="m", version="3"), engine.running, engine.waiting)])
    clock = RequestClock()                                    # at request arrival
    ...; clock.token()                                         # at each generated token
    metrics.observe_request(model_name="m", version="3", app="", status=200, finish_reason="stop",
                            prompt_tokens=12, completion_tokens=len(clock.token_times),
                            ttft_s=clock.ttft_s, token_times=clock.token_times, e2e_s=clock.elapsed())
    body, content_type = metrics.exposition()                 # GET /metrics
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from .errors import InputError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

Kind = Literal["counter", "gauge", "histogram"]

REQUEST_LABELS = ("model_name", "version", "app")
RETRIEVAL_LABELS = ("app", "index")

# vLLM's buckets (vllm/v1/metrics/loggers.py), with finer low buckets where a small CPU model is
# faster than anything vLLM's defaults resolve (a tiny model emits a token every few milliseconds).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
                       1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
               120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
RETRIEVAL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class Family:
    """One exported metric family: `name` is without the namespace (`requests` -> `stackwise:requests_total`)."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = REQUEST_LABELS
    buckets: tuple[float, ...] = ()

    def series(self, prefix: str) -> set[str]:
        """The sample names Prometheus stores for this family, as exposed (no `_created`)."""
        base = prefix + self.name
        if self.kind == "counter":
            return {base + "_total"}
        if self.kind == "histogram":
            return {base + "_bucket", base + "_sum", base + "_count"}
        return {base}


FAMILIES: tuple[Family, ...] = (
    Family("num_requests_running", "gauge", "Requests being generated right now."),
    Family("num_requests_waiting", "gauge", "Requests queued for the engine, not yet generating."),
    Family("prompt_tokens", "counter", "Prompt (prefill) tokens processed."),
    Family("generation_tokens", "counter", "Tokens generated."),
    Family("requests", "counter", "Finished requests by HTTP status code.", REQUEST_LABELS + ("status",)),
    Family("request_success", "counter", "Successful requests by why generation stopped.",
           REQUEST_LABELS + ("finished_reason",)),
    Family("time_to_first_token_seconds", "histogram", "Time from request arrival to the first generated token.",
           buckets=TTFT_BUCKETS),
    Family("inter_token_latency_seconds", "histogram", "Time between two consecutive generated tokens.",
           buckets=INTER_TOKEN_BUCKETS),
    Family("e2e_request_latency_seconds", "histogram", "Time from request arrival to the last byte of the answer.",
           buckets=E2E_BUCKETS),
    Family("retrieval_latency_seconds", "histogram", "Time to retrieve the context of one RAG request.",
           RETRIEVAL_LABELS, RETRIEVAL_BUCKETS),
)


class QueueLabels(BaseModel):
    """The labels of one engine queue reading."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    version: str
    app: str = ""


QueueReading = tuple[QueueLabels, int, int]
"""(labels, running, waiting) as a queue source reports them at scrape time."""


@dataclass
class RequestClock:
    """Times one request on the monotonic clock: build it at arrival, call `token()` per generated token."""

    start: float = field(default_factory=time.monotonic)
    token_times: list[float] = field(default_factory=list)

    def token(self, count: int = 1) -> None:
        """Record `count` tokens emitted now (an engine step may emit several at once)."""
        now = time.monotonic()
        self.token_times.extend([now] * count)

    @property
    def ttft_s(self) -> float | None:
        """Seconds from arrival to the first token, None when no token was generated."""
        return self.token_times[0] - self.start if self.token_times else None

    def elapsed(self) -> float:
        """Seconds since arrival."""
        return time.monotonic() - self.start


def inter_token_gaps(token_times: Sequence[float]) -> list[float]:
    """Seconds between consecutive token timestamps: one gap fewer than tokens, each >= 0."""
    gaps = [later - earlier for earlier, later in zip(token_times, token_times[1:])]
    if any(gap < 0 for gap in gaps):
        raise InputError("token_times go backwards", where="ServeMetrics.observe_request(token_times=...)",
                         fix="pass time.monotonic() readings in the order the tokens were generated")
    return gaps


def _non_negative(**values: float | int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 0:
            raise InputError(f"{name} is negative ({value})", where=f"ServeMetrics ({name}=...)",
                             fix="pass counts and durations in seconds measured on time.monotonic()")


class _Collector:
    """The registry's only collector: the client-library metrics without `_created`, and the queue gauges.

    Queue gauges are read at scrape time from the sources (and from `set_queue` values), so
    `/metrics` shows the engine's counts as they are, never a stale copy.
    """

    def __init__(self, prefix: str, metrics: list[Any]):
        self._prefix = prefix
        self._metrics = metrics
        self._lock = threading.Lock()
        self._set: dict[QueueLabels, tuple[int, int]] = {}
        self._sources: list[Callable[[], Iterable[QueueReading]]] = []

    def set_queue(self, labels: QueueLabels, running: int, waiting: int) -> None:
        with self._lock:
            self._set[labels] = (running, waiting)

    def add_source(self, source: Callable[[], Iterable[QueueReading]]) -> None:
        with self._lock:
            self._sources.append(source)

    def _queue(self) -> dict[QueueLabels, list[int]]:
        with self._lock:
            totals = {labels: list(counts) for labels, counts in self._set.items()}
            sources = list(self._sources)
        for source in sources:
            try:
                readings = list(source())
            except Exception:  # a broken source must not take /metrics down with it
                log.exception("a queue source of stackwise serve metrics failed; its reading is left out")
                continue
            for labels, running, waiting in readings:
                total = totals.setdefault(labels, [0, 0])
                total[0] += running
                total[1] += waiting
        return totals

    def describe(self) -> Iterator[Any]:
        """Names only, so the registry can refuse a second collector exporting the same ones."""
        from prometheus_client.core import GaugeMetricFamily

        for metric in self._metrics:
            yield from metric.describe()
        for name in ("num_requests_running", "num_requests_waiting"):
            yield GaugeMetricFamily(self._prefix + name, "", labels=REQUEST_LABELS)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        queue = self._queue()
        docs = {f.name: f.help for f in FAMILIES}
        for index, name in enumerate(("num_requests_running", "num_requests_waiting")):
            gauge = GaugeMetricFamily(self._prefix + name, docs[name], labels=REQUEST_LABELS)
            for labels, counts in sorted(queue.items(), key=lambda item: tuple(item[0].model_dump().values())):
                gauge.add_metric([labels.model_name, labels.version, labels.app], counts[index])
            yield gauge
        for metric in self._metrics:
            for family in metric.collect():
                family.samples = [s for s in family.samples if not s.name.endswith("_created")]
                yield family


class ServeMetrics:
    """The metrics of one serving process, in a registry of its own. Thread-safe."""

    def __init__(self, namespace: str = "stackwise"):
        if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", namespace):
            raise InputError(f"metric namespace {namespace!r} is not a Prometheus name",
                             where="ServeMetrics(namespace=...)", fix="use letters, digits and _, e.g. 'stackwise'")
        from .registry import require

        prom = require("prometheus_client", "serve", "serving /metrics")
        self.prefix = f"{namespace}:"
        made: dict[str, Any] = {}
        for fam in FAMILIES:
            if fam.kind == "gauge":
                continue  # the queue gauges are read at scrape time by _Collector
            cls = prom.Counter if fam.kind == "counter" else prom.Histogram
            extra = {"buckets": fam.buckets} if fam.kind == "histogram" else {}
            made[fam.name] = cls(self.prefix + fam.name, fam.help, list(fam.labels), registry=None, **extra)
        self._m = made
        self._collector = _Collector(self.prefix, list(made.values()))
        self.registry: CollectorRegistry = prom.CollectorRegistry()
        self.registry.register(self._collector)

    # -- queue ----------------------------------------------------------------------------------
    def set_queue(self, running: int, waiting: int, *, model_name: str, version: str, app: str = "") -> None:
        """Set the running and waiting counts of one (model, version, app) until set again."""
        _non_negative(running=running, waiting=waiting)
        self._collector.set_queue(QueueLabels(model_name=model_name, version=version, app=app), running, waiting)

    def add_queue_source(self, source: Callable[[], Iterable[QueueReading]]) -> None:
        """Read queue counts from `source()` at every scrape: [(QueueLabels, running, waiting), ...].

        Readings with the same labels (from several sources or `set_queue`) are summed. A source
        that raises is logged and left out of that scrape; the rest of /metrics is still served.
        """
        self._collector.add_source(source)

    # -- observations ---------------------------------------------------------------------------
    def observe_request(self, *, model_name: str, version: str, app: str, status: int, finish_reason: str | None,
                        prompt_tokens: int, completion_tokens: int, ttft_s: float | None,
                        token_times: Sequence[float], e2e_s: float) -> None:
        """Record one finished request (any outcome), all durations in seconds.

        `status` is the HTTP status answered; `finish_reason` ("stop", "length", ...) counts a
        success (status < 400) in `request_success_total`. `token_times` are the monotonic times at
        which each token was generated: one inter-token latency per gap (len - 1 observations).
        `ttft_s` is None when no token came out (an error before generation).
        """
        _non_negative(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, ttft_s=ttft_s, e2e_s=e2e_s)
        gaps = inter_token_gaps(token_times)
        labels = (model_name, version, app)
        self._m["requests"].labels(*labels, str(status)).inc()
        if status < 400 and finish_reason is not None:
            self._m["request_success"].labels(*labels, finish_reason).inc()
        if prompt_tokens:
            self._m["prompt_tokens"].labels(*labels).inc(prompt_tokens)
        if completion_tokens:
            self._m["generation_tokens"].labels(*labels).inc(completion_tokens)
        if ttft_s is not None:
            self._m["time_to_first_token_seconds"].labels(*labels).observe(ttft_s)
        itl = self._m["inter_token_latency_seconds"].labels(*labels)
        for gap in gaps:
            itl.observe(gap)
        self._m["e2e_request_latency_seconds"].labels(*labels).observe(e2e_s)

    def observe_retrieval(self, seconds: float, *, app: str, index: str) -> None:
        """Record the time one retrieval (embed the query, search, rerank) took, in seconds."""
        _non_negative(seconds=seconds)
        self._m["retrieval_latency_seconds"].labels(app, index).observe(seconds)

    # -- exposition -----------------------------------------------------------------------------
    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of `GET /metrics`, in Prometheus text format 0.0.4.

        Declared as 0.0.4 (what every Prometheus 2.x and 3.x reads) rather than the client's
        newer 1.0.0 label: every name here is a classic one, so both would carry the same body.
        """
        import prometheus_client.exposition as exposition

        content_type = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST)
        return exposition.generate_latest(self.registry), content_type

    def metric_families(self) -> dict[str, set[str]]:
        """Each exported family (`stackwise:requests`) and the sample names it exposes (`..._total`)."""
        return {self.prefix + fam.name: fam.series(self.prefix) for fam in FAMILIES}

    def metric_names(self) -> set[str]:
        """Every sample name this server can expose (`stackwise:requests_total`, `..._bucket`, ...)."""
        return set().union(*self.metric_families().values())
