"""`stackwise serve`'s API keys and request limits, without a model (issue 14, items 6 and 10).

- `stackwise keys create | list | revoke`: the key is printed once; the state folder keeps a salted
  scrypt hash only, in a 0600 file; list shows name, creation time and the last 4 characters;
  bad input exits 2 with what/where/fix and no traceback.
- The app: with keys, the predict routes and /v1/models answer 401 (API error shape) without the
  key or with a wrong one and go on with it; readiness and liveness routes never need a key; a
  revoked key is refused on the next request; a server that must require keys refuses everyone
  once its last key is revoked; /docs and /openapi.json are off unless asked for.
- A non-loopback bind with no key is refused unless insecure.
- Prompts over the length cap are 400, bodies over the size cap 413 (in process here; over a real
  socket, with the server's memory watched, in tests/e2e/test_serve_security_limits.py).
- HTTP answers carry no path of this machine (the state folder's included).
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from stackwise.serving import Limits, RequestError, guard_exposure, is_loopback, parse_predict, public_text


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "state"
    monkeypatch.setenv("STACKWISE_HOME", str(home))
    return home


# -- the key store ---------------------------------------------------------------------------------
def test_create_stores_only_a_salted_hash_in_a_private_file(home):
    from stackwise.keys import KeyRing, create_key, keys_path, read_keys

    key, record = create_key("ci")
    other, _ = create_key("laptop")
    path = keys_path()
    assert path.parent == home and stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert key not in text and other not in text and key[:20] not in text
    stored = json.loads(text)["keys"]
    assert {s["name"] for s in stored} == {"ci", "laptop"}
    assert stored[0]["salt"] != stored[1]["salt"] and len(bytes.fromhex(stored[0]["hash"])) == 32
    assert record.last4 == key[-4:] and [r.public() for r in read_keys()][0] == {
        "name": "ci", "created": record.created, "last4": key[-4:], "rpm": None}
    ring = KeyRing()
    assert ring.check(key) == "ci" and ring.check(other) == "laptop"
    assert ring.check(key[:-1] + ("A" if key[-1] != "A" else "B")) is None  # same id, wrong secret
    assert ring.check("sw_00000000_" + key[-43:]) is None and ring.check("") is None and ring.check(None) is None


def test_revoke_takes_effect_on_a_running_ring_and_an_unknown_name_is_an_error(home):
    from stackwise.errors import InputError
    from stackwise.keys import KeyRing, create_key, revoke_key

    key, _ = create_key("ci")
    ring = KeyRing()
    assert ring.check(key) == "ci" and ring.cached(key) == "ci"
    revoke_key("ci")
    assert ring.cached(key) is None and ring.check(key) is None and not ring.enabled()
    with pytest.raises(InputError, match="no key is named 'ci'"):
        revoke_key("ci")
    with pytest.raises(InputError, match="not a key name"):
        create_key("../etc")


def test_keys_cli_prints_the_key_once_and_lists_without_it(run_cli, tmp_path):
    created = run_cli("keys", "create", "ci")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("sw_") and "not shown again" in created.stderr
    listed = run_cli("keys", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [entry] = json.loads(listed.stdout)
    assert entry["name"] == "ci" and entry["last4"] == key[-4:] and entry["created"] > 0
    assert key not in listed.stdout and key not in run_cli("keys", "list").stdout
    table = run_cli("keys", "list").stdout
    assert "ci" in table and key[-4:] in table
    assert key not in (tmp_path / ".stackwise" / "serve-keys.json").read_text()
    for args, says in ((("keys", "create", "ci"), "a key named 'ci' exists"),
                       (("keys", "create", "no spaces"), "not a key name"),
                       (("keys", "revoke", "nobody"), "no key is named 'nobody'")):
        bad = run_cli(*args)
        assert bad.returncode == 2 and says in bad.stderr and "fix:" in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr and key not in bad.stderr
    revoked = run_cli("keys", "revoke", "ci")
    assert revoked.returncode == 0 and json.loads(run_cli("keys", "list", "--json").stdout) == []


# -- the app ---------------------------------------------------------------------------------------
def _client(**kwargs):
    pytest.importorskip("fastapi", reason="install stackwise[serve]")
    from fastapi.testclient import TestClient

    from stackwise.serving import create_app

    return TestClient(create_app("local", environ={"AIP_HEALTH_ROUTE": "/v1/endpoints/1/deployedModels/2"},
                                 **kwargs))


PREDICT = ("/v1/completions", "/invocations", "/score")
PROBES = ("/health", "/ping", "/", "/v1/endpoints/1/deployedModels/2")


def test_with_keys_predictions_need_one_and_probes_never_do(home):
    from stackwise.keys import create_key, revoke_key

    client = _client()
    # No key exists: the routes are open (loopback use), as before.
    assert client.post("/v1/completions", json={"prompt": "x"}).status_code == 503
    key, _ = create_key("ci")
    for path in PREDICT:
        for headers in ({}, {"Authorization": "Bearer sw_12345678_" + "x" * 43}, {"Authorization": f"Basic {key}"},
                        {"Authorization": "Bearer " + key[:-2] + "zz"}):
            response = client.post(path, json={"prompt": "x"}, headers=headers)
            assert response.status_code == 401, (path, headers, response.text)
            error = response.json()["error"]
            assert error["type"] == "authentication_error" and "Authorization: Bearer" in error["message"]
            assert response.headers["WWW-Authenticate"] == "Bearer" and key not in response.text
        # With the key the request goes on (nothing deployed: 503, the endpoint's own answer).
        ok = client.post(path, json={"prompt": "x"}, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 503 and "no version" in ok.json()["error"]["message"]
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": f"bearer {key}"}).status_code == 200
    for path in PROBES:
        assert client.get(path).status_code in (200, 503), path  # answered, never 401
        assert client.get(path).status_code != 401
    revoke_key("ci")
    assert client.post("/v1/completions", json={"prompt": "x"}, headers={"Authorization": f"Bearer {key}"}
                       ).status_code == 503  # no key left: open again on a loopback server


def test_a_server_that_must_require_keys_stays_closed_when_the_last_is_revoked(home):
    from stackwise.keys import create_key, revoke_key

    key, _ = create_key("ci")
    client = _client(require_keys=True)
    assert client.post("/invocations", json={"inputs": "x"}, headers={"Authorization": f"Bearer {key}"}
                       ).status_code == 503
    revoke_key("ci")
    assert client.post("/invocations", json={"inputs": "x"}, headers={"Authorization": f"Bearer {key}"}
                       ).status_code == 401
    assert client.post("/invocations", json={"inputs": "x"}).status_code == 401
    assert client.get("/ping").status_code == 503  # probes still answer


def test_docs_and_openapi_are_off_unless_asked_for(home):
    client = _client()
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert client.get(path).status_code == 404, path
    assert _client(docs=True).get("/openapi.json").status_code == 200


def test_non_loopback_bind_needs_a_key_or_insecure(home):
    from stackwise.errors import SpecError
    from stackwise.keys import create_key

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.com", ""))
    assert guard_exposure("127.0.0.1") is False
    with pytest.raises(SpecError, match="no API key exists") as caught:
        guard_exposure("0.0.0.0")
    assert "--insecure" in caught.value.fix and "stackwise keys create" in caught.value.fix
    assert guard_exposure("0.0.0.0", insecure=True) is False
    create_key("ci")
    assert guard_exposure("0.0.0.0") is True  # keys exist: the server then always requires one


def test_cli_refuses_a_public_bind_without_a_key(run_cli):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = run_cli("serve", "--host", "0.0.0.0", "--port", str(port))
    assert run.returncode == 2 and "no API key exists" in run.stderr and "--insecure" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


# -- limits ----------------------------------------------------------------------------------------
def test_prompts_over_the_length_cap_are_400():
    limits = Limits(prompt_chars=100, prompts=3)
    assert parse_predict(json.dumps({"prompt": "x" * 100}).encode(), limits).prompts == ["x" * 100]
    for body in ({"prompt": "x" * 101}, {"inputs": ["a", "y" * 101]}, {"instances": [{"prompt": "z" * 500}]},
                 {"prompt": ["a", "b", "c", "d"]}):
        with pytest.raises(RequestError) as caught:
            parse_predict(json.dumps(body).encode(), limits)
        assert caught.value.status == 400, body
    assert Limits.from_env({"STACKWISE_SERVE_MAX_BODY_BYTES": "2048"}).body_bytes == 2048
    from stackwise.errors import InputError

    with pytest.raises(InputError, match="STACKWISE_SERVE_MAX_PROMPT_CHARS"):
        Limits.from_env({"STACKWISE_SERVE_MAX_PROMPT_CHARS": "lots"})


def test_bodies_over_the_size_cap_are_413_in_the_api_error_shape(home):
    pytest.importorskip("fastapi", reason="install stackwise[serve]")
    from fastapi.testclient import TestClient

    from stackwise.serving import create_app

    client = TestClient(create_app("local", environ={"STACKWISE_SERVE_MAX_BODY_BYTES": "1000",
                                                     "STACKWISE_SERVE_MAX_PROMPT_CHARS": "300"}))
    big = json.dumps({"prompt": "x" * 2000}).encode()
    response = client.post("/v1/completions", content=big, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["type"] == "invalid_request_error"
    assert "over the server's limit of 1,000 bytes" in response.json()["error"]["message"]
    chunked = client.post("/invocations", content=iter([big[:600], big[600:]]))  # no Content-Length
    assert chunked.status_code == 413, chunked.text
    long = client.post("/v1/completions", json={"prompt": "x" * 400})
    assert long.status_code == 400 and "at most 300" in long.json()["error"]["message"]


# -- no local paths in answers ---------------------------------------------------------------------
def test_answers_name_no_path_of_this_machine(home, tmp_path):
    from stackwise.deploy import Deployment, Variant
    from stackwise.serving import write_state

    assert public_text(f"gone: {tmp_path}/a/b. retry GET /ping or /v1/completions; gs://b/m/x") == (
        "gone: <local path>. retry GET /ping or /v1/completions; gs://b/m/x")
    assert public_text(f"file://{tmp_path}/x") == "<local path>"
    artifact = home / "artifacts" / "chat-1"
    write_state(Deployment(endpoint="local", cloud="local", state="ready", variants=[
        Variant(model="chat", version="1", traffic=100, artifact_uri=str(artifact), base_model=str(tmp_path / "base"))]))
    client = _client()
    answer = client.post("/v1/completions", json={"prompt": "x"})
    assert answer.status_code == 503 and "is gone" in answer.json()["error"]["message"]
    models = client.get("/v1/models")
    for response in (answer, models, client.get("/health")):
        assert str(home) not in response.text and str(tmp_path) not in response.text, response.text
