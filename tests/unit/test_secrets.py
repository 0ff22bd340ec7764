"""`stackwise.secrets`: references parsed, env:// and file:// resolved, errors, caching, redaction.

The cloud schemes (aws-sm, gcp-sm, azure-kv) are tested over real HTTP in
tests/contract/test_secrets_clouds.py. Every value here is a recognisable fake, and every error
is checked not to contain it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import pytest

from stackwise import secrets
from stackwise.errors import ConfigError, MissingDependencyError

VALUE = "sk_FAKE_d0n0tl34k_9e1f"  # grep-able in any text


@pytest.fixture(autouse=True)
def fresh_cache():
    secrets.clear_cache()
    yield
    secrets.clear_cache()


def _raises(ref: str, match: str | None = None, what: str = "test key") -> ConfigError:
    with pytest.raises(ConfigError, match=match) as caught:
        secrets.resolve_secret(ref, what=what)
    assert VALUE not in str(caught.value)
    return caught.value


# -- env:// ------------------------------------------------------------------------------------
def test_env_reference_reads_the_variable(monkeypatch):
    monkeypatch.setenv("SW_TEST_KEY", VALUE)
    assert secrets.resolve_secret("env://SW_TEST_KEY", what="test key") == VALUE


def test_env_is_reread_so_a_new_export_is_seen(monkeypatch):
    monkeypatch.setenv("SW_TEST_KEY", "first-value")
    assert secrets.resolve_secret("env://SW_TEST_KEY", what="k") == "first-value"
    monkeypatch.setenv("SW_TEST_KEY", "second-value")
    assert secrets.resolve_secret("env://SW_TEST_KEY", what="k") == "second-value"


def test_env_unset_or_empty_names_the_variable(monkeypatch):
    monkeypatch.delenv("SW_TEST_KEY", raising=False)
    error = _raises("env://SW_TEST_KEY", r"the test key is not set: \$SW_TEST_KEY is empty")
    assert error.where == "secret reference env://SW_TEST_KEY"
    assert "export SW_TEST_KEY=" in error.fix
    monkeypatch.setenv("SW_TEST_KEY", "")
    _raises("env://SW_TEST_KEY", r"\$SW_TEST_KEY is empty")


def test_env_with_a_json_key(monkeypatch):
    monkeypatch.setenv("SW_TEST_JSON", json.dumps({"apiKey": VALUE, "port": 8080}))
    assert secrets.resolve_secret("env://SW_TEST_JSON#apiKey", what="k") == VALUE
    assert secrets.resolve_secret("env://SW_TEST_JSON#port", what="k") == "8080"


# -- file:// -----------------------------------------------------------------------------------
def test_file_reference_reads_the_file_without_its_trailing_newline(tmp_path):
    path = tmp_path / "key"
    path.write_text(VALUE + "\n", encoding="utf-8")
    assert secrets.resolve_secret(f"file://{path}", what="k") == VALUE


def test_file_json_key_selects_one_field(tmp_path):
    path = tmp_path / "creds.json"
    path.write_text(json.dumps({"apiKey": VALUE, "user": "svc"}), encoding="utf-8")
    assert secrets.resolve_secret(f"file://{path}#apiKey", what="k") == VALUE
    assert secrets.resolve_secret(f"file://{path}#user", what="k") == "svc"


def test_file_missing(tmp_path):
    error = _raises(f"file://{tmp_path}/absent", "no file .*absent")
    assert error.where == f"secret reference file://{tmp_path}/absent"


def test_file_that_is_a_directory_or_not_text_or_empty(tmp_path):
    _raises(f"file://{tmp_path}", "is a directory")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00" + VALUE.encode())
    _raises(f"file://{binary}", "not UTF-8 text")
    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    _raises(f"file://{empty}", "is empty")


def test_file_unreadable_maps_permission_errors(tmp_path, monkeypatch):
    # Tests here run as root, who reads any file: stand in for the kernel's EACCES.
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(args[0]))

    monkeypatch.setattr(secrets, "open", denied, raising=False)
    error = _raises(f"file://{tmp_path}/key", "permission denied reading")
    assert "chmod" in error.fix


def test_file_relative_path_is_malformed():
    _raises("file://relative/key", "path must be absolute")


# -- JSON selector -----------------------------------------------------------------------------
def test_json_key_errors_name_the_keys_never_the_values(tmp_path):
    path = tmp_path / "creds.json"
    path.write_text(json.dumps({"apiKey": VALUE, "nested": {"a": VALUE}}), encoding="utf-8")
    error = _raises(f"file://{path}#apikey", "has no key 'apikey'")
    assert "apiKey" in error.fix and "nested" in error.fix
    _raises(f"file://{path}#nested", "not a string or number")
    plain = tmp_path / "plain"
    plain.write_text(VALUE, encoding="utf-8")
    _raises(f"file://{plain}#apiKey", "not a JSON object")
    array = tmp_path / "array"
    array.write_text(json.dumps([VALUE]), encoding="utf-8")
    _raises(f"file://{array}#0", "not a JSON object")


# -- references --------------------------------------------------------------------------------
def test_unknown_scheme_names_the_known_ones():
    error = _raises("vault://x", "unknown secret scheme 'vault'")
    for scheme in ("env", "file", "aws-sm", "gcp-sm", "azure-kv"):
        assert scheme in error.fix


@pytest.mark.parametrize("ref, match", [
    ("env://", "malformed env"),
    ("env://NOT-A-NAME", "not a variable name"),
    ("env://KEY#", "malformed env"),
    ("aws-sm://", "malformed aws-sm"),
    ("aws-sm://arn:aws:s3:::bucket", "malformed aws-sm"),
    ("aws-sm://name with space", "malformed aws-sm"),
    ("gcp-sm://my-secret", "malformed gcp-sm"),
    ("gcp-sm://projects/p/secrets", "malformed gcp-sm"),
    ("gcp-sm://projects/p/secrets/s/versions", "malformed gcp-sm"),
    ("azure-kv://vault-only", "malformed azure-kv"),
    ("azure-kv://v/secret", "malformed azure-kv"),  # vault names have 3-24 characters
    ("azure-kv://my-vault/secret/version/extra", "malformed azure-kv"),
    ("azure-kv://my-vault/bad_name", "malformed azure-kv"),
])
def test_malformed_references(ref, match):
    error = _raises(ref, match)
    assert ref in error.where


@pytest.mark.parametrize("text", ["", "   ", VALUE, "just-a-value:with-colon"])
def test_a_value_pasted_instead_of_a_reference_is_refused_without_echoing_it(text):
    error = _raises(text, "secret reference")
    assert (text not in str(error)) or not text.strip()


def test_malformed_cloud_references_need_no_cloud_library():
    # The form is checked before any SDK import, so a typo is reported even without the extra.
    code = textwrap.dedent("""
        import sys
        for name in ("boto3", "google.cloud.secretmanager_v1", "azure.keyvault.secrets"):
            sys.modules[name] = None  # import of it now fails, as if not installed
        from stackwise import secrets
        from stackwise.errors import ConfigError, MissingDependencyError
        for ref in ("gcp-sm://nope", "azure-kv://x/y", "aws-sm://arn:aws:s3:::b"):
            try:
                secrets.resolve_secret(ref, what="k")
            except ConfigError as exc:
                assert "malformed" in str(exc), exc
        for ref, extra in (("aws-sm://name", "runtime"), ("gcp-sm://projects/p/secrets/s", "runtime"),
                           ("azure-kv://my-vault/name", "runtime")):
            try:
                secrets.resolve_secret(ref, what="k")
            except MissingDependencyError as exc:
                assert f"pip install 'stackwise[{extra}]'" in str(exc), exc
            else:
                raise AssertionError(ref)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_missing_dependency_is_a_stackwise_error():
    assert issubclass(MissingDependencyError, ImportError)
    assert MissingDependencyError.exit_code == ConfigError.exit_code == 2


