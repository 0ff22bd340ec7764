"""The Pinecone adapter: the VectorStore contract over real HTTP against a local server that
speaks Pinecone's data-plane API, filter translation, faults, and API-key hygiene."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("pinecone", reason="install stackwise[pinecone]")

from conftest import PINECONE_TEST_KEY  # noqa: E402

from stackwise.adapters.vectors.pinecone import CATALOG, PineconeStore, to_pinecone_filter  # noqa: E402
from stackwise.contract import VectorStoreOutput  # noqa: E402
from stackwise.errors import ConfigError, SpecError, StoreError  # noqa: E402
from stackwise.testing.vector_store import DIM, MODEL, VectorStoreContract, make_records  # noqa: E402
from stackwise.vectors import Record  # noqa: E402


def _config(server, secret: str | None = "env://PINECONE_TEST_KEY") -> VectorStoreOutput:
    return VectorStoreOutput(kind="pinecone", host=server.url, api_key_secret=secret)


def _store(server, **kwargs) -> PineconeStore:
    # Short backoff: the faults below would otherwise cost seconds each.
    kwargs.setdefault("backoff", 0.01)
    return PineconeStore(_config(server), **kwargs)


class TestPineconeStore(VectorStoreContract):
    string_ranges = False  # Pinecone compares numbers only

    @pytest.fixture
    def store(self, pinecone):
        return _store(pinecone)

    @pytest.fixture
    def reopen(self, pinecone):
        return lambda: _store(pinecone)


# -- filter translation (pure) -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("portable", "expected"),
    [
        (None, None),
        ({}, None),
        ({"lang": "en"}, {"lang": {"$eq": "en"}}),
        ({"year": [2001, 2010]}, {"year": {"$in": [2001, 2010]}}),
        ({"draft": True}, {"draft": {"$eq": True}}),
        ({"doc_id": "a", "year": 3}, {"$and": [{"doc_id": {"$eq": "a"}}, {"year": {"$eq": 3}}]}),
    ],
)
def test_to_pinecone_filter(portable, expected):
    assert to_pinecone_filter(portable) == expected


def test_to_pinecone_filter_rejects_bad_keys():
    with pytest.raises(SpecError):
        to_pinecone_filter({"text": "x"})
    with pytest.raises(SpecError):
        to_pinecone_filter({"lang": {"$where": "en"}})  # only the portable operators pass through


# -- wire behaviour ----------------------------------------------------------------------------
def test_requests_carry_the_key_and_api_version_headers(pinecone):
    store = _store(pinecone)
    store.create_index("kb", DIM, MODEL)
    method, path, headers = pinecone.requests[-1]
    assert (method, path) == ("POST", "/vectors/upsert")
    lower = {k.lower(): v for k, v in headers.items()}
    assert lower["api-key"] == PINECONE_TEST_KEY
    assert lower["x-pinecone-api-version"]


def test_indexes_are_namespaces_and_the_catalog_is_hidden(pinecone):
    store = _store(pinecone)
    store.create_index("kb", DIM, MODEL)
    store.create_index("other", DIM, MODEL)
    store.upsert("kb", make_records("alpha", 3, axis=0))
    assert store.list_indexes() == ["kb", "other"]
    assert set(pinecone.state.namespaces["kb"]) == {"alpha-c0", "alpha-c1", "alpha-c2"}
    assert set(pinecone.state.namespaces[CATALOG]) == {"kb", "other"}
    assert store.count("other") == 0 and store.count("kb") == 3


def test_an_index_dimension_other_than_pinecones_is_refused(pinecone):
    with pytest.raises(StoreError, match="8-dimensional") as caught:
        _store(pinecone).create_index("wide", 384, "all-MiniLM-L6-v2")
    assert "provision a Pinecone index of dimension 384" in caught.value.fix


def test_large_upserts_are_split_under_pinecones_limits(pinecone):
    store = _store(pinecone)
    store.create_index("kb", DIM, MODEL)
    big_text = "x" * 3000  # ~3 KB of metadata each: 2,500 records are ~7.5 MB in all
    records = [Record(id=f"r{i}", vector=r.vector, text=big_text, doc_id=f"d{i % 7}")
               for i, r in enumerate(make_records("bulk", 2500, axis=1))]
    before = len(pinecone.requests)
    store.upsert("kb", records)
    upserts = [r for r in pinecone.requests[before:] if r[1] == "/vectors/upsert"]
    assert len(upserts) >= 4  # the size limit, not only the 1,000-vector limit, split it
    assert store.count("kb") == 2500
    assert store.count("kb", {"doc_id": ["d1", "d2"]}) == len([i for i in range(2500) if i % 7 in (1, 2)])
    assert store.delete("kb", doc_ids=["d0"]) == len(range(0, 2500, 7))


# -- faults ------------------------------------------------------------------------------------
def test_throttling_then_success_is_retried(pinecone):
    store = _store(pinecone)
    store.create_index("kb", DIM, MODEL)
    # More 429s than the SDK's own retries (4 attempts): the adapter's backoff must carry on.
    pinecone.fail("/vectors/upsert", 429, times=6)
    store.upsert("kb", make_records("alpha", 4, axis=0))
    assert store.count("kb") == 4
    assert not any(f.times for f in pinecone.faults)


def test_persistent_server_errors_surface_clearly(pinecone):
    store = _store(pinecone, attempts=2)
    store.create_index("kb", DIM, MODEL)
    pinecone.fail("/query", 503, times=1000)
    with pytest.raises(StoreError) as caught:
        store.query("kb", [1.0] + [0.0] * (DIM - 1), k=3)
    message = str(caught.value)
    assert "HTTP 503" in message and "query" in message and "after 2 attempts" in message
    assert "retry later" in caught.value.fix


def test_a_failed_batch_is_reported_and_a_rerun_completes(pinecone):
    store = _store(pinecone, attempts=2, parallel=3)
    store.create_index("kb", DIM, MODEL)
    records = [Record(id=f"r{i:04d}", vector=r.vector, text="t", doc_id=f"d{i // 10}")
               for i, r in enumerate(make_records("bulk", 2500, axis=2))]
    # Every attempt at the batch holding r1500 fails; the other batches succeed.
    pinecone.fail("/vectors/upsert", 500, times=1000,
                  when=lambda body: any(v["id"] == "r1500" for v in body.get("vectors", [])))
    with pytest.raises(StoreError) as caught:
        store.upsert("kb", records)
    assert "of 2500 records were not written" in str(caught.value)
    lost = int(str(caught.value).split(" of 2500")[0])
    assert store.count("kb") == 2500 - lost  # nothing else is missing, and the loss was reported
    pinecone.faults.clear()
    store.upsert("kb", records)  # the rerun the error asks for
    assert store.count("kb") == 2500


# -- the API key -------------------------------------------------------------------------------
def test_a_wrong_key_is_a_clear_error_without_the_key(pinecone, monkeypatch, caplog):
    monkeypatch.setenv("PINECONE_TEST_KEY", "pcsk_WRONG_secret_value_123")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StoreError, match="rejected the API key") as caught:
        _store(pinecone).list_indexes()
    assert "env://PINECONE_TEST_KEY" in caught.value.fix
    for text in (str(caught.value), caplog.text):
        assert "pcsk_WRONG_secret_value_123" not in text


def test_a_missing_key_names_the_reference(pinecone, monkeypatch):
    monkeypatch.delenv("PINECONE_TEST_KEY")
    with pytest.raises(ConfigError, match=r"\$PINECONE_TEST_KEY is empty"):
        _store(pinecone)


def test_the_key_never_appears_in_logs_or_errors(pinecone, caplog, monkeypatch):
    monkeypatch.setenv("PINECONE_DEBUG_CURL", "1")  # the SDK's most verbose logging
    caplog.set_level(logging.DEBUG)
    store = _store(pinecone, attempts=1)
    store.create_index("kb", DIM, MODEL)
    store.upsert("kb", make_records("alpha", 2, axis=0))
    store.query("kb", [1.0] + [0.0] * (DIM - 1), k=1)
    errors = []
    for action in (lambda: store.describe("missing"),
                   lambda: store.upsert("kb", [Record(id="x", vector=[1.0] * (DIM + 1), text="", doc_id="x")])):
        with pytest.raises(StoreError) as caught:
            action()
        errors.append(str(caught.value))
    pinecone.fail("/query", 500, times=10)
    with pytest.raises(StoreError) as caught:
        store.query("kb", [1.0] + [0.0] * (DIM - 1), k=1)
    errors.append(str(caught.value))
    assert caplog.records  # the SDK did log
    assert PINECONE_TEST_KEY not in caplog.text
    assert PINECONE_TEST_KEY not in repr(store)
    for message in errors:
        assert PINECONE_TEST_KEY not in message


# -- a key the server echoes back --------------------------------------------------------------
# The test server quotes the Api-Key it received in every error body (`echo_key`), as services
# and proxies sometimes do: the adapter must mask it in everything the user sees.
def _seen_by_user(exc: BaseException) -> str:
    """Everything a user (or a log) can see of an error: message, parts, repr, traceback."""
    import traceback

    return "\n".join([str(exc), repr(exc), str(getattr(exc, "where", "")), str(getattr(exc, "fix", "")),
                      "".join(traceback.format_exception(exc))])


def _raw_error_body(server, key: str) -> str:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{server.url}/describe_index_stats", data=b"{}", method="POST",
                                     headers={"Api-Key": key, "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    return caught.value.read().decode()


def test_the_server_really_echoes_the_key_it_received(pinecone):
    # Without this the redaction tests below would prove nothing.
    assert "pcsk_WRONG_echo_987" in _raw_error_body(pinecone, "pcsk_WRONG_echo_987")
    pinecone.fail("/describe_index_stats", 500, times=1)
    assert PINECONE_TEST_KEY in _raw_error_body(pinecone, PINECONE_TEST_KEY)


@pytest.mark.parametrize("fault", ["wrong key", "bad request", "server error", "throttled"])
def test_a_key_echoed_in_an_error_body_never_reaches_the_user(pinecone, monkeypatch, caplog, fault):
    key = "pcsk_WRONG_echo_987" if fault == "wrong key" else PINECONE_TEST_KEY
    monkeypatch.setenv("PINECONE_TEST_KEY", key)
    caplog.set_level(logging.DEBUG)
    store = _store(pinecone, attempts=2)
    if fault != "wrong key":
        store.create_index("kb", DIM, MODEL)
    status = {"bad request": 400, "server error": 500, "throttled": 429}.get(fault)
    if status:
        pinecone.fail("/query", status, times=1000)
    with pytest.raises(StoreError) as caught:
        store.query("kb", [1.0] + [0.0] * (DIM - 1), k=1)
    shown = _seen_by_user(caught.value)
    assert key not in shown and key not in caplog.text
    if fault != "wrong key":  # the server's own words still come through, the key masked
        assert "***" in str(caught.value)
