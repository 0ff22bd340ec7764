"""One module per cloud, the only place that builds that cloud's clients and credentials and
catches its SDK's exceptions (the SDK imported lazily, with the extra that installs it): `aws`
(boto3), `gcp` (google-cloud-aiplatform, google-auth), `azure` (azure-ai-ml, azure-identity,
azure-core) and `kubernetes` (the official client). The adapters still build requests with the
SDK's own types where it has them (aiplatform messages, azure-ai-ml entities), imported lazily.

Each holds the cloud's credentials and client factories, the choice of instance type for a
catalog GPU, and ONE call wrapper, `call(fn, what, *, stack, ...)`, that runs one API call and maps
the cloud's errors by their code (botocore's `Error.Code` and HTTP status, google-api-core's
exception class, Azure's HTTP status and `error.code`, the Kubernetes API's status) onto
stackwise's: `CredentialsError`, `QuotaError`, `CloudError` (stackwise.errors), and
`TransientError` for throttling and 5xx, which `common.with_retries` retries. The compute and
deploy adapters of a cloud (adapters/compute/<service>.py, adapters/deploy/<service>.py) call
through it and never through each other.
"""
