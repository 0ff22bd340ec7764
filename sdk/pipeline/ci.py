"""CI/CD workflows that run a pipeline (`stackwise ci init`): GitHub Actions and GitLab CI, built as data.

Pure functions: a `CiConfig` (the pipeline's shape, the environments in promotion order, the schedule) in,
a workflow as a dict and as YAML text out. Nothing here reads the network or imports a cloud SDK.

What every workflow does, per environment in order (dev -> ... -> prod), one job each:
- triggers: a push to the branch that changes a data input or the pipeline file, a schedule, a manual run
  (choose how far along the environments to go, and optionally the step to start from);
- signs in to the stack's cloud with the CI's OIDC token (no stored keys), installs stackwise with the
  extras the steps need on the runner, runs `stackwise pipeline run --stack S`, and publishes
  `stackwise pipeline show latest --markdown` (evaluation metrics, the gate's decision) as the job summary
  (GitHub) or an artifact (GitLab). Exit 4 (a promotion gate refused) fails the job; nothing later runs.
- the approval environment (`prod`) is two jobs: the first runs every step that is not a deploy step nor
  after one (`--only ...`: train, evaluate, gate) at once; the second, `deploy-prod`, waits for approval
  (a GitHub environment with required reviewers; a GitLab manual job on a protected environment) and runs
  the deploy steps and what follows them, taking the rest from the pipeline's cache (its state is in the
  stack's artifact store, so a fresh runner sees it; a local stack's state travels as an artifact).
  A pipeline whose steps cannot be read, or that has no deploy step, runs wholly after approval (the
  first job then only validates it with `--dry-run`).

Over ~400 lines on purpose: GitHub's and GitLab's workflows are built side by side from one
`CiConfig`, so what one does the other does too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml

ACTIONS = {"checkout": "actions/checkout@v4", "python": "actions/setup-python@v5",
           "upload": "actions/upload-artifact@v4", "download": "actions/download-artifact@v4",
           "pulumi": "pulumi/actions@v6", "aws": "aws-actions/configure-aws-credentials@v4",
           "gcp": "google-github-actions/auth@v2", "azure": "azure/login@v2"}
PYTHON = "3.11"
GITLAB_IMAGE = "python:3.11"  # the full image: it has curl (the Pulumi installer) and bash
# What each cloud's OIDC sign-in needs, by the name of the GitHub secret suffix / GitLab CI/CD variable.
CLOUD_SECRETS = {"aws": ("AWS_ROLE_ARN",), "gcp": ("GCP_WORKLOAD_IDENTITY_PROVIDER", "GCP_SERVICE_ACCOUNT"),
                 "azure": ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_SUBSCRIPTION_ID"), "local": ()}
GITLAB_AUDIENCE = {"aws": "$CI_SERVER_URL", "gcp": "https://iam.googleapis.com/$GCP_WORKLOAD_IDENTITY_PROVIDER",
                   "azure": "api://AzureADTokenExchange"}
# Extras the runner needs for steps that run in its own process on any stack (curation; the registry and
# the gate are MLflow clients) and, on the local stack, for the jobs it runs itself.
KIND_EXTRAS = {"curate": ("curate",), "promote": ("train",), "evaluate": ("train",), "finetune": ("train",)}
LOCAL_KIND_EXTRAS = {"index": ("local",), "finetune": ("train",), "evaluate": ("eval", "train"),
                     "deploy": ("serve",), "serve-check": ("serve",)}


@dataclass(frozen=True)
class Environment:
    name: str
    stack: str
    cloud: str
    region: str
    approval: bool = False
    gcp_project: str | None = None

    @property
    def key(self) -> str:
        """The environment as a secret-name prefix: `prod-eu` -> `PROD_EU`."""
        return self.name.upper().replace("-", "_")


@dataclass(frozen=True)
class PipelineShape:
    """What a workflow needs to know of a pipeline file (read by stackwise.cli.ci)."""

    file: str  # repository-relative, posix
    data_paths: tuple[str, ...]  # repository-relative files, folders (ending in /) or globs
    order: tuple[str, ...] | None = None  # steps in dependency order; None when the file could not be read
    after_approval: tuple[str, ...] = ()  # deploy steps and every step downstream of one
    kinds: frozenset[str] = frozenset()
    env_secrets: tuple[str, ...] = ()  # environment variables the steps or stacks read keys from

    @property
    def split(self) -> bool:
        """Whether the approval environment runs its pre-deploy steps before the approval."""
        return bool(self.order) and bool(self.after_approval) and len(self.after_approval) < len(self.order)

    @property
    def before_approval(self) -> tuple[str, ...]:
        return tuple(s for s in (self.order or ()) if s not in self.after_approval)


@dataclass(frozen=True)
class CiConfig:
    pipeline: PipelineShape
    environments: tuple[Environment, ...]
    schedule: str = "0 3 * * 1"
    branch: str = "main"
    stackwise_version: str | None = None  # pinned in the install line when given


def approval_split(order: list[str], kinds: dict[str, str], upstream: dict[str, set[str]]) -> tuple[str, ...]:
    """The deploy steps and everything downstream of them, in `order` (what waits for approval)."""
    after: set[str] = {name for name in order if kinds[name] == "deploy"}
    for name in order:  # dependency order: a step's upstream is decided before it
        if upstream.get(name, set()) & after:
            after.add(name)
    return tuple(name for name in order if name in after)


def extras(cfg: CiConfig, env: Environment) -> list[str]:
    chosen = {env.cloud}
    for kind in cfg.pipeline.kinds or (set(KIND_EXTRAS) | set(LOCAL_KIND_EXTRAS)):
        chosen.update(KIND_EXTRAS.get(kind, ()))
        if env.cloud == "local":
            chosen.update(LOCAL_KIND_EXTRAS.get(kind, ()))
    return sorted(chosen)


def install_command(cfg: CiConfig, env: Environment) -> str:
    pin = f"=={cfg.stackwise_version}" if cfg.stackwise_version else ""
    return f"python -m pip install 'stackwise[{','.join(extras(cfg, env))}]{pin}'"


def run_command(cfg: CiConfig, env: Environment, part: str = "all") -> str:
    """The pipeline run of one job. `part`: all | before (the approval) | after | validate."""
    head = f"stackwise pipeline run --file {cfg.pipeline.file} --stack {env.stack}"
    if part == "validate":
        return f"{head} --dry-run"
    steps = {"all": (), "before": cfg.pipeline.before_approval, "after": cfg.pipeline.after_approval}[part]
    only = "".join(f" --only {s}" for s in steps)
    return f'{head}{only} ${{STACKWISE_FROM_STEP:+--from "$STACKWISE_FROM_STEP"}}'


def summary_command(cfg: CiConfig, env: Environment) -> str:
    return f"stackwise pipeline show latest --file {cfg.pipeline.file} --stack {env.stack} --markdown"


def jobs_of(cfg: CiConfig) -> list[tuple[str, Environment, str, list[str]]]:
    """(job id, environment, part, needs) in order: one job per environment, two for the approval one
    (`deploy-ENV` needs the job before it and the previous environment's last job)."""
    out: list[tuple[str, Environment, str, list[str]]] = []
    last: list[str] = []  # the previous environment's last job
    for env in cfg.environments:
        if not env.approval:
            out.append((env.name, env, "all", list(last)))
            last = [env.name]
        else:
            out.append((env.name, env, "before" if cfg.pipeline.split else "validate", list(last)))
            deploy = f"deploy-{env.name}"
            out.append((deploy, env, "after" if cfg.pipeline.split else "all", [*last, env.name]))
            last = [deploy]
    return out


def secret_names(cfg: CiConfig, platform: str) -> list[str]:
    """The secrets (GitHub) or CI/CD variables (GitLab) a user must create, in order."""
    names: list[str] = []
    for env in cfg.environments:
        for suffix in CLOUD_SECRETS[env.cloud]:
            name = f"{env.key}_{suffix}" if platform == "github" else f"{suffix} (environment {env.name})"
            names.append(name)
    if any(env.cloud != "local" for env in cfg.environments):
        names.append("PULUMI_ACCESS_TOKEN")
    names += list(cfg.pipeline.env_secrets)
    return list(dict.fromkeys(names))


# -- GitHub Actions ------------------------------------------------------------------------------
def _secret(name: str) -> str:
    return "${{ secrets." + name + " }}"


def _github_login(env: Environment) -> dict[str, Any] | None:
    if env.cloud == "aws":
        return {"name": "Sign in to AWS (OIDC: a role, no stored keys)", "uses": ACTIONS["aws"],
                "with": {"role-to-assume": _secret(f"{env.key}_AWS_ROLE_ARN"), "aws-region": env.region}}
    if env.cloud == "gcp":
        step: dict[str, Any] = {"name": "Sign in to Google Cloud (OIDC: workload identity federation)",
                                "uses": ACTIONS["gcp"],
                                "with": {"workload_identity_provider": _secret(f"{env.key}_GCP_WORKLOAD_IDENTITY_PROVIDER"),
                                         "service_account": _secret(f"{env.key}_GCP_SERVICE_ACCOUNT")}}
        if env.gcp_project:
            step["with"]["project_id"] = env.gcp_project
        return step
    if env.cloud == "azure":
        return {"name": "Sign in to Azure (OIDC: a federated credential, no client secret)", "uses": ACTIONS["azure"],
                "with": {"client-id": _secret(f"{env.key}_AZURE_CLIENT_ID"),
                         "tenant-id": _secret(f"{env.key}_AZURE_TENANT_ID"),
                         "subscription-id": _secret(f"{env.key}_AZURE_SUBSCRIPTION_ID")}}
    return None


def _github_job(cfg: CiConfig, job_id: str, env: Environment, part: str, needs: list[str]) -> dict[str, Any]:
    names = [e.name for e in cfg.environments]
    later = names[names.index(env.name):]
    job: dict[str, Any] = {"name": f"{job_id} (stack {env.stack})"}
    if needs:
        job["needs"] = needs
    job["if"] = ("github.event_name != 'workflow_dispatch' || "
                 f"contains(fromJSON('{_json_list(later)}'), inputs.environment)")
    job["runs-on"] = "ubuntu-latest"
    approved = job_id == f"deploy-{env.name}"
    if approved or not env.approval:
        job["environment"] = env.name
    variables = {"STACKWISE_STACK": env.stack}
    if env.cloud != "local":
        variables["PULUMI_ACCESS_TOKEN"] = _secret("PULUMI_ACCESS_TOKEN")
    variables.update({name: _secret(name) for name in cfg.pipeline.env_secrets})
    job["env"] = variables
    steps: list[dict[str, Any]] = [
        {"name": "Check out", "uses": ACTIONS["checkout"]},
        {"name": "Set up Python", "uses": ACTIONS["python"], "with": {"python-version": PYTHON}},
        {"name": "Install stackwise", "run": install_command(cfg, env)},
    ]
    if env.cloud != "local":
        steps.append({"name": "Install the Pulumi CLI (stackwise reads the stack's outputs with it)",
                      "uses": ACTIONS["pulumi"]})
        steps.append(_github_login(env))
    carry = env.cloud == "local" and env.approval and cfg.pipeline.split
    if carry and approved:
        steps.append({"name": "Take the pipeline state of the first job (a local stack keeps it on the runner)",
                      "uses": ACTIONS["download"], "with": {"name": f"stackwise-state-{env.name}", "path": ".stackwise"}})
    label = {"all": "Run the pipeline", "before": "Run the steps before the approval",
             "after": "Run the deploy steps (approved)", "validate": "Validate the pipeline (it runs after approval)"}
    steps.append({"name": label[part], "run": run_command(cfg, env, part)})
    if part != "validate":
        steps.append({"name": "Post the run's report (evaluation metrics, the gate's decision) as the job summary",
                      "if": "${{ !cancelled() }}", "run": f'{summary_command(cfg, env)} >> "$GITHUB_STEP_SUMMARY"'})
    if carry and not approved:
        steps.append({"name": "Keep the pipeline state for the approved job", "uses": ACTIONS["upload"],
                      "with": {"name": f"stackwise-state-{env.name}", "path": ".stackwise/\n!.stackwise/outputs/\n"
                               "!.stackwise/logs/", "include-hidden-files": True, "retention-days": 7}})
    job["steps"] = steps
    return job


def _json_list(items: list[str]) -> str:
    return json.dumps(items, separators=(",", ":"))


def github_workflow(cfg: CiConfig) -> dict[str, Any]:
    names = [e.name for e in cfg.environments]
    paths = [_github_glob(p) for p in cfg.pipeline.data_paths] + [cfg.pipeline.file]
    workflow: dict[str, Any] = {
        "name": "stackwise pipeline",
        "on": {
            "push": {"branches": [cfg.branch], "paths": list(dict.fromkeys(paths))},
            "schedule": [{"cron": cfg.schedule}],
            "workflow_dispatch": {"inputs": {
                "environment": {"description": "Run the environments up to this one, in order ("
                                + " -> ".join(names) + ")", "type": "choice", "options": names,
                                "default": names[-1], "required": True},
                "from_step": {"description": "Start each run at this step (empty: the whole pipeline; "
                              "unchanged steps come from the cache)", "type": "string", "required": False,
                              "default": ""}}},
        },
        "permissions": {"id-token": "write", "contents": "read"},
        "concurrency": {"group": "stackwise-pipeline", "cancel-in-progress": False},
        "defaults": {"run": {"shell": "bash"}},
        "env": {"STACKWISE_FROM_STEP": "${{ inputs.from_step }}"},
        "jobs": {},
    }
    for job_id, env, part, needs in jobs_of(cfg):
        workflow["jobs"][job_id] = _github_job(cfg, job_id, env, part, needs)
    return workflow


def _github_glob(path: str) -> str:
    return path + "**" if path.endswith("/") else path


def render_github(cfg: CiConfig) -> str:
    text = _comment_before(_dump(github_workflow(cfg)), "permissions:\n", (
        "# id-token: write lets each job ask GitHub for an OIDC token, which the sign-in step trades for\n"
        "# short-lived cloud credentials; contents: read is all the checkout needs.\n"))
    for env in cfg.environments:
        if env.approval:
            text = _comment_before(text, f"  deploy-{env.name}:\n", (
                f"  # The approval: this job's GitHub environment `{env.name}` must have required reviewers\n"
                f"  # (Settings > Environments > {env.name}); the job waits until one approves, and only then\n"
                "  # deploys. Its OIDC subject is `repo:OWNER/REPO:environment:" + env.name + "`, so a cloud role\n"
                "  # that trusts only that subject can deploy from nowhere else.\n"))
    return _header("github", cfg) + text


# -- GitLab CI -----------------------------------------------------------------------------------
def _gitlab_login(env: Environment) -> list[str]:
    if env.cloud == "aws":  # boto3 assumes AWS_ROLE_ARN with the token file itself
        return ['export AWS_WEB_IDENTITY_TOKEN_FILE="$(mktemp)"',
                'printf \'%s\' "$STACKWISE_ID_TOKEN" > "$AWS_WEB_IDENTITY_TOKEN_FILE"']
    if env.cloud == "gcp":  # an external_account credential file: google-auth trades the token for one
        return ['export STACKWISE_OIDC_DIR="$(mktemp -d)"',
                'printf \'%s\' "$STACKWISE_ID_TOKEN" > "$STACKWISE_OIDC_DIR/token"',
                'cat > "$STACKWISE_OIDC_DIR/gcp.json" <<EOF\n'
                '{"type": "external_account", "audience": "//iam.googleapis.com/$GCP_WORKLOAD_IDENTITY_PROVIDER",'
                ' "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",'
                ' "token_url": "https://sts.googleapis.com/v1/token",'
                ' "credential_source": {"file": "$STACKWISE_OIDC_DIR/token"},'
                ' "service_account_impersonation_url": "https://iamcredentials.googleapis.com/v1/projects/-/'
                'serviceAccounts/$GCP_SERVICE_ACCOUNT:generateAccessToken"}\nEOF\n',
                'export GOOGLE_APPLICATION_CREDENTIALS="$STACKWISE_OIDC_DIR/gcp.json"']
    if env.cloud == "azure":  # azure-identity's WorkloadIdentityCredential reads the token file
        return ['export AZURE_FEDERATED_TOKEN_FILE="$(mktemp)"',
                'printf \'%s\' "$STACKWISE_ID_TOKEN" > "$AZURE_FEDERATED_TOKEN_FILE"']
    return []


def _gitlab_rules(cfg: CiConfig, env: Environment, manual: bool) -> list[dict[str, Any]]:
    names = [e.name for e in cfg.environments]
    later = "|".join(names[names.index(env.name):])
    paths = [_gitlab_glob(p) for p in cfg.pipeline.data_paths] + [cfg.pipeline.file]
    rules: list[dict[str, Any]] = [
        {"if": '$CI_PIPELINE_SOURCE == "schedule"'},
        {"if": f'$CI_PIPELINE_SOURCE == "web" && $STACKWISE_ENVIRONMENT =~ /^({later})$/'},
        {"if": f'$CI_PIPELINE_SOURCE == "push" && $CI_COMMIT_BRANCH == "{cfg.branch}"',
         "changes": list(dict.fromkeys(paths))},
    ]
    if manual:
        for rule in rules:
            rule["when"] = "manual"
    return rules


def _gitlab_glob(path: str) -> str:
    """GitLab matches `changes:` with fnmatch: `dir/**` is one level, `dir/**/*` is every file below."""
    if path.endswith("/"):
        return path + "**/*"
    return path + "/*" if path.endswith("/**") else path


def _gitlab_job(cfg: CiConfig, job_id: str, env: Environment, part: str, needs: list[str]) -> dict[str, Any]:
    approved = job_id == f"deploy-{env.name}"
    carry = env.cloud == "local" and env.approval and cfg.pipeline.split
    job: dict[str, Any] = {"stage": job_id}
    if env.approval and not approved:
        job["environment"] = {"name": env.name, "action": "prepare"}  # its variables, no deployment yet
    else:
        job["environment"] = {"name": env.name} | ({"deployment_tier": "production"} if approved else {})
    if needs:  # artifacts: only a local stack's state, from the job before the approval
        job["needs"] = [{"job": n, "artifacts": carry and approved and n == env.name} for n in needs]
    job["resource_group"] = f"stackwise-{env.name}"  # one run per environment at a time
    variables = {"STACKWISE_STACK": env.stack}
    if env.cloud == "aws":
        variables |= {"AWS_REGION": env.region, "AWS_ROLE_SESSION_NAME": "gitlab-$CI_JOB_ID"}
    if env.cloud == "gcp" and env.gcp_project:
        variables["GOOGLE_CLOUD_PROJECT"] = env.gcp_project
    job["variables"] = variables
    if env.cloud != "local":
        job["id_tokens"] = {"STACKWISE_ID_TOKEN": {"aud": GITLAB_AUDIENCE[env.cloud]}}
    job["rules"] = _gitlab_rules(cfg, env, manual=approved)
    before = [install_command(cfg, env)]
    if env.cloud != "local":
        before += ["curl -fsSL https://get.pulumi.com | sh", 'export PATH="$HOME/.pulumi/bin:$PATH"']
    job["before_script"] = before + _gitlab_login(env)
    summary = f"stackwise-summary-{job_id}.md"
    if part == "validate":
        job["script"] = [run_command(cfg, env, part)]
    else:  # the report is written whether the run passed or not; the run's exit code is the job's
        job["script"] = [f"status=0\n{run_command(cfg, env, part)} || status=$?\n"
                         f'{summary_command(cfg, env)} > {summary} || echo "no run to summarize"\nexit "$status"\n']
        paths = [summary] + ([".stackwise/"] if carry and not approved else [])
        job["artifacts"] = {"when": "always", "paths": paths, "expire_in": "30 days"}
        if carry and not approved:
            job["artifacts"]["exclude"] = [".stackwise/outputs/**/*", ".stackwise/logs/**/*"]
        else:
            job["artifacts"]["expose_as"] = f"stackwise summary {job_id}"
    return job


def gitlab_ci(cfg: CiConfig) -> dict[str, Any]:
    names = [e.name for e in cfg.environments]
    jobs = jobs_of(cfg)
    doc: dict[str, Any] = {
        "stages": [job[0] for job in jobs],
        "default": {"image": GITLAB_IMAGE},
        "variables": {
            "STACKWISE_ENVIRONMENT": {"value": names[-1], "options": names,
                                      "description": "Run the environments up to this one, in order ("
                                      + " -> ".join(names) + ")"},
            "STACKWISE_FROM_STEP": {"value": "", "description": "Start each run at this step (empty: the whole "
                                    "pipeline; unchanged steps come from the cache)"},
        },
    }
    for job_id, env, part, needs in jobs:
        doc[job_id] = _gitlab_job(cfg, job_id, env, part, needs)
    return doc


def render_gitlab(cfg: CiConfig) -> str:
    text = _dump(gitlab_ci(cfg))
    for env in cfg.environments:
        if env.approval:
            text = _comment_before(text, f"deploy-{env.name}:\n", (
                f"# The approval: a manual job; protect the environment `{env.name}` (Settings > CI/CD >\n"
                "# Protected environments) so only its approvers can start it. It deploys what the job before\n"
                "# it trained and gated, from the pipeline's cache.\n"))
    return _header("gitlab", cfg) + text


# -- YAML ----------------------------------------------------------------------------------------
class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # no &anchors: every job reads on its own
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def _dump(doc: dict[str, Any]) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000, allow_unicode=True)


