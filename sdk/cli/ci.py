"""`stackwise ci init --github | --gitlab`: write a CI/CD workflow that runs the pipeline on each environment.

`--github` writes .github/workflows/stackwise-pipeline.yml, `--gitlab` writes .gitlab-ci.yml (what they hold:
stackwise.pipeline.ci, docs/pipelines.md "CI/CD"). Run it at the repository root: the pipeline file and the
data paths are written relative to it. Environments come in promotion order (`--env dev=dev-aws --env
prod=prod-aws`); each names a stack of stacks/, whose cloud picks the OIDC sign-in. Mounted by the main CLI
as `app.add_typer(ci_app, name="ci")`.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from ..errors import ConfigError, InputError, SpecError

if TYPE_CHECKING:
    from ..pipeline.ci import CiConfig, Environment, PipelineShape

ci_app = typer.Typer(help="Write CI/CD workflows that run the pipeline on your environments (GitHub Actions, GitLab CI).",
                     no_args_is_help=True)

@ci_app.callback()
def _group() -> None:
    """Write CI/CD workflows that run the pipeline on your environments (GitHub Actions, GitLab CI)."""


OUT = {"github": ".github/workflows/stackwise-pipeline.yml", "gitlab": ".gitlab-ci.yml"}
ENV_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,\-]+$")
ENV_REF = re.compile(r"env://([A-Za-z_][A-Za-z0-9_]*)")


@ci_app.command("init")
def init(
    github: Annotated[bool, typer.Option("--github", help="Write .github/workflows/stackwise-pipeline.yml.")] = False,
    gitlab: Annotated[bool, typer.Option("--gitlab", help="Write .gitlab-ci.yml.")] = False,
    pipeline: Annotated[str, typer.Option("--pipeline", metavar="FILE", help="The pipeline file the workflow runs.")] = "stackwise.yaml",
    env: Annotated[Optional[list[str]], typer.Option("--env", metavar="NAME=STACK", help="An environment and its "
                                                     "stack, in promotion order (repeatable; default dev=local).")] = None,
    data_path: Annotated[Optional[list[str]], typer.Option("--data-path", metavar="GLOB", help="A path whose changes "
                                                           "start a run (repeatable; default: the pipeline's local "
                                                           "inputs, else data/**).")] = None,
    schedule: Annotated[str, typer.Option("--schedule", metavar="CRON", help="When to run anyway (UTC cron).")] = "0 3 * * 1",
    prod: Annotated[Optional[str], typer.Option("--prod", metavar="ENV", help="The environment whose deploy needs "
                                                "approval (default: prod, when there is one).")] = None,
    branch: Annotated[str, typer.Option("--branch", metavar="NAME", help="The branch whose pushes start a run.")] = "main",
    force: Annotated[bool, typer.Option("--force", help="Overwrite the file if it exists.")] = False,
    out: Annotated[Optional[str], typer.Option("--out", metavar="PATH", help="Where to write (default: the "
                                               "platform's own path).")] = None,
) -> None:
    """Write a workflow that runs the pipeline on a push that changes its data, on a schedule and by hand:
    one job per environment, OIDC sign-in to each stack's cloud, and an approval before the deploy."""
    from ..pipeline import ci

    if github == gitlab:
        raise SpecError("choose one platform: --github or --gitlab" + (" (not both)" if github else ""),
                        where="stackwise ci init", fix="run it once per platform, e.g. stackwise ci init --github")
    platform = "github" if github else "gitlab"
    root = Path.cwd().resolve()
    target = Path(out or OUT[platform])
    environments = _environments(env or ["dev=local"], prod)
    shape, unreadable = read_shape(Path(pipeline), root, environments)
    if data_path:
        shape = _replace(shape, data_paths=tuple(_data_path(p) for p in data_path))
    cfg = ci.CiConfig(pipeline=shape, environments=tuple(environments), schedule=_cron(schedule),
                      branch=_branch(branch), stackwise_version=_release())
    text = ci.render_github(cfg) if github else ci.render_gitlab(cfg)
    if target.is_dir():
        raise InputError(f"{target} is a folder", where="--out", fix="give a file path")
    if target.exists() and not force:
        raise InputError(f"{target} exists; left unchanged", where=str(target.resolve()),
                         fix="pass --force to overwrite it, or --out PATH to write elsewhere")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
    _report(platform, cfg, target, unreadable)


