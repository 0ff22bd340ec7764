"""Log a container engine in to a stack's image registry with the cloud's own short-lived credential.

    from stackwise.registry_login import login
    login("podman", "123456789012.dkr.ecr.us-east-1.amazonaws.com", "aws")

| cloud | registry host | credential | engine user |
|---|---|---|---|
| aws | `<account>.dkr.ecr.<region>.amazonaws.com` | boto3 `ecr.get_authorization_token()` (12 h) | `AWS` |
| gcp | `<region>-docker.pkg.dev`, `gcr.io` | `google.auth.default()`, refreshed (1 h) | `oauth2accesstoken` |
| azure | `<name>.azurecr.io` | an AAD token for ARM (DefaultAzureCredential) exchanged at `https://<registry>/oauth2/exchange` for an ACR refresh token (3 h) | `00000000-0000-0000-0000-000000000000` |

The engine runs `<engine> login --username USER --password-stdin HOST`: the password goes on
stdin, never on the command line, into a log or into an error message. Any other registry (a
local one, Docker Hub, a mirror) gets no login: log in to it yourself.

`$STACKWISE_REGISTRY_HOST` (for tests and mirrors) sends the login, and `stackwise.images`' push,
to another host (`127.0.0.1:5000`) while the cloud, region and account still come from the real
registry host. Only the standard library is imported at module level; boto3, google-auth,
azure-identity and requests load when that cloud's login runs.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
from dataclasses import dataclass

from .errors import ConfigError, StackwiseError

ENV_REGISTRY_HOST = "STACKWISE_REGISTRY_HOST"
GCP_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
AZURE_ARM_SCOPE = "https://management.azure.com/.default"
ACR_USER = "00000000-0000-0000-0000-000000000000"
LOG_LINES = 20

_ECR = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
_GCP = re.compile(r"^(?:[a-z0-9-]+-docker\.pkg\.dev|(?:[a-z]+\.)?gcr\.io)$")
_ACR = re.compile(r"^[a-z0-9]+\.azurecr\.(?:io|cn|us)$")


@dataclass(frozen=True)
class Credential:
    """What `<engine> login` needs. `repr` hides the password."""

    username: str
    password: str
    host: str

    def __repr__(self) -> str:
        return f"Credential(username={self.username!r}, password='***', host={self.host!r})"


# -- names ---------------------------------------------------------------------------------------
def registry_host(image: str) -> str | None:
    """The registry host of an image reference or repository (`host[:port]/path...`), or None
    for a Docker Hub short name (`library/python`), following Docker's rule: the first component
    is a host when it has a '.' or ':' or is `localhost`."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first.lower()
    return None


def cloud_of_host(host: str | None) -> str | None:
    """"aws", "gcp" or "azure" for a cloud registry host, else None."""
    host = (host or "").lower()
    if _ECR.match(host):
        return "aws"
    if _GCP.match(host):
        return "gcp"
    if _ACR.match(host):
        return "azure"
    return None


def redirected(reference: str) -> str:
    """`reference` with its registry host replaced by `$STACKWISE_REGISTRY_HOST` when that is set."""
    override = os.environ.get(ENV_REGISTRY_HOST, "").strip().rstrip("/")
    host = registry_host(reference)
    if not override or host is None:
        return reference
    return override + reference[len(host):]


# -- credentials ---------------------------------------------------------------------------------
def credential(host: str, cloud: str | None = None) -> Credential | None:
    """A short-lived credential for the registry at `host`, or None when it is not a cloud
    registry. `cloud` (a stack's cloud) wins over the host's pattern; "local" means none.

    Raises ConfigError when the cloud's credentials are missing or expired (saying how to sign
    in), MissingDependencyError when its SDK is not installed, StackwiseError when the cloud
    refuses for another reason.
    """
    cloud = cloud if cloud in ("aws", "gcp", "azure") else (None if cloud == "local" else cloud_of_host(host))
    login_host = os.environ.get(ENV_REGISTRY_HOST, "").strip().rstrip("/") or host
    if cloud == "aws":
        return _aws(host, login_host)
    if cloud == "gcp":
        return _gcp(host, login_host)
    if cloud == "azure":
        return _azure(host, login_host)
    return None


def _aws(host: str, login_host: str) -> Credential:
    from .registry import require

    boto3 = require("boto3", "aws", "logging in to ECR")
    import botocore.exceptions as bx

    match = _ECR.match(host)
    region = match.group("region") if match else None
    kwargs = {"registryIds": [match.group("account")]} if match else {}
    sign_in = ("sign in: `aws sso login` (SSO profiles), `aws configure` (access keys) or an instance/task role; "
               "choose the profile with AWS_PROFILE")
    try:
        # A fresh session: boto3's default one keeps the credentials it first found.
        ecr = boto3.session.Session(region_name=region).client("ecr")
        data = ecr.get_authorization_token(**kwargs)["authorizationData"][0]
    except (bx.NoCredentialsError, bx.PartialCredentialsError, bx.NoRegionError, bx.TokenRetrievalError,
            bx.SSOError, bx.UnauthorizedSSOTokenError) as exc:
        raise ConfigError(f"no usable AWS credentials to log in to the ECR registry {host} ({exc})",
                          where="AWS credentials (environment, ~/.aws/config, SSO cache, instance role)",
                          fix=sign_in) from None
    except bx.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("ExpiredTokenException", "ExpiredToken", "UnrecognizedClientException",
                    "InvalidClientTokenId", "InvalidSignatureException"):
            raise ConfigError(f"AWS refused the credentials used to log in to {host} ({code})",
                              where="AWS credentials", fix=sign_in) from None
        raise StackwiseError(f"ECR GetAuthorizationToken for {host} failed: {exc}", where=f"ECR in {region or 'default region'}",
                             fix="the identity needs ecr:GetAuthorizationToken (and push rights on the repository)") from None
    except bx.BotoCoreError as exc:
        raise StackwiseError(f"could not reach ECR to log in to {host}: {exc}", where=f"ECR in {region}") from None
    # The token is for `registryIds`' registry (its proxyEndpoint): the host pushed to.
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    return Credential(user, password, login_host)


