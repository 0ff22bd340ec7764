"""`stackwise.registry_login` and the push of `stackwise.images`, against a real registry and real engines.

Real: the registry is Debian's `docker-registry` (CNCF Distribution v2) on 127.0.0.1 with htpasswd
(bcrypt) basic auth; podman runs the real `login --password-stdin` and `push --digestfile`; the
digest returned is checked against the manifest the registry serves. AWS: boto3 asks moto in
server mode for the ECR authorization token, and the registry's htpasswd holds user `AWS` with
that token's password, so a wrong username or password fails the login. GCP: `google.auth.default`
loads an authorized_user file whose `token_uri` is a local OAuth server, and the refresh is a real
HTTP token request; the registry knows `oauth2accesstoken` with that access token. Azure:
`DefaultAzureCredential` (limited to the Azure CLI credential, a stub `az` on PATH) gives the ARM
token; a small HTTPS server speaks ACR's `/oauth2/exchange` (form POST -> refresh_token) and the
registry's `/v2/` basic-auth check, so podman logs in to it as the null-GUID user.

`$STACKWISE_REGISTRY_HOST` sends every login and push to 127.0.0.1:PORT; podman is told that
host is insecure (plain HTTP, or HTTPS unverified) by a registries.conf in
`CONTAINERS_REGISTRIES_CONF`, and keeps its logins in `REGISTRY_AUTH_FILE` under tmp_path. A shim
`podman` on PATH records every command line: no password may appear in one.

Not verified: real ECR/Artifact Registry/ACR hosts, their TLS, the ECR repository-per-name rule,
and docker (no daemon here). Skips with the reason when podman or docker-registry is missing,
unless STACKWISE_REQUIRE_CONTAINERS=1 (CI), which makes that a failure.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "emulators"))

from _json_http import JsonHttpServer, form_body  # noqa: E402
from cloud_fixtures import aws_moto_env  # noqa: E402

from stackwise.errors import ConfigError, StackwiseError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "123456789012"
ECR_HOST = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com"
GCP_HOST = "us-central1-docker.pkg.dev"
ACR_HOST = "swdevimages.azurecr.io"
GCP_TOKEN = "ya29.TEST-gcp-access-t0ken-5e1f"
SA_EMAIL = "sw-dev-ci@my-project.iam.gserviceaccount.com"
ARM_TOKEN = "TEST-arm-token-77ab"
ACR_REFRESH = "TEST-acr-refresh-t0ken-31f0"
TINY = "localhost/stackwise-registry-test:tiny"


def _unavailable(reason: str) -> None:
    if os.environ.get("STACKWISE_REQUIRE_CONTAINERS") == "1":
        pytest.fail(f"{reason} (STACKWISE_REQUIRE_CONTAINERS=1 requires the container tests to run)", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF") or str(ROOT / "scripts" / "containers.conf")}


# -- session: moto, the registry, a tiny image -------------------------------------------------
@pytest.fixture(scope="session")
def podman() -> str:
    path = shutil.which("podman")
    if not path:
        _unavailable("podman is not installed (apt-get install -y podman runc)")
    return path


@pytest.fixture(scope="session")
def moto_endpoint():
    pytest.importorskip("moto", reason="install stackwise[dev]")
    pytest.importorskip("boto3", reason="install stackwise[aws]")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _moto_ecr_password(endpoint: str, account: str = ACCOUNT) -> str:
    import boto3

    ecr = boto3.client("ecr", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    token = ecr.get_authorization_token(registryIds=[account])["authorizationData"][0]["authorizationToken"]
    user, _, password = base64.b64decode(token).decode().partition(":")
    assert user == "AWS"
    return password


class Registry:
    def __init__(self, host: str, users: dict[str, str]) -> None:
        self.host = host
        self.users = users

    def manifest_digest(self, path: str, tag: str, user: str) -> str:
        request = urllib.request.Request(
            f"http://{self.host}/v2/{path}/manifests/{tag}", method="HEAD",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                               "application/vnd.oci.image.manifest.v1+json",
                     "Authorization": "Basic " + base64.b64encode(f"{user}:{self.users[user]}".encode()).decode()})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.headers["Docker-Content-Digest"]

    def catalog(self, user: str = "AWS") -> list[str]:
        request = urllib.request.Request(
            f"http://{self.host}/v2/_catalog",
            headers={"Authorization": "Basic " + base64.b64encode(f"{user}:{self.users[user]}".encode()).decode()})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())["repositories"] or []


@pytest.fixture(scope="session")
def registry(tmp_path_factory, moto_endpoint, podman):
    """docker-registry (Distribution v2) on 127.0.0.1 with htpasswd users `AWS` (moto's ECR token
    password) and `oauth2accesstoken` (the GCP test token)."""
    binary = shutil.which("docker-registry") or shutil.which("registry")
    if not binary:
        _unavailable("docker-registry is not installed (apt-get install -y docker-registry)")
    if not shutil.which("htpasswd"):
        _unavailable("htpasswd is not installed (apt-get install -y apache2-utils)")
    folder = tmp_path_factory.mktemp("registry")
    users = {"AWS": _moto_ecr_password(moto_endpoint), "oauth2accesstoken": GCP_TOKEN}
    lines = []
    for user, password in users.items():  # bcrypt, the password on stdin
        lines.append(subprocess.run(["htpasswd", "-niB", user], input=password + "\n", capture_output=True,
                                    text=True, check=True, timeout=30).stdout.strip())
    (folder / "htpasswd").write_text("\n".join(lines) + "\n")
    port = _free_port()
    (folder / "config.yml").write_text(
        "version: 0.1\nlog: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {folder / 'data'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}', secret: stackwise-test}}\n"
        f"auth: {{htpasswd: {{realm: stackwise-test, path: {folder / 'htpasswd'}}}}}\n")
    log = open(folder / "registry.log", "wb")
    proc = subprocess.Popen([binary, "serve", str(folder / "config.yml")], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2)
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"docker-registry did not start: {(folder / 'registry.log').read_text()[-2000:]}")
        time.sleep(0.1)
    yield Registry(f"127.0.0.1:{port}", users)
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


@pytest.fixture(scope="session")
def tiny_image(tmp_path_factory, podman) -> str:
    """A two-line image (FROM scratch, one file): pushes in well under a second."""
    folder = tmp_path_factory.mktemp("tiny")
    (folder / "Containerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\n")
    (folder / "hello.txt").write_text(f"stackwise registry test {time.time()}\n")
    subprocess.run([podman, "build", "-q", "-t", TINY, str(folder)], check=True, capture_output=True,
                   timeout=120, env=_podman_env())
    yield TINY
    subprocess.run([podman, "rmi", "-f", TINY], capture_output=True, timeout=60, env=_podman_env())


@pytest.fixture
def engine_env(tmp_path, monkeypatch, podman):
    """podman through a shim that records each command line, with its logins in tmp_path.
    `insecure(host, ...)` marks the test's registries insecure; `calls()` are the recorded
    command lines; `auth()` the logins podman stored."""
    shim_dir = tmp_path / "shim"
    shim_dir.mkdir()
    calls = tmp_path / "engine-calls.txt"
    shim = shim_dir / "podman"
    shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{calls}"\nexec {podman} "$@"\n')
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CONTAINERS_CONF", _podman_env()["CONTAINERS_CONF"])
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))
    monkeypatch.delenv("STACKWISE_CONTAINER_ENGINE", raising=False)
    conf = tmp_path / "registries.conf"
    (tmp_path / "auth.json").write_text('{"auths": {}}')

    def insecure(*hosts: str) -> None:
        conf.write_text("".join(f'[[registry]]\nlocation = "{h}"\ninsecure = true\n' for h in hosts))
        monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(conf))

    insecure()
    env = type("EngineEnv", (), {})()
    env.insecure = insecure
    env.calls = lambda: calls.read_text().splitlines() if calls.exists() else []
    env.auth = lambda: json.loads((tmp_path / "auth.json").read_text()).get("auths", {}) \
        if (tmp_path / "auth.json").exists() else {}
    return env


def _assert_no_secret(lines: list[str], *secrets: str) -> None:
    for line in lines:
        for secret in secrets:
            assert secret not in line, f"a password on a command line: {line!r}"


# -- names -------------------------------------------------------------------------------------
def test_registry_hosts_name_their_cloud(monkeypatch):
    from stackwise.registry_login import cloud_of_host, credential, redirected, registry_host

    assert cloud_of_host(ECR_HOST) == "aws"
    assert cloud_of_host("123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com") == "aws"
    assert cloud_of_host(GCP_HOST) == "gcp" and cloud_of_host("gcr.io") == "gcp"
    assert cloud_of_host(ACR_HOST) == "azure"
    for other in ("localhost", "127.0.0.1:5000", "docker.io", "registry.example", "evil.azurecr.io.example.com"):
        assert cloud_of_host(other) is None
    assert registry_host(f"{ECR_HOST}/sw-dev-images/train:abc") == ECR_HOST
    assert registry_host("localhost/stackwise") == "localhost"
    assert registry_host("library/python") is None
    monkeypatch.delenv("STACKWISE_REGISTRY_HOST", raising=False)
    assert redirected(f"{ECR_HOST}/x/train:1") == f"{ECR_HOST}/x/train:1"
    monkeypatch.setenv("STACKWISE_REGISTRY_HOST", "127.0.0.1:5000")
    assert redirected(f"{ECR_HOST}/x/train:1") == "127.0.0.1:5000/x/train:1"
    # Not a cloud registry, or a local stack: no credential, no login.
    assert credential("registry.example") is None
    assert credential(ECR_HOST, "local") is None


# -- AWS ECR -----------------------------------------------------------------------------------
def test_ecr_login_and_push_end_to_end(registry, tiny_image, engine_env, moto_endpoint, tmp_path, monkeypatch):
    from stackwise.images import push_image
    from stackwise.registry_login import login

    aws_moto_env(moto_endpoint, tmp_path, monkeypatch)
    engine_env.insecure(registry.host)
    monkeypatch.setenv("STACKWISE_REGISTRY_HOST", registry.host)
    image = f"{ECR_HOST}/sw-dev-images/train:t{int(time.time() * 1000)}"
    subprocess.run(["podman", "tag", tiny_image, image], check=True, timeout=60)
    try:
        cred = login("podman", ECR_HOST, "aws")
        assert (cred.username, cred.host) == ("AWS", registry.host)
        assert "***" in repr(cred) and registry.users["AWS"] not in repr(cred)
        assert registry.host in engine_env.auth()
        pinned = push_image("podman", image)
    finally:
        subprocess.run(["podman", "rmi", image, f"{registry.host}/{image.split('/', 1)[1]}"], capture_output=True)
    path, _, digest = pinned.partition("@")
    assert path == f"{registry.host}/sw-dev-images/train"
    assert digest == registry.manifest_digest("sw-dev-images/train", image.rsplit(":", 1)[1], "AWS")
    calls = engine_env.calls()
    assert any(c.startswith(f"login --username AWS --password-stdin {registry.host}") for c in calls), calls
    _assert_no_secret(calls, registry.users["AWS"])


def test_ecr_token_for_another_account_is_refused_with_the_engines_words(registry, engine_env, moto_endpoint,
                                                                         tmp_path, monkeypatch):
    """moto's token for account 999999999999 has another password: the registry refuses it."""
    from stackwise.registry_login import login

    aws_moto_env(moto_endpoint, tmp_path, monkeypatch)
    engine_env.insecure(registry.host)
    monkeypatch.setenv("STACKWISE_REGISTRY_HOST", registry.host)
    other = "999999999999.dkr.ecr.us-east-1.amazonaws.com"
    with pytest.raises(StackwiseError) as caught:
        login("podman", other)
    text = str(caught.value)
    assert f"login to {registry.host} as AWS failed" in text
    assert "invalid username/password" in text, text
    assert _moto_ecr_password(moto_endpoint, "999999999999") not in text
    assert registry.host not in engine_env.auth()


