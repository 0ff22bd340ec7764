"""Azure: credentials, clients and error mapping for the Azure ML adapters (adapters/compute/azureml.py,
adapters/deploy/azureml.py), which use azure-ai-ml's entities to build their requests.

- `credential()`: DefaultAzureCredential (az login, a service principal's variables, a managed identity);
- `ml_client(stack, credential, arm_endpoint)`: the workspace's `MLClient`; `arm_endpoint` (or
  `$STACKWISE_AZURE_ARM_ENDPOINT`) points it at another Resource Manager (a sovereign cloud, or the
  test server) through azure-ai-ml's custom cloud metadata;
- `ArmClient`: plain ARM REST requests with the same credential (what MLClient has no operation for);
- `call(fn, what, stack=..., not_found=...)`: one call, its errors mapped by azure-core's exception
  class and the answer's HTTP status and `error.code`: 401 -> `CredentialsError`, 404 ->
  `not_found(what)`, 409 -> `CloudError` with code "Conflict", 429 (after honouring Retry-After,
  up to `RETRY_AFTER_CAP_S`) and 5xx -> `TransientError`, 403 -> `CredentialsError`, a quota ->
  `QuotaError`, anything else -> `CloudError` carrying the code;
- `workspace_id(stack)`, `vm_size(gpu, count, cpu)`: the workspace's ARM id, and VM sizes.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from stackwise.errors import CloudError, CredentialsError, QuotaError, StackwiseError, TransientError
from stackwise.registry import require

from .common import require_output

T = TypeVar("T")

EXTRA = "azure"
ENV_ARM_ENDPOINT = "STACKWISE_AZURE_ARM_ENDPOINT"
ARM = "https://management.azure.com/"
PROVIDER = "Microsoft.MachineLearningServices"
#: the longest Retry-After of a 429 that a call waits before it is retried
RETRY_AFTER_CAP_S = 30.0
CREDENTIALS_FIX = ("sign in with `az login` (and `az account set --subscription <id>`), or set AZURE_CLIENT_ID, "
                   "AZURE_TENANT_ID and AZURE_CLIENT_SECRET for a service principal; on an Azure VM or in a job, "
                   "a managed identity is used")


def credential() -> Any:
    """DefaultAzureCredential without the interactive browser (never a prompt from a CLI or a job)."""
    identity = require("azure.identity", EXTRA, "Azure credentials")
    return identity.DefaultAzureCredential(exclude_interactive_browser_credential=True)


def workspace_id(stack: Any) -> str:
    """The ARM id of the stack's Azure ML workspace (ConfigError when an output is missing)."""
    outputs = stack.outputs
    sub = require_output(outputs.azure_subscription_id, "azure_subscription_id", stack,
                         "export azure_subscription_id (the Pulumi program does)")
    rg = require_output(outputs.azure_resource_group, "azure_resource_group", stack,
                        "export azure_resource_group (the Pulumi program does)")
    ws = require_output(outputs.azure_workspace, "azure_workspace", stack,
                        "export azure_workspace (the Pulumi program does)")
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{PROVIDER}/workspaces/{ws}"


def ml_client(stack: Any, credential: Any, arm_endpoint: str | None = None,
              purpose: str = "the Azure ML adapters") -> Any:
    """The `MLClient` of the stack's workspace, with no retries of its own (`call`'s caller retries)."""
    ml = require("azure.ai.ml", EXTRA, purpose)
    outputs = stack.outputs
    kwargs: dict[str, Any] = {"enable_telemetry": False, "retry_total": 0, "show_progress": False}
    endpoint = arm_endpoint or os.environ.get(ENV_ARM_ENDPOINT)
    if endpoint:
        base = endpoint.rstrip("/") + "/"
        # azure-ai-ml refuses to redefine a cloud name, so the name carries the endpoint.
        kwargs["cloud"] = "stackwise-" + hashlib.sha256(base.encode()).hexdigest()[:12]
        kwargs["cloud_metadata"] = {"azure_portal": base, "resource_manager": base, "active_directory": base,
                                    "aml_resource_id": base, "storage_endpoint": "core.windows.net",
                                    "registry_discovery_endpoint": base}
    return ml.MLClient(credential, outputs.azure_subscription_id, outputs.azure_resource_group,
                       outputs.azure_workspace, **kwargs)


