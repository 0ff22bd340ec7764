"""The root `stackwise` Typer app, the options every command group shares, and the platform
every command reaches the stack through (`connect`, patched by tests to fake the platform).

The command modules (stackwise.cli.<group>) define their commands; stackwise.cli registers them
on `app` in the order `stackwise --help` lists them.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Optional

import typer

app = typer.Typer(
    name="stackwise",
    help="Run the lifecycle of an LLM project on any cloud, or embedded on this machine (the `local` stack).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

StackOpt = Annotated[Optional[str], typer.Option("--stack", "-s", help="Stack name (default: $STACKWISE_STACK or local).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]
DetachOpt = Annotated[bool, typer.Option("--detach", "-d", help="Submit and return the job id at once.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print what the stack's compute backend would create for "
                                         "the job (Kubernetes manifests as YAML, a cloud's job request as JSON) and "
                                         "submit nothing.")]
NewOpt = Annotated[bool, typer.Option("--new", help="Start a fresh run (a new job identity) instead of returning the "
                                      "running job of this spec or resuming its checkpoints.")]
RunNameOpt = Annotated[Optional[str], typer.Option("--run-name", help="Name a run of this spec (1-12 lowercase letters, "
                                                   "digits, '-'): another run name is another job identity.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def _show_version(value: bool) -> None:
    if value:
        from ..version import version_string

        sys.stdout.write(version_string() + "\n")
        raise typer.Exit()


@app.callback()
def _app_options(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_show_version, is_eager=True,
                                                    help="Print stackwise's version (and git commit in a checkout) and exit.")] = None,
) -> None:
    """Run the lifecycle of an LLM project on any cloud, or embedded on this machine (the `local` stack)."""
    from ..userinput import env_threads

    env_threads()  # a bad STACKWISE_THREADS fails here, not inside a job


def connect(stack: str | None):
    """The platform of `stack` (stackwise.connect): every command's way to the stack."""
    from ..platform import connect as connect_platform

    return connect_platform(stack)


def curation_config(path: str | None) -> Any:
    """The CurationConfig of `--curate FILE` (None without it: the job curates nothing)."""
    if path is None:
        return None
    from ..curation import load_config

    return load_config(path)
