"""A small local server speaking the Azure Resource Manager surface that `azure-ai-ml`'s MLClient
uses for command jobs, over HTTPS on 127.0.0.1 (MLClient reaches it through custom cloud
metadata: `cloud_metadata={"resource_manager": "https://127.0.0.1:PORT/", ...}`).

TLS is required: azure-core's bearer-token policy refuses to send a token over plain HTTP. The
server makes a self-signed certificate for 127.0.0.1 at start; clients trust it through
`REQUESTS_CA_BUNDLE=<server.ca_file>` (azure-core's requests transport honours it).

Routes, all under `/subscriptions/S/resourceGroups/RG/providers/Microsoft.MachineLearningServices/workspaces/W`:
- `GET /computes/NAME`: the AmlCompute cluster (`clusters`), 404 for others;
- `GET|PUT /environments/NAME/versions/V`: environment versions (image only);
- `PUT /jobs/NAME`: create a command job (409 Conflict if the name exists);
  `GET /jobs/NAME`, `GET /jobs` (list, one page), `POST /jobs/NAME/cancel` (202, then
  CancelRequested and Canceled a moment later; 400 for an ended job).
Managed online endpoints (for the deploy adapter): `GET|PUT /onlineEndpoints/EP` (the endpoint must
exist first: `add_endpoint`, as the Pulumi program makes it; a PUT changes `traffic`, which must
name existing deployments and sum to 100 or be empty), `GET /onlineEndpoints/EP/deployments`,
`GET|PUT|DELETE /onlineEndpoints/EP/deployments/NAME` (a deployment with traffic cannot be
deleted). Writes finish at once (`provisioningState` Succeeded, 200/201 without polling headers).
Autoscale settings (`GET|PUT|DELETE /subscriptions/S/resourceGroups/RG/providers/Microsoft.Insights/
autoscalesettings/NAME?api-version=2022-10-01`, kept in `autoscale`): a PUT body is checked against
ARM's schema (tests/emulators/azure_autoscale.py), its target and metric resources must exist;
a DELETE answers 200, or 204 when there was none.
Endpoint and deployment names follow Azure ML's rule (3-32 characters, a letter first, letters,
digits and hyphens, a letter or digit last): a PUT naming another is answered 400 in ARM's error
envelope (`{"error": {"code": "BadArgument", "message", "details": [], "additionalInfo": []}}`),
as Azure refuses it; the code and wording follow azure-ai-ml's own validator, not a captured
Azure answer. `add_endpoint` refuses such a name too (Azure would not have made the endpoint).

Run logs, the way `MLClient.jobs.stream` reads them: `GET /workspaces/W` names a `discoveryUrl`;
`GET /discovery` gives the `api` (run history) base URL, the same server; `GET /history/v1.0/
subscriptions/S/.../workspaces/W/runs/NAME/details` lists the run's `logFiles` as SAS URLs
(`/logs/NAME/<file>?sig=...`, served without a bearer token, like Blob storage). `write_logs`
appends lines to a job's `user_logs/std_log.txt` (or another file).
Every other request but discovery must carry `Authorization: Bearer ...` (401 otherwise).

Jobs start `NotStarted` and move only when the test says (`move`). `faults` answers the next job
PUT with: `throttle` (429 with Retry-After), `unavailable` (503), `quota` (400 QuotaExceeded),
`bad-vm-size` (400 InvalidVmSize), `lost-answer` (creates the job, then answers 503), or `race`
(creates the job as another client would, then answers this PUT 409 Conflict).
"""

from __future__ import annotations

import datetime as _dt
import re
import tempfile
import threading
from collections import deque
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlparse

import azure_autoscale
from _json_http import JsonHttpServer