def _environments(items: list[str], prod: str | None) -> list["Environment"]:
    from ..pipeline.ci import Environment
    from ..stack import load_stack, stack_files, stack_name
    from ..paths import stacks_dir

    pairs: list[tuple[str, str]] = []
    for item in items:
        name, sep, stack = item.partition("=")
        if not sep or not stack:
            raise SpecError(f"--env {item!r}: expected NAME=STACK", where="--env", fix="e.g. --env dev=dev-aws")
        if not ENV_NAME.match(name) or name.startswith(("github", "deploy-")):
            raise SpecError(f"--env {item!r}: invalid environment name {name!r}", where="--env",
                            fix="use lowercase letters, digits and '-', starting with a letter (at most 31), "
                            "not starting with 'github' or 'deploy-' (secret and job names derive from it)")
        if name in (n for n, _ in pairs):
            raise SpecError(f"--env {name} is given twice", where="--env", fix="give each environment once")
        pairs.append((name, stack_name(stack)))
    names = [n for n, _ in pairs]
    if prod is not None and prod not in names:
        raise SpecError(f"--prod {prod}: no such environment", where="--prod",
                        fix=f"name one of the --env environments: {', '.join(names)}")
    approval = prod if prod is not None else ("prod" if "prod" in names else None)
    files = stack_files()
    out = []
    for name, stack in pairs:
        if stack not in files and stack != "local":
            folder = stacks_dir() or Path("stacks")
            raise ConfigError(f"--env {name}={stack}: unknown stack {stack!r}", where=str(folder / f"Pulumi.{stack}.yaml"),
                              fix=f"create stacks/Pulumi.{stack}.yaml, or choose one of: "
                              f"{', '.join(sorted({'local', *files}))}")
        loaded = load_stack(stack)
        out.append(Environment(name=name, stack=stack, cloud=loaded.cloud, region=loaded.region,
                               approval=name == approval, gcp_project=loaded.config.get("gcpProject")))
    return out


def read_shape(path: Path, root: Path, environments: list["Environment"] | None = None) -> tuple["PipelineShape", str | None]:
    """The pipeline's shape for a workflow: its repository-relative path, local data inputs, step order, the
    steps after approval, and the environment variables its steps and stacks read keys from. A file that
    does not validate gives (data/ as the data path, no steps) and its error, so a workflow can be written
    while the pipeline is being written; a missing file or one outside the repository is an InputError."""
    from ..pipeline.ci import PipelineShape, approval_split

    if not path.is_file():
        raise InputError(f"pipeline file {path} not found", where="--pipeline",
                         fix="create it (`stackwise pipeline example DIR` writes one) or pass --pipeline FILE")
    try:
        rel = path.resolve().relative_to(root).as_posix()
    except ValueError:
        raise InputError(f"pipeline file {path} is outside the repository {root}", where="--pipeline",
                         fix="run `stackwise ci init` at the repository root, with a pipeline file inside it") from None
    keys = _stack_env_refs(environments or [])
    from ..pipeline.hashing import is_remote
    from ..pipeline.kinds import data_inputs
    from ..pipeline.spec import load

    try:
        pipeline = load(path)
    except SpecError as exc:
        return PipelineShape(file=rel, data_paths=("data/",), env_secrets=keys), str(exc)
    data: list[str] = []
    for name in pipeline.order:
        for _, value in data_inputs(pipeline, name):
            if is_remote(value):
                continue
            local = Path(value.removeprefix("file://"))
            try:
                relative = local.resolve().relative_to(root).as_posix() if local.is_absolute() else local.as_posix()
            except ValueError:
                continue  # outside the repository: no push can change it
            data.append(relative + "/" if local.is_dir() else relative)
        key_env = pipeline.step(name).with_.get("api_key_env") if pipeline.step(name).kind == "serve-check" else None
        if isinstance(key_env, str) and key_env:
            keys += (key_env,)
    kinds = {n: pipeline.step(n).kind for n in pipeline.order}
    shape = PipelineShape(file=rel, data_paths=tuple(dict.fromkeys(data)), order=tuple(pipeline.order),
                          after_approval=approval_split(pipeline.order, kinds, pipeline.upstream),
                          kinds=frozenset(kinds.values()), env_secrets=tuple(dict.fromkeys(keys)))
    return shape, None


