"""`stackwise.secrets` against the clouds' secret stores, over real HTTP with the real clients.

- aws-sm: boto3 against moto in server mode (`AWS_ENDPOINT_URL`).
- gcp-sm: `secretmanager_v1.SecretManagerServiceClient(transport="rest")` against
  tests/emulators/secretmanager_server.py (`STACKWISE_SECRETMANAGER_ENDPOINT`, plain HTTP on
  127.0.0.1, so AnonymousCredentials).
- azure-kv: `SecretClient` against tests/emulators/keyvault_server.py over HTTPS
  (`STACKWISE_KEYVAULT_URL`), signed in through a stub `az` (AzureCliCredential), with the
  401 challenge -> token -> retry exchange the real service makes.

Verified: values by every reference form, the JSON key selector, one read per secret per process,
not-found / denied / no-credential errors as ConfigError naming the reference, and the value
absent from every error, log record and output. Not verified: real cloud identities (the job's
role, service account or managed identity) and real endpoints.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "emulators"))

from cloud_fixtures import aws_moto_env, azure_cli_login  # noqa: E402

from stackwise import secrets  # noqa: E402
from stackwise.errors import ConfigError  # noqa: E402

VALUE = "sk_FAKE_cl0udl34k_4b7d"  # grep-able in any text


@pytest.fixture(autouse=True)
def fresh_cache():
    secrets.clear_cache()
    yield
    secrets.clear_cache()


def _error(ref: str, match: str, what: str = "test key") -> ConfigError:
    with pytest.raises(ConfigError, match=match) as caught:
        secrets.resolve_secret(ref, what=what)
    error = caught.value
    assert error.where == f"secret reference {ref}"
    for text in (str(error), repr(error), str(error.__cause__), str(error.__context__)):
        assert VALUE not in text
    return error


# -- AWS Secrets Manager (moto) ----------------------------------------------------------------
@pytest.fixture(scope="module")
def moto_endpoint():
    pytest.importorskip("moto", reason="install stackwise[dev]")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def sm(moto_endpoint, tmp_path, monkeypatch):
    """A Secrets Manager client on moto, and the environment pointing boto3 there."""
    import boto3

    aws_moto_env(moto_endpoint, tmp_path, monkeypatch)
    client = boto3.client("secretsmanager", region_name="us-east-1")
    yield client
    for page in client.get_paginator("list_secrets").paginate():
        for item in page["SecretList"]:
            client.delete_secret(SecretId=item["ARN"], ForceDeleteWithoutRecovery=True)


def test_aws_by_arn_and_by_name(sm):
    arn = sm.create_secret(Name="sw-dev/pinecone-api-key", SecretString=VALUE)["ARN"]
    assert secrets.resolve_secret(f"aws-sm://{arn}", what="k") == VALUE
    secrets.clear_cache()
    assert secrets.resolve_secret("aws-sm://sw-dev/pinecone-api-key", what="k") == VALUE


def test_aws_reads_the_current_version(sm):
    arn = sm.create_secret(Name="rotating", SecretString="old-value-1")["ARN"]
    sm.put_secret_value(SecretId=arn, SecretString="new-value-2")
    assert secrets.resolve_secret(f"aws-sm://{arn}", what="k") == "new-value-2"


def test_aws_arn_names_its_region(sm, monkeypatch):
    arn = sm.create_secret(Name="elsewhere", SecretString=VALUE)["ARN"]
    assert ":us-east-1:" in arn
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")  # the job runs in another region
    assert secrets.resolve_secret(f"aws-sm://{arn}", what="k") == VALUE
    _error("aws-sm://elsewhere", "Secrets Manager has no such secret")  # a bare name: this region


def test_aws_json_key_and_binary_secret(sm):
    arn = sm.create_secret(Name="store", SecretString=json.dumps({"apiKey": VALUE, "host": "h.example"}))["ARN"]
    assert secrets.resolve_secret(f"aws-sm://{arn}#apiKey", what="k") == VALUE
    assert secrets.resolve_secret(f"aws-sm://{arn}#host", what="k") == "h.example"
    _error(f"aws-sm://{arn}#apikey", "has no key 'apikey'")
    sm.create_secret(Name="binary", SecretBinary=VALUE.encode())
    assert secrets.resolve_secret("aws-sm://binary", what="k") == VALUE


def test_aws_reads_each_secret_once(sm):
    arn = sm.create_secret(Name="once", SecretString=json.dumps({"a": "value-a-1", "b": "value-b-2"}))["ARN"]
    assert secrets.resolve_secret(f"aws-sm://{arn}#a", what="k") == "value-a-1"
    sm.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
    assert secrets.resolve_secret(f"aws-sm://{arn}#b", what="k") == "value-b-2"  # from the one read
    secrets.clear_cache()
    _error(f"aws-sm://{arn}#a", "no such secret")


def test_aws_missing_secret(sm):
    error = _error("aws-sm://arn:aws:secretsmanager:us-east-1:123456789012:secret:absent-AbCdEf",
                   "Secrets Manager has no such secret")
    assert "pulumi up" in error.fix


def test_aws_no_credentials(sm, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    error = _error("aws-sm://anything", "no AWS credentials were found")
    assert "job role" in error.fix


@pytest.fixture
def enforce_iam(sm, moto_endpoint):
    """Call to make moto enforce IAM from then on; returns the keys of an IAM user with no policy."""
    import boto3
    import requests

    iam = boto3.client("iam", region_name="us-east-1")
    users = []

    def enforce() -> tuple[str, str]:
        iam.create_user(UserName="reader")
        users.append(iam.create_access_key(UserName="reader")["AccessKey"])
        requests.post(f"{moto_endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
        return users[0]["AccessKeyId"], users[0]["SecretAccessKey"]

    yield enforce
    requests.post(f"{moto_endpoint}/moto-api/reset-auth", data=b"inf", timeout=10).raise_for_status()
    for key in users:
        iam.delete_access_key(UserName="reader", AccessKeyId=key["AccessKeyId"])
        iam.delete_user(UserName="reader")


def test_aws_access_denied(sm, enforce_iam, monkeypatch):
    arn = sm.create_secret(Name="guarded", SecretString=VALUE)["ARN"]
    key_id, secret_key = enforce_iam()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    # Real AWS names AccessDeniedException in JSON; moto answers IAM refusals in XML, which
    # botocore cannot parse for this JSON service, so the 403 alone is what reaches us here.
    error = _error(f"aws-sm://{arn}", r"access denied")
    assert "secretsmanager:GetSecretValue" in error.fix


def test_aws_unknown_credentials(sm, enforce_iam, monkeypatch):
    sm.create_secret(Name="guarded", SecretString=VALUE)
    enforce_iam()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNUNKNOWN00")
    error = _error("aws-sm://guarded", "credentials were rejected")
    assert "AWS_ACCESS_KEY_ID" in error.fix


def test_aws_no_region_for_a_bare_name(sm, monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    _error("aws-sm://anything", "no AWS region")


# -- GCP Secret Manager (local v1 REST server) -------------------------------------------------
@pytest.fixture(scope="module")
def gcp_server():
    pytest.importorskip("google.cloud.secretmanager_v1", reason="install stackwise[runtime]")
    from secretmanager_server import SecretManagerServer

    server = SecretManagerServer().start()
    yield server
    server.stop()


@pytest.fixture
def gsm(gcp_server, monkeypatch):
    gcp_server.reset()
    monkeypatch.setenv("STACKWISE_SECRETMANAGER_ENDPOINT", gcp_server.url)
    return gcp_server


def test_gcp_latest_and_pinned_versions(gsm):
    gsm.add_version("my-project", "pinecone-api-key", "old-value-1")
    gsm.add_version("my-project", "pinecone-api-key", VALUE)
    assert secrets.resolve_secret("gcp-sm://projects/my-project/secrets/pinecone-api-key", what="k") == VALUE
    assert secrets.resolve_secret("gcp-sm://projects/my-project/secrets/pinecone-api-key/versions/1",
                                  what="k") == "old-value-1"
    assert secrets.resolve_secret("gcp-sm://projects/my-project/secrets/pinecone-api-key/versions/latest",
                                  what="k") == VALUE
    assert [r for r in gsm.requests] == [
        ("GET", "/v1/projects/my-project/secrets/pinecone-api-key/versions/latest:access"),
        ("GET", "/v1/projects/my-project/secrets/pinecone-api-key/versions/1:access"),
        ("GET", "/v1/projects/my-project/secrets/pinecone-api-key/versions/latest:access"),
    ]


def test_gcp_json_key_and_one_read_per_secret(gsm):
    gsm.add_version("p", "creds", json.dumps({"apiKey": VALUE, "user": "svc"}))
    assert secrets.resolve_secret("gcp-sm://projects/p/secrets/creds#apiKey", what="k") == VALUE
    assert secrets.resolve_secret("gcp-sm://projects/p/secrets/creds#user", what="k") == "svc"
    assert secrets.resolve_secret("gcp-sm://projects/p/secrets/creds", what="k") == json.dumps(
        {"apiKey": VALUE, "user": "svc"})
    assert len(gsm.requests) == 1


def test_gcp_missing_secret_and_version(gsm):
    gsm.add_version("p", "exists", VALUE)
    _error("gcp-sm://projects/p/secrets/absent", "no secret version projects/p/secrets/absent/versions/latest")
    _error("gcp-sm://projects/p/secrets/exists/versions/7", "no secret version")


def test_gcp_disabled_version(gsm):
    gsm.add_version("p", "s", VALUE, enabled=False)
    _error("gcp-sm://projects/p/secrets/s/versions/1", "disabled or destroyed")


def test_gcp_access_denied(gsm):
    gsm.add_version("p", "s", VALUE)
    gsm.deny("p", "s")
    error = _error("gcp-sm://projects/p/secrets/s", "access denied by Secret Manager")
    assert "roles/secretmanager.secretAccessor" in error.fix


def test_gcp_transient_unavailability_is_retried_by_the_client(gsm):
    # The client's own retry policy (ServiceUnavailable, 1 s first backoff) is kept.
    gsm.add_version("p", "s", VALUE)
    gsm.faults.append((503, "UNAVAILABLE"))
    assert secrets.resolve_secret("gcp-sm://projects/p/secrets/s", what="k") == VALUE
    assert len(gsm.requests) == 2


def test_gcp_payload_checksum_is_verified(gsm):
    gsm.add_version("p", "s", VALUE)
    gsm.corrupt = True
    _error("gcp-sm://projects/p/secrets/s", "CRC32C does not match")


def test_gcp_no_credentials(gsm, tmp_path, monkeypatch):
    # A real (non-emulator) endpoint needs Application Default Credentials; there are none.
    monkeypatch.delenv("STACKWISE_SECRETMANAGER_ENDPOINT")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    error = _error("gcp-sm://projects/p/secrets/s", "no Google credentials were found")
    assert "service account" in error.fix


# -- Azure Key Vault (local HTTPS server) ------------------------------------------------------
@pytest.fixture(scope="module")
def kv_server():
    pytest.importorskip("azure.keyvault.secrets", reason="install stackwise[runtime]")
    from keyvault_server import KeyVaultServer

    server = KeyVaultServer().start()
    yield server
    server.stop()


@pytest.fixture
def kv(kv_server, tmp_path, monkeypatch):
    from keyvault_server import RESOURCE

    kv_server.reset()
    azure_cli_login(kv_server, tmp_path, monkeypatch, resource=RESOURCE, token=kv_server.token)
    monkeypatch.setenv("STACKWISE_KEYVAULT_URL", kv_server.url)
    return kv_server


def test_azure_latest_and_pinned_versions(kv):
    first = kv.set_secret("pinecone-api-key", "old-value-1")
    kv.set_secret("pinecone-api-key", VALUE)
    assert secrets.resolve_secret("azure-kv://sw-dev-kv/pinecone-api-key", what="k") == VALUE
    assert secrets.resolve_secret(f"azure-kv://sw-dev-kv/pinecone-api-key/{first}", what="k") == "old-value-1"
    paths = [(method, path) for method, path, _ in kv.requests]
    assert ("GET", "/secrets/pinecone-api-key/") in paths and ("GET", f"/secrets/pinecone-api-key/{first}") in paths
    # Every answer the client accepted was to a request carrying the token the credential got.
    assert all(auth == f"Bearer {kv.token}" for _, _, auth in kv.requests if auth)


def test_azure_answers_the_bearer_challenge(kv_server, tmp_path, monkeypatch):
    # A fresh server (new URL, so no cached challenge): the first request goes without a token.
    from keyvault_server import RESOURCE, KeyVaultServer

    server = KeyVaultServer().start()
    try:
        azure_cli_login(server, tmp_path, monkeypatch, resource=RESOURCE, token=server.token)
        monkeypatch.setenv("STACKWISE_KEYVAULT_URL", server.url)
        server.set_secret("s", VALUE)
        assert secrets.resolve_secret("azure-kv://sw-dev-kv/s", what="k") == VALUE
        assert [auth for _, _, auth in server.requests] == [None, f"Bearer {server.token}"]
    finally:
        server.stop()


def test_azure_json_key_and_one_read_per_secret(kv):
    kv.set_secret("creds", json.dumps({"apiKey": VALUE, "user": "svc"}))
    assert secrets.resolve_secret("azure-kv://sw-dev-kv/creds#apiKey", what="k") == VALUE
    assert secrets.resolve_secret("azure-kv://sw-dev-kv/creds#user", what="k") == "svc"
    assert len([r for r in kv.requests if r[2]]) == 1


def test_azure_missing_secret(kv):
    error = _error("azure-kv://sw-dev-kv/absent", "vault sw-dev-kv has no secret absent")
    assert "pulumi up" in error.fix
    kv.set_secret("present", VALUE)
    _error("azure-kv://sw-dev-kv/present/" + "0" * 32, "no secret present version 0{32}")


def test_azure_access_denied(kv):
    kv.set_secret("locked", VALUE)
    kv.deny("locked")
    error = _error("azure-kv://sw-dev-kv/locked", r"access denied by vault sw-dev-kv \(403\)")
    assert "Key Vault Secrets User" in error.fix


def test_azure_token_rejected(kv, tmp_path, monkeypatch):
    from keyvault_server import RESOURCE

    kv.set_secret("s", VALUE)
    azure_cli_login(kv, tmp_path / "other", monkeypatch, resource=RESOURCE, token="a-token-for-someone-else")
    _error("azure-kv://sw-dev-kv/s", r"rejected the token \(401\)")


def test_azure_not_signed_in(kv, tmp_path, monkeypatch):
    kv.set_secret("s", VALUE)
    azure_cli_login(kv, tmp_path / "out", monkeypatch, logged_in=False)
    error = _error("azure-kv://sw-dev-kv/s", "no Azure credential could get a Key Vault token")
    assert "az login" in error.fix


def test_azure_vault_url_comes_from_the_vault_name(monkeypatch):
    monkeypatch.delenv("STACKWISE_KEYVAULT_URL", raising=False)
    assert secrets._vault_url("sw-dev-kv") == ("https://sw-dev-kv.vault.azure.net", False)
    monkeypatch.setenv("STACKWISE_KEYVAULT_URL", "https://{vault}.vault.azure.cn")
    assert secrets._vault_url("sw-dev-kv") == ("https://sw-dev-kv.vault.azure.cn", False)
    monkeypatch.setenv("STACKWISE_KEYVAULT_URL", "https://127.0.0.1:8443")
    assert secrets._vault_url("sw-dev-kv") == ("https://127.0.0.1:8443", True)


# -- every cloud: the value stays out of errors, output and logs --------------------------------
def test_values_never_reach_errors_output_or_logs(sm, gsm, kv, capsys, caplog):
    caplog.set_level(logging.DEBUG)  # botocore, google and azure-core log requests and replies at DEBUG
    sm.create_secret(Name="leak-test", SecretString=json.dumps({"apiKey": VALUE}))
    gsm.add_version("p", "leak-test", json.dumps({"apiKey": VALUE}))
    kv.set_secret("leak-test", json.dumps({"apiKey": VALUE}))
    caplog.clear()  # the setup's own CreateSecret request, logged by botocore, carries the value
    refs = ["aws-sm://leak-test", "gcp-sm://projects/p/secrets/leak-test", "azure-kv://sw-dev-kv/leak-test"]
    for ref in refs:
        assert secrets.resolve_secret(f"{ref}#apiKey", what="k") == VALUE
        _error(f"{ref}#missing", "has no key 'missing'")
    secrets.clear_cache()
    gsm.corrupt = True
    _error(refs[1], "CRC32C")
    out = capsys.readouterr()
    assert any(r.name == "stackwise.secrets" for r in caplog.records)  # DEBUG was captured
    assert any(r.name.startswith("botocore") for r in caplog.records)
    # botocore logs response bodies at DEBUG: those records are dropped while a secret is read.
    for record in caplog.records:
        assert VALUE not in record.getMessage(), record.name
    assert VALUE not in out.out + out.err


def test_vector_store_helper_reads_cloud_references(gsm):
    from stackwise.adapters.vectors._hosted import resolve_secret

    gsm.add_version("p", "pinecone-api-key", VALUE)
    assert resolve_secret("gcp-sm://projects/p/secrets/pinecone-api-key", default_env="PINECONE_API_KEY",
                          what="Pinecone store") == VALUE