def _gcp(host: str, login_host: str) -> Credential:
    from .registry import require

    google_auth = require("google.auth", "gcp", "logging in to Artifact Registry")
    import google.auth.exceptions as gx
    import google.auth.transport.requests as transport

    sign_in = ("sign in: `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS "
               "to a service account key file, or run on GCP with a service account")
    try:
        creds, _ = google_auth.default(scopes=[GCP_SCOPE])
    except gx.DefaultCredentialsError as exc:
        raise ConfigError(f"no Google credentials to log in to the Artifact Registry {host} ({_first_line(exc)})",
                          where="Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud's "
                                "application_default_credentials.json, the metadata server)", fix=sign_in) from None
    try:
        creds.refresh(transport.Request())
    except gx.RefreshError as exc:
        raise ConfigError(f"Google refused to refresh the credentials used to log in to {host} ({_first_line(exc)})",
                          where="Application Default Credentials", fix=sign_in) from None
    except gx.TransportError as exc:
        raise StackwiseError(f"could not reach Google to get a token for {host}: {_first_line(exc)}") from None
    if not creds.token:
        raise ConfigError(f"the Google credentials gave no access token for {host}",
                          where="Application Default Credentials", fix=sign_in)
    return Credential("oauth2accesstoken", creds.token, login_host)


def _azure(host: str, login_host: str) -> Credential:
    from .registry import require

    identity = require("azure.identity", "azure", "logging in to Azure Container Registry")
    requests = require("requests", "azure", "logging in to Azure Container Registry")
    from azure.core.exceptions import ClientAuthenticationError

    sign_in = ("sign in: `az login` (and `az account set --subscription ...`), or set AZURE_CLIENT_ID/"
               "AZURE_TENANT_ID/AZURE_CLIENT_SECRET, or run with a managed identity")
    try:
        aad = identity.DefaultAzureCredential().get_token(AZURE_ARM_SCOPE).token
    except ClientAuthenticationError as exc:
        raise ConfigError(f"no usable Azure credentials to log in to the container registry {host} "
                          f"({_first_line(exc)})", where="DefaultAzureCredential (environment, managed identity, "
                          "Azure CLI, ...)", fix=sign_in) from None
    url = f"https://{login_host}/oauth2/exchange"
    try:
        answer = requests.post(url, data={"grant_type": "access_token", "service": login_host, "access_token": aad},
                               timeout=30)
    except requests.RequestException as exc:
        raise StackwiseError(f"could not reach {url} to log in to {host}: {exc}") from None
    if answer.status_code in (401, 403):
        raise ConfigError(f"{host} refused the Azure identity's token ({answer.status_code})", where=url,
                          fix="the identity needs the AcrPush role on the registry (`az role assignment create "
                              "--role AcrPush ...`); or sign in as another identity: `az login`")
    if answer.status_code != 200:
        raise StackwiseError(f"{url} answered {answer.status_code}: {answer.text[-300:]}", where=url)
    try:
        refresh = answer.json()["refresh_token"]
    except (ValueError, KeyError, TypeError):
        raise StackwiseError(f"{url} answered without a refresh_token", where=url) from None
    return Credential(ACR_USER, refresh, login_host)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


# -- the engine ----------------------------------------------------------------------------------
def engine_login(engine: str, cred: Credential, timeout: float = 120) -> None:
    """`<engine> login --username USER --password-stdin HOST` with the password on stdin.

    Raises StackwiseError with the engine's last lines (the password masked) when it fails."""
    cmd = [engine, "login", "--username", cred.username, "--password-stdin", cred.host]
    try:
        proc = subprocess.run(cmd, input=cred.password + "\n", capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StackwiseError(f"{engine} login to {cred.host} took longer than {timeout:.0f} s",
                             where=cred.host) from None
    if proc.returncode != 0:
        lines = [x for x in (proc.stderr + "\n" + proc.stdout).strip().splitlines() if x.strip()]
        tail = mask("\n".join(lines[-LOG_LINES:]), cred.password)
        raise StackwiseError(f"{engine} login to {cred.host} as {cred.username} failed (exit status "
                             f"{proc.returncode}):\n{tail}", where=" ".join(cmd),
                             fix="check that the identity may push to this registry, and that the registry host is "
                                 "right (the stack's training_image output, or --repository)")


def mask(text: str, secret: str) -> str:
    """`text` with `secret` (and its base64 form) replaced by ***."""
    for value in (secret, base64.b64encode(secret.encode()).decode()):
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def login(engine: str, registry_host: str, cloud: str | None = None, timeout: float = 120) -> Credential | None:
    """Log `engine` in to `registry_host` with `cloud`'s short-lived credential (see the module
    docstring). `cloud`: the stack's cloud; None decides from the host's pattern; "local" or a
    registry that is not a cloud one: nothing is done and None is returned. Returns the
    credential used (its password is not shown by repr)."""
    cred = credential(registry_host, cloud)
    if cred is not None:
        engine_login(engine, cred, timeout)
    return cred
