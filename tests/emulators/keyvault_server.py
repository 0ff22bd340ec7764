"""A small local server speaking the Azure Key Vault secrets REST call a job makes, over HTTPS.

`azure.keyvault.secrets.SecretClient(vault_url, credential).get_secret(name, version)` sends
`GET /secrets/{name}/{version}?api-version=...` (`/secrets/{name}/?api-version=...` without a
version). Its challenge policy first sends the request with no token and expects a 401 carrying
`WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/<tenant>",
resource="https://vault.azure.net"`; it then asks its credential for a token for
`https://vault.azure.net/.default` in that tenant and sends the request again with it.

Answers: 200 `{"value", "id": "<vault>/secrets/name/version", "attributes": {...}}`; 401 (the
challenge) for a missing or wrong bearer token; 404 `{"error": {"code": "SecretNotFound"}}`;
403 `{"error": {"code": "Forbidden", "innererror": {"code": "ForbiddenByRbac"}}}` for a secret
the test `deny`s. TLS: a self-signed certificate for 127.0.0.1 made at start (the same helper as
the ARM server); clients trust it through `REQUESTS_CA_BUNDLE=<server.ca_file>`.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from _json_http import JsonHttpServer
from azureml_server import _self_signed_certificate

_SECRET = re.compile(r"^/secrets/([A-Za-z0-9-]+)(?:/([A-Za-z0-9]*))?/?$")
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
RESOURCE = "https://vault.azure.net"


class KeyVaultServer:
    def __init__(self, token: str = "test-kv-token") -> None:
        self.token = token
        self.secrets: dict[str, list[tuple[str, str]]] = {}  # name -> [(version, value)], newest last
        self.denied: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Authorization
        self._lock = threading.Lock()

    def start(self) -> "KeyVaultServer":
        self.ca_file = _self_signed_certificate()
        self._http = JsonHttpServer(self._route, cert_file=self.ca_file)
        self.url = self._http.url
        self.endpoint = self.url + "/"
        return self

    def stop(self) -> None:
        self._http.stop()

    def reset(self) -> None:
        with self._lock:
            self.secrets.clear()
            self.denied.clear()
            self.requests.clear()

    def set_secret(self, name: str, value: str) -> str:
        """Add a new version of the secret (made if new); returns the version id."""
        version = uuid.uuid4().hex
        with self._lock:
            self.secrets.setdefault(name, []).append((version, value))
        return version

    def deny(self, name: str) -> None:
        self.denied.add(name)

    def _route(self, method: str, path: str, body: Any, headers: Any) -> tuple:
        url = urlparse(path)
        authorization = headers.get("Authorization")
        with self._lock:
            self.requests.append((method, unquote(url.path), authorization))
        if authorization != f"Bearer {self.token}":
            challenge = f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", resource="{RESOURCE}"'
            return 401, {"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP "
                                                                      "token."}}, {"WWW-Authenticate": challenge}
        match = _SECRET.match(unquote(url.path))
        if method != "GET" or not match or not parse_qs(url.query).get("api-version"):
            return 400, {"error": {"code": "BadParameter", "message": f"unsupported request {method} {url.path}"}}
        name, version = match.groups()
        with self._lock:
            if name in self.denied:
                return 403, {"error": {"code": "Forbidden", "message": "Caller is not authorized to perform action "
                                       "on resource. Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'",
                                       "innererror": {"code": "ForbiddenByRbac"}}}
            versions = self.secrets.get(name, [])
            found = [v for v in versions if v[0] == version] if version else versions[-1:]
        if not found:
            what = f"A secret with (name/id) {name}" + (f"/{version}" if version else "")
            return 404, {"error": {"code": "SecretNotFound", "message": f"{what} was not found in this key vault."}}
        version_id, value = found[-1]
        now = int(time.time())
        return 200, {"value": value, "id": f"{self.url}/secrets/{name}/{version_id}",
                     "attributes": {"enabled": True, "created": now, "updated": now,
                                    "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90},
                     "tags": {}}
