"""Secret references resolved to values, inside a job or on the submitting machine.

Stacks export references, never values (the contract refuses anything else):

| scheme | reference | read with |
|---|---|---|
| `env` | `env://NAME` | the process environment |
| `file` | `file:///abs/path` | the file's text, trailing newlines dropped |
| `aws-sm` | `aws-sm://<secret ARN or name>` | boto3 Secrets Manager GetSecretValue |
| `gcp-sm` | `gcp-sm://projects/P/secrets/S[/versions/V]` (V defaults to `latest`) | google-cloud-secret-manager |
| `azure-kv` | `azure-kv://<vault>/<secret>[/<version>]` | azure-keyvault-secrets |

Any reference may end in `#key` to pick one string from a secret that holds a JSON object
(`aws-sm://arn:...:secret:pinecone#apiKey`).

Guarantees:
- Every failure is a `ConfigError` (a missing client library: `MissingDependencyError`) whose
  message names the reference, never the value.
- Each reference is read once per process (except `env://`, which the environment already
  holds); every value resolved is remembered so `redact(text)` can mask it in foreign text
  (server replies, tracebacks) before that text is logged or written to error.json.
- Cloud SDKs are imported only inside the resolver that needs them.

Adding a scheme is one entry in `SCHEMES`.

Over ~400 lines on purpose: one resolver per secret store (env, file, AWS, GCP, Azure), each with
its own messages, behind one `resolve` and one cache.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlparse

from .errors import ConfigError
from .registry import require

log = logging.getLogger(__name__)

MASK = "***"
EXTRA = "runtime"  # the extra that installs every cloud's secret client (job images install it)


@dataclass(frozen=True)
class SecretRef:
    """A parsed reference: `scheme://path#key`. Holds no value."""

    text: str  # the whole reference, as given
    scheme: str
    path: str
    key: str | None  # the JSON key selector, or None

    @property
    def source(self) -> str:
        """The reference without its `#key`: what one read of the secret store fetches."""
        return f"{self.scheme}://{self.path}"


@dataclass(frozen=True)
class Scheme:
    """How one scheme is read: `read(ref, what)` returns the secret's text or raises ConfigError."""

    read: Callable[[SecretRef, str], str]
    form: str  # the reference format, for messages
    cached: bool = True  # read once per process
    quiet: tuple[str, ...] = ()  # library loggers whose DEBUG records would carry the value


# ---------------------------------------------------------------------------------------------
# Process-wide state: values by reference source, and every value seen (for redact()).
_lock = threading.Lock()
_cache: dict[str, str] = {}
_seen: set[str] = set()


