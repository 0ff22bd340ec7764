"""A small local server speaking Vertex AI v1 REST for CustomJobs, as `aiplatform_v1`'s REST
transport calls it: create, get, list (with `labels.KEY="VALUE"` filters), cancel.

Jobs start JOB_STATE_PENDING and move only when the test says (`move`); cancel goes
CANCELLING, then CANCELLED a moment later. `faults` answers the next create with 429 or 503,
or creates the job and then answers 503 (the answer lost).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

_JOB = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+)/customJobs/(\d+)(:cancel)?$")
_JOBS = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+)/customJobs$")
_FILTER = re.compile(r'labels\.([\w-]+)\s*=\s*"([^"]*)"')
ENDED = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class VertexServer:
    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.faults: deque[str] = deque()
        self.create_calls = 0
        self._next = 1000
        self._lock = threading.Lock()

    def start(self) -> "VertexServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(*server.handle("GET", self.path, None))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                self._send(*server.handle("POST", self.path, body))

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._http.server_address[1]}"
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._http.shutdown()

    def reset(self) -> None:
        with self._lock:
            self.jobs.clear()
            self.requests.clear()
            self.faults.clear()
            self.create_calls = 0

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

    def handle(self, method: str, raw_path: str, body: Any) -> tuple[int, Any]:
        url = urlparse(raw_path)
        self.requests.append((method, url.path, body))
        with self._lock:
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


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)
