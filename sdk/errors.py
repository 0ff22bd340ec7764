"""One family of errors, each subclassing what callers already catch.

Every message says what went wrong, where (a file, a key, a stack, a line) and how to fix it.
The CLI prints them without a traceback and exits with `exit_code`.
"""

from __future__ import annotations


class StackwiseError(Exception):
    """Base of every error stackwise raises on purpose."""

    exit_code = 2

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [self.what]
        if self.where:
            parts.append(f"  where: {self.where}")
        if self.fix:
            parts.append(f"  fix: {self.fix}")
        return "\n".join(parts)


class ConfigError(StackwiseError, ValueError):
    """A stack file, stack name or stack output is missing or invalid."""


class SpecError(StackwiseError, ValueError):
    """A job spec, or the CLI flags that build one, is invalid."""


class InputError(StackwiseError, ValueError):
    """Input data (a source, a dataset line, a corpus) is missing or unreadable."""


class MissingDependencyError(StackwiseError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class JobNotFoundError(StackwiseError, LookupError):
    """No job with that id is known to this stack's compute backend."""


class JobFailedError(StackwiseError, RuntimeError):
    """A job ended FAILED or CANCELLED where the caller needed it to succeed."""

    exit_code = 1


class CostLimitError(StackwiseError, RuntimeError):
    """A job's estimated cost is above the stack's `maxJobCostUsd`: refused before submit (exit 3, as
    `stackwise plan` above the monthly budget)."""

    exit_code = 3


class StoreError(StackwiseError, RuntimeError):
    """The vector store refused an operation (dimension mismatch, unknown index, ...)."""


class CloudError(StackwiseError, RuntimeError):
    """A cloud API refused or failed a call; the message says what to change. `code` is the cloud's
    own error code when it gave one (botocore's `Error.Code`, Google's status, Azure's `error.code`),
    for callers that treat one refusal as an answer (a name taken, a job already ended)."""

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None, code: str | None = None):
        self.code = code
        super().__init__(what, where=where, fix=fix)


class CredentialsError(CloudError):
    """No usable credentials for the cloud; the message says how to configure them."""


class QuotaError(CloudError):
    """The account's quota (or the region's capacity) does not cover the request."""


class TransientError(Exception):
    """A throttling or 5xx answer: worth retrying with the same request (never shown to a user:
    `with_retries` turns the last one into a CloudError)."""
