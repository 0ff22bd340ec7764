"""A stand-in for a Kubernetes API server: real HTTP on 127.0.0.1 that the official `kubernetes`
client talks to (no cluster can run here: no kubelet, k3s or kind on this machine).

It speaks the REST paths and answers of the objects stackwise uses, for any resource type:
  /api/v1/namespaces/{ns}/{plural}[/{name}[/{sub}]]        core, namespaced (pods, services, ...)
  /api/v1/{plural}[/{name}]                                core, cluster-scoped (nodes, namespaces)
  /apis/{group}/{version}/namespaces/{ns}/{plural}[/...]   named groups (batch/v1 jobs, apps/v1
                                                           deployments, custom resources)
with GET, LIST (`labelSelector`: `k=v`, `k!=v`, `k`, `!k`, `k in (a,b)`), POST (409 AlreadyExists,
`dryRun=All`), PUT (409 on a stale resourceVersion), PATCH (JSON merge patch; a strategic merge
patch is applied the same way, which is exact for maps and scalars, the only things stackwise
patches), DELETE (`propagationPolicy` Background/Foreground cascades to objects whose
ownerReferences name the deleted uid and to a Job's pods; Orphan keeps them), the `status`
subresource and `pods/{name}/log` (`timestamps`, `sinceTime`, `tailLines`). Errors are `Status`
objects with the API's reasons (NotFound, AlreadyExists, Conflict, Forbidden, Invalid).

Every created or replaced object is validated first (`validator(obj)` raising with a message: the
tests pass tests/kube_validate.py's, which uses the Kubernetes OpenAPI schemas of kubernetes-validate
and the upstream CRD schemas); a refused one is a 422 Invalid, as a real API server answers.

Tests change the world through the same store: `forbid(namespace)` makes every call in a
namespace a 403, `fail_next(n, status)` answers the next n calls with an error status, `on_create`
hooks let a runner (tests/emulators/kube_runner.py) play the Job controller and kubelet.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import threading
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from _json_http import JsonHttpServer

# plural -> kind for the types stackwise sends or reads; other plurals get a kind derived from the body.
KINDS = {"jobs": "Job", "pods": "Pod", "services": "Service", "nodes": "Node", "namespaces": "Namespace",
         "deployments": "Deployment", "configmaps": "ConfigMap", "events": "Event", "secrets": "Secret",
         "serviceaccounts": "ServiceAccount", "httproutes": "HTTPRoute", "scaledobjects": "ScaledObject",
         "horizontalpodautoscalers": "HorizontalPodAutoscaler", "localqueues": "LocalQueue",
         "poddisruptionbudgets": "PodDisruptionBudget", "podmonitors": "PodMonitor"}
CLUSTER_SCOPED = {"nodes", "namespaces"}

Key = tuple[str, str, str, str]  # (apiVersion, plural, namespace or "", name)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_body(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": details or {}, "code": code}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _selector_matches(selector: str, labels: dict[str, str]) -> bool:
    for term in [t.strip() for t in re.split(r",(?![^()]*\))", selector or "") if t.strip()]:
        if m := re.fullmatch(r"([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)", term):
            values = {v.strip() for v in m[3].split(",")}
            inside = labels.get(m[1]) in values
            if (m[2] == "in") != inside:
                return False
        elif "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key.strip().rstrip("=")) != value.strip().lstrip("="):
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class KubeServer:
    def __init__(self, validator: Callable[[dict], None] | None = None) -> None:
        self.validator = validator
        self.objects: dict[Key, dict] = {}
        self.logs: dict[tuple[str, str], list[tuple[str, str]]] = {}  # (ns, pod) -> [(timestamp, line)]
        self.requests: list[tuple[str, str, Any]] = []  # (method, path with query, body) of every call
        self.forbidden: set[str] = set()
        self._failures: list[int] = []
        self._version = 0
        self._lock = threading.RLock()
        self._hooks: dict[str, list[Callable[[dict], None]]] = {}
        self._http: JsonHttpServer | None = None
        self.url = ""

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "KubeServer":
        self._http = JsonHttpServer(self._route)
        self.url = self._http.url
        return self

    def stop(self) -> None:
        if self._http:
            self._http.stop()

    def reset(self) -> None:
        with self._lock:
            self.objects.clear()
            self.logs.clear()
            self.requests.clear()
            self.forbidden.clear()
            self._failures.clear()
            self._hooks.clear()

    def kubeconfig(self, path: str, context: str = "test", namespace: str = "default", token: str = "s3cr3t-token") -> str:
        """Write a kubeconfig whose context `context` points at this server; returns its path."""
        import yaml

        doc = {"apiVersion": "v1", "kind": "Config", "current-context": context,
               "clusters": [{"name": "emulated", "cluster": {"server": self.url}}],
               "users": [{"name": "tester", "user": {"token": token}}],
               "contexts": [{"name": context, "context": {"cluster": "emulated", "user": "tester",
                                                          "namespace": namespace}}]}
        with open(path, "w", encoding="utf-8") as handle:
            yaml.safe_dump(doc, handle)
        return path

    # -- what tests use --------------------------------------------------------------------------
    def forbid(self, namespace: str) -> None:
        self.forbidden.add(namespace)

    def fail_next(self, count: int, status: int = 503) -> None:
        self._failures.extend([status] * count)

    def on_create(self, kind: str, hook: Callable[[dict], None]) -> None:
        """Call `hook(object)` (in a thread of its own) after every create of `kind`."""
        self._hooks.setdefault(kind, []).append(hook)

    def put_object(self, obj: dict, plural: str | None = None) -> dict:
        """Store an object as the cluster's own controllers would (no validation, no hooks)."""
        with self._lock:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now())
            meta["resourceVersion"] = self._next()
            plural = plural or self._plural(obj["kind"])
            self.objects[(obj["apiVersion"], plural, meta.get("namespace", ""), meta["name"])] = obj
            return copy.deepcopy(obj)

    def get(self, api_version: str, plural: str, namespace: str, name: str) -> dict | None:
        with self._lock:
            found = self.objects.get((api_version, plural, namespace, name))
            return copy.deepcopy(found) if found else None

    def find(self, kind: str, namespace: str | None = None, selector: str = "") -> list[dict]:
        with self._lock:
            return [copy.deepcopy(o) for (api, plural, ns, _), o in sorted(self.objects.items())
                    if o.get("kind") == kind and (namespace is None or ns == namespace)
                    and _selector_matches(selector, o["metadata"].get("labels") or {})]

    def update_status(self, api_version: str, plural: str, namespace: str, name: str, status: dict) -> None:
        with self._lock:
            obj = self.objects.get((api_version, plural, namespace, name))
            if obj is not None:
                obj["status"] = merge_patch(obj.get("status") or {}, status)
                obj["metadata"]["resourceVersion"] = self._next()

    def append_log(self, namespace: str, pod: str, line: str) -> None:
        with self._lock:
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            self.logs.setdefault((namespace, pod), []).append((stamp, line))

    # -- the API -----------------------------------------------------------------------------------
    def _next(self) -> str:
        self._version += 1
        return str(self._version)

    @staticmethod
    def _plural(kind: str) -> str:
        for plural, known in KINDS.items():
            if known == kind:
                return plural
        return kind.lower() + "s"

    def _parse(self, path: str) -> tuple[str, str, str, str, str] | None:
        """(apiVersion, plural, namespace, name, subresource) of a request path."""
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            api, rest = "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            api, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            return None
        namespace = ""
        if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        if not rest:
            return None
        plural = rest[0]
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        return api, plural, namespace, name, sub

    def _route(self, method: str, raw_path: str, body: Any, headers: Any) -> tuple:
        url = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with self._lock:
            self.requests.append((method, raw_path, copy.deepcopy(body)))
            if self._failures:
                code = self._failures.pop(0)
                return code, status_body(code, "ServiceUnavailable" if code >= 500 else "TooManyRequests",
                                          "the server is currently unable to handle the request")
        parsed = self._parse(url.path)
        if parsed is None:
            return 404, status_body(404, "NotFound", f"the server could not find the requested resource {url.path}")
        api, plural, namespace, name, sub = parsed
        if namespace and namespace in self.forbidden:
            verb = {"GET": "get" if name else "list", "POST": "create", "PUT": "update", "PATCH": "patch",
                    "DELETE": "delete"}[method]
            group = api.split("/")[0] if "/" in api else ""
            return 403, status_body(
                403, "Forbidden", f'{plural} is forbidden: User "tester" cannot {verb} resource "{plural}" in API '
                f'group "{group}" in the namespace "{namespace}"', {"kind": plural})
        with self._lock:
            if sub == "log" and method == "GET":
                return self._log(namespace, name, query)
            if method == "GET" and not name:
                return self._list(api, plural, namespace, query)
            if method == "GET":
                return self._get(api, plural, namespace, name)
            if method == "POST":
                return self._create(api, plural, namespace, body, query)
            if method == "PUT":
                return self._replace(api, plural, namespace, name, sub, body)
            if method == "PATCH":
                return self._patch(api, plural, namespace, name, sub, body)
            if method == "DELETE":
                return self._delete(api, plural, namespace, name, body, query)
        return 405, status_body(405, "MethodNotAllowed", f"{method} is not allowed")

    def _not_found(self, plural: str, name: str) -> tuple:
        group_plural = plural
        return 404, status_body(404, "NotFound", f'{group_plural} "{name}" not found', {"name": name, "kind": plural})

    def _get(self, api, plural, namespace, name) -> tuple:
        found = self.objects.get((api, plural, namespace, name))
        return (200, copy.deepcopy(found)) if found else self._not_found(plural, name)

    def _list(self, api, plural, namespace, query) -> tuple:
        items = [copy.deepcopy(o) for (a, p, ns, _), o in sorted(self.objects.items())
                 if a == api and p == plural and (not namespace or ns == namespace)
                 and _selector_matches(query.get("labelSelector", ""), o["metadata"].get("labels") or {})]
        kind = KINDS.get(plural, plural.title())
        return 200, {"kind": f"{kind}List", "apiVersion": api, "metadata": {"resourceVersion": str(self._version)},
                     "items": items}

    def _check(self, obj: Any, api: str, plural: str) -> tuple | None:
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict) or not obj["metadata"].get("name"):
            return 422, status_body(422, "Invalid", "metadata.name: Required value: name is required")
        if obj.get("apiVersion") != api:
            return 400, status_body(400, "BadRequest", f"the API version in the data ({obj.get('apiVersion')}) does "
                                    f"not match the expected API version ({api})")
        expected = KINDS.get(plural)
        if expected and obj.get("kind") != expected:
            return 400, status_body(400, "BadRequest", f"kind {obj.get('kind')} does not match {expected}")
        if self.validator is not None:
            try:
                self.validator(obj)
            except Exception as exc:  # noqa: BLE001 - any refusal is the API server's 422
                return 422, status_body(422, "Invalid", f'{obj.get("kind")} "{obj["metadata"]["name"]}" is invalid: '
                                        f"{str(exc)[:800]}")
        return None

    def _create(self, api, plural, namespace, body, query) -> tuple:
        refused = self._check(body, api, plural)
        if refused:
            return refused
        obj = copy.deepcopy(body)
        meta = obj["metadata"]
        if namespace:
            if meta.get("namespace") not in (None, namespace):
                return 400, status_body(400, "BadRequest", "the namespace of the provided object does not match "
                                        "the namespace sent on the request")
            meta["namespace"] = namespace
        key = (api, plural, namespace, meta["name"])
        if key in self.objects:
            return 409, status_body(409, "AlreadyExists", f'{plural} "{meta["name"]}" already exists',
                                    {"name": meta["name"], "kind": plural})
        if query.get("dryRun") == "All":
            return 201, obj
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), resourceVersion=self._next(), generation=1)
        obj.setdefault("status", {})
        self.objects[key] = obj
        for hook in self._hooks.get(obj["kind"], []):
            threading.Thread(target=hook, args=(copy.deepcopy(obj),), daemon=True).start()
        return 201, copy.deepcopy(obj)

    def _replace(self, api, plural, namespace, name, sub, body) -> tuple:
        current = self.objects.get((api, plural, namespace, name))
        if current is None:
            return self._not_found(plural, name)
        if sub == "status":
            current["status"] = copy.deepcopy((body or {}).get("status") or {})
        else:
            refused = self._check(body, api, plural)
            if refused:
                return refused
            sent = (body.get("metadata") or {}).get("resourceVersion")
            if sent and sent != current["metadata"]["resourceVersion"]:
                return 409, status_body(409, "Conflict", f'Operation cannot be fulfilled on {plural} "{name}": the '
                                        "object has been modified; please apply your changes to the latest version "
                                        "and try again")
            keep = {k: current["metadata"][k] for k in ("uid", "creationTimestamp", "namespace") if k in current["metadata"]}
            replaced = copy.deepcopy(body)
            replaced["metadata"].update(keep)
            replaced["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
            replaced.setdefault("status", current.get("status", {}))
            self.objects[(api, plural, namespace, name)] = replaced
            current = replaced
        current["metadata"]["resourceVersion"] = self._next()
        return 200, copy.deepcopy(current)

    def _patch(self, api, plural, namespace, name, sub, body) -> tuple:
        current = self.objects.get((api, plural, namespace, name))
        if current is None:
            return self._not_found(plural, name)
        if isinstance(body, list):
            return 415, status_body(415, "UnsupportedMediaType", "JSON patch is not supported by this stand-in")
        patched = merge_patch(current, body or {})
        if sub != "status":
            refused = self._check(patched, api, plural)
            if refused:
                return refused
            if patched.get("spec") != current.get("spec"):
                patched["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        patched["metadata"]["resourceVersion"] = self._next()
        self.objects[(api, plural, namespace, name)] = patched
        for hook in self._hooks.get(f"patch:{patched['kind']}", []):
            threading.Thread(target=hook, args=(copy.deepcopy(patched),), daemon=True).start()
        return 200, copy.deepcopy(patched)

    def _delete(self, api, plural, namespace, name, body, query) -> tuple:
        key = (api, plural, namespace, name)
        current = self.objects.get(key)
        if current is None:
            return self._not_found(plural, name)
        policy = (body or {}).get("propagationPolicy") or query.get("propagationPolicy") or (
            "Orphan" if plural == "jobs" else "Background")  # batch/v1 Jobs orphan their pods by default
        del self.objects[key]
        if policy != "Orphan":
            self._cascade(current)
        for hook in self._hooks.get(f"delete:{current['kind']}", []):
            threading.Thread(target=hook, args=(copy.deepcopy(current),), daemon=True).start()
        return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                     "details": {"name": name, "kind": plural, "uid": current["metadata"]["uid"]}}

    def _cascade(self, owner: dict) -> None:
        uid = owner["metadata"]["uid"]
        for key, obj in list(self.objects.items()):
            refs = obj["metadata"].get("ownerReferences") or []
            if any(r.get("uid") == uid for r in refs):
                del self.objects[key]
                self._cascade(obj)

    def _log(self, namespace, name, query) -> tuple:
        if ("v1", "pods", namespace, name) not in self.objects and (namespace, name) not in self.logs:
            return self._not_found("pods", name)
        lines = self.logs.get((namespace, name), [])
        since = query.get("sinceTime")
        if since:
            lines = [(t, l) for t, l in lines if t[:19] >= since[:19]]
        if query.get("tailLines"):
            lines = lines[-int(query["tailLines"]):]
        stamped = query.get("timestamps") in ("true", "True", "1")
        text = "".join(f"{t} {l}\n" if stamped else f"{l}\n" for t, l in lines)
        return 200, text
