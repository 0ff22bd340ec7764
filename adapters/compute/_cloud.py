"""The old home of adapters/compute/base.py and checks.py, kept only for imports not yet moved:
infra/aws/step_permissions.py (`JOB_NAME_PREFIX`) and sdk/platform.py's callers on other
branches. New code imports `stackwise.adapters.compute.base` / `.checks`; delete this module once
nothing imports it."""

from .base import JOB_NAME_PREFIX, job_name
from .checks import check_paths, with_run

__all__ = ["JOB_NAME_PREFIX", "check_paths", "job_name", "with_run"]