class ArmClient:
    """ARM REST requests with `credential` (no retries of its own); an error answer is raised as
    azure-core's exceptions, as MLClient's are, so `call` maps both alike."""

    def __init__(self, credential: Any, arm_endpoint: str | None = None):
        self.base = (arm_endpoint or ARM).rstrip("/")
        self._credential = credential
        self._pipeline: Any = None

    def send(self, method: str, path: str, api_version: str, body: dict[str, Any] | None = None) -> Any:
        from azure.core.exceptions import (ClientAuthenticationError, HttpResponseError, ResourceExistsError,
                                           ResourceNotFoundError, map_error)
        from azure.core.rest import HttpRequest
        from azure.mgmt.core.exceptions import ARMErrorFormat

        if self._pipeline is None:
            from azure.core.pipeline import policies
            from azure.mgmt.core import ARMPipelineClient
            from azure.mgmt.core.policies import ARMChallengeAuthenticationPolicy

            self._pipeline = ARMPipelineClient(base_url=self.base, policies=[
                policies.HeadersPolicy(), policies.UserAgentPolicy("stackwise"), policies.RetryPolicy(retry_total=0),
                ARMChallengeAuthenticationPolicy(self._credential, f"{self.base}/.default")])
        response = self._pipeline.send_request(HttpRequest(method, f"{self.base}{path}",
                                                           params={"api-version": api_version}, json=body))
        if response.status_code >= 400:
            map_error(response.status_code, response, {401: ClientAuthenticationError, 404: ResourceNotFoundError,
                                                       409: ResourceExistsError})
            raise HttpResponseError(response=response, error_format=ARMErrorFormat)
        return response


def call(fn: Callable[[], T], what: str, *, stack: Any, not_found: Callable[[str], StackwiseError],
         retry_after_cap_s: float = RETRY_AFTER_CAP_S) -> T:
    """Run one Azure call; its errors become TransientError (retried by the caller), `not_found(what)`
    for a 404, or a clear StackwiseError (see the module docstring)."""
    exc = require("azure.core.exceptions", EXTRA)
    outputs = stack.outputs
    where = f"workspace {outputs.azure_workspace} (resource group {outputs.azure_resource_group})"
    try:
        return fn()
    except exc.ClientAuthenticationError as error:
        raise CredentialsError(f"no usable Azure credentials for {what}: {_first_line(error)}", where=where,
                               fix=CREDENTIALS_FIX) from None
    except exc.ResourceNotFoundError:
        raise not_found(what) from None
    except exc.ResourceExistsError as error:
        raise CloudError(f"Conflict: {what}: {_message(error)}", where=where,
                         fix="the resource exists already", code="Conflict") from None
    except exc.HttpResponseError as error:
        status = int(getattr(error, "status_code", 0) or 0)
        code, message = _code(error), _message(error)
        # A 429 is throttling unless it says it is a quota; quota refusals have no code of their own
        # (QuotaExceeded, OperationNotAllowed, BadRequest...), so their text is read too.
        if status == 429 and "quota" not in message.lower():
            _honour_retry_after(error, retry_after_cap_s)
            raise TransientError(f"{what}: throttled ({code}) {message}") from None
        if status >= 500:
            raise TransientError(f"{what}: {status} {code} {message}") from None
        if status in (401, 403):
            raise CredentialsError(f"Azure refused {what}: {code} {message}", where=where,
                                   fix="check `az login` / the service principal, and that it holds the "
                                   "AzureML Data Scientist role on the workspace", code=code) from None
        if "quota" in (code + message).lower():
            raise QuotaError(f"Azure ML quota exceeded for {what}: {message}", where=f"{where}, {stack.region}",
                             fix="request more quota (Azure portal > Quotas > Machine learning: the VM family "
                             "named above, dedicated or low priority cores), or choose a smaller GPU/count",
                             code=code) from None
        if "vmsize" in (code + message).lower().replace(" ", "") or "vm size" in message.lower():
            raise CloudError(f"Azure ML does not offer the requested VM size here: {message}",
                             where=f"region {stack.region}",
                             fix="choose a GPU the region offers (see `stackwise plan`), or a stack in another "
                             "region", code=code) from None
        raise CloudError(f"Azure ML refused {what}: {status} {code} {message}", where=where,
                         fix="correct the request or the stack outputs", code=code) from None
    except exc.ServiceRequestError as error:  # connection refused or reset: retry
        raise TransientError(f"{what}: {error}") from None


def has_ended(exc: CloudError) -> bool:
    """Whether `exc` (from `call`) refused a cancel because the job has ended (a 400 `UserError`
    whose message says so: Azure ML gives it no code of its own)."""
    text = exc.what.lower()
    return "ended" in text or "terminal" in text


def vm_size(gpu: str | None, count: int, cpu: str) -> str:
    """The Azure VM size of `count` catalog `gpu`s (`cpu` without a GPU)."""
    if not gpu:
        return cpu
    from stackwise import catalog

    return catalog.offer(gpu, "azure", count).instance


def _honour_retry_after(error: Any, cap_s: float) -> None:
    response = getattr(error, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        delay = min(float(value), cap_s) if value else 0.0
    except ValueError:
        delay = 0.0
    if delay > 0:
        time.sleep(delay)


def _first_line(error: Any) -> str:
    return str(getattr(error, "message", None) or error).strip().splitlines()[0][:300]


def _code(error: Any) -> str:
    inner = getattr(error, "error", None)
    return str(getattr(inner, "code", None) or getattr(error, "reason", "") or "")


def _message(error: Any) -> str:
    inner = getattr(error, "error", None)
    return str(getattr(inner, "message", None) or _first_line(error))