def _comment_before(text: str, line: str, comment: str) -> str:
    """Insert `comment` before the one line that is exactly `line`; a missing anchor is a bug here
    (a promised comment would silently disappear), so it raises."""
    at = 0 if text.startswith(line) else text.find("\n" + line) + 1
    if at == 0 and not text.startswith(line):
        raise ValueError(f"no line {line!r} to comment")
    return text[:at] + comment + text[at:]


def _header(platform: str, cfg: CiConfig) -> str:
    envs = ", ".join(f"{e.name} (stack {e.stack}, {e.cloud})" for e in cfg.environments)
    lines = [f"# Written by `stackwise ci init --{platform}`: runs the pipeline {cfg.pipeline.file} on {envs}.",
             "# Edit freely; regenerate with --force. docs/pipelines.md (\"CI/CD\") explains every part.",
             "# Secrets come only from the CI's secret store; cloud access is OIDC, never a stored key."]
    if platform == "gitlab":
        lines.append(f"# Schedule: create one in Build > Pipeline schedules with cron `{cfg.schedule}` "
                     "(GitLab keeps schedules outside this file).")
    if cfg.pipeline.order is None:
        lines.append("# The pipeline's steps could not be read when this was written: the approval "
                     "environment runs the whole pipeline after approval.")
    return "\n".join(lines) + "\n"
