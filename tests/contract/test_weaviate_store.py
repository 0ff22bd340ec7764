"""The Weaviate adapter: the VectorStore contract through weaviate-client v4 (real REST and gRPC)
against a local server speaking Weaviate's API, filter translation, faults, multi-tenancy and
API-key hygiene."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("weaviate", reason="install stackwise[weaviate]")

from conftest import WEAVIATE_TEST_KEY, run_stackwise, write_lee_corpus  # noqa: E402  (at import: `conftest` names another file later)

from stackwise.adapters.vectors.weaviate import (  # noqa: E402
    WeaviateStore,
    collection_name,
    index_name,
    object_uuid,
    parse_host,
    to_weaviate_filter,
)
from stackwise.contract import VectorStoreOutput  # noqa: E402
from stackwise.errors import ConfigError, SpecError, StoreError  # noqa: E402
from stackwise.testing.vector_store import DIM, MODEL, VectorStoreContract, make_records  # noqa: E402
from stackwise.vectors import Record  # noqa: E402


def _config(server, secret: str | None = "env://WEAVIATE_TEST_KEY", **params: str) -> VectorStoreOutput:
    return VectorStoreOutput(kind="weaviate", host=server.host(**params), api_key_secret=secret)


def _store(server, secret: str | None = "env://WEAVIATE_TEST_KEY", params: dict | None = None, **kwargs) -> WeaviateStore:
    kwargs.setdefault("backoff", 0.01)  # the faults below would otherwise cost seconds each
    return WeaviateStore(_config(server, secret, **(params or {})), **kwargs)


class TestWeaviateStore(VectorStoreContract):
    @pytest.fixture
    def store(self, weaviate):
        return _store(weaviate)

    @pytest.fixture
    def reopen(self, weaviate):
        return lambda: _store(weaviate)


def _grpc(flt):
    """The protobuf the Weaviate client sends for a filter: compares by value."""
    from weaviate.collections.filters import _FilterToGRPC

    return _FilterToGRPC.convert(flt)


# -- names and connection settings (pure) ------------------------------------------------------
@pytest.mark.parametrize("name", ["kb", "my-index", "docs.v2", "a_b", "KB", "Kb", "x_0", "A-b.C_d9"])
def test_collection_names_reverse_and_are_case_safe(name):
    coll = collection_name(name)
    assert coll[0].isupper() and coll.replace("_", "").isalnum()
    assert index_name(coll) == name


def test_collection_names_differ_under_case_folding():
    names = ["kb", "KB", "Kb", "kB", "k_b", "k-b", "k.b"]
    assert len({collection_name(n).lower() for n in names}) == len(names)
    assert collection_name("kb") == "Stackwise_kb"
    assert index_name("Article") is None and index_name("Stackwise_bad_9") is None


def test_parse_host_defaults_and_parameters():
    local = parse_host("http://weaviate.internal:8080")
    assert (local["http_host"], local["http_port"], local["http_secure"]) == ("weaviate.internal", 8080, False)
    assert (local["grpc_host"], local["grpc_port"], local["grpc_secure"], local["tenant"]) == \
           ("weaviate.internal", 50051, False, None)
    cloud = parse_host("https://abc123.c0.europe-west3.gcp.weaviate.cloud")
    assert (cloud["http_port"], cloud["grpc_host"], cloud["grpc_port"], cloud["grpc_secure"]) == \
           (443, "grpc-abc123.c0.europe-west3.gcp.weaviate.cloud", 443, True)
    custom = parse_host("https://w.example.com?grpc_host=g.example.com&grpc_port=6000&grpc_secure=false&tenant=acme")
    assert (custom["grpc_host"], custom["grpc_port"], custom["grpc_secure"], custom["tenant"]) == \
           ("g.example.com", 6000, False, "acme")


@pytest.mark.parametrize("host", ["weaviate:8080", "ftp://w", "http://w?grpc=1", "http://w?grpc_port=x",
                                  "http://w?grpc_secure=maybe", "http://w?tenant=a%20b"])
def test_bad_hosts_are_config_errors(host):
    with pytest.raises(ConfigError):
        parse_host(host)


# -- filter translation (pure) -----------------------------------------------------------------
TYPES = {"lang": "text", "year": "number", "draft": "boolean", "tags": "text[]"}


def test_filter_translation_fits_values_to_property_types():
    from weaviate.classes.query import Filter

    prop = Filter.by_property
    cases = [
        ({"lang": "en"}, prop("lang").equal("en")),
        ({"doc_id": ["a", "b"]}, Filter.any_of([prop("doc_id").equal("a"), prop("doc_id").equal("b")])),
        # ints are sent as numbers: Weaviate refuses valueInt on a number property
        ({"year": 2005}, prop("year").equal(2005.0)),
        ({"year": {"$gte": 2001, "$lt": 2010}},
         Filter.all_of([prop("year").greater_or_equal(2001.0), prop("year").less_than(2010.0)])),
        # a value of another type than the property's cannot match: dropped
        ({"year": [2001, "x"]}, Filter.any_of([prop("year").equal(2001.0)])),
        ({"draft": True}, prop("draft").equal(True)),
        ({"tags": "red"}, prop("tags").equal("red")),
        # $ne / $nin never match an object without the key
        ({"lang": {"$ne": "de"}}, Filter.all_of([prop("lang").is_none(False), prop("lang").not_equal("de")])),
        ({"doc_id": {"$ne": "a"}}, prop("doc_id").not_equal("a")),
        ({"year": {"$ne": "x"}}, prop("year").is_none(False)),
        ({"$or": [{"lang": "de"}, {"nokey": 1}]}, prop("lang").equal("de")),
        ({"$or": [{"lang": "de"}, {"year": 2010}]},
         Filter.any_of([prop("lang").equal("de"), prop("year").equal(2010.0)])),
    ]
    for portable, expected in cases:
        assert _grpc(to_weaviate_filter(portable, TYPES)) == _grpc(expected), portable


@pytest.mark.parametrize("portable", [{"nokey": 1}, {"lang": 3}, {"year": {"$gt": "a"}}, {"draft": {"$gt": 1}},
                                      {"$and": [{"lang": "en"}, {"nokey": "x"}]}])
def test_filters_that_cannot_match_skip_the_request(portable):
    assert to_weaviate_filter(portable, TYPES) == "nothing"


def test_filter_translation_errors():
    assert to_weaviate_filter(None, TYPES) is None and to_weaviate_filter({}, TYPES) is None
    with pytest.raises(StoreError, match="cannot be filtered in Weaviate"):
        to_weaviate_filter({"my.key": 1}, TYPES)
    with pytest.raises(SpecError):
        to_weaviate_filter({"text": "x"}, TYPES)
    with pytest.raises(SpecError):
        to_weaviate_filter({"lang": {"$regex": "e.*"}}, TYPES)


# -- layout and wire behaviour -----------------------------------------------------------------
def test_layout_one_collection_per_index_with_typed_properties(weaviate):
    store = _store(weaviate)
    store.create_index("kb", DIM, MODEL)
    store.create_index("other-kb", DIM, MODEL)
    records = make_records("alpha", 2, axis=0, lang="en", year=2001, draft=False, tags=["a", "b"])
    store.upsert("kb", records)
    assert store.list_indexes() == ["kb", "other-kb"]
    assert set(weaviate.classes) == {"Stackwise_kb", "Stackwise_other_1kb"}
    schema = weaviate.classes["Stackwise_kb"].schema
    assert schema["description"] == '{"stackwise": 1, "model": "contract-test-model", "dim": 8, "multi_tenant": false}'
    assert schema["vectorConfig"]["default"]["vectorizer"] == {"none": {}}
    assert schema["vectorConfig"]["default"]["vectorIndexConfig"]["distance"] == "cosine"
    props = {p["name"]: (p["dataType"][0], p.get("tokenization")) for p in schema["properties"]}
    assert props == {"record_id": ("text", "field"), "doc_id": ("text", "field"), "source": ("text", "field"),
                     "chunk": ("int", None), "text": ("text", "field"), "stackwise_extra": ("text", "field"),
                     "doc": ("text", "field"), "lang": ("text", "field"), "year": ("number", None),
                     "draft": ("boolean", None), "tags": ("text[]", "field")}
    stored = weaviate.objects("Stackwise_kb")
    assert set(stored) == {object_uuid("alpha-c0"), object_uuid("alpha-c1")}
    assert stored[object_uuid("alpha-c0")]["props"]["record_id"] == "alpha-c0"
    assert store.count("kb", {"tags": "b"}) == 2 and store.count("kb", {"tags": ["c", "a"]}) == 2
    assert store.count("kb", {"tags": {"$ne": "a"}}) == 0


def test_requests_carry_the_key_as_a_bearer_token(weaviate):
    store = _store(weaviate)
    store.create_index("kb", DIM, MODEL)
    store.upsert("kb", make_records("alpha", 1, axis=0))
    store.query("kb", [1.0] + [0.0] * (DIM - 1), k=1)
    rest = [h for m, _, h in weaviate.requests if m != "gRPC"]
    grpc_calls = [(p, h) for m, p, h in weaviate.requests if m == "gRPC"]
    assert rest and {"BatchObjects", "Search"} <= {p for p, _ in grpc_calls}
    assert all({k.lower(): v for k, v in h.items()}["authorization"] == f"Bearer {WEAVIATE_TEST_KEY}" for h in rest)
    assert all(h["authorization"] == f"Bearer {WEAVIATE_TEST_KEY}" for _, h in grpc_calls)


def test_metadata_weaviate_cannot_filter_is_kept_intact(weaviate):
    store = _store(weaviate)
    store.create_index("kb", DIM, MODEL)
    # '.' in a key, nested, null, a case-folded twin of a property, an empty list, and a value
    # of another type than the key's property: all stored under stackwise_extra.
    odd = {"my.key": 1, "nested": {"a": [1, 2]}, "none": None, "Lang": "x", "empty": [], "num": "three"}
    [first] = make_records("a", 1, axis=0, lang="en", num=1)
    second = Record(id="b-c0", vector=first.vector, text="t", doc_id="b", metadata=odd)
    store.upsert("kb", [first, second])
    [back] = store.fetch("kb", ["b-c0"])
    assert back.metadata == odd
    assert set(weaviate.objects("Stackwise_kb")[object_uuid("b-c0")]["props"]) == \
           {"record_id", "doc_id", "source", "chunk", "text", "stackwise_extra"}
    assert store.count("kb", {"num": 1}) == 1 and store.count("kb", {"num": "three"}) == 0
    with pytest.raises(StoreError, match="cannot be filtered"):
        store.count("kb", {"my.key": 1})
    with pytest.raises(StoreError, match="ignore case"):
        store.count("kb", {"Lang": "x"})


def test_large_upserts_are_split_into_batches(weaviate):
    store = _store(weaviate)
    store.create_index("kb", DIM, MODEL)
    records = [Record(id=f"r{i}", vector=r.vector, text="x" * 50, doc_id=f"d{i % 7}")
               for i, r in enumerate(make_records("bulk", 1200, axis=1))]
    before = len(weaviate.requests)
    store.upsert("kb", records)
    batches = [r for r in weaviate.requests[before:] if r[1] == "BatchObjects"]
    assert len(batches) == 3
    assert store.count("kb") == 1200
    assert store.count("kb", {"doc_id": ["d1", "d2"]}) == len([i for i in range(1200) if i % 7 in (1, 2)])
    assert sum(len(ids) for ids in store.chunk_ids("kb").values()) == 1200  # cursor paging
    assert store.delete("kb", doc_ids=["d0"]) == len(range(0, 1200, 7))
    assert len(store.fetch("kb", [f"r{i}" for i in range(1200)])) == 1200 - len(range(0, 1200, 7))


def test_deletes_page_past_the_query_maximum(weaviate):
    weaviate.max_results = 50  # QUERY_MAXIMUM_RESULTS, as a server may set it
    try:
        store = _store(weaviate)
        store.create_index("kb", DIM, MODEL)
        store.upsert("kb", [Record(id=f"r{i}", vector=r.vector, text="", doc_id="d")
                            for i, r in enumerate(make_records("bulk", 120, axis=1))])
        assert store.delete("kb", doc_ids=["d"]) == 120
        assert store.count("kb") == 0
    finally:
        weaviate.max_results = 10_000


# -- faults ------------------------------------------------------------------------------------
def test_throttling_then_success_is_retried(weaviate):
    store = _store(weaviate)
    weaviate.fail("POST /v1/schema", 429, times=3)
    store.create_index("kb", DIM, MODEL)
    weaviate.fail("BatchObjects", "RESOURCE_EXHAUSTED", times=3)
    store.upsert("kb", make_records("alpha", 4, axis=0))
    weaviate.fail("Search", "UNAVAILABLE", times=1)  # the client retries this one itself, after 1 s
    weaviate.fail("Aggregate", "RESOURCE_EXHAUSTED", times=2)
    assert store.count("kb") == 4
    assert len(store.query("kb", [1.0] + [0.0] * (DIM - 1), k=2)) == 2
    assert not any(f.times for f in weaviate.faults)


def test_persistent_server_errors_surface_clearly(weaviate):
    store = _store(weaviate, attempts=2)
    store.create_index("kb", DIM, MODEL)
    store.upsert("kb", make_records("alpha", 2, axis=0))
    fresh = _store(weaviate, attempts=2)
    weaviate.fail("GET /v1/schema/Stackwise_kb", 503, times=1000)
    with pytest.raises(StoreError) as caught:
        fresh.query("kb", [1.0] + [0.0] * (DIM - 1), k=3)
    message = str(caught.value)
    assert "503" in message and "after 2 attempts" in message and "collection lookup" in message
    weaviate.faults.clear()
    weaviate.fail("Aggregate", "INTERNAL", times=1000)
    with pytest.raises(StoreError, match=r"Weaviate count failed \(INTERNAL\)"):
        store.count("kb")


def test_an_unreachable_host_is_a_clear_error():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    store = WeaviateStore(VectorStoreOutput(kind="weaviate", host=f"http://127.0.0.1:{port}"), attempts=2, backoff=0.01)
    with pytest.raises(StoreError, match="Weaviate connect failed|kept failing") as caught:
        store.list_indexes()
    assert f"127.0.0.1:{port}" in str(caught.value) and caught.value.fix


def test_a_partial_batch_failure_is_retried(weaviate):
    store = _store(weaviate)
    store.create_index("kb", DIM, MODEL)
    records = make_records("alpha", 6, axis=0) + make_records("beta", 4, axis=1)
    weaviate.fail_objects(lambda props: props.get("doc_id") == "beta", "shard is read-only", times=2)
    store.upsert("kb", records)
    assert store.count("kb") == 10
    batches = [r for r in weaviate.requests if r[1] == "BatchObjects"]
    assert len(batches) == 3  # the whole batch, then only the 4 failed objects, twice


def test_a_partial_batch_failure_loses_nothing_silently(weaviate):
    store = _store(weaviate, attempts=3)
    store.create_index("kb", DIM, MODEL)
    records = make_records("alpha", 6, axis=0) + make_records("beta", 4, axis=1)
    weaviate.fail_objects(lambda props: props.get("record_id") in ("beta-c1", "beta-c3"), "disk full", times=1000)
    with pytest.raises(StoreError) as caught:
        store.upsert("kb", records)
    message = str(caught.value)
    assert "2 of 10 records were not written" in message and "beta-c1, beta-c3" in message
    assert "disk full" in message and "rerun" in caught.value.fix
    assert store.count("kb") == 8  # the others were written
    weaviate.object_faults.clear()
    store.upsert("kb", records)  # the rerun the error asks for
    assert store.count("kb") == 10


def test_a_batch_whose_request_fails_is_reported_and_the_others_are_written(weaviate):
    store = _store(weaviate, attempts=2)
    store.create_index("kb", DIM, MODEL)
    records = [Record(id=f"r{i:03d}", vector=r.vector, text="", doc_id="d")
               for i, r in enumerate(make_records("bulk", 600, axis=1))]
    # The second batch (100 objects) keeps being throttled; the first (500) goes through.
    weaviate.fail("BatchObjects", "RESOURCE_EXHAUSTED", times=1000, when=lambda request: len(request.objects) < 500)
    with pytest.raises(StoreError) as caught:
        store.upsert("kb", records)
    assert "100 of 600 records were not written" in str(caught.value) and "r500, r501" in str(caught.value)
    assert "RESOURCE_EXHAUSTED" in str(caught.value) and "after 2 attempts" in str(caught.value)
    assert store.count("kb") == 500


# -- multi-tenancy -----------------------------------------------------------------------------
def test_multi_tenancy_isolates_tenants(weaviate):
    acme, globex = _store(weaviate, params={"tenant": "acme"}), _store(weaviate, params={"tenant": "globex"})
    acme.create_index("kb", DIM, MODEL)
    globex.create_index("kb", DIM, MODEL)
    acme.upsert("kb", make_records("alpha", 3, axis=0, lang="en"))
    globex.upsert("kb", make_records("beta", 2, axis=1, lang="de"))
    assert set(weaviate.classes) == {"Stackwise_kb"}
    cls = weaviate.classes["Stackwise_kb"]
    assert cls.multi_tenant and set(cls.shards) == {"acme", "globex"}
    assert (acme.count("kb"), globex.count("kb")) == (3, 2)
    assert {h.doc_id for h in globex.query("kb", [1.0] + [0.0] * (DIM - 1), k=10)} == {"beta"}
    assert acme.count("kb", {"lang": "de"}) == 0 and acme.chunk_ids("kb").keys() == {"alpha"}
    assert acme.list_indexes() == ["kb"] == globex.list_indexes()
    # A store without a tenant does not mix with multi-tenant collections.
    plain = _store(weaviate)
    assert plain.list_indexes() == []
    with pytest.raises(StoreError, match="multi-tenant"):
        plain.describe("kb")
    # Dropping removes one tenant's data; the collection goes with the last tenant.
    acme.drop_index("kb")
    assert acme.list_indexes() == [] and set(cls.shards) == {"globex"} and globex.count("kb") == 2
    with pytest.raises(StoreError, match="does not exist"):
        _store(weaviate, params={"tenant": "acme"}).describe("kb")
    globex.drop_index("kb")
    assert weaviate.classes == {}


# -- the API key -------------------------------------------------------------------------------
def test_a_wrong_key_is_a_clear_error_without_the_key(weaviate, monkeypatch, caplog):
    monkeypatch.setenv("WEAVIATE_TEST_KEY", "wv_WRONG_secret_value_123")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StoreError, match="rejected the API key") as caught:
        _store(weaviate).list_indexes()
    assert "env://WEAVIATE_TEST_KEY" in caught.value.fix
    for text in (str(caught.value), caplog.text):
        assert "wv_WRONG_secret_value_123" not in text


def test_a_wrong_key_on_grpc_is_a_clear_error(weaviate, monkeypatch):
    store = _store(weaviate)
    store.create_index("kb", DIM, MODEL)
    weaviate.api_key = "wv_rotated_key"
    try:
        with pytest.raises(StoreError, match="rejected the API key"):
            store.upsert("kb", make_records("alpha", 1, axis=0))
    finally:
        weaviate.api_key = WEAVIATE_TEST_KEY


def test_no_key_against_a_server_that_needs_one(weaviate):
    with pytest.raises(StoreError, match=r"rejected the API key \(401\)") as caught:
        _store(weaviate, secret=None).list_indexes()
    assert "$WEAVIATE_API_KEY" in caught.value.fix


def test_a_missing_key_names_the_reference(weaviate, monkeypatch):
    monkeypatch.delenv("WEAVIATE_TEST_KEY")
    with pytest.raises(ConfigError, match=r"\$WEAVIATE_TEST_KEY is empty"):
        _store(weaviate)


def test_the_key_never_appears_in_logs_or_errors(weaviate, caplog):
    caplog.set_level(logging.DEBUG)
    store = _store(weaviate, attempts=1)
    store.create_index("kb", DIM, MODEL)
    store.upsert("kb", make_records("alpha", 2, axis=0))
    store.query("kb", [1.0] + [0.0] * (DIM - 1), k=1)
    errors = []
    weaviate.fail_objects(lambda props: True, "object refused", times=1)
    weaviate.fail("Search", "INTERNAL", times=10)
    weaviate.fail("GET /v1/schema/Stackwise_missing", 500, times=10)
    for action in (lambda: store.describe("missing"),
                   lambda: store.upsert("kb", [Record(id="x", vector=[1.0] * (DIM + 1), text="", doc_id="x")]),
                   lambda: store.upsert("kb", make_records("beta", 2, axis=1)),
                   lambda: store.query("kb", [1.0] + [0.0] * (DIM - 1), k=1)):
        with pytest.raises(StoreError) as caught:
            action()
        errors.append(str(caught.value))
    assert caplog.records  # the client did log (the failed batch)
    assert WEAVIATE_TEST_KEY not in caplog.text
    assert WEAVIATE_TEST_KEY not in repr(store)
    for message in errors:
        assert WEAVIATE_TEST_KEY not in message



# -- a key the server echoes back --------------------------------------------------------------
# The test server quotes the Authorization it received in every REST error message and gRPC
# error detail (`echo_key`), as services and proxies sometimes do: the adapter must mask it in
# everything the user sees.
def _seen_by_user(exc: BaseException) -> str:
    """Everything a user (or a log) can see of an error: message, parts, repr, traceback."""
    import traceback

    return "\n".join([str(exc), repr(exc), str(getattr(exc, "where", "")), str(getattr(exc, "fix", "")),
                      "".join(traceback.format_exception(exc))])


def test_the_server_really_echoes_the_key_it_received(weaviate):
    # Without this the redaction tests below would prove nothing.
    import urllib.error
    import urllib.request

    for key, fault in (("wv_WRONG_echo_987", None), (WEAVIATE_TEST_KEY, 500)):
        if fault:
            weaviate.fail("GET /v1/schema", fault, times=1)
        request = urllib.request.Request(f"{weaviate.url}/v1/schema", headers={"Authorization": f"Bearer {key}"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        assert key in caught.value.read().decode()


@pytest.mark.parametrize("fault", ["wrong key on REST", "wrong key on gRPC", "REST refusal", "REST server error",
                                   "gRPC refusal", "gRPC server error"])
def test_a_key_echoed_in_an_error_body_never_reaches_the_user(weaviate, monkeypatch, caplog, fault):
    caplog.set_level(logging.DEBUG)
    key = WEAVIATE_TEST_KEY
    store = _store(weaviate, attempts=2)
    store.create_index("kb", DIM, MODEL)
    store.upsert("kb", make_records("alpha", 2, axis=0))
    if fault == "wrong key on REST":
        key = "wv_WRONG_echo_987"
        monkeypatch.setenv("WEAVIATE_TEST_KEY", key)
    fresh = _store(weaviate, attempts=2)  # looks the collection up again (REST), then queries (gRPC)
    if fault == "wrong key on gRPC":
        weaviate.api_key = "wv_rotated_key"  # the server now refuses the key the store holds
    try:
        if fault == "REST refusal":
            weaviate.fail("GET /v1/schema/Stackwise_kb", 422, times=1000)
        elif fault == "REST server error":
            weaviate.fail("GET /v1/schema/Stackwise_kb", 503, times=1000)
        elif fault == "gRPC refusal":
            weaviate.fail("Search", "INVALID_ARGUMENT", times=1000)
        elif fault == "gRPC server error":
            weaviate.fail("Search", "INTERNAL", times=1000)
        with pytest.raises(StoreError) as caught:
            (store if fault == "wrong key on gRPC" else fresh).query("kb", [1.0] + [0.0] * (DIM - 1), k=1)
    finally:
        weaviate.api_key = WEAVIATE_TEST_KEY
    shown = _seen_by_user(caught.value)
    assert key not in shown and key not in caplog.text
    if not fault.startswith("wrong key"):  # the server's own words still come through, the key masked
        assert "***" in str(caught.value)


# -- end to end through the CLI ----------------------------------------------------------------
# `stackwise index` / `search` / `index copy` in subprocesses (`python -m stackwise.cli`), with the
# shipped all-MiniLM-L6-v2 model, on a local stack whose vector store is the Weaviate server, and
# on the embedded store for comparison: the same corpus as the Pinecone CLI test.
ARTICLES = 40
QUERIES = ["bushfires burning near Sydney"]
CLI_OUTPUTS: list[str] = []  # every stdout and stderr, grepped for the key at the end


@pytest.fixture(scope="module")
def weaviate_cli_server():
    from weaviate_server import WeaviateServer

    server = WeaviateServer(api_key=WEAVIATE_TEST_KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def wv_project(tmp_path_factory, weaviate_cli_server):
    root = tmp_path_factory.mktemp("weaviate-project")
    (root / "Pulumi.yaml").write_text("name: demo\nruntime: python\nstackConfigDir: stacks/\n")
    stacks = root / "stacks"
    stacks.mkdir()
    (stacks / "Pulumi.local.yaml").write_text(
        "config:\n  stackwise:cloud: local\n  stackwise:vectorStore:\n    kind: embedded\n    path: vectors\n")
    (stacks / "Pulumi.wv.yaml").write_text(
        "config:\n  stackwise:cloud: local\n  stackwise:vectorStore:\n    kind: weaviate\n"
        f"    host: '{weaviate_cli_server.host()}'\n    apiKeySecret: env://WEAVIATE_TEST_KEY\n")
    write_lee_corpus(root / "docs", ARTICLES)
    return root


def _cli(root, *args: str, expect: int = 0, key: str = WEAVIATE_TEST_KEY):
    return run_stackwise(root, *args, expect=expect, drop=("WEAVIATE_",), env={"WEAVIATE_TEST_KEY": key},
                         outputs=CLI_OUTPUTS)


@pytest.fixture(scope="module")
def wv_indexed(wv_project):
    import json

    for stack in ("local", "wv"):
        report = json.loads(_cli(wv_project, "index", "./docs", "--index", "kb", "--stack", stack, "--json").stdout)
        assert report["documents"] == ARTICLES and report["added"] == report["chunks"] > ARTICLES
    return wv_project


def _stores(root, server):
    from stackwise.adapters.vectors.embedded import EmbeddedStore

    hosted = WeaviateStore(VectorStoreOutput(kind="weaviate", host=server.host(), api_key_secret="env://WV_CLI_KEY"))
    return EmbeddedStore(str(root / ".stackwise" / "vectors")), hosted


@pytest.mark.slow
def test_cli_weaviate_and_embedded_return_the_same_top_results(wv_indexed, weaviate_cli_server, monkeypatch):
    import json

    monkeypatch.setenv("WV_CLI_KEY", WEAVIATE_TEST_KEY)
    listed = {s: json.loads(_cli(wv_indexed, "indexes", "--stack", s, "--json").stdout) for s in ("local", "wv")}
    assert [(i["name"], i["dim"], i["model"], i["count"]) for i in listed["wv"]] == \
           [(i["name"], i["dim"], i["model"], i["count"]) for i in listed["local"]]
    assert set(weaviate_cli_server.classes) == {"Stackwise_kb"}
    for query in QUERIES:  # each CLI search loads the embedding model: one query here, more below
        top = {}
        for stack in ("local", "wv"):
            hits = json.loads(_cli(wv_indexed, "search", query, "--index", "kb", "--stack", stack, "-k", "5",
                                   "--json").stdout)
            top[stack] = [(h["id"], h["score"]) for h in hits]
        assert [i for i, _ in top["wv"]] == [i for i, _ in top["local"]] and len(top["wv"]) == 5
        assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(top["wv"], top["local"]))
    # More queries through the stores themselves: stored chunk vectors as queries, with filters.
    embedded, hosted = _stores(wv_indexed, weaviate_cli_server)
    docs = embedded.chunk_ids("kb")
    some = sorted(i for ids in docs.values() for i in ids)[::25][:6]
    for record in embedded.fetch("kb", some):
        for flt in (None, {"doc_id": sorted(docs)[:20]}, {"doc_id": {"$nin": sorted(docs)[:5]}}):
            want = [h.id for h in embedded.query("kb", record.vector, k=5, filter=flt)]
            assert [h.id for h in hosted.query("kb", record.vector, k=5, filter=flt)] == want


@pytest.mark.slow
def test_cli_index_copy_moves_vectors_without_re_embedding(wv_indexed, weaviate_cli_server, monkeypatch):
    import json

    monkeypatch.setenv("WV_CLI_KEY", WEAVIATE_TEST_KEY)
    report = json.loads(_cli(wv_indexed, "index", "copy", "--from-stack", "local", "--index", "kb",
                             "--to-stack", "wv", "--to-index", "kb-copy", "--json").stdout)
    assert report["documents"] == ARTICLES and report["to_index"] == "kb-copy"
    embedded, hosted = _stores(wv_indexed, weaviate_cli_server)
    assert hosted.chunk_ids("kb-copy") == embedded.chunk_ids("kb")
    ids = sorted(i for ids in embedded.chunk_ids("kb").values() for i in ids)
    copied = {r.id: r for r in hosted.fetch("kb-copy", ids)}
    for original in embedded.fetch("kb", ids):
        twin = copied[original.id]
        assert (twin.text, twin.doc_id, twin.source, twin.chunk, dict(twin.metadata)) == \
               (original.text, original.doc_id, original.source, original.chunk, dict(original.metadata))
        assert max(abs(a - b) for a, b in zip(twin.vector, original.vector)) < 1e-6
    again = json.loads(_cli(wv_indexed, "index", "copy", "--from-stack", "local", "--index", "kb",
                            "--to-stack", "wv", "--to-index", "kb-copy", "--json").stdout)
    assert again["chunks"] == report["chunks"] == len(weaviate_cli_server.objects("Stackwise_kb_1copy")) == len(ids)


@pytest.mark.slow
def test_cli_wrong_key_is_a_clear_error(wv_indexed):
    wrong = "wv_WRONG_cli_key_5e8d"
    proc = _cli(wv_indexed, "search", "anything", "--index", "kb", "--stack", "wv", expect=2, key=wrong)
    assert "rejected the API key" in proc.stderr and "Traceback" not in proc.stderr
    assert wrong not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_cli_the_key_is_in_no_output_or_log(wv_indexed):
    # Runs after the CLI tests above: every CLI output, and every file the jobs wrote.
    assert CLI_OUTPUTS
    for text in CLI_OUTPUTS:
        assert WEAVIATE_TEST_KEY not in text
    logs = [p for p in (wv_indexed / ".stackwise").rglob("*") if p.is_file() and p.stat().st_size < 50_000_000]
    assert any(p.suffix == ".log" or "log" in p.name for p in logs), "no job log found to check"
    for path in logs:
        assert WEAVIATE_TEST_KEY.encode() not in path.read_bytes(), path