def test_push_the_registry_refuses_is_a_clear_error(registry, tiny_image, engine_env, monkeypatch):
    """No login for the registry: the push fails with podman's last lines and how to fix it."""
    from stackwise.images import push_image

    engine_env.insecure(registry.host)
    monkeypatch.setenv("STACKWISE_REGISTRY_HOST", registry.host)
    image = f"{ECR_HOST}/sw-dev-images/serve:refused"
    subprocess.run(["podman", "tag", tiny_image, image], check=True, timeout=60)
    try:
        with pytest.raises(StackwiseError) as caught:
            push_image("podman", image, timeout=120)
    finally:
        subprocess.run(["podman", "rmi", image, f"{registry.host}/sw-dev-images/serve:refused"], capture_output=True)
    text = str(caught.value)
    assert f"podman push of {registry.host}/sw-dev-images/serve:refused failed" in text
    assert "unauthorized" in text.lower() or "authentication required" in text.lower(), text
    assert "the registry refused the push" in text
    assert "sw-dev-images/serve" not in registry.catalog()


def _no_aws(tmp_path, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_ENDPOINT_URL", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def test_no_aws_credentials_stop_build_images_before_anything_is_built(tmp_path, monkeypatch, engine_env):
    pytest.importorskip("boto3", reason="install stackwise[aws]")
    from stackwise.images import build_images

    _no_aws(tmp_path, monkeypatch)
    root = tmp_path / "repo"
    root.mkdir()
    (root / "Containerfile").write_text("FROM scratch\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "requirements.txt").write_text("")
    with pytest.raises(ConfigError) as caught:
        build_images(f"{ECR_HOST}/sw-dev-images", "b", wheels, "local", "podman", push=True, root=root)
    error = caught.value
    assert "no usable AWS credentials" in error.what and ECR_HOST in error.what
    assert "aws sso login" in error.fix
    assert not [c for c in engine_env.calls() if c.split()[0] in ("build", "push", "login")]


def test_cli_image_build_push_without_credentials_is_exit_2_without_traceback(tmp_path, monkeypatch, engine_env):
    pytest.importorskip("boto3", reason="install stackwise[aws]")
    _no_aws(tmp_path, monkeypatch)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "requirements.txt").write_text("")
    proc = subprocess.run([sys.executable, "-m", "stackwise.cli", "image", "build", "--push",
                           "--repository", f"{ECR_HOST}/sw-dev-images", "--wheelhouse", str(wheels)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert "aws sso login" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert not [c for c in engine_env.calls() if c.split()[0] in ("build", "push", "login")]


# -- GCP Artifact Registry ---------------------------------------------------------------------
class _OAuthServer:
    """Google's OAuth token endpoint for a service account's JWT-bearer grant (form POST /token,
    `assertion` a JWT whose `iss` is the account's email and whose `scope` is asked for)."""

    def __init__(self, email: str, access_token: str) -> None:
        self.grants: list[dict] = []
        self.refuse = False
        self.email, self.access_token = email, access_token
        self._http = JsonHttpServer(self._route, body=form_body)
        self.url = self._http.url

    def _route(self, method: str, path: str, form: dict[str, list[str]], headers) -> tuple:
        if method != "POST":
            return 501, {"error": "unsupported_method"}
        claims = {}
        if form.get("assertion"):
            payload = form["assertion"][0].split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        self.grants.append({"grant_type": form.get("grant_type"), **claims})
        ok = (not self.refuse and path == "/token"
              and form.get("grant_type") == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
              and claims.get("iss") == self.email)
        return (200, {"access_token": self.access_token, "expires_in": 3599, "token_type": "Bearer"}) if ok else \
            (400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})

    def stop(self) -> None:
        self._http.stop()


def _gcp_env(tmp_path, monkeypatch, adc: dict | None) -> None:
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    try:  # read at import: a session that imported google.auth earlier would still probe the metadata server
        from google.auth.compute_engine import _metadata
        monkeypatch.setattr(_metadata, "_NO_GCE_CHECK", True, raising=False)
    except ImportError:
        pass
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    for key in ("GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT"):
        monkeypatch.delenv(key, raising=False)
    if adc is None:
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    else:
        path = tmp_path / "adc.json"
        path.write_text(json.dumps(adc))
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))


