"""A small local server speaking Cloud Logging v2 REST `entries:list`, as far as the Vertex
adapter's `logs()` uses it.

`POST /v2/entries:list` with `resourceNames`, `filter`, `orderBy` ("timestamp asc"), `pageSize`
and `pageToken`; answers `{"entries": [...], "nextPageToken": ...}` with LogEntry objects as
Vertex AI writes them for a CustomJob (resource type `ml_job`, labels `job_id` and `task_name`,
`textPayload`). The filter language is parsed for the subset the adapter sends (terms joined by
AND: `resource.type="..."`, `resource.labels.KEY="..."`, `timestamp>="..."`); any other term is
answered 400, as an unknown field would be, so a wrong filter fails the test instead of
matching everything. `faults` answers the next call with 429 or 403.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Any

from _json_http import JsonHttpServer

_TERM = re.compile(r'^(resource\.type|resource\.labels\.[\w-]+|timestamp)\s*(=|>=|>)\s*"([^"]*)"$')


class LoggingServer:
    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.faults: deque[str] = deque()
        self._lock = threading.Lock()
        self._clock = datetime(2026, 1, 1, tzinfo=timezone.utc)
        self._seq = 0

    def add(self, job_id: str, lines: list[str], task: str = "workerpool0-0", project: str = "my-project") -> None:
        """Log lines of one replica of a CustomJob, one microsecond apart, as Vertex writes them."""
        with self._lock:
            for line in lines:
                self._clock += timedelta(microseconds=1)
                self._seq += 1
                self.entries.append({
                    "logName": f"projects/{project}/logs/workerpool0-0",
                    "resource": {"type": "ml_job", "labels": {"job_id": job_id, "project_id": project,
                                                              "task_name": task}},
                    "timestamp": self._clock.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    "insertId": f"id{self._seq:06d}",
                    "severity": "INFO",
                    "textPayload": line,
                })

    def reset(self) -> None:
        with self._lock:
            self.entries.clear()
            self.requests.clear()
            self.faults.clear()

    @staticmethod
    def _matches(entry: dict[str, Any], terms: list[tuple[str, str, str]]) -> bool:
        for field, op, value in terms:
            if field == "timestamp":
                if not (entry["timestamp"] >= value if op == ">=" else entry["timestamp"] > value):
                    return False
            elif field == "resource.type":
                if entry["resource"]["type"] != value:
                    return False
            elif entry["resource"]["labels"].get(field.removeprefix("resource.labels.")) != value:
                return False
        return True

    def _list(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if not body.get("resourceNames"):
            return 400, {"error": {"code": 400, "message": "resourceNames is required", "status": "INVALID_ARGUMENT"}}
        terms = []
        for raw in (body.get("filter") or "").split(" AND "):
            match = _TERM.match(raw.strip())
            if not match:
                return 400, {"error": {"code": 400, "message": f"unsupported filter term {raw!r}",
                                       "status": "INVALID_ARGUMENT"}}
            terms.append(match.groups())
        projects = {name.removeprefix("projects/") for name in body["resourceNames"]}
        found = [e for e in self.entries if e["resource"]["labels"]["project_id"] in projects and self._matches(e, terms)]
        found.sort(key=lambda e: (e["timestamp"], e["insertId"]), reverse=body.get("orderBy") == "timestamp desc")
        start = int(body.get("pageToken") or 0)
        size = int(body.get("pageSize") or 50)
        page = found[start:start + size]
        answer: dict[str, Any] = {"entries": page} if page else {}
        if start + size < len(found):
            answer["nextPageToken"] = str(start + size)
        return 200, answer

    def _route(self, method: str, path: str, body: Any, headers: Any) -> tuple[int, Any]:
        if method != "POST" or path != "/v2/entries:list":
            return 404, {"error": {"code": 404, "message": f"no route {method} {path}", "status": "NOT_FOUND"}}
        with self._lock:
            self.requests.append(body or {})
            fault = self.faults.popleft() if self.faults else None
            if fault == "throttle":
                return 429, {"error": {"code": 429, "message": "Quota exceeded for quota metric 'Read requests'",
                                       "status": "RESOURCE_EXHAUSTED"}}
            if fault == "denied":
                return 403, {"error": {"code": 403, "message": "Permission 'logging.logEntries.list' denied on "
                                       "resource", "status": "PERMISSION_DENIED"}}
            return self._list(body or {})

    def start(self) -> "LoggingServer":
        self._httpd = JsonHttpServer(self._route)
        self.endpoint = self._httpd.url
        return self

    def stop(self) -> None:
        self._httpd.stop()
