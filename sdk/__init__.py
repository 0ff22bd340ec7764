"""stackwise: run the lifecycle of an LLM project on any cloud, or embedded on one machine.

    import stackwise
    platform = stackwise.connect()            # the active stack: argument, $STACKWISE_STACK, or local
    job = platform.index(stackwise.IndexSpec(source="docs/", index="kb"))
    job.wait()
    hits = platform.search("kb", "how do I rotate keys?", k=5)

Importing this package loads no cloud SDK, ML library or vector engine; they load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public names, resolved on first access so that `import stackwise` stays light.
_EXPORTS = {
    "connect": "stackwise.platform",
    "Platform": "stackwise.platform",
    "IndexSpec": "stackwise.specs",
    "FineTuneSpec": "stackwise.specs",
    "EvaluateSpec": "stackwise.specs",
    "Chunking": "stackwise.specs",
    "Embedding": "stackwise.specs",
    "Compute": "stackwise.specs",
    "JobHandle": "stackwise.jobs",
    "JobState": "stackwise.jobs",
    "IndexReport": "stackwise.reports",
    "FineTuneReport": "stackwise.reports",
    "EvalReport": "stackwise.reports",
    "StackOutputs": "stackwise.contract",
    "load_stack": "stackwise.stack",
    "StackwiseError": "stackwise.errors",
    "ConfigError": "stackwise.errors",
    "SpecError": "stackwise.errors",
    "InputError": "stackwise.errors",
    "MissingDependencyError": "stackwise.errors",
    "JobFailedError": "stackwise.errors",
    "StoreError": "stackwise.errors",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .contract import StackOutputs
    from .errors import (ConfigError, InputError, JobFailedError, MissingDependencyError, SpecError,
                         StackwiseError, StoreError)
    from .jobs import JobHandle, JobState
    from .platform import Platform, connect
    from .reports import EvalReport, FineTuneReport, IndexReport
    from .specs import Chunking, Compute, Embedding, EvaluateSpec, FineTuneSpec, IndexSpec
    from .stack import load_stack


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stackwise' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
