"""A local server speaking the part of Weaviate's REST and gRPC APIs that weaviate-client v4 uses
for the stackwise adapter: REST on one port (tests/emulators/_json_http.py), gRPC `weaviate.v1.Weaviate` on
another (grpcio, with the `*_pb2` / `*_pb2_grpc` stubs the client ships). State in memory, exact search.

Covered, checked as Weaviate does it:
- REST: `GET /v1/meta` (version 1.32.0 by default, so the client takes its gRPC paths),
  `GET /v1/.well-known/ready|live` (no auth), `/v1/.well-known/openid-configuration` (404: no
  OIDC), `GET/POST /v1/schema`, `GET/DELETE /v1/schema/{class}`, `POST /v1/schema/{class}/properties`,
  `GET/POST/DELETE /v1/schema/{class}/tenants`. Class names must match `^[A-Z][_0-9A-Za-z]*$`
  (the first letter is capitalized, as Weaviate does) and may not equal another under case
  folding (422); property names `^[_A-Za-z][_0-9A-Za-z]*$`, unique under case folding, not
  reserved. Stored classes get Weaviate's defaults (inverted index, replication, sharding,
  the full HNSW config) so the client's config parser reads them.
- gRPC: `BatchObjects` (per-object errors: unknown class or tenant, tenant missing on a
  multi-tenant class, unknown property, value of the wrong type, vector length differing from
  the index's), `Search` (near_vector with the vector in `vectors` or the legacy fields, cosine
  distance, filters before ranking, limit/offset, the `after` cursor ordered by uuid and refused
  with filters, `QUERY_MAXIMUM_RESULTS` = 10,000, return properties, metadata uuid, distance
  and vector), `BatchDelete` (filter, at most `QUERY_MAXIMUM_RESULTS` per request, dry run,
  verbose), `Aggregate` (objects_count with a filter), `TenantsGet`.
- Filters: Equal, NotEqual (a complement: it also matches objects without the property),
  LessThan(Equal), GreaterThan(Equal) on numbers and text, Like, IsNull, ContainsAny,
  ContainsAll, ContainsNone, And, Or, Not, on properties and `_id`; a filter on an unknown or
  non-filterable property, or with a value type other than the property's (valueInt on a
  number property), is refused as Weaviate refuses it; IsNull needs the class's
  `indexNullState`.
- Auth: with an API key configured every request but `/.well-known/*` needs
  `Authorization: Bearer <key>` (REST 401, gRPC UNAUTHENTICATED).
- Faults: `server.fail("POST /v1/schema", 503, times)` or `server.fail("Search", "UNAVAILABLE",
  times)` answers the next matching requests with that HTTP status or gRPC code;
  `server.fail_objects(when, message, times)` makes the objects whose properties satisfy
  `when` fail inside the next `times` BatchObjects replies. Requests are recorded in
  `server.requests`.
- Credential echo: like services (and proxies) that quote the request back, every REST error
  message and gRPC error detail ends with the `Authorization` value the request carried
  (`server.echo_key`, on by default), so tests see whether the adapter keeps a key a server
  sends back out of what the user sees.

Not covered: auto-schema (an unknown property is refused, as with AUTOSCHEMA_ENABLED=false),
vectorizer modules, GraphQL, the REST object endpoints, references, BatchStream, hybrid/BM25,
group-by, aggregations other than the count, tenant activity states other than ACTIVE, RBAC,
replication and consistency levels (all reads see all acknowledged writes).

Run alone: `python tests/servers/weaviate_server.py --api-key KEY` prints the REST URL and the
gRPC port.
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import re
import struct
import sys
import threading
import time
import uuid as uuidlib
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlparse

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict
from weaviate.proto.v1 import (
    aggregate_pb2,
    base_pb2,
    batch_delete_pb2,
    batch_pb2,
    properties_pb2,
    search_get_pb2,
    tenants_pb2,
    weaviate_pb2_grpc,
)

QUERY_MAXIMUM_RESULTS = 10_000
_CLASS = re.compile(r"^[A-Z][_0-9A-Za-z]{0,254}$")
_PROP = re.compile(r"^[_A-Za-z][_0-9A-Za-z]{0,230}$")
_RESERVED = {"_additional", "_id", "id"}
if str(Path(__file__).resolve().parents[1] / "emulators") not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "emulators"))

from _json_http import JsonHttpServer, raw_body  # noqa: E402

OP = base_pb2.Filters


class WeaviateError(Exception):
    """An error Weaviate would answer: an HTTP status for REST, a gRPC code for gRPC."""

    def __init__(self, message: str, status: int = 422, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT):
        super().__init__(message)
        self.message, self.status, self.code = message, status, code


def _hnsw_defaults(distance: str) -> dict[str, Any]:
    return {"skip": False, "cleanupIntervalSeconds": 300, "maxConnections": 32, "efConstruction": 128,
            "ef": -1, "dynamicEfMin": 100, "dynamicEfMax": 500, "dynamicEfFactor": 8,
            "vectorCacheMaxObjects": 1000000000000, "flatSearchCutoff": 40000, "distance": distance,
            "pq": {"enabled": False, "bitCompression": False, "segments": 0, "centroids": 256,
                   "trainingLimit": 100000, "encoder": {"type": "kmeans", "distribution": "log-normal"}},
            "bq": {"enabled": False}, "sq": {"enabled": False, "trainingLimit": 100000, "rescoreLimit": 20},
            "filterStrategy": "sweeping", "multivector": {"enabled": False, "aggregation": "maxSim",
                                                           "muvera": {"enabled": False}}}


def _complete(cls: dict[str, Any]) -> dict[str, Any]:
    """A posted class with the defaults Weaviate fills in."""
    cls = copy.deepcopy(cls)
    cls.setdefault("description", "")
    cls["invertedIndexConfig"] = {
        "bm25": {"b": 0.75, "k1": 1.2}, "cleanupIntervalSeconds": 60, "indexNullState": False,
        "stopwords": {"preset": "en", "additions": None, "removals": None}, "usingBlockMaxWAND": True,
        **(cls.get("invertedIndexConfig") or {})}
    mt = cls.setdefault("multiTenancyConfig", {})
    mt.setdefault("enabled", False)
    mt.setdefault("autoTenantCreation", False)
    mt.setdefault("autoTenantActivation", False)
    cls.setdefault("replicationConfig", {"factor": 1, "asyncEnabled": False, "deletionStrategy": "NoAutomatedResolution"})
    cls.setdefault("shardingConfig", {"virtualPerPhysical": 128, "desiredCount": 1, "actualCount": 1,
                                      "desiredVirtualCount": 128, "actualVirtualCount": 128, "key": "_id",
                                      "strategy": "hash", "function": "murmur3"})
    if "vectorConfig" in cls:
        for vec in cls["vectorConfig"].values():
            vec.setdefault("vectorIndexType", "hnsw")
            given = vec.get("vectorIndexConfig") or {}
            vec["vectorIndexConfig"] = {**_hnsw_defaults(given.get("distance", "cosine")), **given}
    else:
        cls.setdefault("vectorizer", "none")
        cls.setdefault("vectorIndexType", "hnsw")
        given = cls.get("vectorIndexConfig") or {}
        cls["vectorIndexConfig"] = {**_hnsw_defaults(given.get("distance", "cosine")), **given}
    cls["properties"] = [_complete_property(p) for p in cls.get("properties") or []]
    return cls


def _complete_property(prop: dict[str, Any]) -> dict[str, Any]:
    prop = {k: v for k, v in prop.items() if k not in ("skip_vectorization", "vectorize_property_name")}
    name = prop.get("name", "")
    if not isinstance(name, str) or not _PROP.fullmatch(name) or name.lower() in _RESERVED:
        raise WeaviateError(f"'{name}' is not a valid property name. Property names in Weaviate are restricted "
                            "to valid GraphQL names, which must be “/[_A-Za-z][_0-9A-Za-z]{0,230}/”.")
    data_type = (prop.get("dataType") or [""])[0]
    if data_type not in ("text", "text[]", "int", "number", "boolean"):
        raise WeaviateError(f"property '{name}': data type {data_type!r} is not supported by this server")
    text = data_type.startswith("text")
    prop.setdefault("indexFilterable", True)
    prop.setdefault("indexSearchable", text)
    prop.setdefault("indexRangeFilters", False)
    if text:
        prop.setdefault("tokenization", "word")
    prop.setdefault("description", "")
    return prop


@dataclass
class WeaviateClass:
    schema: dict[str, Any]
    # tenant name ("" when not multi-tenant) -> uuid -> {"props": {...}, "vector": np.ndarray}
    shards: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    dims: dict[str, int] = field(default_factory=dict)  # vector name -> dimension, set by the first object

    @property
    def name(self) -> str:
        return self.schema["class"]

    @property
    def multi_tenant(self) -> bool:
        return bool(self.schema["multiTenancyConfig"]["enabled"])

    def prop(self, name: str) -> dict[str, Any] | None:
        return next((p for p in self.schema["properties"] if p["name"] == name), None)

    def shard(self, tenant: str) -> dict[str, dict[str, Any]]:
        if self.multi_tenant:
            if not tenant:
                raise WeaviateError(f"class {self.name} has multi-tenancy enabled, but request was without tenant")
            if tenant not in self.shards:
                raise WeaviateError(f'tenant not found: "{tenant}"', status=422)
        elif tenant:
            raise WeaviateError(f"class {self.name} has multi-tenancy disabled, but request was with tenant")
        return self.shards.setdefault(tenant, {})


@dataclass
class Fault:
    target: str  # "METHOD /v1/path" (REST, path without query) or a gRPC method name
    status: Any  # an HTTP status (REST) or a grpc.StatusCode name (gRPC)
    times: int
    when: Callable[[Any], bool] | None = None


@dataclass
class ObjectFault:
    when: Callable[[dict[str, Any]], bool]
    message: str
    times: int


class WeaviateServer:
    """REST on `url`, gRPC on `grpc_port`, both on 127.0.0.1, served from background threads."""

    def __init__(self, api_key: str | None = None, version: str = "1.32.0", max_results: int = QUERY_MAXIMUM_RESULTS):
        self.api_key = api_key
        self.echo_key = True  # error messages quote the Authorization received (see the module docstring)
        self.version = version
        self.max_results = max_results
        self.classes: dict[str, WeaviateClass] = {}
        self.lock = threading.RLock()
        self.faults: list[Fault] = []
        self.object_faults: list[ObjectFault] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._http: JsonHttpServer | None = None
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        weaviate_pb2_grpc.add_WeaviateServicer_to_server(_Servicer(self), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")

    @property
    def url(self) -> str:
        assert self._http is not None, "start() the server first"
        return self._http.url

    def host(self, **params: str) -> str:
        """The `vector_store.host` value that reaches this server."""
        query = "&".join(f"{k}={v}" for k, v in {"grpc_port": str(self.grpc_port), **params}.items())
        return f"{self.url}?{query}"

    def start(self) -> "WeaviateServer":
        # The client pools its connections: HTTP/1.1. The route reads the bytes itself (a fault's
        # `when` sees them; a body that is not JSON is answered as Weaviate answers it).
        self._http = JsonHttpServer(self._route, body=raw_body, keep_alive=True)
        self._grpc.start()
        return self

    def stop(self) -> None:
        self._grpc.stop(grace=None)
        assert self._http is not None
        self._http.stop()

    def reset(self) -> None:
        with self.lock:
            self.classes.clear()
            self.faults.clear()
            self.object_faults.clear()
            self.requests.clear()

    def fail(self, target: str, status: Any, times: int = 1, when: Callable[[Any], bool] | None = None) -> None:
        self.faults.append(Fault(target, status, times, when))

    def fail_objects(self, when: Callable[[dict[str, Any]], bool], message: str = "injected object failure",
                     times: int = 1) -> None:
        self.object_faults.append(ObjectFault(when, message, times))

    def objects(self, cls: str, tenant: str = "") -> dict[str, dict[str, Any]]:
        """The stored objects of a class (for tests)."""
        return self.classes[cls].shards.get(tenant, {})

    def _fault(self, target: str, request: Any) -> Any:
        with self.lock:
            for fault in self.faults:
                if fault.times > 0 and fault.target == target and (fault.when is None or fault.when(request)):
                    fault.times -= 1
                    return fault.status
        return None

    def _authorized(self, header: str | None) -> bool:
        return self.api_key is None or header == f"Bearer {self.api_key}"

    def _echo(self, message: str, header: str | None) -> str:
        return f"{message} (request Authorization: {header})" if self.echo_key else message

    # -- REST ----------------------------------------------------------------------------------
    def _route(self, method: str, target: str, raw: bytes, headers: Any) -> tuple:
        url = urlparse(target)
        self.requests.append((method, url.path, dict(headers)))
        if url.path.startswith("/v1/.well-known/"):
            status = 200 if url.path.endswith(("/ready", "/live")) else 404
            return status, None if status == 200 else {"error": [{"message": "not found"}]}
        auth = headers.get("Authorization")
        if not self._authorized(auth):
            message = ("anonymous access not enabled, please provide an auth scheme" if auth is None else
                       "unauthorized: invalid api key")
            return 401, {"code": 401, "message": self._echo(message, auth)}
        fault = self._fault(f"{method} {url.path}", raw)
        if fault is not None:
            return int(fault), {"error": [{"message": self._echo(f"injected fault {fault}", auth)}]}
        try:
            body = json.loads(raw) if raw else None
            status, payload = self.rest(method, url.path, body)
            if status >= 400 and isinstance(payload, dict) and isinstance(payload.get("error"), list):
                payload = {**payload, "error": [{**e, "message": self._echo(str(e.get("message", "")), auth)}
                                                for e in payload["error"]]}
            return status, payload
        except WeaviateError as exc:
            return exc.status, {"error": [{"message": self._echo(exc.message, auth)}]}
        except (ValueError, KeyError, TypeError) as exc:
            return 422, {"error": [{"message": self._echo(f"invalid request: {exc}", auth)}]}

    # -- schema (REST) -----------------------------------------------------------------------
    def _class(self, name: str) -> WeaviateClass:
        cls = self.classes.get(name[:1].upper() + name[1:])
        if cls is None:
            raise WeaviateError(f"class '{name}' not found", status=404, code=grpc.StatusCode.NOT_FOUND)
        return cls

    def rest(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        parts = [unquote(p) for p in path.strip("/").split("/")]  # v1, ...
        with self.lock:
            if parts == ["v1", "meta"] and method == "GET":
                return 200, {"hostname": f"http://[::]:{self._http.port}", "modules": {},
                             "version": self.version, "grpcMaxMessageSize": 10 * 1024 * 1024}
            if parts[:2] == ["v1", "schema"]:
                return self._schema(method, parts[2:], body)
        raise WeaviateError(f"no route {method} {path} on this test server", status=404)

    def _schema(self, method: str, rest: list[str], body: Any) -> tuple[int, Any]:
        if not rest:
            if method == "GET":
                return 200, {"classes": [copy.deepcopy(c.schema) for c in self.classes.values()]}
            if method == "POST":
                name = str((body or {}).get("class", ""))
                name = name[:1].upper() + name[1:]
                if not _CLASS.fullmatch(name):
                    raise WeaviateError(f"'{name}' is not a valid class name")
                similar = [c for c in self.classes if c.lower() == name.lower()]
                if similar:
                    raise WeaviateError(f'class name "{name}" already exists' if similar[0] == name
                                        else f'class name "{name}" already exists: found similar class "{similar[0]}"')
                schema = _complete({**body, "class": name})
                names = [p["name"].lower() for p in schema["properties"]]
                if len(names) != len(set(names)):
                    raise WeaviateError("class properties must have unique names (case-insensitive)")
                self.classes[name] = WeaviateClass(schema)
                return 200, copy.deepcopy(schema)
        else:
            cls = self._class(rest[0])
            if len(rest) == 1 and method == "GET":
                return 200, copy.deepcopy(cls.schema)
            if len(rest) == 1 and method == "DELETE":
                del self.classes[cls.name]
                return 200, None
            if rest[1:] == ["properties"] and method == "POST":
                prop = _complete_property(body or {})
                if any(p["name"].lower() == prop["name"].lower() for p in cls.schema["properties"]):
                    raise WeaviateError(f"property {prop['name']!r} already exists")
                cls.schema["properties"].append(prop)
                return 200, prop
            if rest[1:] == ["tenants"]:
                if not cls.multi_tenant:
                    raise WeaviateError(f"multi-tenancy is not enabled for class \"{cls.name}\"")
                if method == "GET":
                    return 200, [{"name": t, "activityStatus": "ACTIVE"} for t in sorted(cls.shards)]
                if method == "POST":
                    for tenant in body or []:
                        cls.shards.setdefault(str(tenant["name"]), {})
                    return 200, body
                if method == "DELETE":
                    for tenant in body or []:
                        cls.shards.pop(str(tenant), None)
                    return 200, None
        raise WeaviateError(f"no route {method} /v1/schema/{'/'.join(rest)} on this test server", status=404)

    # -- data (gRPC) -------------------------------------------------------------------------
    def batch_objects(self, request: batch_pb2.BatchObjectsRequest) -> batch_pb2.BatchObjectsReply:
        started = time.perf_counter()
        errors = []
        with self.lock:
            for index, obj in enumerate(request.objects):
                try:
                    props = _batch_properties(obj.properties)
                    for fault in self.object_faults:
                        if fault.times > 0 and fault.when(props):
                            raise WeaviateError(fault.message)
                    self._put(obj, props)
                except WeaviateError as exc:
                    errors.append(batch_pb2.BatchObjectsReply.BatchError(index=index, error=exc.message))
            for fault in self.object_faults:
                if fault.times > 0 and any(fault.when(_batch_properties(o.properties)) for o in request.objects):
                    fault.times -= 1
        return batch_pb2.BatchObjectsReply(took=time.perf_counter() - started, errors=errors)

    def _put(self, obj: batch_pb2.BatchObject, props: dict[str, Any]) -> None:
        cls = self._class(obj.collection)
        shard = cls.shard(obj.tenant)
        for name, value in props.items():
            prop = cls.prop(name)
            if prop is None:
                raise WeaviateError(f"invalid object: no such prop with name '{name}' found in class "
                                    f"'{cls.name}' in the schema. Check your schema files for which properties "
                                    "in this class are available")
            _check_value(cls.name, prop, value)
        vectors = {v.name or "default": np.frombuffer(v.vector_bytes, dtype=np.float32).copy() for v in obj.vectors}
        if obj.vector_bytes:
            vectors["default"] = np.frombuffer(obj.vector_bytes, dtype=np.float32).copy()
        elif len(obj.vector):
            vectors["default"] = np.asarray(obj.vector, dtype=np.float32)
        named = set(cls.schema.get("vectorConfig") or {"default": None})
        for name, vector in vectors.items():
            if name not in named:
                raise WeaviateError(f"vector index for target vector \"{name}\" not found in class {cls.name}")
            dim = cls.dims.setdefault(name, len(vector))
            if len(vector) != dim:
                raise WeaviateError(f"new node has a vector with length {len(vector)}. "
                                    f"Existing nodes have vectors with length {dim}")
        try:
            key = str(uuidlib.UUID(obj.uuid))
        except ValueError:
            raise WeaviateError(f"invalid uuid {obj.uuid!r}") from None
        shard[key] = {"props": props, "vectors": vectors}

    def search(self, request: search_get_pb2.SearchRequest) -> search_get_pb2.SearchReply:
        started = time.perf_counter()
        with self.lock:
            cls = self._class(request.collection)
            shard = cls.shard(request.tenant)
            limit = request.limit or 10
            if request.offset + limit > self.max_results:
                raise WeaviateError(f"query maximum results exceeded: offset + limit > {self.max_results}")
            has_filter = request.HasField("filters")
            if request.after:
                if has_filter or request.HasField("near_vector") or request.offset:
                    raise WeaviateError("explorer: list class: search: cursor api: invalid 'after' parameter: "
                                        "other params cannot be set along with after")
            candidates = [(u, o) for u, o in shard.items() if not has_filter or _matches(cls, u, o, request.filters)]
            distances: dict[str, float] = {}
            if request.HasField("near_vector"):
                query, target = _near_vector(request.near_vector)
                scored = []
                for u, o in candidates:
                    stored = o["vectors"].get(target)
                    if stored is None or len(stored) != len(query):
                        raise WeaviateError(f"vector search: knn search: distance between entrypoint and query "
                                            f"node: vector lengths don't match: {len(stored) if stored is not None else 0} vs {len(query)}")
                    distances[u] = _cosine_distance(query, stored)
                    scored.append((distances[u], u, o))
                scored.sort(key=lambda t: (t[0], t[1]))
                ordered = [(u, o) for _, u, o in scored]
            else:
                ordered = sorted(candidates, key=lambda t: t[0])
                if request.after:
                    ordered = [(u, o) for u, o in ordered if u > request.after]
            page = ordered[request.offset:request.offset + limit]
            results = [self._result(cls, request, u, o, distances.get(u)) for u, o in page]
        return search_get_pb2.SearchReply(took=time.perf_counter() - started, results=results)

    def _result(self, cls: WeaviateClass, request: search_get_pb2.SearchRequest, uid: str, obj: dict[str, Any],
                distance: float | None) -> search_get_pb2.SearchResult:
        wanted = None
        if request.HasField("properties") and not request.properties.return_all_nonref_properties:
            wanted = set(request.properties.non_ref_properties)
        fields = {}
        for name, value in obj["props"].items():
            if wanted is None or name in wanted:
                fields[name] = _value(cls.prop(name), value)
        meta = search_get_pb2.MetadataResult(id=uid, id_as_bytes=uuidlib.UUID(uid).bytes)
        if distance is not None and request.metadata.distance:
            meta.distance, meta.distance_present = distance, True
        if request.metadata.vector or request.metadata.vectors:
            for name, vector in obj["vectors"].items():
                meta.vectors.append(base_pb2.Vectors(name=name, vector_bytes=vector.astype(np.float32).tobytes(),
                                                     type=base_pb2.Vectors.VECTOR_TYPE_SINGLE_FP32))
        return search_get_pb2.SearchResult(properties=search_get_pb2.PropertiesResult(
            non_ref_props=properties_pb2.Properties(fields=fields)), metadata=meta)

    def batch_delete(self, request: batch_delete_pb2.BatchDeleteRequest) -> batch_delete_pb2.BatchDeleteReply:
        started = time.perf_counter()
        with self.lock:
            cls = self._class(request.collection)
            shard = cls.shard(request.tenant)
            if not request.HasField("filters"):
                raise WeaviateError("batch delete needs a filter")
            matched = sorted(u for u, o in shard.items() if _matches(cls, u, o, request.filters))[:self.max_results]
            if not request.dry_run:
                for u in matched:
                    del shard[u]
            objects = [batch_delete_pb2.BatchDeleteObject(uuid=uuidlib.UUID(u).bytes, successful=True)
                       for u in matched] if request.verbose else []
        return batch_delete_pb2.BatchDeleteReply(took=time.perf_counter() - started, matches=len(matched),
                                                 successful=0 if request.dry_run else len(matched), failed=0,
                                                 objects=objects)

    def aggregate(self, request: aggregate_pb2.AggregateRequest) -> aggregate_pb2.AggregateReply:
        started = time.perf_counter()
        with self.lock:
            cls = self._class(request.collection)
            shard = cls.shard(request.tenant)
            if request.aggregations or request.HasField("group_by"):
                raise WeaviateError("this test server only counts objects", code=grpc.StatusCode.UNIMPLEMENTED)
            count = sum(1 for u, o in shard.items()
                        if not request.HasField("filters") or _matches(cls, u, o, request.filters))
        return aggregate_pb2.AggregateReply(took=time.perf_counter() - started,
                                            single_result=aggregate_pb2.AggregateReply.Single(objects_count=count))

    def tenants_get(self, request: tenants_pb2.TenantsGetRequest) -> tenants_pb2.TenantsGetReply:
        with self.lock:
            cls = self._class(request.collection)
            if not cls.multi_tenant:
                raise WeaviateError(f"multi-tenancy is not enabled for class \"{cls.name}\"")
            names = sorted(cls.shards)
            if request.HasField("names"):
                names = [n for n in request.names.values if n in cls.shards]
        return tenants_pb2.TenantsGetReply(tenants=[
            tenants_pb2.Tenant(name=n, activity_status=tenants_pb2.TENANT_ACTIVITY_STATUS_ACTIVE) for n in names])


# -- values and filters --------------------------------------------------------------------------
def _batch_properties(props: batch_pb2.BatchObject.Properties) -> dict[str, Any]:
    values: dict[str, Any] = dict(MessageToDict(props.non_ref_properties)) if props.HasField("non_ref_properties") else {}
    for arr in props.text_array_properties:
        values[arr.prop_name] = list(arr.values)
    for arr in props.boolean_array_properties:
        values[arr.prop_name] = list(arr.values)
    for arr in props.int_array_properties:
        values[arr.prop_name] = list(arr.values)
    for arr in props.number_array_properties:
        values[arr.prop_name] = list(struct.unpack(f"{len(arr.values_bytes) // 8}d", arr.values_bytes))
    for name in props.empty_list_props:
        values[name] = []
    return values


def _check_value(cls: str, prop: dict[str, Any], value: Any) -> None:
    data_type = prop["dataType"][0]
    ok = {
        "text": isinstance(value, str),
        "text[]": isinstance(value, list) and all(isinstance(v, str) for v in value),
        "boolean": isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "int": isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer(),
    }[data_type]
    if not ok:
        raise WeaviateError(f"invalid {data_type} property '{prop['name']}' on class '{cls}': "
                            f"requires a {data_type}, got {type(value).__name__}")


def _value(prop: dict[str, Any] | None, value: Any) -> properties_pb2.Value:
    data_type = prop["dataType"][0] if prop else "text"
    if value is None:
        return properties_pb2.Value(null_value=0)
    if data_type == "text":
        return properties_pb2.Value(text_value=str(value))
    if data_type == "int":
        return properties_pb2.Value(int_value=int(value))
    if data_type == "number":
        return properties_pb2.Value(number_value=float(value))
    if data_type == "boolean":
        return properties_pb2.Value(bool_value=bool(value))
    return properties_pb2.Value(list_value=properties_pb2.ListValue(
        text_values=properties_pb2.TextValues(values=[str(v) for v in value])))


def _near_vector(near: Any) -> tuple[np.ndarray, str]:
    target = list(near.targets.target_vectors)[0] if near.HasField("targets") and near.targets.target_vectors else "default"
    if len(near.vectors):
        return np.frombuffer(near.vectors[0].vector_bytes, dtype=np.float32), near.vectors[0].name or target
    if near.vector_bytes:
        return np.frombuffer(near.vector_bytes, dtype=np.float32), target
    if len(near.vector):
        return np.asarray(near.vector, dtype=np.float32), target
    raise WeaviateError("near_vector without a vector")


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if not na or not nb:
        return 1.0
    return float(1.0 - np.dot(a, b) / (na * nb))


def _filter_value(flt: Any) -> tuple[str, Any]:
    kind = flt.WhichOneof("test_value")
    if kind is None:
        raise WeaviateError("filter without a value")
    value = getattr(flt, kind)
    if kind.endswith("_array"):
        value = list(value.values)
    return kind, value


_VALUE_KINDS = {"text": ("value_text", "value_text_array"), "text[]": ("value_text", "value_text_array"),
                "int": ("value_int", "value_int_array"), "number": ("value_number", "value_number_array"),
                "boolean": ("value_boolean", "value_boolean_array")}


def _matches(cls: WeaviateClass, uid: str, obj: dict[str, Any], flt: Any) -> bool:
    op = flt.operator
    if op == OP.OPERATOR_AND:
        return all(_matches(cls, uid, obj, f) for f in flt.filters)
    if op == OP.OPERATOR_OR:
        return any(_matches(cls, uid, obj, f) for f in flt.filters)
    if op == OP.OPERATOR_NOT:
        return not all(_matches(cls, uid, obj, f) for f in flt.filters)
    name = flt.target.property if flt.HasField("target") else (flt.on[0] if flt.on else "")
    kind, want = _filter_value(flt)
    if name == "_id":
        have: Any = uid
        if kind not in ("value_text", "value_text_array"):
            raise WeaviateError("filtering by id needs text values")
    else:
        prop = cls.prop(name)
        if prop is None:
            raise WeaviateError(f"no such prop with name '{name}' found in class '{cls.name}' in the schema. "
                                "Check your schema files for which properties in this class are available")
        if not prop.get("indexFilterable", True):
            raise WeaviateError(f"Filtering by property '{name}' requires inverted index. Is `indexFilterable` "
                                "option of property enabled? Set it to `true` or leave empty")
        data_type = prop["dataType"][0]
        if op != OP.OPERATOR_IS_NULL and kind not in _VALUE_KINDS[data_type]:
            raise WeaviateError(f"data type filter cannot use \"{kind}\" on type \"{data_type}\", "
                                f"use \"{_VALUE_KINDS[data_type][0]}\" instead")
        have = obj["props"].get(name)
    if op == OP.OPERATOR_IS_NULL:
        if not cls.schema["invertedIndexConfig"].get("indexNullState"):
            raise WeaviateError("Nullstate must be indexed to be filterable! Add `indexNullState: true` "
                                "to the invertedIndexConfig")
        return (have is None) == bool(want)
    if have is None:
        return op in (OP.OPERATOR_NOT_EQUAL, OP.OPERATOR_CONTAINS_NONE)
    haves = have if isinstance(have, list) else [have]
    wants = want if isinstance(want, list) else [want]
    if op == OP.OPERATOR_EQUAL:
        return any(h == wants[0] for h in haves)
    if op == OP.OPERATOR_NOT_EQUAL:
        return not any(h == wants[0] for h in haves)
    if op == OP.OPERATOR_CONTAINS_ANY:
        return any(h == w for h in haves for w in wants)
    if op == OP.OPERATOR_CONTAINS_ALL:
        return all(any(h == w for h in haves) for w in wants)
    if op == OP.OPERATOR_CONTAINS_NONE:
        return not any(h == w for h in haves for w in wants)
    if op == OP.OPERATOR_LIKE:
        return any(fnmatch.fnmatchcase(str(h), str(wants[0])) for h in haves)
    compare = {OP.OPERATOR_LESS_THAN: lambda h, w: h < w, OP.OPERATOR_LESS_THAN_EQUAL: lambda h, w: h <= w,
               OP.OPERATOR_GREATER_THAN: lambda h, w: h > w, OP.OPERATOR_GREATER_THAN_EQUAL: lambda h, w: h >= w}
    if op in compare:
        return any(compare[op](h, wants[0]) for h in haves)
    raise WeaviateError(f"operator {OP.Operator.Name(op)} is not supported by this test server")


# -- transports ----------------------------------------------------------------------------------
class _Servicer(weaviate_pb2_grpc.WeaviateServicer):
    def __init__(self, server: WeaviateServer):
        self.server = server

    def _serve(self, method: str, request: Any, context: grpc.ServicerContext, handler: Callable[[Any], Any]) -> Any:
        metadata = dict(context.invocation_metadata())
        self.server.requests.append(("gRPC", method, metadata))
        auth = metadata.get("authorization")
        if not self.server._authorized(auth):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, self.server._echo("unauthenticated: invalid api key", auth))
        fault = self.server._fault(method, request)
        if fault is not None:
            context.abort(getattr(grpc.StatusCode, fault), self.server._echo(f"injected fault {fault}", auth))
        try:
            return handler(request)
        except WeaviateError as exc:
            context.abort(exc.code, self.server._echo(exc.message, auth))

    def Search(self, request, context):  # noqa: N802
        return self._serve("Search", request, context, self.server.search)

    def BatchObjects(self, request, context):  # noqa: N802
        return self._serve("BatchObjects", request, context, self.server.batch_objects)

    def BatchDelete(self, request, context):  # noqa: N802
        return self._serve("BatchDelete", request, context, self.server.batch_delete)

    def Aggregate(self, request, context):  # noqa: N802
        return self._serve("Aggregate", request, context, self.server.aggregate)

    def TenantsGet(self, request, context):  # noqa: N802
        return self._serve("TenantsGet", request, context, self.server.tenants_get)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-key")
    args = parser.parse_args()
    srv = WeaviateServer(api_key=args.api_key).start()
    print(srv.host(), flush=True)
    threading.Event().wait()
