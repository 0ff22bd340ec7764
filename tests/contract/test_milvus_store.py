"""The Milvus adapter: the VectorStore contract against a real standalone Milvus server (the PyPI
package `milvus`, started once per session), and its filter translation."""

from __future__ import annotations

import pytest

from stackwise.adapters.vectors.milvus import collection_name, index_name, to_milvus_expr
from stackwise.contract import VectorStoreOutput
from stackwise.errors import SpecError, StoreError
from stackwise.testing.vector_store import DIM, MODEL, VectorStoreContract, make_records


def _store(uri: str):
    from stackwise.adapters.vectors.milvus import MilvusStore

    return MilvusStore(VectorStoreOutput(kind="milvus", host=uri))


class TestMilvusStore(VectorStoreContract):
    @pytest.fixture
    def store(self, milvus_uri):
        store = _store(milvus_uri)
        for name in store.list_indexes():
            store.drop_index(name)
        return store

    @pytest.fixture
    def reopen(self, milvus_uri):
        return lambda: _store(milvus_uri)


def test_list_metadata_matches_a_contained_value(milvus_uri):
    store = _store(milvus_uri)
    store.drop_index("tags")
    store.create_index("tags", DIM, MODEL)
    store.upsert("tags", make_records("a", 2, axis=0, tags=["red", "blue"]) + make_records("b", 1, axis=1, tags="red"))
    assert store.count("tags", {"tags": "blue"}) == 2
    assert store.count("tags", {"tags": ["red", "green"]}) == 3
    store.drop_index("tags")


@pytest.mark.parametrize("name", ["kb", "my-index", "docs.v2", "a_b", "x_u"])
def test_collection_names_reverse(name):
    assert collection_name(name).isidentifier()
    assert index_name(collection_name(name)) == name


@pytest.mark.parametrize(
    ("portable", "expected"),
    [
        (None, ""),
        ({"doc_id": "a"}, 'doc_id == "a"'),
        ({"source": ["s1", 's"2']}, 'source in ["s1", "s\\"2"]'),
        ({"lang": "en"}, '(metadata["lang"] == "en" or json_contains_any(metadata["lang"], ["en"]))'),
        ({"draft": True, "year": [1, 2]},
         '(metadata["draft"] == true or json_contains_any(metadata["draft"], [true])) and '
         '(metadata["year"] == 1 or metadata["year"] == 2 or json_contains_any(metadata["year"], [1, 2]))'),
    ],
)
def test_to_milvus_expr(portable, expected):
    assert to_milvus_expr(portable) == expected


def test_to_milvus_expr_rejects_bad_keys():
    with pytest.raises(SpecError):
        to_milvus_expr({'x"] or 1==1 or metadata["y': 1})


# -- the token ---------------------------------------------------------------------------------
# The test server (Milvus standalone, authorization off) accepts any token and so never sends one
# back: a wrong token is not an error there. Servers with authorization on answer "auth check
# failure" without quoting the token, but proxies and gateways in front of Milvus may quote the
# request back; the adapter's error wrapping must mask the token in whatever the client raises.
MILVUS_TEST_TOKEN = "root:mv_TOKEN_n3v3rl34k_5d1b"


def _seen_by_user(exc: BaseException) -> str:
    import traceback

    return "\n".join([str(exc), repr(exc), str(getattr(exc, "where", "")), str(getattr(exc, "fix", "")),
                      "".join(traceback.format_exception(exc))])


def _store_with_token(uri: str):
    from stackwise.adapters.vectors.milvus import MilvusStore

    return MilvusStore(VectorStoreOutput(kind="milvus", host=uri, api_key_secret="env://MILVUS_TEST_TOKEN"))


def test_a_token_the_server_echoes_never_reaches_the_user(milvus_uri, monkeypatch):
    from pymilvus import MilvusException

    monkeypatch.setenv("MILVUS_TEST_TOKEN", MILVUS_TEST_TOKEN)
    store = _store_with_token(milvus_uri)
    store.list_indexes()  # the real server took the token (authorization is off there)

    def echo(*args, **kwargs):
        raise MilvusException(code=1800, message=f"auth check failure, token {MILVUS_TEST_TOKEN} is invalid")

    monkeypatch.setattr(store._client, "list_collections", echo)
    with pytest.raises(StoreError, match=r"Milvus list_collections failed: auth check failure") as caught:
        store.list_indexes()
    assert MILVUS_TEST_TOKEN not in _seen_by_user(caught.value)
    assert "token *** is invalid" in str(caught.value)  # the server's words, the token masked


def test_a_token_in_a_connect_error_never_reaches_the_user(monkeypatch):
    import pymilvus

    monkeypatch.setenv("MILVUS_TEST_TOKEN", MILVUS_TEST_TOKEN)

    class Refusing:
        def __init__(self, uri, token, timeout):
            raise pymilvus.MilvusException(message=f"Fail connecting to {uri} with token={token}")

    monkeypatch.setattr(pymilvus, "MilvusClient", Refusing)
    with pytest.raises(StoreError, match="Milvus connect failed") as caught:
        _store_with_token("http://127.0.0.1:1")
    assert MILVUS_TEST_TOKEN not in _seen_by_user(caught.value)
    assert "token=***" in str(caught.value)


def test_credentials_written_into_the_host_never_reach_the_user(monkeypatch):
    import pymilvus

    monkeypatch.setenv("MILVUS_TEST_TOKEN", MILVUS_TEST_TOKEN)

    class Refusing:
        def __init__(self, uri, token, timeout):
            raise pymilvus.MilvusException(message="Fail connecting to server")

    monkeypatch.setattr(pymilvus, "MilvusClient", Refusing)
    for host in (f"http://root:{MILVUS_TEST_TOKEN}@127.0.0.1:1", f"http://user:other-pass@127.0.0.1:1"):
        with pytest.raises(StoreError, match="Milvus connect failed") as caught:
            _store_with_token(host)
        seen = _seen_by_user(caught.value)
        assert MILVUS_TEST_TOKEN not in seen and "other-pass" not in seen
        assert "Milvus at http://***@127.0.0.1:1" in str(caught.value)