_WS = r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.MachineLearningServices/workspaces/([^/]+)"
_JOB = re.compile(_WS + r"/jobs/([^/]+?)(/cancel)?$", re.IGNORECASE)
_JOBS = re.compile(_WS + r"/jobs$", re.IGNORECASE)
_COMPUTE = re.compile(_WS + r"/computes/([^/]+)$", re.IGNORECASE)
_ENV = re.compile(_WS + r"/environments/([^/]+)/versions/([^/]+)$", re.IGNORECASE)
_WORKSPACE = re.compile(_WS + r"$", re.IGNORECASE)
_RUN_DETAILS = re.compile(r"^/history/v1\.0" + _WS[1:] + r"/runs/([^/]+)/details$", re.IGNORECASE)
_LOG = re.compile(r"^/logs/([^/]+)/(.+)$")
_ENDPOINT = re.compile(_WS + r"/onlineEndpoints/([^/]+)$", re.IGNORECASE)
_DEPLOYMENTS = re.compile(_WS + r"/onlineEndpoints/([^/]+)/deployments$", re.IGNORECASE)
_DEPLOYMENT = re.compile(_WS + r"/onlineEndpoints/([^/]+)/deployments/([^/]+)$", re.IGNORECASE)
ENDED = {"Completed", "Failed", "Canceled"}
# Azure ML's rule for online endpoint and deployment names (azure-ai-ml: EndpointConfigurations).
_NAME = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")


