"""A local server speaking Pinecone's data-plane REST API, as the `pinecone` SDK sends it.

One serverless-style index (fixed dimension, cosine metric) on 127.0.0.1, state in memory.
Covers what the stackwise adapter uses, checked as Pinecone documents it:
- `Api-Key` must match (401 otherwise) and `X-Pinecone-Api-Version` must be present (400);
- `POST /vectors/upsert` (at most 1,000 vectors and 2 MB per request, dimension checked, no
  null metadata values, at most 40 KB of metadata per record), `POST /query` (topK <= 10,000,
  filter applied before ranking, a response of at most 4 MB: larger is a 400, as Pinecone
  answers "choose a lower top_k value, or use include_metadata=False"),
  `GET /vectors/fetch?ids=..`, `POST /vectors/fetch_by_metadata` (paginated),
  `POST /vectors/delete` (ids, deleteAll, filter), `POST /describe_index_stats`,
  `GET /vectors/list` (paginated, prefix);
- the metadata filter language: implicit equality, $eq $ne $gt $gte $lt $lte $in $nin
  $exists $and $or, with the operand types Pinecone documents (ranges on numbers only, $in
  and $nin on arrays of strings or numbers, $exists on booleans; others are a 400); a
  list-valued field matches $eq/$in when it contains a value, $ne/$nin when it contains none;
  a record without the field matches $ne and $nin (the adapter adds `$exists: true` where it
  must not).
Fault injection for tests: `server.fail(path, status, times, when=pred)` answers the next
`times` matching requests with `status`. Every request is recorded in `server.requests`.
Credential echo: like services (and proxies) that quote the request back, every error body's
message ends with the `Api-Key` the request carried (`server.echo_key`, on by default), so
tests see whether the adapter keeps a key a server sends back out of what the user sees.

Run alone: `python tests/servers/pinecone_server.py --dimension 384 --api-key KEY`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

if str(Path(__file__).resolve().parents[1] / "emulators") not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "emulators"))

from _json_http import JsonHttpServer, raw_body  # noqa: E402

MAX_UPSERT = 1000
MAX_BODY = 2 * 1024 * 1024
MAX_METADATA = 40 * 1024
MAX_QUERY_RESPONSE = 4 * 1024 * 1024


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _compare(op: str, have: Any, want: Any) -> bool:
    """One operator, with the operand types Pinecone documents ("Filter by metadata"):
    $eq/$ne number, string or boolean; $gt/$gte/$lt/$lte number; $in/$nin an array of strings
    or numbers; $exists boolean. Other operands are refused (400), as Pinecone does."""
    if op in ("$eq", "$ne"):
        if not isinstance(want, (str, int, float, bool)):
            raise ApiError(400, "INVALID_ARGUMENT", f"{op} takes a number, string or boolean")
    elif op in ("$in", "$nin"):
        if not isinstance(want, list) or not all(isinstance(w, str) or _number(w) for w in want):
            raise ApiError(400, "INVALID_ARGUMENT", f"{op} takes an array of strings or numbers")
        if len(want) > 10_000:
            raise ApiError(400, "INVALID_ARGUMENT", f"{op} takes at most 10000 values")
    if op in ("$eq", "$ne", "$in", "$nin"):
        wanted = want if op in ("$in", "$nin") else [want]
        values = have if isinstance(have, list) else [have]
        hit = have is not None and any(_same(v, w) for v in values for w in wanted)
        return hit if op in ("$eq", "$in") else not hit
    if op == "$exists":
        if not isinstance(want, bool):
            raise ApiError(400, "INVALID_ARGUMENT", "$exists takes a boolean")
        return (have is not None) == want
    if op in ("$gt", "$gte", "$lt", "$lte"):
        if not _number(want):
            raise ApiError(400, "INVALID_ARGUMENT", f"{op} needs a number")
        if not _number(have):
            return False
        return {"$gt": have > want, "$gte": have >= want, "$lt": have < want, "$lte": have <= want}[op]
    raise ApiError(400, "INVALID_ARGUMENT", f"unsupported filter operator {op}")


def _same(a: Any, b: Any) -> bool:
    # Pinecone stores numbers as doubles (1 == 1.0) and booleans apart from numbers.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def validate(flt: dict[str, Any] | None) -> None:
    """Refuse a malformed filter (400) before any record is looked at, as Pinecone does."""
    if not flt:
        return
    if not isinstance(flt, dict):
        raise ApiError(400, "INVALID_ARGUMENT", "filter must be an object")
    for key, cond in flt.items():
        if key in ("$and", "$or"):
            if not isinstance(cond, list) or not cond or not all(isinstance(c, dict) for c in cond):
                raise ApiError(400, "INVALID_ARGUMENT", f"{key} takes a non-empty array of filters")
            for c in cond:
                validate(c)
        elif key.startswith("$"):
            raise ApiError(400, "INVALID_ARGUMENT", f"unsupported filter operator {key}")
        elif isinstance(cond, dict):
            for op, want in cond.items():
                _compare(op, None, want)
        else:
            _compare("$eq", None, cond)


def matches(metadata: dict[str, Any], flt: dict[str, Any] | None) -> bool:
    """Evaluate a Pinecone metadata filter against one vector's metadata."""
    if not flt:
        return True
    if not isinstance(flt, dict):
        raise ApiError(400, "INVALID_ARGUMENT", "filter must be an object")
    for key, cond in flt.items():
        if key in ("$and", "$or"):
            if not isinstance(cond, list) or not cond or not all(isinstance(c, dict) for c in cond):
                raise ApiError(400, "INVALID_ARGUMENT", f"{key} takes a non-empty array of filters")
            # Evaluate every branch, so a malformed one is refused whatever the record holds.
            results = [matches(metadata, c) for c in cond]
            if not (all(results) if key == "$and" else any(results)):
                return False
        elif key.startswith("$"):
            raise ApiError(400, "INVALID_ARGUMENT", f"unsupported filter operator {key}")
        elif isinstance(cond, dict):
            if not all(_compare(op, metadata.get(key), want) for op, want in cond.items()):
                return False
        elif not _compare("$eq", metadata.get(key), cond):
            return False
    return True


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