@pytest.fixture
def oauth_server():
    pytest.importorskip("google.auth", reason="install stackwise[gcp]")
    server = _OAuthServer(SA_EMAIL, GCP_TOKEN)
    yield server
    server.stop()


def _service_account_key(server: _OAuthServer) -> dict:
    """A service account key file (a fresh RSA key) whose token_uri is the local OAuth server.
    (An authorized_user file cannot be pointed elsewhere: google-auth always sends its refresh to
    oauth2.googleapis.com.)"""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {"type": "service_account", "project_id": "my-project", "private_key_id": "test-key-1",
            "private_key": pem, "client_email": SA_EMAIL, "client_id": "1234567890",
            "token_uri": f"{server.url}/token"}


def test_artifact_registry_login_and_push_with_a_refreshed_token(registry, tiny_image, engine_env, oauth_server,
                                                                   tmp_path, monkeypatch):
    from stackwise.images import push_image
    from stackwise.registry_login import login

    _gcp_env(tmp_path, monkeypatch, _service_account_key(oauth_server))
    engine_env.insecure(registry.host)
    monkeypatch.setenv("STACKWISE_REGISTRY_HOST", registry.host)
    cred = login("podman", GCP_HOST)  # the cloud from the host's pattern
    assert (cred.username, cred.password, cred.host) == ("oauth2accesstoken", GCP_TOKEN, registry.host)
    [grant] = oauth_server.grants
    assert grant["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    assert grant["scope"] == "https://www.googleapis.com/auth/cloud-platform"
    image = f"{GCP_HOST}/my-project/sw-dev-images/serve:gcp"
    subprocess.run(["podman", "tag", tiny_image, image], check=True, timeout=60)
    try:
        pinned = push_image("podman", image)
    finally:
        subprocess.run(["podman", "rmi", image, f"{registry.host}/my-project/sw-dev-images/serve:gcp"],
                       capture_output=True)
    assert pinned == (f"{registry.host}/my-project/sw-dev-images/serve@"
                      + registry.manifest_digest("my-project/sw-dev-images/serve", "gcp", "oauth2accesstoken"))
    _assert_no_secret(engine_env.calls(), GCP_TOKEN)


def test_no_google_credentials_is_a_config_error(tmp_path, monkeypatch, engine_env):
    pytest.importorskip("google.auth", reason="install stackwise[gcp]")
    from stackwise.registry_login import login

    _gcp_env(tmp_path, monkeypatch, None)
    with pytest.raises(ConfigError) as caught:
        login("podman", GCP_HOST, "gcp")
    assert "no Google credentials" in caught.value.what
    assert "gcloud auth application-default login" in caught.value.fix
    assert not engine_env.calls()


def test_revoked_google_credentials_are_a_config_error(oauth_server, tmp_path, monkeypatch, engine_env):
    from stackwise.registry_login import login

    oauth_server.refuse = True
    _gcp_env(tmp_path, monkeypatch, _service_account_key(oauth_server))
    with pytest.raises(ConfigError) as caught:
        login("podman", GCP_HOST, "gcp")
    assert "refused to refresh" in caught.value.what and "invalid_grant" in caught.value.what
    assert "gcloud auth application-default login" in caught.value.fix
    assert not engine_env.calls()


# -- Azure Container Registry ------------------------------------------------------------------
class _AcrServer:
    """ACR over HTTPS: `POST /oauth2/exchange` (form: grant_type=access_token, service, access_token)
    -> `{"refresh_token"}`, and the Distribution `/v2/` check the engine's login makes (401 with a
    Basic challenge, 200 for the null-GUID user with that refresh token)."""

    def __init__(self, ca_file: str) -> None:
        self.exchanges: list[dict[str, list[str]]] = []
        self.refuse = False
        self._http = JsonHttpServer(self._route, cert_file=ca_file, body=form_body)
        self.host = self._http.host

    def _route(self, method: str, path: str, form: dict[str, list[str]], headers) -> tuple:
        if method == "POST":
            if path != "/oauth2/exchange":
                return 404, {"errors": [{"code": "NOT_FOUND"}]}
            self.exchanges.append(form)
            if self.refuse or form.get("grant_type") != ["access_token"] or form.get("access_token") != [ARM_TOKEN]:
                return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "invalid token"}]}
            return 200, {"refresh_token": ACR_REFRESH}
        if method != "GET":
            return 501, {"errors": [{"code": "UNSUPPORTED"}]}
        if path.rstrip("/") != "/v2":
            return 404, {"errors": [{"code": "NOT_FOUND"}]}
        expected = "Basic " + base64.b64encode(f"00000000-0000-0000-0000-000000000000:{ACR_REFRESH}".encode()).decode()
        if headers.get("Authorization") == expected:
            return 200, {}
        return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}, \
            {"WWW-Authenticate": 'Basic realm="acr-test"', "Docker-Distribution-Api-Version": "registry/2.0"}

    def stop(self) -> None:
        self._http.stop()