# -- cache and redaction -----------------------------------------------------------------------
def test_a_reference_is_read_once_per_process_until_the_cache_is_cleared(tmp_path):
    path = tmp_path / "key"
    path.write_text(json.dumps({"a": "value-a-1234", "b": "value-b-5678"}), encoding="utf-8")
    assert secrets.resolve_secret(f"file://{path}#a", what="k") == "value-a-1234"
    path.write_text(json.dumps({"a": "rotated-a", "b": "rotated-b"}), encoding="utf-8")
    # Same secret, another key: still the one read (one read per secret, not per key).
    assert secrets.resolve_secret(f"file://{path}#b", what="k") == "value-b-5678"
    assert secrets.resolve_secret(f"file://{path}#a", what="k") == "value-a-1234"
    secrets.clear_cache()
    assert secrets.resolve_secret(f"file://{path}#a", what="k") == "rotated-a"


def test_redact_masks_every_value_resolved_so_far(tmp_path, monkeypatch):
    monkeypatch.setenv("SW_TEST_KEY", VALUE)
    path = tmp_path / "creds.json"
    path.write_text(json.dumps({"token": "tok_FAKE_0123456789"}), encoding="utf-8")
    secrets.resolve_secret("env://SW_TEST_KEY", what="k")
    secrets.resolve_secret(f"file://{path}#token", what="k")
    text = f"401 from server: bad key {VALUE}; token=tok_FAKE_0123456789; body={path.read_text()}"
    masked = secrets.redact(text)
    assert VALUE not in masked and "tok_FAKE_0123456789" not in masked
    assert masked.startswith("401 from server: bad key ***; token=***")
    assert secrets.redact("nothing secret here") == "nothing secret here"
    secrets.clear_cache()  # forgetting the cache keeps the values masked
    assert VALUE not in secrets.redact(text)


