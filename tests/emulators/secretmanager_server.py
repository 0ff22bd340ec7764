"""A small local server speaking the GCP Secret Manager v1 REST call a job makes: access a version.

`secretmanager_v1.SecretManagerServiceClient(transport="rest")` with AnonymousCredentials and
`api_endpoint="http://127.0.0.1:PORT"` sends (from the library's rest transport, `_BaseAccessSecretVersion`):

    GET /v1/projects/P/secrets/S/versions/V:access?$alt=json;enum-encoding=int

and reads `{"name": "projects/<number>/secrets/S/versions/N", "payload": {"data": <base64>,
"dataCrc32c": "<int64 as a string>"}}`. `V` is a version number or `latest` (the newest enabled
version). Errors are Google's JSON: 404 NOT_FOUND (no secret or version), 400 FAILED_PRECONDITION
(a disabled version), 403 PERMISSION_DENIED (a secret the test `deny`s). `corrupt` sends a wrong
CRC32C for the next answers; `faults` holds (HTTP code, status) answers for the next requests
(401 UNAUTHENTICATED, 503 UNAVAILABLE, ...). Every request is recorded as (method, path).
"""

from __future__ import annotations

import base64
import re
import threading
from collections import deque
from typing import Any
from urllib.parse import unquote, urlparse

import google_crc32c
from _json_http import JsonHttpServer

_ACCESS = re.compile(r"^/v1/projects/([^/]+)/secrets/([^/]+)/versions/([^/:]+):access$")
PROJECT_NUMBER = "123456789012"  # the real API answers with the project's number, not its id


def _error(code: int, status: str, message: str) -> tuple[int, dict[str, Any]]:
    return code, {"error": {"code": code, "message": message, "status": status}}


class SecretManagerServer:
    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.denied: set[tuple[str, str]] = set()
        self.requests: list[tuple[str, str]] = []
        self.corrupt = False
        self.faults: deque[tuple[int, str]] = deque()
        self._lock = threading.Lock()

    def start(self) -> "SecretManagerServer":
        self._http = JsonHttpServer(self._route)
        self.url = self._http.url
        return self

    def stop(self) -> None:
        self._http.stop()

    def reset(self) -> None:
        with self._lock:
            self.secrets.clear()
            self.denied.clear()
            self.requests.clear()
            self.faults.clear()
            self.corrupt = False

    def add_version(self, project: str, secret: str, data: str | bytes, enabled: bool = True) -> int:
        """Add a version to the secret (made if new); returns its number (1, 2, ...)."""
        with self._lock:
            versions = self.secrets.setdefault((project, secret), [])
            versions.append({"data": data.encode() if isinstance(data, str) else data, "enabled": enabled})
            return len(versions)

    def deny(self, project: str, secret: str) -> None:
        self.denied.add((project, secret))

    def _route(self, method: str, path: str, body: Any, headers: Any) -> tuple:
        url = urlparse(path)
        with self._lock:
            self.requests.append((method, unquote(url.path)))
            fault = self.faults.popleft() if self.faults else None
        if fault:
            return _error(fault[0], fault[1], f"injected {fault[1]}")
        match = _ACCESS.match(unquote(url.path))
        if method != "GET" or not match:
            return _error(404, "NOT_FOUND", f"Method not found: {method} {url.path}")
        project, secret, version = match.groups()
        with self._lock:
            if (project, secret) in self.denied:
                return _error(403, "PERMISSION_DENIED", f"Permission 'secretmanager.versions.access' denied for "
                                                        f"resource 'projects/{project}/secrets/{secret}/versions/{version}'")
            versions = self.secrets.get((project, secret))
            if versions is None:
                return _error(404, "NOT_FOUND", f"Secret [projects/{PROJECT_NUMBER}/secrets/{secret}] not found or "
                                                "has no versions.")
            if version == "latest":
                enabled = [n for n, v in enumerate(versions, 1) if v["enabled"]]
                if not enabled:
                    return _error(404, "NOT_FOUND", f"Secret [projects/{PROJECT_NUMBER}/secrets/{secret}] not found "
                                                    "or has no versions.")
                number = enabled[-1]
            elif version.isdigit() and 1 <= int(version) <= len(versions):
                number = int(version)
            else:
                return _error(404, "NOT_FOUND", f"Secret Version [projects/{PROJECT_NUMBER}/secrets/{secret}/"
                                                f"versions/{version}] not found.")
            entry = versions[number - 1]
            if not entry["enabled"]:
                return _error(400, "FAILED_PRECONDITION",
                              f"Secret Version [projects/{PROJECT_NUMBER}/secrets/{secret}/versions/{number}] "
                              "is in DISABLED state.")
            crc = google_crc32c.value(entry["data"]) ^ (1 if self.corrupt else 0)
        return 200, {"name": f"projects/{PROJECT_NUMBER}/secrets/{secret}/versions/{number}",
                     "payload": {"data": base64.b64encode(entry["data"]).decode(), "dataCrc32c": str(crc)}}