def _az_login(tmp_path, monkeypatch, logged_in: bool) -> None:
    """DefaultAzureCredential limited to the Azure CLI credential, and a stub `az` that answers an
    ARM token (no `az` at all when not logged in)."""
    bin_dir = tmp_path / "az-bin"
    bin_dir.mkdir(exist_ok=True)
    if logged_in:
        az = bin_dir / "az"
        az.write_text('#!/bin/sh\ncase "$*" in *"get-access-token"*"--resource https://management.azure.com"*) ;;\n'
                      '  *) echo "ERROR: unexpected az call: $*" >&2; exit 1;; esac\n'
                      'echo \'{"accessToken": "' + ARM_TOKEN + '", "expires_on": 4102444800, "tokenType": "Bearer"}\'\n')
        az.chmod(0o755)
    path = [p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "az").exists()]
    monkeypatch.setenv("PATH", os.pathsep.join([str(bin_dir), *path]))
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "AzureCliCredential")
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(tmp_path / "azure-config"))
    for key in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_USERNAME",
                "AZURE_FEDERATED_TOKEN_FILE", "IDENTITY_ENDPOINT", "MSI_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def acr(tmp_path, monkeypatch):
    pytest.importorskip("azure.identity", reason="install stackwise[azure]")
    pytest.importorskip("cryptography", reason="install stackwise[dev]")
    from azureml_server import _self_signed_certificate

    ca_file = _self_signed_certificate()
    server = _AcrServer(ca_file)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca_file)
    monkeypatch.setenv("STACKWISE_REGISTRY_HOST", server.host)
    yield server
    server.stop()
    os.unlink(ca_file)