def test_hosted_redact_also_masks_resolved_values(monkeypatch):
    from stackwise.adapters.vectors._hosted import redact

    monkeypatch.setenv("SW_TEST_KEY", VALUE)
    secrets.resolve_secret("env://SW_TEST_KEY", what="k")
    assert redact(f"a {VALUE} b other", "other") == "a *** b ***"


def test_the_value_never_appears_in_errors_output_or_logs(tmp_path, monkeypatch, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("SW_TEST_KEY", VALUE)
    json_file = tmp_path / "creds.json"
    json_file.write_text(json.dumps({"apiKey": VALUE}), encoding="utf-8")
    not_json = tmp_path / "plain"
    not_json.write_text(VALUE, encoding="utf-8")
    assert secrets.resolve_secret("env://SW_TEST_KEY", what="k") == VALUE
    assert secrets.resolve_secret(f"file://{json_file}#apiKey", what="k") == VALUE
    texts = []
    for ref in (f"file://{json_file}#nope", f"file://{not_json}#apiKey", f"env://SW_TEST_KEY#apiKey",
                "env://SW_TEST_KEY_ABSENT", "vault://x", VALUE, f"file://{tmp_path}/x"):
        with pytest.raises(ConfigError) as caught:
            secrets.resolve_secret(ref, what="k")
        texts += [str(caught.value), repr(caught.value), caught.value.what, str(caught.value.where),
                  str(caught.value.fix)]
    out = capsys.readouterr()
    texts += [out.out, out.err, caplog.text, repr(secrets.parse(f"file://{json_file}#apiKey"))]
    for text in texts:
        assert VALUE not in text


# -- the vector store helper -------------------------------------------------------------------
def test_hosted_resolve_secret_delegates_and_keeps_its_default(monkeypatch, tmp_path):
    from stackwise.adapters.vectors._hosted import resolve_secret

    monkeypatch.setenv("PINECONE_API_KEY", "default-key-123")
    assert resolve_secret(None, default_env="PINECONE_API_KEY", what="Pinecone store") == "default-key-123"
    path = tmp_path / "key"
    path.write_text(VALUE, encoding="utf-8")
    assert resolve_secret(f"file://{path}", default_env="PINECONE_API_KEY", what="Pinecone store") == VALUE
    monkeypatch.delenv("PINECONE_API_KEY")
    with pytest.raises(ConfigError, match="no API key for the Pinecone store"):
        resolve_secret(None, default_env="PINECONE_API_KEY", what="Pinecone store")
    with pytest.raises(ConfigError, match=r"the Pinecone store API key is not set: \$NOPE is empty"):
        resolve_secret("env://NOPE", default_env="PINECONE_API_KEY", what="Pinecone store")


# -- import weight -----------------------------------------------------------------------------
def test_import_loads_no_cloud_sdk(tmp_path):
    code = textwrap.dedent("""
        import sys, json
        base = set(sys.modules)
        import stackwise.secrets
        import stackwise.adapters.vectors._hosted
        stackwise.secrets.redact("x")
        top = {name.split(".")[0] for name in set(sys.modules) - base}
        print(json.dumps(sorted(top)))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert "stackwise" in loaded  # the probe saw the import
    assert loaded & {"boto3", "botocore", "google", "azure", "grpc", "requests", "urllib3"} == set()