@dataclass
class Fault:
    path: str
    status: int
    times: int
    when: Callable[[dict[str, Any]], bool] | None = None


@dataclass
class PineconeState:
    dimension: int
    namespaces: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class PineconeServer:
    """A Pinecone index host on 127.0.0.1 (`url`), served from a background thread."""

    def __init__(self, dimension: int, api_key: str, port: int = 0):
        self.state = PineconeState(dimension)
        self.api_key = api_key
        self.echo_key = True  # error messages quote the Api-Key received (see the module docstring)
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.port = port
        self._http: JsonHttpServer | None = None

    @property
    def url(self) -> str:
        assert self._http is not None, "start() the server first"
        return self._http.url

    def start(self) -> "PineconeServer":
        # The SDK pools its connections: HTTP/1.1. The route reads the bytes itself, so that a body
        # too large or not JSON is answered as Pinecone answers it.
        self._http = JsonHttpServer(self._route, body=raw_body, keep_alive=True, port=self.port)
        return self

    def stop(self) -> None:
        assert self._http is not None
        self._http.stop()

    def fail(self, path: str, status: int, times: int = 1, when: Callable[[dict[str, Any]], bool] | None = None) -> None:
        self.faults.append(Fault(path, status, times, when))

    def reset(self) -> None:
        with self.state.lock:
            self.state.namespaces.clear()
        self.faults.clear()
        self.requests.clear()

    # -- HTTP ----------------------------------------------------------------------------------
    def _route(self, method: str, target: str, raw: bytes, headers: Any) -> tuple:
        url = urlparse(target)
        length = int(headers.get("Content-Length") or 0)
        self.requests.append((method, url.path, dict(headers)))
        key = headers.get("Api-Key")
        try:
            if key != self.api_key:
                raise ApiError(401, "UNAUTHENTICATED", "Invalid API Key")
            if not headers.get("X-Pinecone-Api-Version"):
                raise ApiError(400, "INVALID_ARGUMENT", "missing X-Pinecone-Api-Version header")
            if length > MAX_BODY:
                raise ApiError(413, "PAYLOAD_TOO_LARGE", f"request size {length} exceeds 2MB")
            body = json.loads(raw) if raw else {}
            fault = self._fault(url.path, body)
            if fault is not None:
                # Retry-After: 0 keeps the SDK's own backoff (up to seconds) out of test time.
                return self._error(fault, "INJECTED", f"injected fault {fault}", key, {"Retry-After": "0"})
            return 200, self.handle(method, url.path, parse_qs(url.query), body)
        except ApiError as exc:
            return self._error(exc.status, exc.code, exc.message, key)
        except (ValueError, KeyError, TypeError) as exc:
            return self._error(400, "INVALID_ARGUMENT", str(exc), key)

    def _error(self, status: int, code: str, message: str, key: str | None,
               headers: dict[str, str] | None = None) -> tuple:
        if self.echo_key:
            message = f"{message} (request Api-Key: {key!s})"
        return status, {"error": {"code": code, "message": message}, "status": status}, headers or {}

    # -- operations ----------------------------------------------------------------------------
    def _fault(self, path: str, body: dict[str, Any]) -> int | None:
        for fault in self.faults:
            if fault.times > 0 and fault.path == path and (fault.when is None or fault.when(body)):
                fault.times -= 1
                return fault.status
        return None

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: dict[str, Any]) -> dict[str, Any]:
        state = self.state
        with state.lock:
            if (method, path) == ("POST", "/vectors/upsert"):
                return self._upsert(body)
            if (method, path) == ("POST", "/query"):
                return self._query(body)
            if (method, path) == ("GET", "/vectors/fetch"):
                ns = (query.get("namespace") or [""])[0]
                vectors = state.namespaces.get(ns, {})
                found = {i: vectors[i] for i in query.get("ids", []) if i in vectors}
                return {"vectors": found, "namespace": ns, "usage": {"readUnits": 1}}
            if (method, path) == ("POST", "/vectors/fetch_by_metadata"):
                return self._fetch_by_metadata(body)
            if (method, path) == ("POST", "/vectors/delete"):
                return self._delete(body)
            if (method, path) == ("POST", "/describe_index_stats"):
                if body.get("filter"):
                    raise ApiError(400, "INVALID_ARGUMENT", "describe_index_stats does not support filter on serverless indexes")
                spaces = {ns: {"vectorCount": len(v)} for ns, v in state.namespaces.items() if v}
                return {"namespaces": spaces, "dimension": state.dimension, "indexFullness": 0.0,
                        "totalVectorCount": sum(s["vectorCount"] for s in spaces.values()),
                        "metric": "cosine", "vectorType": "dense"}
            if (method, path) == ("GET", "/vectors/list"):
                ns = (query.get("namespace") or [""])[0]
                prefix = (query.get("prefix") or [""])[0]
                limit = int((query.get("limit") or ["100"])[0])
                after = (query.get("paginationToken") or [""])[0]
                ids = sorted(i for i in state.namespaces.get(ns, {}) if i.startswith(prefix) and i > after)
                page = ids[:limit]
                result: dict[str, Any] = {"vectors": [{"id": i} for i in page], "namespace": ns,
                                          "usage": {"readUnits": 1}}
                if len(ids) > limit:
                    result["pagination"] = {"next": page[-1]}
                return result
        raise ApiError(404, "NOT_FOUND", f"no route {method} {path}")

    def _upsert(self, body: dict[str, Any]) -> dict[str, Any]:
        vectors = body.get("vectors") or []
        if len(vectors) > MAX_UPSERT:
            raise ApiError(400, "INVALID_ARGUMENT", f"batch size exceeds {MAX_UPSERT} vectors")
        for v in vectors:
            values = v.get("values") or []
            if len(values) != self.state.dimension:
                raise ApiError(400, "INVALID_ARGUMENT",
                               f"Vector dimension {len(values)} does not match the dimension of the index {self.state.dimension}")
            if not any(values):
                raise ApiError(400, "INVALID_ARGUMENT", "Dense vectors must contain at least one non-zero value")
            size = len(json.dumps(v.get("metadata") or {}).encode())
            if size > MAX_METADATA:
                raise ApiError(400, "INVALID_ARGUMENT",
                               f"Metadata size is {size} bytes, which exceeds the limit of {MAX_METADATA} bytes per vector")
            for key, value in (v.get("metadata") or {}).items():
                if value is None or isinstance(value, dict) or (
                        isinstance(value, list) and not all(isinstance(x, str) for x in value)):
                    raise ApiError(400, "INVALID_ARGUMENT", f"Metadata value for field {key} must be a string, number, boolean or list of strings")
        ns = self.state.namespaces.setdefault(body.get("namespace", ""), {})
        for v in vectors:
            ns[v["id"]] = {"id": v["id"], "values": [float(x) for x in v["values"]], "metadata": v.get("metadata") or {}}
        return {"upsertedCount": len(vectors)}

    def _query(self, body: dict[str, Any]) -> dict[str, Any]:
        top_k = body.get("topK")
        if not isinstance(top_k, int) or not 1 <= top_k <= 10_000:
            raise ApiError(400, "INVALID_ARGUMENT", "topK must be between 1 and 10000")
        vector = body.get("vector")
        if vector is None or len(vector) != self.state.dimension:
            raise ApiError(400, "INVALID_ARGUMENT", f"Vector dimension {len(vector or [])} does not match the dimension of the index {self.state.dimension}")
        ns = body.get("namespace", "")
        validate(body.get("filter"))
        candidates = [v for v in self.state.namespaces.get(ns, {}).values() if matches(v["metadata"], body.get("filter"))]
        scored = sorted(((_cosine(vector, v["values"]), v) for v in candidates), key=lambda sv: -sv[0])[:top_k]
        out = []
        for score, v in scored:
            match = {"id": v["id"], "score": score}
            if body.get("includeValues"):
                match["values"] = v["values"]
            if body.get("includeMetadata"):
                match["metadata"] = v["metadata"]
            out.append(match)
        result = {"matches": out, "namespace": ns, "usage": {"readUnits": 5}}
        size = len(json.dumps(result).encode())
        if size > MAX_QUERY_RESPONSE:
            raise ApiError(400, "INVALID_ARGUMENT",
                           f"Query result size {size} bytes exceeds the 4MB limit: choose a lower top_k value, or "
                           f"use include_metadata=False or include_values=False")
        return result

    def _fetch_by_metadata(self, body: dict[str, Any]) -> dict[str, Any]:
        flt = body.get("filter")
        if not flt:
            raise ApiError(400, "INVALID_ARGUMENT", "filter must not be empty")
        validate(flt)
        ns = body.get("namespace", "")
        limit = int(body.get("limit") or 100)
        after = body.get("paginationToken") or ""
        ids = sorted(i for i, v in self.state.namespaces.get(ns, {}).items() if i > after and matches(v["metadata"], flt))
        page = ids[:limit]
        vectors = self.state.namespaces.get(ns, {})
        result: dict[str, Any] = {"vectors": {i: vectors[i] for i in page}, "namespace": ns, "usage": {"readUnits": 1}}
        if len(ids) > limit:
            result["pagination"] = {"next": page[-1]}
        return result

    def _delete(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("namespace", "")
        ns = self.state.namespaces.get(name)
        if body.get("deleteAll"):
            if ns is None:
                raise ApiError(404, "NOT_FOUND", f"Namespace not found: {name}")
            self.state.namespaces.pop(name, None)
            return {}
        if ns is None:
            return {}
        if body.get("ids") is not None:
            if len(body["ids"]) > 1000:
                raise ApiError(400, "INVALID_ARGUMENT", "at most 1000 ids per delete")
            for i in body["ids"]:
                ns.pop(i, None)
        elif body.get("filter"):
            validate(body["filter"])
            for i in [i for i, v in ns.items() if matches(v["metadata"], body["filter"])]:
                ns.pop(i)
        else:
            raise ApiError(400, "INVALID_ARGUMENT", "one of ids, deleteAll or filter is required")
        if not ns:
            self.state.namespaces.pop(name, None)  # Pinecone namespaces vanish when empty
        return {}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dimension", type=int, default=384)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    srv = PineconeServer(args.dimension, args.api_key, args.port).start()
    print(srv.url, flush=True)
    threading.Event().wait()
