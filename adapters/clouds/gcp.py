"""GCP: credentials, clients and error mapping for the Vertex AI adapters (adapters/compute/vertex.py,
adapters/deploy/vertex.py), which build their requests with `aiplatform()`'s message types.

- `client(kind, stack, ...)`: an `aiplatform_v1` service client over REST at the stack's regional
  endpoint (or `$STACKWISE_VERTEX_ENDPOINT`), with the given credentials or Application Default
  Credentials (none: `CredentialsError` saying how to sign in);
- `authorized_session(credentials, stack)`: an HTTP session with the same credentials (Cloud
  Logging's REST API);
- `call(fn, what, stack=..., not_found=...)`: one call, its errors mapped by google-api-core's
  exception class (which is the HTTP status over REST): 429 -> `QuotaError` when it names a quota,
  else `TransientError`; 5xx, timeouts and resets -> `TransientError`; 401/403 ->
  `CredentialsError`; 404 -> `not_found(what)`; anything else -> `CloudError` carrying Google's
  canonical status (`status_of`);
- `label(value)`, `machine_spec(gpu, count, cpu)`: label values and machines, as Vertex takes them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from stackwise.errors import CloudError, CredentialsError, QuotaError, StackwiseError, TransientError
from stackwise.registry import require

T = TypeVar("T")

EXTRA = "gcp"
ENV_ENDPOINT = "STACKWISE_VERTEX_ENDPOINT"
SIGN_IN = "run `gcloud auth application-default login`"


def aiplatform(purpose: str) -> Any:
    """`google.cloud.aiplatform_v1` (its clients and request types)."""
    return require("google.cloud.aiplatform_v1", EXTRA, purpose)


def where(stack: Any) -> str:
    """`projects/P/locations/L` of the stack: the parent of its Vertex AI resources."""
    return f"projects/{stack.outputs.gcp_project}/locations/{stack.region}"


def client(kind: str, stack: Any, credentials: Any = None, api_endpoint: str | None = None,
           purpose: str = "the Vertex AI adapters") -> Any:
    """An `aiplatform_v1.<kind>` (JobServiceClient, EndpointServiceClient, ModelServiceClient) over
    REST; without `credentials`, Application Default Credentials (a CredentialsError when none)."""
    types = aiplatform(purpose)
    auth_exceptions = require("google.auth.exceptions", EXTRA)
    from google.api_core.client_options import ClientOptions

    endpoint = api_endpoint or os.environ.get(ENV_ENDPOINT) or f"{stack.region}-aiplatform.googleapis.com"
    try:
        return getattr(types, kind)(credentials=credentials, transport="rest",
                                    client_options=ClientOptions(api_endpoint=endpoint))
    except auth_exceptions.DefaultCredentialsError as exc:
        raise CredentialsError(
            f"no Google Cloud credentials: {exc}".split(". ")[0],
            where=f"stack {stack.name!r} (project {stack.outputs.gcp_project})",
            fix=SIGN_IN + ", or set GOOGLE_APPLICATION_CREDENTIALS to a service account key file",
        ) from None


def authorized_session(credentials: Any, stack: Any, what: str) -> Any:
    """An authorized `requests` session with `credentials`, else Application Default Credentials."""
    from google.auth.transport.requests import AuthorizedSession

    if credentials is None:
        import google.auth

        auth_exceptions = require("google.auth.exceptions", EXTRA)
        try:
            credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        except auth_exceptions.DefaultCredentialsError:
            raise CredentialsError(f"no Google Cloud credentials to {what}",
                                   where=f"project {stack.outputs.gcp_project}", fix=SIGN_IN) from None
    return AuthorizedSession(credentials)


def status_of(exc: Exception) -> str:
    """The canonical status (`FAILED_PRECONDITION`, ...) of a Google API error. Over REST,
    google-api-core picks the exception class by HTTP status alone (400 -> BadRequest), so the
    status Google's error JSON names is read from the response."""
    try:
        return str(exc.response.json()["error"]["status"])  # type: ignore[attr-defined]
    except Exception:
        code = getattr(exc, "grpc_status_code", None)
        if code is not None:
            return str(getattr(code, "name", ""))
        # An error without a body: the HTTP status says enough for these.
        return {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND"}.get(getattr(exc, "code", 0), "")


def call(fn: Callable[[], T], what: str, *, stack: Any, not_found: Callable[[str], StackwiseError]) -> T:
    """Run one Vertex AI call; its errors become TransientError (retried by the caller), `not_found(what)`
    for a 404, or a clear StackwiseError (see the module docstring)."""
    exc = require("google.api_core.exceptions", EXTRA)
    auth_exceptions = require("google.auth.exceptions", EXTRA)
    project, location, parent = stack.outputs.gcp_project, stack.region, where(stack)
    try:
        return fn()
    except auth_exceptions.DefaultCredentialsError as error:
        raise CredentialsError(f"no Google Cloud credentials for {what}", where=str(error)[:200],
                               fix=SIGN_IN) from None
    except (exc.TooManyRequests, exc.ResourceExhausted) as error:
        # RESOURCE_EXHAUSTED is both a rate limit and a spent quota; only the message tells which.
        if "quota metrics" in str(error.message).lower() or "gpus" in str(error.message).lower():
            raise QuotaError(f"Vertex AI quota exceeded for {what}: {error.message}",
                             where=f"project {project}, {location}",
                             fix="request more quota (IAM & Admin > Quotas: the 'custom_model_training_*' "
                             "metric named above), or choose a smaller GPU/count or another region",
                             code=status_of(error)) from None
        raise TransientError(f"{what}: {error.message}") from None
    except (exc.ServiceUnavailable, exc.InternalServerError, exc.GatewayTimeout, exc.BadGateway,
            exc.DeadlineExceeded) as error:
        raise TransientError(f"{what}: {error}") from None
    except (exc.Unauthenticated, exc.PermissionDenied) as error:
        raise CredentialsError(f"Google Cloud refused {what}: {error.message}", where=f"project {project}",
                               fix="check `gcloud auth application-default login` and the roles of the "
                               "account (Vertex AI User)", code=status_of(error)) from None
    except exc.NotFound:
        raise not_found(what) from None
    except exc.BadRequest as error:  # REST maps every 400 here (InvalidArgument, FailedPrecondition)
        message = str(error.message)
        # INVALID_ARGUMENT covers every bad field; the message names the machine or accelerator.
        if "machine type" in message.lower() or "accelerator" in message.lower():
            raise CloudError(f"Vertex AI does not offer the requested machine here: {message}",
                             where=f"location {location}",
                             fix="choose a GPU the region offers (see `stackwise plan`), or another region",
                             code=status_of(error)) from None
        raise CloudError(f"Vertex AI refused {what}: {message}", where=parent,
                         fix="correct the request or the stack outputs", code=status_of(error)) from None
    except exc.GoogleAPICallError as error:
        raise CloudError(f"Vertex AI refused {what}: {error}", where=parent,
                         fix="correct the request or the stack outputs", code=status_of(error)) from None
    except OSError as error:  # connection refused or reset: retry
        raise TransientError(f"{what}: {error}") from None


def label(value: str) -> str:
    """`value` as a Vertex label value: lowercase letters, digits, '-' and '_', at most 63."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in value.lower())[:63]


def machine_spec(gpu: str | None, count: int, cpu: str) -> dict[str, Any]:
    """The `machineSpec` of `count` catalog `gpu`s (machine type `cpu` without a GPU)."""
    if not gpu:
        return {"machineType": cpu}
    from stackwise import catalog

    offer = catalog.offer(gpu, "gcp", count)
    return {"machineType": offer.instance, "acceleratorType": offer.accelerator, "acceleratorCount": offer.count}
