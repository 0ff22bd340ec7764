"""A small local server speaking Vertex AI v1 REST for CustomJobs, as `aiplatform_v1`'s REST
transport calls it: create, get, list (with `labels.KEY="VALUE"` filters), cancel.

Deploy routes (the subset `stackwise deploy` uses): models:upload (with modelId), models get,
endpoints get, endpoints:deployModel / :undeployModel (long-running operations answered done,
with the trafficSplit checked as Vertex checks it: percents summing to 100 over deployed models,
"0" naming the one being deployed; the DeployedModel parsed into aiplatform_v1's proto, its replica
bounds and autoscaling metric specs checked as `_check_deployed_model` says) and endpoint PATCH
with updateMask=trafficSplit. Endpoints
exist only once the test adds them (`add_endpoint`), as the Pulumi program creates them.

A CustomJob naming a `network` is checked as Vertex checks it: the name must be
`projects/<project number>/global/networks/<name>` (a project id is refused) and the network
must be peered with Vertex AI (private services access: the test says which with `peer`), each
`reservedIpRanges` entry one of that peering's ranges; else 400, as Vertex answers.

Jobs start JOB_STATE_PENDING and move only when the test says (`move`); cancel goes
CANCELLING, then CANCELLED a moment later. `faults` answers the next create with 429 or 503,
or creates the job and then answers 503 (the answer lost). `deploy_faults` does the same for the
deploy routes, each entry `(route, fault)` answering the next call of that route (`upload`,
`get-model`, `get-endpoint`, `patch`, `deployModel`, `undeployModel`): `throttle` (429, a rate
limit), `unavailable` (503) or `lost-answer` (done, then 503).
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, urlparse

from _json_http import JsonHttpServer

_JOB = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+)/customJobs/(\d+)(:cancel)?$")
_JOBS = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+)/customJobs$")
_UPLOAD = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+)/models:upload$")
_MODEL = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+/models/[^/:]+)$")
_ENDPOINT = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+/endpoints/[^/:]+)(:deployModel|:undeployModel)?$")
_FILTER = re.compile(r'labels\.([\w-]+)\s*=\s*"([^"]*)"')
_NETWORK = re.compile(r"^projects/(\d+)/global/networks/[a-z]([-a-z0-9]*[a-z0-9])?$")
ENDED = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class VertexServer:
    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.models: dict[str, dict[str, Any]] = {}  # resource name -> Model
        self.endpoints: dict[str, dict[str, Any]] = {}  # resource name -> Endpoint
        self.requests: list[tuple[str, str, Any]] = []
        self.faults: deque[str] = deque()
        self.deploy_faults: deque[tuple[str, str]] = deque()
        self.create_calls = 0
        self.peered: dict[str, set[str]] = {}  # network -> its reserved peering ranges
        self._next = 1000
        self._lock = threading.Lock()

    def peer(self, network: str, *ranges: str) -> None:
        """Make `network` peered with Vertex AI through private services access over `ranges`."""
        with self._lock:
            self.peered[network] = set(ranges)

    def _check_network(self, spec: dict[str, Any]) -> tuple[int, Any] | None:
        network = spec.get("network")
        if not network:
            if spec.get("reservedIpRanges"):
                return self._error(400, "INVALID_ARGUMENT", "reservedIpRanges requires network to be set.")
            return None
        if not _NETWORK.fullmatch(network):
            return self._error(400, "INVALID_ARGUMENT", f"Invalid network name {network!r}: expected "
                               "projects/{project_number}/global/networks/{network}.")
        if network not in self.peered:
            return self._error(400, "FAILED_PRECONDITION", f"Network {network} is not peered with Vertex AI: "
                               "set up VPC Network Peering (private services access) first.")
        unknown = set(spec.get("reservedIpRanges") or []) - self.peered[network]
        if unknown:
            return self._error(400, "INVALID_ARGUMENT", f"Reserved IP ranges {sorted(unknown)} are not "
                               f"allocated to the peering of {network}.")
        return None

    def start(self) -> "VertexServer":
        self._http = JsonHttpServer(lambda method, path, body, headers: self.handle(
            method, path, body if body is not None or method == "GET" else {}))
        self.endpoint = self._http.url
        return self

    def stop(self) -> None:
        self._http.stop()

    def reset(self) -> None:
        with self._lock:
            self.jobs.clear()
            self.models.clear()
            self.endpoints.clear()
            self.requests.clear()
            self.faults.clear()
            self.deploy_faults.clear()
            self.create_calls = 0
            self.peered.clear()

    def move(self, job_id: str, state: str, error: str | None = None) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            return
        job["state"] = state
        job["updateTime"] = _now()
        if state == "JOB_STATE_RUNNING":
            job.setdefault("startTime", _now())
        if state in ENDED:
            job["endTime"] = _now()
        if error:
            job["error"] = {"code": 3, "message": error}

    @staticmethod
    def _error(status: int, reason: str, message: str) -> tuple[int, Any]:
        return status, {"error": {"code": status, "message": message, "status": reason}}

    def add_endpoint(self, name: str) -> None:
        """An empty endpoint, as the Pulumi program leaves it (`projects/P/locations/L/endpoints/ID`)."""
        with self._lock:
            self.endpoints[name] = {"name": name, "displayName": name.rsplit("/", 1)[1], "deployedModels": [],
                                    "trafficSplit": {}, "createTime": _now(), "updateTime": _now()}

    @staticmethod
    def _done(parent: str, kind: str, response: dict[str, Any]) -> dict[str, Any]:
        return {"name": f"{parent}/operations/{int(time.time() * 1e6)}", "done": True,
                "response": {"@type": f"type.googleapis.com/google.cloud.aiplatform.v1.{kind}", **response}}

    def _check_split(self, split: dict[str, Any], ids: set[str]) -> str | None:
        if sum(int(v) for v in split.values()) != 100 or set(split) - ids:
            return f"Invalid traffic split: {split}. It must sum to 100 over deployed models."
        return None

    @staticmethod
    def _deploy_route(method: str, path: str) -> str | None:
        if _UPLOAD.match(path):
            return "upload" if method == "POST" else None
        if _MODEL.match(path):
            return "get-model" if method == "GET" else None
        match = _ENDPOINT.match(path)
        if not match:
            return None
        return {("GET", None): "get-endpoint", ("PATCH", None): "patch", ("POST", ":deployModel"): "deployModel",
                ("POST", ":undeployModel"): "undeployModel"}.get((method, match.group(2)))

    def _deploy(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any] | None:
        route = self._deploy_route(method, path)
        fault = None
        if route and self.deploy_faults and self.deploy_faults[0][0] == route:
            fault = self.deploy_faults.popleft()[1]
        if fault == "throttle":
            return self._error(429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Resource management "
                               "(CRUD) requests' and limit 'Resource management (CRUD) requests per minute per region'")
        if fault == "unavailable":
            return self._error(503, "UNAVAILABLE", "The service is currently unavailable.")
        answered = self._deploy_answer(method, path, query, body)
        if fault == "lost-answer" and answered is not None and answered[0] == 200:
            return self._error(503, "UNAVAILABLE", "The service is currently unavailable.")
        return answered

    def _deploy_answer(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any] | None:
        match = _UPLOAD.match(path)
        if match and method == "POST":
            model_id = body.get("modelId") or str(self._next + 1)
            self._next += 1
            name = f"{match.group(1)}/models/{model_id}"
            if name in self.models:
                return self._error(409, "ALREADY_EXISTS", f"Model {name} already exists.")
            self.models[name] = dict(body["model"], name=name, versionId="1", createTime=_now(), updateTime=_now())
            return 200, self._done(match.group(1), "UploadModelResponse", {"model": name, "modelVersionId": "1"})
        match = _MODEL.match(path)
        if match and method == "GET":
            model = self.models.get(match.group(1))
            return (200, model) if model else self._error(404, "NOT_FOUND", f"Model {match.group(1)} is not found.")
        match = _ENDPOINT.match(path)
        if not match:
            return None
        endpoint = self.endpoints.get(match.group(1))
        if endpoint is None:
            return self._error(404, "NOT_FOUND", f"Endpoint {match.group(1)} is not found.")
        parent = match.group(1).rsplit("/endpoints/", 1)[0]
        ids = {d["id"] for d in endpoint["deployedModels"]}
        if method == "GET" and not match.group(2):
            return 200, endpoint
        if method == "PATCH" and not match.group(2):
            if query.get("updateMask", [""])[0] not in ("trafficSplit", "traffic_split"):
                return self._error(400, "INVALID_ARGUMENT", f"unsupported update mask {query.get('updateMask')}")
            split = {k: int(v) for k, v in (body.get("trafficSplit") or {}).items()}
            if error := self._check_split(split, ids):
                return self._error(400, "INVALID_ARGUMENT", error)
            endpoint["trafficSplit"], endpoint["updateTime"] = split, _now()
            return 200, endpoint
        if method == "POST" and match.group(2) == ":deployModel":
            refused = _check_deployed_model(body.get("deployedModel") or {})
            if refused:
                return self._error(400, "INVALID_ARGUMENT", refused)
            deployed = dict(body["deployedModel"])
            if deployed.get("model") not in self.models:
                return self._error(404, "NOT_FOUND", f"Model {deployed.get('model')} is not found.")
            self._next += 1
            deployed.update(id=str(self._next), createTime=_now())
            split = {(deployed["id"] if k == "0" else k): int(v) for k, v in (body.get("trafficSplit") or {}).items()}
            if error := self._check_split(split, ids | {deployed["id"]}):
                return self._error(400, "INVALID_ARGUMENT", error)
            endpoint["deployedModels"].append(deployed)
            endpoint["trafficSplit"], endpoint["updateTime"] = split, _now()
            return 200, self._done(parent, "DeployModelResponse", {"deployedModel": deployed})
        if method == "POST" and match.group(2) == ":undeployModel":
            gone = body.get("deployedModelId")
            if gone not in ids:
                return self._error(404, "NOT_FOUND", f"Deployed model {gone} is not found.")
            split = {k: int(v) for k, v in (body.get("trafficSplit") or {}).items()} or {
                k: v for k, v in endpoint["trafficSplit"].items() if k != gone}
            if error := self._check_split(split, ids - {gone}) if ids - {gone} else None:
                return self._error(400, "INVALID_ARGUMENT", error)
            endpoint["deployedModels"] = [d for d in endpoint["deployedModels"] if d["id"] != gone]
            endpoint["trafficSplit"], endpoint["updateTime"] = split, _now()
            return 200, self._done(parent, "UndeployModelResponse", {})
        return None

    def handle(self, method: str, raw_path: str, body: Any) -> tuple[int, Any]:
        url = urlparse(raw_path)
        self.requests.append((method, url.path, body))
        with self._lock:
            answered = self._deploy(method, url.path, parse_qs(url.query), body)
            if answered is not None:
                return answered
            match = _JOBS.match(url.path)
            if match and method == "POST":
                self.create_calls += 1
                fault = self.faults.popleft() if self.faults else None
                if fault == "throttle":
                    return self._error(429, "RESOURCE_EXHAUSTED", "Quota exceeded for aiplatform.googleapis.com/"
                                       "custom_model_training_requests_per_minute")
                if fault == "unavailable":
                    return self._error(503, "UNAVAILABLE", "The service is currently unavailable.")
                if fault == "quota":
                    return self._error(429, "RESOURCE_EXHAUSTED", "The following quota metrics exceed quota "
                                       "limits: aiplatform.googleapis.com/custom_model_training_nvidia_a100_gpus")
                if fault == "bad-machine":
                    return self._error(400, "INVALID_ARGUMENT", "Machine type \"a2-highgpu-8g\" is not "
                                       "supported in location us-central1.")
                refused = self._check_network(body.get("jobSpec") or {})
                if refused is not None:
                    return refused
                self._next += 1
                job_id = str(self._next)
                job = dict(body, name=f"{match.group(1)}/customJobs/{job_id}", state="JOB_STATE_PENDING",
                           createTime=_now(), updateTime=_now())
                self.jobs[job_id] = job
                if fault == "lost-answer":
                    return self._error(503, "UNAVAILABLE", "The service is currently unavailable.")
                return 200, job
            if match and method == "GET":
                query = parse_qs(url.query)
                wanted = dict(_FILTER.findall(query.get("filter", [""])[0]))
                found = [j for j in self.jobs.values()
                         if all((j.get("labels") or {}).get(k) == v for k, v in wanted.items())]
                found.sort(key=lambda j: j["createTime"], reverse=True)
                size = int(query.get("pageSize", ["100"])[0] or 100)
                return 200, {"customJobs": found[:size]}
            match = _JOB.match(url.path)
            if match:
                job = self.jobs.get(match.group(2))
                if job is None:
                    return self._error(404, "NOT_FOUND", f"CustomJob {url.path} is not found.")
                if match.group(3) and method == "POST":
                    if job["state"] in ENDED:
                        return self._error(400, "FAILED_PRECONDITION", "Cannot cancel a job that has ended.")
                    job["state"] = "JOB_STATE_CANCELLING"
                    threading.Timer(0.2, lambda: self.move(match.group(2), "JOB_STATE_CANCELLED")).start()
                    return 200, {}
                if method == "GET":
                    return 200, job
        return self._error(404, "NOT_FOUND", f"no route {method} {url.path}")


def autoscaling_metric_names() -> set[str]:
    """The metric names Vertex scales deployed models on, as aiplatform_v1's AutoscalingMetricSpec
    documents them (read from the installed library, not written here)."""
    from google.cloud import aiplatform_v1

    documented = aiplatform_v1.AutoscalingMetricSpec.__doc__ or ""
    return set(re.findall(r"``(aiplatform\.googleapis\.com/[\w/]+)``", documented))


def _check_deployed_model(deployed: dict[str, Any]) -> str | None:
    """Why Vertex refuses a deployModel's DeployedModel, or None: it must parse into the v1 proto
    (unknown fields refused), and its dedicatedResources must hold min <= max replicas (max
    defaults to min) and at most one autoscaling metric spec per documented metric, targets 1-100."""
    from google.cloud import aiplatform_v1
    from google.protobuf import json_format

    try:
        json_format.ParseDict(deployed, aiplatform_v1.DeployedModel.pb(aiplatform_v1.DeployedModel()),
                              ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        return f"Invalid JSON payload received. {exc}"
    resources = deployed.get("dedicatedResources") or {}
    low = int(resources.get("minReplicaCount") or 0)
    high = int(resources.get("maxReplicaCount") or low)
    if low < 1 or high < low:
        return f"dedicated_resources: min_replica_count {low} must be >= 1 and <= max_replica_count {high}."
    specs = resources.get("autoscalingMetricSpecs") or []
    names = [spec.get("metricName") for spec in specs]
    unknown = sorted(set(names) - autoscaling_metric_names())
    if unknown or len(set(names)) != len(names):
        return f"autoscaling_metric_specs: unsupported or repeated metric names {names}."
    if any(not 1 <= int(spec.get("target") or 60) <= 100 for spec in specs):
        return "autoscaling_metric_specs: target must be between 1 and 100."
    return None


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)