def test_acr_login_exchanges_the_aad_token_for_a_refresh_token(acr, engine_env, tmp_path, monkeypatch):
    from stackwise.registry_login import ACR_USER, login

    engine_env.insecure(acr.host)  # podman: HTTPS without verifying the test certificate
    _az_login(tmp_path, monkeypatch, logged_in=True)
    cred = login("podman", ACR_HOST, "azure")
    assert (cred.username, cred.password) == (ACR_USER, ACR_REFRESH) == ("00000000-0000-0000-0000-000000000000",
                                                                          ACR_REFRESH)
    assert acr.exchanges == [{"grant_type": ["access_token"], "service": [acr.host], "access_token": [ARM_TOKEN]}]
    assert acr.host in engine_env.auth()
    calls = engine_env.calls()
    assert calls == [f"login --username {ACR_USER} --password-stdin {acr.host}"]
    _assert_no_secret(calls, ACR_REFRESH, ARM_TOKEN)


def test_acr_refusing_the_identity_says_which_role_it_needs(acr, engine_env, tmp_path, monkeypatch):
    from stackwise.registry_login import login

    acr.refuse = True
    _az_login(tmp_path, monkeypatch, logged_in=True)
    with pytest.raises(ConfigError) as caught:
        login("podman", ACR_HOST, "azure")
    assert "refused the Azure identity's token (401)" in caught.value.what
    assert "AcrPush" in caught.value.fix
    assert ARM_TOKEN not in str(caught.value)
    assert not engine_env.calls()


def test_no_azure_credentials_is_a_config_error(acr, engine_env, tmp_path, monkeypatch):
    from stackwise.registry_login import login

    _az_login(tmp_path, monkeypatch, logged_in=False)
    with pytest.raises(ConfigError) as caught:
        login("podman", ACR_HOST, "azure")
    assert "no usable Azure credentials" in caught.value.what
    assert "az login" in caught.value.fix
    assert not acr.exchanges and not engine_env.calls()
