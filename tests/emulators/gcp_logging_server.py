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

import json
import re
import threading
from collections import deque
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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

    def start(self) -> "LoggingServer":
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

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path != "/v2/entries:list":
                    self._send(404, {"error": {"code": 404, "message": f"no route {self.path}", "status": "NOT_FOUND"}})
                    return
                with server._lock:
                    server.requests.append(body)
                    fault = server.faults.popleft() if server.faults else None
                    if fault == "throttle":
                        self._send(429, {"error": {"code": 429, "message": "Quota exceeded for quota metric "
                                                   "'Read requests'", "status": "RESOURCE_EXHAUSTED"}})
                        return
                    if fault == "denied":
                        self._send(403, {"error": {"code": 403, "message": "Permission 'logging.logEntries.list' "
                                                   "denied on resource", "status": "PERMISSION_DENIED"}})
                        return
                    status, answer = server._list(body)
                self._send(status, answer)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