def name_problem(name: str, kind: str) -> str | None:
    """Why Azure refuses `name` for an online endpoint or deployment (`kind`), or None."""
    if not 3 <= len(name) <= 32:
        return f"The name for {kind} must be at least 3 and at most 32 characters long; {name!r} has {len(name)}."
    if not _NAME.match(name):
        return (f"The name for {kind} must start with an upper- or lowercase letter and only consist of '-' "
                f"character, upper- or lowercase letters or digits; {name!r} does not.")
    return None


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AzureMLServer:
    def __init__(self, retry_after_s: int = 1) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.environments: dict[str, dict[str, Any]] = {}
        self.clusters: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.faults: deque[str] = deque()
        self.create_calls = 0
        self.retry_after_s = retry_after_s
        self.logs: dict[str, dict[str, str]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.deployments: dict[str, dict[str, dict[str, Any]]] = {}
        self.autoscale: dict[str, dict[str, Any]] = {}  # setting name -> the setting
        self._lock = threading.RLock()

    def _route(self, method: str, path: str, body: Any, headers: Any) -> tuple[int, Any, dict[str, str]]:
        if urlparse(path).path.startswith("/logs/"):
            status, text = self.log_blob(path)
            return status, text, {}
        if urlparse(path).path != "/discovery" and not (headers.get("Authorization") or "").startswith("Bearer "):
            status, payload, extra = self._error(401, "AuthenticationFailed", "No bearer token.")
        else:
            status, payload, extra = self.handle(method, path, body)
        return status, payload, {"x-ms-request-id": "00000000-0000-0000-0000-000000000000", **extra}

    def start(self) -> "AzureMLServer":
        self.ca_file = _self_signed_certificate()
        self._http = JsonHttpServer(self._route, cert_file=self.ca_file)
        self.endpoint = self._http.url + "/"
        return self

    def stop(self) -> None:
        self._http.stop()

    def reset(self) -> None:
        with self._lock:
            self.jobs.clear()
            self.environments.clear()
            self.requests.clear()
            self.faults.clear()
            self.logs.clear()
            self.endpoints.clear()
            self.deployments.clear()
            self.autoscale.clear()
            self.create_calls = 0

    def add_cluster(self, name: str, vm_size: str, priority: str = "LowPriority", max_nodes: int = 2) -> None:
        self.clusters[name] = {"vmSize": vm_size, "vmPriority": priority, "maxNodes": max_nodes}

    def add_endpoint(self, name: str) -> None:
        """The managed online endpoint as the Pulumi program creates it (key auth, no deployments)."""
        problem = name_problem(name, "an endpoint")
        if problem:
            raise ValueError(problem)
        path = (f"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/sw-dev/providers/"
                f"Microsoft.MachineLearningServices/workspaces/sw-dev-ws/onlineEndpoints/{name}")
        self.endpoints[name] = {
            "id": path, "name": name, "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
            "location": "eastus", "kind": "Managed", "identity": {"type": "SystemAssigned"}, "tags": {},
            "properties": {"authMode": "Key", "traffic": {}, "provisioningState": "Succeeded", "properties": {},
                           "publicNetworkAccess": "Disabled", "description": f"stackwise endpoint {name}",
                           "scoringUri": f"https://{name}.eastus.inference.ml.azure.com/score"},
            "systemData": self._system_data(),
        }
        self.deployments[name] = {}

    def _endpoints(self, method: str, path: str, body: Any) -> tuple[int, Any, dict[str, str]] | None:
        match = _ENDPOINT.match(path)
        if match:
            problem = name_problem(match.group(4), "an endpoint") if method == "PUT" else None
            if problem:
                return self._error(400, "BadArgument", problem)
            endpoint = self.endpoints.get(match.group(4))
            if endpoint is None:
                return self._error(404, "ResourceNotFound", f"Online endpoint {match.group(4)} not found.")
            if method == "GET":
                return 200, endpoint, {}
            if method == "PUT":
                traffic = {k: int(v) for k, v in (((body or {}).get("properties") or {}).get("traffic") or {}).items()}
                unknown = set(traffic) - set(self.deployments[match.group(4)])
                if unknown:
                    return self._error(400, "BadArgument", f"Traffic names deployments that do not exist: {sorted(unknown)}")
                if traffic and sum(traffic.values()) != 100:
                    return self._error(400, "BadArgument", "Traffic values must sum to 100.")
                endpoint["properties"]["traffic"] = traffic
                endpoint["tags"] = dict((body or {}).get("tags") or endpoint["tags"])
                endpoint["systemData"]["lastModifiedAt"] = _now()
                return 200, endpoint, {}
        match = _DEPLOYMENTS.match(path)
        if match and method == "GET":
            if match.group(4) not in self.endpoints:
                return self._error(404, "ResourceNotFound", f"Online endpoint {match.group(4)} not found.")
            return 200, {"value": list(self.deployments[match.group(4)].values())}, {}
        match = _DEPLOYMENT.match(path)
        if match:
            ep, name = match.group(4), match.group(5)
            if ep not in self.endpoints:
                return self._error(404, "ResourceNotFound", f"Online endpoint {ep} not found.")
            found = self.deployments[ep].get(name)
            if method == "GET":
                return (200, found, {}) if found else self._error(404, "ResourceNotFound", f"Deployment {name} not found.")
            if method == "PUT":
                problem = name_problem(name, "a deployment")
                if problem:
                    return self._error(400, "BadArgument", problem)
                properties = dict((body or {}).get("properties") or {})
                properties["provisioningState"] = "Succeeded"
                properties.setdefault("properties", {})
                properties.setdefault("scaleSettings", {"scaleType": "Default"})  # what Azure fills in
                self.deployments[ep][name] = {
                    "id": path, "name": name, "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments",
                    "location": "eastus", "kind": "Managed", "tags": dict((body or {}).get("tags") or {}),
                    "sku": (body or {}).get("sku") or {"name": "Default", "capacity": 1},
                    "properties": properties, "systemData": self._system_data()}
                return (200 if found else 201), self.deployments[ep][name], {}
            if method == "DELETE":
                if found is None:
                    return 204, None, {}
                if self.endpoints[ep]["properties"]["traffic"].get(name):
                    return self._error(400, "BadArgument", f"Deployment {name} still receives traffic.")
                del self.deployments[ep][name]
                self.endpoints[ep]["properties"]["traffic"].pop(name, None)
                return 200, None, {}
        return None

    def _exists(self, resource_id: str) -> bool:
        """Whether an online endpoint or deployment with this ARM id is on the server."""
        for name, endpoint in self.endpoints.items():
            if resource_id.lower() == endpoint["id"].lower():
                return True
            if any(resource_id.lower() == d["id"].lower() for d in self.deployments[name].values()):
                return True
        return False

    def _autoscale(self, method: str, url: Any, body: Any) -> tuple[int, Any, dict[str, str]] | None:
        match = azure_autoscale.PATH.match(url.path)
        if not match:
            return None
        if f"api-version={azure_autoscale.API_VERSION}" not in url.query:
            return self._error(400, "InvalidApiVersionParameter", f"Use api-version {azure_autoscale.API_VERSION}.")
        name, found = match.group(3), self.autoscale.get(match.group(3))
        if method == "GET":
            return (200, found, {}) if found else self._error(404, "ResourceNotFound", f"Autoscale {name} not found.")
        if method == "DELETE":
            return (200, None, {}) if self.autoscale.pop(name, None) else (204, None, {})
        if method == "PUT":
            problems = azure_autoscale.problems(body, self._exists)
            if problems:
                return self._error(400, "BadRequest", "; ".join(problems))
            self.autoscale[name] = {**body, "id": url.path, "name": name,
                                    "type": "Microsoft.Insights/autoscaleSettings", "systemData": self._system_data()}
            return (200 if found else 201), self.autoscale[name], {}
        return None

    def write_logs(self, name: str, lines: list[str], file: str = "user_logs/std_log.txt") -> None:
        with self._lock:
            files = self.logs.setdefault(name, {})
            files[file] = files.get(file, "") + "".join(line + "\n" for line in lines)

    def log_blob(self, raw_path: str) -> tuple[int, str]:
        url = urlparse(raw_path)
        match = _LOG.match(url.path)
        if not match or "sig=" not in url.query:
            return 403, "AuthenticationFailed: no SAS signature"
        text = self.logs.get(match.group(1), {}).get(match.group(2))
        return (200, text) if text is not None else (404, "BlobNotFound")

    def move(self, name: str, status: str) -> None:
        with self._lock:
            job = self.jobs.get(name)
            if job is None:
                return
            job["properties"]["status"] = status
            job["systemData"]["lastModifiedAt"] = _now()

    @staticmethod
    def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None
               ) -> tuple[int, Any, dict[str, str]]:
        body = {"error": {"code": code, "message": message, "details": [], "additionalInfo": []}}
        return status, body, headers or {}

    @staticmethod
    def _system_data() -> dict[str, Any]:
        return {"createdAt": _now(), "createdBy": "stackwise-test", "createdByType": "User",
                "lastModifiedAt": _now(), "lastModifiedBy": "stackwise-test", "lastModifiedByType": "User"}

    def handle(self, method: str, raw_path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        url = urlparse(raw_path)
        path = url.path
        self.requests.append((method, path, body))
        with self._lock:
            answer = self._endpoints(method, path, body) or self._autoscale(method, url, body)
            if answer is not None:
                return answer
            match = _WORKSPACE.match(path)
            if match and method == "GET":
                return 200, {
                    "id": path, "name": match.group(3), "type": "Microsoft.MachineLearningServices/workspaces",
                    "location": "eastus", "identity": {"type": "SystemAssigned"}, "sku": {"name": "Basic", "tier": "Basic"},
                    "properties": {"friendlyName": match.group(3), "discoveryUrl": f"{self.endpoint}discovery",
                                   "workspaceId": "11111111-1111-1111-1111-111111111111",
                                   "provisioningState": "Succeeded", "publicNetworkAccess": "Disabled"},
                }, {}
            if path == "/discovery" and method == "GET":
                base = self.endpoint.rstrip("/")
                return 200, {"api": base, "catalog": base, "experimentation": base, "history": base,
                             "modelmanagement": base, "pipelines": base, "studio": base}, {}
            match = _RUN_DETAILS.match(path)
            if match and method == "GET":
                name = match.group(4)
                job = self.jobs.get(name)
                if job is None:
                    return self._error(404, "RunNotFound", f"Run {name} was not found.")
                files = {f: f"{self.endpoint}logs/{name}/{f}?sv=2021-08-06&sr=b&sig=test" for f in self.logs.get(name, {})}
                return 200, {"runId": name, "status": job["properties"]["status"], "logFiles": files,
                             "target": job["properties"].get("computeId", "serverless")}, {}
            match = _COMPUTE.match(path)
            if match and method == "GET":
                cluster = self.clusters.get(match.group(4))
                if cluster is None:
                    return self._error(404, "ResourceNotFound", f"Compute {match.group(4)} not found.")
                return 200, {
                    "id": path, "name": match.group(4), "type": "Microsoft.MachineLearningServices/workspaces/computes",
                    "location": "eastus",
                    "properties": {"computeType": "AmlCompute", "provisioningState": "Succeeded",
                                   "properties": {"vmSize": cluster["vmSize"], "vmPriority": cluster["vmPriority"],
                                                  "scaleSettings": {"minNodeCount": 0,
                                                                    "maxNodeCount": cluster["maxNodes"],
                                                                    "nodeIdleTimeBeforeScaleDown": "PT5M"}}},
                }, {}
            match = _ENV.match(path)
            if match:
                key = f"{match.group(4)}:{match.group(5)}"
                if method == "PUT":
                    properties = dict((body or {}).get("properties") or {})
                    existing = self.environments.get(key)
                    if existing is not None and existing["properties"].get("image") != properties.get("image"):
                        return self._error(409, "Conflict", f"Environment {key} exists with other contents.")
                    self.environments[key] = {"id": path, "name": match.group(5),
                                              "type": "Microsoft.MachineLearningServices/workspaces/environments/versions",
                                              "properties": properties, "systemData": self._system_data()}
                    return (201 if existing is None else 200), self.environments[key], {}
                if method == "GET":
                    found = self.environments.get(key)
                    return (200, found, {}) if found else self._error(404, "ResourceNotFound", f"{key} not found.")
            match = _JOBS.match(path)
            if match and method == "GET":
                found = sorted(self.jobs.values(), key=lambda j: j["systemData"]["createdAt"], reverse=True)
                return 200, {"value": found}, {}
            match = _JOB.match(path)
            if match:
                name, cancel = match.group(4), match.group(5)
                job = self.jobs.get(name)
                if method == "PUT":
                    return self._create(path, name, body)
                if job is None:
                    return self._error(404, "UserError", f"Job {name} not found.")
                if cancel and method == "POST":
                    if job["properties"]["status"] in ENDED:
                        return self._error(400, "UserError", f"Job {name} has already ended "
                                           f"({job['properties']['status']}); it cannot be canceled.")
                    self.move(name, "CancelRequested")
                    threading.Timer(0.2, lambda: self.move(name, "Canceled")).start()
                    return 202, None, {}
                if method == "GET":
                    return 200, job, {}
        return self._error(404, "NoRoute", f"no route {method} {path}")

    def _create(self, path: str, name: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        self.create_calls += 1
        fault = self.faults.popleft() if self.faults else None
        if fault == "throttle":
            return self._error(429, "TooManyRequests", "The request is being throttled.",
                               {"Retry-After": str(self.retry_after_s)})
        if fault == "unavailable":
            return self._error(503, "ServiceUnavailable", "The service is temporarily unavailable.")
        if fault == "quota":
            return self._error(400, "QuotaExceeded", "Not enough quota available for Standard NDASv4_A100 Family "
                               "Cluster Dedicated vCPUs in eastus: requested 192, available 0.")
        if fault == "bad-vm-size":
            return self._error(400, "InvalidVmSize", "The specified VM size Standard_ND96asr_v4 is not supported "
                               "in region eastus.")
        if name in self.jobs:
            return self._error(409, "Conflict", f"Job {name} already exists.")
        properties = dict((body or {}).get("properties") or {})
        if properties.get("jobType") != "Command" or not properties.get("environmentId"):
            return self._error(400, "UserError", "A command job needs jobType Command and an environmentId.")
        env_ref = properties["environmentId"].rsplit("/environments/", 1)[-1].replace("/versions/", ":")
        if env_ref not in self.environments:
            return self._error(400, "UserError", f"Environment {env_ref} does not exist.")
        properties["status"] = "NotStarted"
        job = {"id": path, "name": name, "type": "Microsoft.MachineLearningServices/workspaces/jobs",
               "properties": properties, "systemData": self._system_data()}
        self.jobs[name] = job
        if fault == "race":  # another client's PUT of the same name landed first
            return self._error(409, "Conflict", f"Job {name} already exists.")
        if fault == "lost-answer":
            return self._error(503, "ServiceUnavailable", "The service is temporarily unavailable.")
        return 201, job, {}


def _self_signed_certificate() -> str:
    """A PEM file holding a fresh key and a self-signed certificate for 127.0.0.1 and localhost."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = _dt.datetime.now(_dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(now + _dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    handle = tempfile.NamedTemporaryFile("wb", prefix="azureml-server-", suffix=".pem", delete=False)
    with handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    return handle.name
