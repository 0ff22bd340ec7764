"""AWS: credentials, clients and error mapping for the SageMaker adapters (adapters/compute/sagemaker.py,
adapters/deploy/sagemaker.py): the one module that imports boto3 and botocore.

- `session(stack, purpose)`: a boto3 session in the stack's region (credentials from boto3's chain);
- `call(fn, what, stack=..., usage=...)`: one boto3 call, its errors mapped by botocore's error
  code and HTTP status: throttling codes, 429 and 5xx -> `TransientError` (retried); credential
  codes and missing credentials -> `CredentialsError`; `ResourceLimitExceeded` -> `QuotaError`;
  anything else -> `CloudError` carrying the code;
- `is_missing`, `name_taken`, `has_ended`: which refusal a CloudError of `call` is, for callers
  that take it as an answer;
- `instance_type(gpu, count)` and `vpc_config(stack)`: what jobs and endpoints run on and in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from stackwise import catalog
from stackwise.errors import CloudError, ConfigError, CredentialsError, QuotaError, TransientError
from stackwise.registry import require

T = TypeVar("T")

EXTRA = "aws"
#: what a job or an endpoint without a GPU runs on
CPU_INSTANCE = "ml.m5.xlarge"
_TRANSIENT_CODES = {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded",
                    "ServiceUnavailable", "InternalFailure", "InternalServerError", "InternalError"}
_CREDENTIAL_CODES = {"ExpiredToken", "ExpiredTokenException", "UnrecognizedClientException", "InvalidClientTokenId",
                     "InvalidSignatureException"}
_MISSING_CODES = {"ResourceNotFound", "ResourceNotFoundException"}


def session(stack: Any, purpose: str) -> Any:
    """A boto3 session in the stack's region."""
    boto3 = require("boto3", EXTRA, purpose)
    return boto3.session.Session(region_name=stack.region)


def instance_type(gpu: str | None, count: int, cpu: str = CPU_INSTANCE) -> str:
    """The SageMaker instance type of `count` catalog `gpu`s (`cpu` without a GPU)."""
    return catalog.offer(gpu, "aws", count).instance if gpu else cpu


def vpc_config(stack: Any) -> dict[str, list[str]] | None:
    """The `VpcConfig` of the stack's private network (jobs and endpoint models), or None for a
    stack that exports no network (outputs synced before it existed: SageMaker's own network)."""
    network = stack.outputs.network
    if network is None or not network.subnets:
        return None
    if not network.security_groups:
        raise ConfigError(f"stack {stack.name!r} exports subnets but no security group",
                          where="stack outputs: network.security_groups",
                          fix="export the jobs' security group id (the Pulumi program does); run `stackwise sync`")
    return {"SecurityGroupIds": list(network.security_groups), "Subnets": list(network.subnets)}


def is_missing(exc: CloudError) -> bool:
    """Whether `exc` (from `call`) says the named job, model, endpoint or log group does not exist.
    SageMaker reports a missing resource as `ValidationException` ("Could not find ...", "... does
    not exist"): for that code alone, its message is what tells it apart."""
    if exc.code in _MISSING_CODES:
        return True
    text = str(exc)
    return exc.code == "ValidationException" and ("Could not find" in text or "does not exist" in text)


def name_taken(exc: CloudError) -> bool:
    """Whether `exc` (from `call`) refused a create because the name is in use (`ResourceInUse`)."""
    return exc.code == "ResourceInUse"


def has_ended(exc: CloudError) -> bool:
    """Whether `exc` (from `call`) refused a stop because the job is no longer running: a
    `ValidationException` saying so (SageMaker has no code of its own for it)."""
    text = str(exc).lower()
    return exc.code == "ValidationException" and ("not in" in text or "already" in text)


def call(fn: Callable[[], T], what: str, *, stack: Any, usage: str = "training job") -> T:
    """Run one boto3 call; its errors become TransientError (retried by the caller) or a clear
    StackwiseError naming what to do (credentials, quota for `usage`, an instance type the region lacks)."""
    exc_mod = require("botocore.exceptions", EXTRA)
    try:
        return fn()
    except (exc_mod.NoCredentialsError, exc_mod.PartialCredentialsError) as exc:
        raise CredentialsError(
            f"no AWS credentials for {what}: {exc}",
            where=f"stack {stack.name!r} (region {stack.region})",
            fix="configure credentials: `aws configure` or `aws sso login`, or set AWS_PROFILE / "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ) from None
    except (exc_mod.EndpointConnectionError, exc_mod.ConnectTimeoutError, exc_mod.ReadTimeoutError) as exc:
        raise TransientError(f"{what}: {exc}") from None
    except exc_mod.ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = str(error.get("Code", "")), str(error.get("Message", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            raise TransientError(f"{what}: {code} {message}") from None
        if code in _CREDENTIAL_CODES:
            raise CredentialsError(
                f"AWS rejected the credentials for {what}: {code}", where=message,
                fix="refresh them (`aws sso login`, new keys) or choose another AWS_PROFILE", code=code) from None
        if code == "ResourceLimitExceeded":
            raise QuotaError(
                f"SageMaker quota exceeded for {what}: {message}",
                where=f"account quotas in {stack.region}",
                fix=f"request an increase in Service Quotas (SageMaker, '<instance type> for {usage} usage'"
                + (" or 'for spot training job usage'" if usage == "training job" else "")
                + "), or choose a smaller GPU/count",
                code=code,
            ) from None
        # SageMaker has no code of its own for an instance type the region lacks: a ValidationException
        # that names the instance type is one.
        if code == "ValidationException" and "instance" in message.lower() and "type" in message.lower():
            raise CloudError(
                f"SageMaker does not offer the requested instance type here: {message}",
                where=f"region {stack.region}",
                fix="choose a GPU the region offers (see `stackwise plan`), or a stack in another region",
                code=code,
            ) from None
        raise CloudError(f"SageMaker refused {what}: {code}: {message}", where=f"region {stack.region}",
                         fix="correct the request or the stack outputs", code=code) from None