class _DropWhileReading(logging.Filter):
    """Drops DEBUG records on the thread that is reading a secret: botocore logs whole response
    bodies at DEBUG, and the value is not yet known to `redact` while the response is parsed."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(_reading, "active", False) and record.levelno <= logging.DEBUG)


_reading = threading.local()
_DROP = _DropWhileReading()


@contextmanager
def _quiet(loggers: tuple[str, ...]) -> Iterator[None]:
    for name in loggers:
        logger = logging.getLogger(name)
        if _DROP not in logger.filters:
            logger.addFilter(_DROP)  # a filter on a logger sees only that logger's own records
    _reading.active = True
    try:
        yield
    finally:
        _reading.active = False


def _remember(value: str) -> None:
    if value:
        with _lock:
            _seen.add(value)


def redact(text: str) -> str:
    """`text` with every secret value resolved so far in this process replaced by '***'.

    Apply it to any text built from outside input (server replies, exception strings) before
    logging it or writing it to error.json. Longer values are masked first, so a value that
    contains another is masked whole.
    """
    if not text:
        return text
    with _lock:
        values = sorted(_seen, key=len, reverse=True)
    for value in values:
        text = text.replace(value, MASK)
    return text


def clear_cache() -> None:
    """Forget cached values so the next `resolve_secret` reads the store again (after a rotation).

    Values already seen stay masked by `redact`."""
    with _lock:
        _cache.clear()


# ---------------------------------------------------------------------------------------------
def _fail(what: str, ref: SecretRef | str, problem: str, fix: str) -> ConfigError:
    text = ref.text if isinstance(ref, SecretRef) else ref
    return ConfigError(f"the {what} cannot be read: {problem}", where=f"secret reference {text}", fix=fix)


def parse(ref: str) -> SecretRef:
    """Split a reference into scheme, path and `#key`; ConfigError if it is not one."""
    if not isinstance(ref, str) or not ref.strip():
        raise ConfigError("empty secret reference", where="secret reference",
                          fix=f"use one of: {', '.join(s.form for s in SCHEMES.values())}")
    scheme, sep, rest = ref.partition("://")
    if not sep or not re.fullmatch(r"[a-z][a-z0-9-]*", scheme):
        # Never echo the text: a value pasted where a reference belongs must not be printed.
        raise ConfigError("not a secret reference (scheme://...)", where="secret reference",
                          fix=f"use one of: {', '.join(s.form for s in SCHEMES.values())}")
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown secret scheme {scheme!r}", where=f"secret reference {ref}",
                          fix=f"use one of the schemes {', '.join(sorted(SCHEMES))}: "
                              f"{', '.join(s.form for s in SCHEMES.values())}")
    path, hashmark, key = rest.partition("#")
    if not path or re.search(r"\s", rest) or (hashmark and not key):
        raise ConfigError(f"malformed {scheme} secret reference", where=f"secret reference {ref}",
                          fix=f"write it as {SCHEMES[scheme].form} (optionally followed by #jsonKey)")
    return SecretRef(text=ref, scheme=scheme, path=path, key=key or None)


def resolve_secret(ref: str, *, what: str) -> str:
    """The value `ref` names (see the module docstring for the schemes).

    `what` names the secret in messages ("Pinecone store API key"). Raises ConfigError, whose
    message names the reference and never the value. Remote references are read once per
    process; every value returned is remembered for `redact`.
    """
    parsed = parse(ref)
    scheme = SCHEMES[parsed.scheme]
    raw = _cache.get(parsed.source) if scheme.cached else None
    if raw is None:
        with _quiet(scheme.quiet):
            raw = scheme.read(parsed, what)
        _remember(raw)
        if scheme.cached:
            with _lock:
                _cache[parsed.source] = raw
        log.debug("read secret %s", parsed.source)
    value = _select(raw, parsed, what) if parsed.key else raw
    _remember(value)
    return value


def _select(raw: str, ref: SecretRef, what: str) -> str:
    try:
        document = json.loads(raw)
    except ValueError:
        raise _fail(what, ref, "the secret is not a JSON object, so #key cannot select from it",
                    f"drop '#{ref.key}' to use the whole secret, or store a JSON object in it") from None
    if not isinstance(document, dict):
        raise _fail(what, ref, "the secret is not a JSON object, so #key cannot select from it",
                    f"drop '#{ref.key}' to use the whole secret, or store a JSON object in it")
    if ref.key not in document:
        # Key names are not secret; listing them makes a typo obvious.
        raise _fail(what, ref, f"the secret's JSON object has no key {ref.key!r}",
                    f"use one of its keys: {', '.join(sorted(map(str, document))) or '(none)'}")
    value = document[ref.key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _fail(what, ref, f"the value under {ref.key!r} is not a string or number",
                    "store the secret as a string under that key")
    return value if isinstance(value, str) else json.dumps(value)


# ---------------------------------------------------------------------------------------------
# Resolvers: one small function per scheme.
def _read_env(ref: SecretRef, what: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", ref.path):
        raise ConfigError(f"malformed env secret reference: {ref.path!r} is not a variable name",
                          where=f"secret reference {ref.text}", fix="write it as env://NAME")
    value = os.environ.get(ref.path)
    if not value:
        raise ConfigError(f"the {what} is not set: ${ref.path} is empty", where=f"secret reference {ref.text}",
                          fix=f"export {ref.path}=<the value> before running stackwise")
    return value


def _read_file(ref: SecretRef, what: str) -> str:
    if not ref.path.startswith("/"):
        raise ConfigError("malformed file secret reference: the path must be absolute",
                          where=f"secret reference {ref.text}", fix="write it as file:///abs/path (three slashes)")
    try:
        with open(ref.path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise _fail(what, ref, f"no file {ref.path}", "create the file, or mount the secret at that path") from None
    except IsADirectoryError:
        raise _fail(what, ref, f"{ref.path} is a directory", "name the file that holds the secret") from None
    except PermissionError:
        raise _fail(what, ref, f"permission denied reading {ref.path}",
                    "let this process's user read the file (chmod / chown)") from None
    except UnicodeDecodeError:
        raise _fail(what, ref, f"{ref.path} is not UTF-8 text", "store the secret as UTF-8 text") from None
    except OSError as exc:
        raise _fail(what, ref, f"{ref.path} could not be read ({exc.strerror})", "check the path") from None
    text = text.rstrip("\r\n")  # `echo value > file` adds a newline nobody means
    if not text:
        raise _fail(what, ref, f"{ref.path} is empty", "write the secret into the file")
    return text


_AWS_ARN = re.compile(r"arn:aws[a-z-]*:secretsmanager:([a-z0-9-]+):\d{12}:secret:.+")
_AWS_NAME = re.compile(r"[A-Za-z0-9/_+=.@-]{1,512}")
_AWS_FIX_CREDS = ("run the job with the stack's job role (the Pulumi program grants it secretsmanager:GetSecretValue), "
                  "or configure credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, aws sso login)")


def _read_aws(ref: SecretRef, what: str) -> str:
    arn = _AWS_ARN.fullmatch(ref.path)
    if not arn and (ref.path.startswith("arn:") or not _AWS_NAME.fullmatch(ref.path)):
        raise ConfigError("malformed aws-sm secret reference", where=f"secret reference {ref.text}",
                          fix="write it as aws-sm://arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME or aws-sm://NAME")
    boto3 = require("boto3", EXTRA, "reading AWS Secrets Manager secrets")
    botocore_exceptions = require("botocore.exceptions", EXTRA, "reading AWS Secrets Manager secrets")
    try:
        # An ARN names its region; a bare name is looked up in the configured region.
        client = boto3.session.Session().client("secretsmanager", region_name=arn.group(1) if arn else None)
        answer = client.get_secret_value(SecretId=ref.path)
    except botocore_exceptions.NoRegionError:
        raise _fail(what, ref, "no AWS region is configured for a secret named without its ARN",
                    "set AWS_DEFAULT_REGION, or reference the secret by its ARN") from None
    except (botocore_exceptions.NoCredentialsError, botocore_exceptions.PartialCredentialsError):
        raise _fail(what, ref, "no AWS credentials were found", _AWS_FIX_CREDS) from None
    except botocore_exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "ResourceNotFoundException":
            raise _fail(what, ref, "Secrets Manager has no such secret (or it has no current value)",
                        "check the ARN or name and the region, or run `pulumi up` to create it") from None
        if code in ("AccessDeniedException", "AccessDenied"):
            raise _fail(what, ref, "access denied by AWS (AccessDeniedException)",
                        "grant this identity secretsmanager:GetSecretValue on the secret (and kms:Decrypt on its key)"
                        ) from None
        if code in ("UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException",
                    "InvalidClientTokenId"):
            raise _fail(what, ref, f"AWS rejected the credentials ({code})", _AWS_FIX_CREDS) from None
        if code == "DecryptionFailure":
            raise _fail(what, ref, "Secrets Manager could not decrypt the secret with its KMS key",
                        "grant this identity kms:Decrypt on the secret's key") from None
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 403:
            # An error body botocore could not parse (a proxy's, or moto's XML for IAM): 403 alone.
            raise _fail(what, ref, "AWS refused the request (403): access denied, or the credentials were rejected",
                        "grant this identity secretsmanager:GetSecretValue on the secret; " + _AWS_FIX_CREDS) from None
        raise _fail(what, ref, f"Secrets Manager refused the request ({code or 'unknown error'})",
                    "check the reference and this identity's permissions") from None
    except botocore_exceptions.BotoCoreError as exc:
        raise _fail(what, ref, f"Secrets Manager could not be reached ({type(exc).__name__})",
                    "check the network path to Secrets Manager (a VPC endpoint in private subnets)") from None
    if answer.get("SecretString") is not None:
        return answer["SecretString"]
    try:
        return bytes(answer["SecretBinary"]).decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        raise _fail(what, ref, "the secret's binary value is not UTF-8 text",
                    "store the secret as a string (SecretString)") from None


_GCP_NAME = re.compile(r"projects/([^/]+)/secrets/([^/]+)(?:/versions/([^/]+))?")
_GCP_FIX_CREDS = ("run the job as the stack's job service account (the Pulumi program grants it "
                  "roles/secretmanager.secretAccessor on the secret), or `gcloud auth application-default login`")


def _loopback_http(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme == "http" and parsed.hostname in ("127.0.0.1", "localhost", "::1")


def _read_gcp(ref: SecretRef, what: str) -> str:
    match = _GCP_NAME.fullmatch(ref.path)
    if not match:
        raise ConfigError("malformed gcp-sm secret reference", where=f"secret reference {ref.text}",
                          fix="write it as gcp-sm://projects/PROJECT/secrets/SECRET[/versions/VERSION]")
    name = ref.path if match.group(3) else f"{ref.path}/versions/latest"
    from stackwise.adapters.clouds.gcp import status_of

    secretmanager = require("google.cloud.secretmanager_v1", EXTRA, "reading GCP Secret Manager secrets")
    client_options = require("google.api_core.client_options", EXTRA, "reading GCP Secret Manager secrets")
    api_exceptions = require("google.api_core.exceptions", EXTRA, "reading GCP Secret Manager secrets")
    auth_exceptions = require("google.auth.exceptions", EXTRA, "reading GCP Secret Manager secrets")
    endpoint = os.environ.get("STACKWISE_SECRETMANAGER_ENDPOINT")
    credentials = None
    if endpoint and _loopback_http(endpoint):
        # A local emulator over plain HTTP: no Google token should ever be sent there.
        credentials = require("google.auth.credentials", EXTRA).AnonymousCredentials()
    try:
        client = secretmanager.SecretManagerServiceClient(
            transport="rest", credentials=credentials,
            client_options=client_options.ClientOptions(api_endpoint=endpoint) if endpoint else None)
        answer = client.access_secret_version(name=name, timeout=60)
    except auth_exceptions.DefaultCredentialsError:
        raise _fail(what, ref, "no Google credentials were found", _GCP_FIX_CREDS) from None
    except auth_exceptions.GoogleAuthError as exc:
        raise _fail(what, ref, f"Google credentials could not be used ({type(exc).__name__})", _GCP_FIX_CREDS) from None
    except api_exceptions.GoogleAPICallError as exc:
        status = status_of(exc)
        if status == "NOT_FOUND":
            raise _fail(what, ref, f"Secret Manager has no secret version {name}",
                        "check the project, secret and version, or run `pulumi up` to create it") from None
        if status == "PERMISSION_DENIED":
            raise _fail(what, ref, "access denied by Secret Manager (PERMISSION_DENIED)",
                        "grant this identity roles/secretmanager.secretAccessor on the secret") from None
        if status == "UNAUTHENTICATED":
            raise _fail(what, ref, "Secret Manager rejected the credentials (UNAUTHENTICATED)",
                        _GCP_FIX_CREDS) from None
        if status == "FAILED_PRECONDITION":
            raise _fail(what, ref, "the secret version is disabled or destroyed",
                        "enable the version, or reference another one (/versions/latest)") from None
        raise _fail(what, ref, f"Secret Manager refused the request ({status or type(exc).__name__})",
                    "check the reference and this identity's permissions") from None
    except api_exceptions.GoogleAPIError as exc:
        raise _fail(what, ref, f"Secret Manager refused the request ({type(exc).__name__})",
                    "check the reference and this identity's permissions") from None
    except OSError as exc:  # requests' ConnectionError is an OSError
        raise _fail(what, ref, f"Secret Manager could not be reached ({type(exc).__name__})",
                    "check the network path to secretmanager.googleapis.com") from None
    data = answer.payload.data
    if "data_crc32c" in answer.payload:
        # Google's own guidance: check the checksum the server sends, so a corrupted value never
        # becomes a key that fails later with a confusing 401.
        crc32c = require("google_crc32c", EXTRA, "checking GCP Secret Manager payloads")
        if crc32c.value(data) != answer.payload.data_crc32c:
            raise _fail(what, ref, "the payload's CRC32C does not match (corrupted in transit)",
                        "retry; if it persists, report it")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(what, ref, "the secret is not UTF-8 text", "store the secret as UTF-8 text") from None


_AZURE_PATH = re.compile(r"([A-Za-z][A-Za-z0-9-]{1,22}[A-Za-z0-9])/([A-Za-z0-9-]{1,127})(?:/([A-Za-z0-9]+))?")
_AZURE_FIX_CREDS = ("run the job with the stack's managed identity (the Pulumi program grants it Key Vault Secrets "
                    "User on the vault), or sign in with `az login`, or set AZURE_CLIENT_ID/AZURE_TENANT_ID/"
                    "AZURE_CLIENT_SECRET")


def _vault_url(vault: str) -> tuple[str, bool]:
    """The vault's URL, and whether it is a local test server (`STACKWISE_KEYVAULT_URL`)."""
    override = os.environ.get("STACKWISE_KEYVAULT_URL")
    if not override:
        return f"https://{vault}.vault.azure.net", False
    url = override.replace("{vault}", vault)
    return url, urlparse(url).hostname in ("127.0.0.1", "localhost", "::1")