def _stack_env_refs(environments: list["Environment"]) -> tuple[str, ...]:
    """Names of `env://NAME` secret references in the environments' stack files (a key the CI must supply)."""
    from ..stack import load_stack

    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            found.extend(ENV_REF.findall(value))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for env in environments:
        walk(load_stack(env.stack).config)
    return tuple(dict.fromkeys(found))


def _data_path(value: str) -> str:
    path = value.strip().removeprefix("./")
    if not path or path.startswith("/") or ".." in Path(path).parts or "://" in path:
        raise InputError(f"--data-path {value!r} is not a path inside the repository", where="--data-path",
                         fix="give a relative path or glob, e.g. data/** or docs/*.pdf")
    return path


def _cron(value: str) -> str:
    fields = value.split()
    if len(fields) != 5 or not all(CRON_FIELD.match(f) for f in fields):
        raise SpecError(f"--schedule {value!r} is not a 5-field cron expression", where="--schedule",
                        fix='minute hour day-of-month month day-of-week, in UTC, e.g. "0 3 * * 1" (Mondays 03:00)')
    return " ".join(fields)


def _branch(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._/-]{1,100}", value) or value.startswith(("-", "/")) or ".." in value:
        raise SpecError(f"--branch {value!r} is not a branch name", where="--branch", fix="e.g. --branch main")
    return value


def _release() -> str | None:
    """This stackwise's version when it is a release (pinned in the install line), else None."""
    from ..version import version

    current = version()
    return current if re.fullmatch(r"\d+(\.\d+)*", current) else None


def _replace(shape: "PipelineShape", **changes: Any) -> "PipelineShape":
    from dataclasses import replace

    return replace(shape, **changes)


def _report(platform: str, cfg: "CiConfig", target: Path, unreadable: str | None) -> None:
    from ..pipeline.ci import jobs_of, secret_names

    jobs = " -> ".join(f"{job}{' (after approval)' if job.startswith('deploy-') else ''}"
                       for job, *_ in jobs_of(cfg))
    lines = [f"wrote {target}", f"jobs: {jobs}"]
    where = "repository secrets (Settings > Secrets and variables > Actions)" if platform == "github" \
        else "CI/CD variables (Settings > CI/CD > Variables), masked, scoped to the environment shown"
    names = secret_names(cfg, platform)
    if names:
        lines.append(f"create these {where}: " + ", ".join(names))
    if platform == "gitlab":
        lines.append(f"schedule: create one in Build > Pipeline schedules with cron {cfg.schedule}")
    for env in cfg.environments:
        if env.approval:
            lines.append(f"approval: give the {platform} environment {env.name!r} required reviewers "
                         + ("(Settings > Environments)" if platform == "github" else "(Protected environments)"))
    if unreadable:
        first = unreadable.splitlines()[0]
        lines.append(f"warning: the pipeline file does not validate ({first}); the workflow watches data/** and "
                     "runs the approval environment wholly after approval. Fix it and rerun with --force.")
    sys.stdout.write("\n".join(lines) + "\n")
