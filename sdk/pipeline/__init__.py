"""Pipelines: the lifecycle as one file of typed steps (stackwise.yaml), cached by the content of their
inputs, run in dependency order on any stack and resumable after a crash. See docs/pipelines.md."""

from .spec import KINDS, Pipeline, load

__all__ = ["KINDS", "Pipeline", "load"]