def _read_azure(ref: SecretRef, what: str) -> str:
    match = _AZURE_PATH.fullmatch(ref.path)
    if not match:
        raise ConfigError("malformed azure-kv secret reference", where=f"secret reference {ref.text}",
                          fix="write it as azure-kv://VAULT/SECRET[/VERSION] (vault: 3-24 letters, digits, '-'; "
                              "secret: letters, digits, '-')")
    vault, name, version = match.groups()
    secrets = require("azure.keyvault.secrets", EXTRA, "reading Azure Key Vault secrets")
    identity = require("azure.identity", EXTRA, "reading Azure Key Vault secrets")
    errors = require("azure.core.exceptions", EXTRA, "reading Azure Key Vault secrets")
    url, local = _vault_url(vault)
    # A local server cannot be a subdomain of the challenge's resource (vault.azure.net).
    options = {"verify_challenge_resource": False} if local else {}
    try:
        with identity.DefaultAzureCredential(exclude_interactive_browser_credential=True) as credential, \
                secrets.SecretClient(url, credential, **options) as client:
            value = client.get_secret(name, version).value
    except errors.ResourceNotFoundError:
        raise _fail(what, ref, f"vault {vault} has no secret {name}" + (f" version {version}" if version else ""),
                    "check the vault, secret and version, or run `pulumi up` to create it") from None
    except errors.ClientAuthenticationError as exc:
        if exc.status_code == 401:  # a token was sent and refused
            raise _fail(what, ref, f"vault {vault} rejected the token (401)", _AZURE_FIX_CREDS) from None
        raise _fail(what, ref, "no Azure credential could get a Key Vault token", _AZURE_FIX_CREDS) from None
    except errors.HttpResponseError as exc:
        if exc.status_code == 403:
            raise _fail(what, ref, f"access denied by vault {vault} (403)",
                        "grant this identity the Key Vault Secrets User role on the vault") from None
        raise _fail(what, ref, f"Key Vault refused the request ({exc.status_code})",
                    "check the reference and this identity's permissions") from None
    except errors.AzureError as exc:
        raise _fail(what, ref, f"Key Vault could not be reached ({type(exc).__name__})",
                    f"check the network path to {url}") from None
    if value is None:
        raise _fail(what, ref, "the secret has no value", "set a value on the secret")
    return value


SCHEMES: dict[str, Scheme] = {
    # The environment is already this process's copy: re-read it, so an export is seen at once.
    "env": Scheme(_read_env, "env://NAME", cached=False),
    "file": Scheme(_read_file, "file:///abs/path"),
    "aws-sm": Scheme(_read_aws, "aws-sm://<secret ARN or name>", quiet=("botocore.parsers", "botocore.endpoint")),
    "gcp-sm": Scheme(_read_gcp, "gcp-sm://projects/P/secrets/S[/versions/V]"),
    "azure-kv": Scheme(_read_azure, "azure-kv://<vault>/<secret>[/<version>]"),
}
