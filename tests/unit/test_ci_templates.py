"""`stackwise ci init --github | --gitlab`: the workflows it writes are valid, safe, and their commands run.

- Validity: each file is checked with `check-jsonschema --builtin-schema vendor.github-workflows` /
  `vendor.gitlab-ci` (SchemaStore's schemas, shipped inside the check-jsonschema package: offline), and a
  planted mistake (`run-on`, `when: manaul`) is caught, so the check can fail.
- Safety: every secret is a `${{ secrets.NAME }}` reference (GitHub) or a CI/CD variable the file never sets
  (GitLab); no `run:` script holds a `${{ }}` expression (script injection); the approval environment is there.
- The CLI: exactly one of --github/--gitlab, an existing file refused without --force and left unchanged, an
  unknown stack, a missing pipeline file: exit 2 with what/where/fix.
- Commands: every `run:` / `script:` of the generated files is executed with bash here against a tiny
  pipeline: stackwise commands for real through the CLI (pipeline runs with `--dry-run` added, except the
  pre-approval job's, which is cheap and runs as written), GitLab's OIDC sign-in lines with a made-up token
  and the cloud SDKs reading the credentials they leave. Not run here: `uses:` actions (GitHub runs those)
  and lines that need the network (`pip install`, the Pulumi installer).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GITHUB_OUT = Path(".github/workflows/stackwise-pipeline.yml")
TINY = """version: 1
name: tiny
steps:
  prepare:
    kind: run
    with: {command: "mkdir -p build && ls data/docs > build/listing.txt"}
    deps: [data/docs]
    outs: {listing: build/listing.txt}
  check:
    kind: run
    with: {command: "test -s ${steps.prepare.outputs.listing}"}
  deploy:
    kind: deploy
    with: {model: "models:/tiny/1"}
    deps: [steps.check]
"""
ALL_CLOUDS = ["--env", "dev=local", "--env", "test=dev-gcp", "--env", "staging=dev-azure", "--env", "prod=prod-aws"]


def _project(root: Path, pipeline: str = TINY) -> Path:
    """A project at `root`: Pulumi.yaml, the repository's real stack files, a tiny pipeline and its data."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "Pulumi.yaml").write_text("name: demo\nruntime: python\nstackConfigDir: stacks/\n")
    shutil.copytree(REPO / "stacks", root / "stacks")
    (root / "data" / "docs").mkdir(parents=True)
    (root / "data" / "docs" / "a.txt").write_text("one document\n")
    (root / "stackwise.yaml").write_text(pipeline)
    return root


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STACKWISE_", "GITHUB_", "AWS_", "AZURE_", "GOOGLE_"))}
    env["COLUMNS"] = "200"
    return env


def _registered() -> bool:
    from stackwise.cli import app

    return any(group.name == "ci" for group in app.registered_groups)


def ci(cwd: Path, *args: str) -> tuple[int, str]:
    """Run `stackwise ci init ARGS` in `cwd`: through `python -m stackwise.cli` once the main CLI mounts `ci`,
    else through ci_app, turning a StackwiseError into its exit code and message as stackwise.cli.main does."""
    if _registered():
        proc = subprocess.run([sys.executable, "-m", "stackwise.cli", "ci", "init", *args], cwd=cwd, env=_env(),
                              capture_output=True, text=True, timeout=120)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.returncode, proc.stdout + proc.stderr
    from typer.testing import CliRunner

    from stackwise.cli.ci import ci_app
    from stackwise.errors import StackwiseError

    old = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(ci_app, ["init", *args])
    finally:
        os.chdir(old)
    if isinstance(result.exception, StackwiseError):
        return result.exception.exit_code, str(result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def schema_check(path: Path, schema: str) -> subprocess.CompletedProcess:
    tool = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    assert Path(tool).exists(), "check-jsonschema is missing: pip install -e '.[dev]'"
    return subprocess.run([tool, "--builtin-schema", f"vendor.{schema}", str(path)], capture_output=True, text=True,
                          timeout=120)


def _github(root: Path, *args: str) -> dict:
    code, out = ci(root, "--github", *args)
    assert code == 0, out
    return yaml.safe_load((root / GITHUB_OUT).read_text())


# -- validity ------------------------------------------------------------------------------------
def test_github_workflow_is_valid_and_has_the_promised_shape(tmp_path):
    root = _project(tmp_path)
    wf = _github(root, *ALL_CLOUDS, "--schedule", "15 4 * * 2")
    check = schema_check(root / GITHUB_OUT, "github-workflows")
    assert check.returncode == 0, check.stdout + check.stderr
    on = wf[True] if True in wf else wf["on"]  # PyYAML reads a bare `on:` as True
    assert on["push"]["paths"] == ["data/docs/**", "stackwise.yaml"]
    assert on["schedule"] == [{"cron": "15 4 * * 2"}]
    inputs = on["workflow_dispatch"]["inputs"]
    assert inputs["environment"]["options"] == ["dev", "test", "staging", "prod"] and "from_step" in inputs
    assert wf["permissions"] == {"id-token": "write", "contents": "read"}
    jobs = wf["jobs"]
    assert list(jobs) == ["dev", "test", "staging", "prod", "deploy-prod"]
    assert {j: jobs[j]["env"]["STACKWISE_STACK"] for j in jobs} == {
        "dev": "local", "test": "dev-gcp", "staging": "dev-azure", "prod": "prod-aws", "deploy-prod": "prod-aws"}
    for job_id, job in jobs.items():  # a chain: each job waits for the ones before it
        for need in job.get("needs", []):
            assert list(jobs).index(need) < list(jobs).index(job_id)
    assert jobs["test"]["needs"] == ["dev"] and jobs["deploy-prod"]["needs"] == ["staging", "prod"]
    logins = {j: [s["uses"].split("@")[0] for s in jobs[j]["steps"] if "uses" in s and "/auth" in s["uses"]
                  or "uses" in s and ("credentials" in s["uses"] or "login" in s["uses"])] for j in jobs}
    assert logins == {"dev": [], "test": ["google-github-actions/auth"], "staging": ["azure/login"],
                      "prod": ["aws-actions/configure-aws-credentials"],
                      "deploy-prod": ["aws-actions/configure-aws-credentials"]}
    aws = next(s for s in jobs["prod"]["steps"] if "aws-actions" in s.get("uses", ""))
    assert aws["with"] == {"role-to-assume": "${{ secrets.PROD_AWS_ROLE_ARN }}", "aws-region": "us-east-1"}
    runs = {j: [s["run"] for s in jobs[j]["steps"] if "stackwise pipeline run" in s.get("run", "")] for j in jobs}
    assert runs["prod"] == ['stackwise pipeline run --file stackwise.yaml --stack prod-aws --only prepare --only check '
                            '${STACKWISE_FROM_STEP:+--from "$STACKWISE_FROM_STEP"}']
    assert runs["deploy-prod"][0].startswith("stackwise pipeline run --file stackwise.yaml --stack prod-aws --only deploy ")
    for job in jobs.values():
        summary = [s for s in job["steps"] if "GITHUB_STEP_SUMMARY" in s.get("run", "")]
        assert len(summary) == 1 and summary[0]["if"] == "${{ !cancelled() }}"
        assert "stackwise pipeline show latest" in summary[0]["run"] and "--markdown" in summary[0]["run"]


def test_gitlab_ci_is_valid_and_has_the_promised_shape(tmp_path):
    root = _project(tmp_path)
    code, out = ci(root, "--gitlab", *ALL_CLOUDS)
    assert code == 0, out
    check = schema_check(root / ".gitlab-ci.yml", "gitlab-ci")
    assert check.returncode == 0, check.stdout + check.stderr
    doc = yaml.safe_load((root / ".gitlab-ci.yml").read_text())
    assert doc["stages"] == ["dev", "test", "staging", "prod", "deploy-prod"]
    assert doc["variables"]["STACKWISE_ENVIRONMENT"]["options"] == ["dev", "test", "staging", "prod"]
    for job_id in doc["stages"]:
        rules = doc[job_id]["rules"]
        assert rules[0]["if"] == '$CI_PIPELINE_SOURCE == "schedule"'
        assert rules[1]["if"].startswith('$CI_PIPELINE_SOURCE == "web"')
        assert rules[2]["changes"] == ["data/docs/**/*", "stackwise.yaml"]  # fnmatch: every file below
        assert doc[job_id]["artifacts"]["when"] == "always"
        assert any(p.startswith("stackwise-summary-") for p in doc[job_id]["artifacts"]["paths"])
    assert "id_tokens" not in doc["dev"]  # the local stack signs in nowhere
    assert doc["test"]["id_tokens"]["STACKWISE_ID_TOKEN"]["aud"] == "https://iam.googleapis.com/$GCP_WORKLOAD_IDENTITY_PROVIDER"
    assert doc["staging"]["id_tokens"]["STACKWISE_ID_TOKEN"]["aud"] == "api://AzureADTokenExchange"
    assert doc["prod"]["environment"] == {"name": "prod", "action": "prepare"}
    assert doc["deploy-prod"]["environment"]["name"] == "prod"
    assert all(rule["when"] == "manual" for rule in doc["deploy-prod"]["rules"])
    assert not any("when" in rule for rule in doc["prod"]["rules"])


def test_the_schemas_catch_a_planted_mistake(tmp_path):
    root = _project(tmp_path)
    assert ci(root, "--github", "--env", "dev=local", "--env", "prod=prod-aws")[0] == 0
    assert ci(root, "--gitlab", "--env", "dev=local", "--env", "prod=prod-aws")[0] == 0
    for source, schema, good, bad in ((root / GITHUB_OUT, "github-workflows", "    runs-on:", "    run-on:"),
                                      (root / ".gitlab-ci.yml", "gitlab-ci", "when: manual", "when: manaul")):
        text = source.read_text()
        assert good in text
        planted = tmp_path / f"planted-{source.name}"
        planted.write_text(text.replace(good, bad, 1))
        assert schema_check(planted, schema).returncode != 0, f"{schema} missed {bad!r}"


# -- safety --------------------------------------------------------------------------------------
SECRET_KEYS = {"role-to-assume", "workload_identity_provider", "service_account", "client-id", "tenant-id",
               "subscription-id", "PULUMI_ACCESS_TOKEN", "PINECONE_API_KEY", "SERVE_KEY"}


def _walk(value, key=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, str(k))
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v, key)
    else:
        yield key, value


def test_secrets_are_only_references(tmp_path):
    root = _project(tmp_path, TINY + "  smoke:\n    kind: serve-check\n    with: {api_key_env: SERVE_KEY}\n"
                               "    deps: [steps.deploy]\n")
    stack = (root / "stacks" / "Pulumi.local.yaml")
    stack.write_text(stack.read_text().replace(
        "kind: embedded\n    path: vectors", "kind: pinecone\n    host: https://example.invalid\n"
        "    apiKeySecret: env://PINECONE_API_KEY"))
    wf = _github(root, *ALL_CLOUDS)
    seen = set()
    for key, value in _walk(wf):
        text = str(value)
        if key in SECRET_KEYS:
            assert re.fullmatch(r"\$\{\{ secrets\.[A-Z0-9_]+ \}\}", text), (key, text)
            seen.add(key)
        if "${{" in text:
            assert key != "run", f"an expression inside a script: {text}"
            assert re.fullmatch(r"\$\{\{ (secrets\.[A-Z0-9_]+|inputs\.from_step|!cancelled\(\)) \}\}", text), text
    assert seen == SECRET_KEYS  # each promised reference is there (a missing one is not "safe")
    assert wf["jobs"]["dev"]["env"]["PINECONE_API_KEY"] == "${{ secrets.PINECONE_API_KEY }}"
    assert ci(root, "--gitlab", *ALL_CLOUDS)[0] == 0
    text = (root / ".gitlab-ci.yml").read_text()
    for name in ("AWS_ROLE_ARN", "GCP_WORKLOAD_IDENTITY_PROVIDER", "GCP_SERVICE_ACCOUNT", "AZURE_CLIENT_ID",
                 "AZURE_TENANT_ID", "PULUMI_ACCESS_TOKEN", "PINECONE_API_KEY"):
        assert not re.search(rf"^\s*{name}:", text, re.M), f"{name} is set in the file instead of CI/CD variables"
    for path in (root / GITHUB_OUT, root / ".gitlab-ci.yml"):
        body = path.read_text()
        assert not re.search(r"AKIA[0-9A-Z]{16}|arn:aws:iam::\d|-----BEGIN|client_secret|password", body, re.I)


# -- the command line ----------------------------------------------------------------------------
def test_exactly_one_platform(tmp_path):
    root = _project(tmp_path)
    for args in ((), ("--github", "--gitlab")):
        code, out = ci(root, *args)
        assert code == 2 and "--github or --gitlab" in out
    assert not (root / GITHUB_OUT).exists() and not (root / ".gitlab-ci.yml").exists()


def test_an_existing_file_is_refused_without_force_and_left_unchanged(tmp_path):
    root = _project(tmp_path)
    target = root / ".gitlab-ci.yml"
    target.write_text("# mine\n")
    code, out = ci(root, "--gitlab")
    assert code == 2 and ".gitlab-ci.yml" in out and "--force" in out
    assert target.read_text() == "# mine\n"
    code, out = ci(root, "--gitlab", "--force")
    assert code == 0, out
    assert target.read_text() != "# mine\n" and schema_check(target, "gitlab-ci").returncode == 0


def test_bad_input_is_exit_2_naming_what_and_where(tmp_path):
    root = _project(tmp_path)
    code, out = ci(root, "--github", "--env", "prod=prod-gcp")
    assert code == 2 and "Pulumi.prod-gcp.yaml" in out and "prod-gcp" in out
    code, out = ci(root, "--github", "--pipeline", "missing.yaml")
    assert code == 2 and "missing.yaml" in out and "--pipeline" in out
    for args, needle in ((("--env", "dev"), "NAME=STACK"), (("--schedule", "every monday"), "cron"),
                         (("--prod", "qa"), "--prod"), (("--env", "Dev=local"), "environment name"),
                         (("--data-path", "../outside/**"), "--data-path")):
        code, out = ci(root, "--github", *args)
        assert code == 2 and needle in out, (args, out)
    assert not (root / GITHUB_OUT).exists()


def test_the_approval_environment(tmp_path):
    root = _project(tmp_path)
    wf = _github(root, "--env", "dev=local", "--env", "prod=prod-aws")
    assert wf["jobs"]["deploy-prod"]["environment"] == "prod"
    assert "environment" not in wf["jobs"]["prod"]  # the pre-approval job must not wait for reviewers
    assert "required reviewers" in (root / GITHUB_OUT).read_text()
    wf = _github(root, "--env", "dev=local", "--env", "live=prod-aws", "--prod", "live", "--force")
    assert list(wf["jobs"]) == ["dev", "live", "deploy-live"] and wf["jobs"]["deploy-live"]["environment"] == "live"
    wf = _github(root, "--env", "dev=local", "--env", "qa=dev-aws", "--force")
    assert list(wf["jobs"]) == ["dev", "qa"]  # no prod, no --prod: nothing waits


def test_defaults_come_from_the_pipeline_file(tmp_path):
    from stackwise.pipeline.example import write_example

    root = tmp_path / "lee"
    write_example(root)
    shutil.copytree(REPO / "stacks", root / "stacks")
    (root / "Pulumi.yaml").write_text("name: demo\nruntime: python\n")
    wf = _github(root, "--env", "dev=local", "--env", "prod=prod-aws")
    on = wf[True] if True in wf else wf["on"]
    assert on["push"]["paths"] == ["data/lee_docs.jsonl", "curation.yaml", "data/lee_passages.jsonl",
                                   "data/lee_eval.jsonl", "gates.yaml", "stackwise.yaml"]
    gate = [s["run"] for s in wf["jobs"]["prod"]["steps"] if "pipeline run" in s.get("run", "")][0]
    deploy = [s["run"] for s in wf["jobs"]["deploy-prod"]["steps"] if "pipeline run" in s.get("run", "")][0]
    assert re.findall(r"--only (\S+)", gate) == ["curate", "finetune", "index", "evaluate", "promote"]
    assert re.findall(r"--only (\S+)", deploy) == ["deploy", "check"]
    # A file that does not validate: data/** and the whole run after approval (validated first).
    (root / "stackwise.yaml").write_text("version: 1\nname: lee\nsteps: {a: {kind: trian}}\n")
    code, out = ci(root, "--github", "--env", "prod=prod-aws", "--force")
    assert code == 0 and "warning" in out
    wf = yaml.safe_load((root / GITHUB_OUT).read_text())
    on = wf[True] if True in wf else wf["on"]
    assert on["push"]["paths"] == ["data/**", "stackwise.yaml"]
    assert any(s.get("run", "").endswith("--dry-run") for s in wf["jobs"]["prod"]["steps"])


# -- the commands run --------------------------------------------------------------------------
def _bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _dry(script: str) -> str:
    return script.replace("stackwise pipeline run ", "stackwise pipeline run --dry-run ")


def _runnable_env(root: Path, extra: dict[str, str]) -> dict[str, str]:
    bin_dir = root.parent / "bin"
    bin_dir.mkdir(exist_ok=True)
    launcher = bin_dir / "stackwise"  # what the console script does: the real CLI, this interpreter
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m stackwise.cli "$@"\n')
    launcher.chmod(0o755)
    env = _env() | {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return env | extra


def _dispatch_env(wf: dict, inputs: dict[str, str]) -> dict[str, str]:
    """The workflow-level env as GitHub evaluates it for a manual run with `inputs` (`${{ inputs.X }}` only)."""
    out = {}
    for name, value in wf.get("env", {}).items():
        match = re.fullmatch(r"\$\{\{ inputs\.(\w+) \}\}", str(value))
        assert match, f"workflow env {name}={value}: only inputs are expected there"
        out[name] = inputs.get(match.group(1), "")
    return out


def test_the_github_steps_run_here(tmp_path):
    pytest.importorskip("stackwise.cli.pipeline", reason="the pipeline CLI (stackwise.cli.pipeline) is not built yet")
    root = _project(tmp_path / "project")
    wf = _github(root, "--env", "dev=local", "--env", "prod=local")
    summary = tmp_path / "summary.md"
    jobs = wf["jobs"]
    env = _runnable_env(root, {"GITHUB_STEP_SUMMARY": str(summary), "STACKWISE_STACK": "local"}) | _dispatch_env(wf, {})
    scripts = {j: [s["run"] for s in jobs[j]["steps"] if "run" in s and not s["run"].startswith("python -m pip")]
               for j in jobs}
    gate, deploy = scripts["prod"][0], scripts["deploy-prod"][0]
    # Before the pre-approval job has run, the deploy job cannot: its upstream is not in the cache.
    planned = _bash(_dry(gate) + " --json", root, env)
    assert planned.returncode == 0, planned.stderr
    states = {n: s["state"] for n, s in json.loads(planned.stdout)["steps"].items()}
    assert states == {"prepare": "pending", "check": "pending", "deploy": "excluded"}
    refused = _bash(_dry(deploy), root, env)
    assert refused.returncode == 2 and "no cached result" in refused.stderr
    # A manual run's from_step narrows the run: from `check`, `prepare` is not run (and not cached yet).
    narrowed = _bash(_dry(gate), root, env | _dispatch_env(wf, {"environment": "prod", "from_step": "check"}))
    assert narrowed.returncode == 2 and "'prepare'" in narrowed.stderr
    ran = _bash(gate, root, env)  # the pre-approval job as written: run steps only, nothing deployed
    assert ran.returncode == 0, ran.stderr
    assert (root / "build" / "listing.txt").read_text() == "a.txt\n"
    for job_id, lines in scripts.items():  # every job, in order, as GitHub runs its steps
        for script in lines:
            proc = _bash(_dry(script), root, env)
            assert proc.returncode == 0, (job_id, script, proc.stderr)
    assert summary.read_text().count("## Pipeline `tiny` on `local`") == len(jobs)
    planned = _bash(_dry(deploy) + " --json", root, env)
    states = {n: s["state"] for n, s in json.loads(planned.stdout)["steps"].items()}
    assert states == {"prepare": "cached", "check": "cached", "deploy": "pending"}
    wrong = _bash(_dry(deploy), root, env | _dispatch_env(wf, {"environment": "prod", "from_step": "nosuch"}))
    assert wrong.returncode == 2 and "nosuch" in wrong.stderr  # the manual input reaches the command



def test_the_gitlab_scripts_run_here(tmp_path):
    pytest.importorskip("stackwise.cli.pipeline", reason="the pipeline CLI (stackwise.cli.pipeline) is not built yet")
    root = _project(tmp_path / "project")
    assert ci(root, "--gitlab", "--env", "dev=local", "--env", "prod=local")[0] == 0
    doc = yaml.safe_load((root / ".gitlab-ci.yml").read_text())
    env = _runnable_env(root, {"STACKWISE_STACK": "local"}) | {k: v["value"] for k, v in doc["variables"].items()}
    assert _bash(_dry(doc["prod"]["script"][0]).replace("--dry-run ", "", 1), root, env).returncode == 0
    for job_id in doc["stages"]:
        job = doc[job_id]
        lines = [line for line in job["before_script"] + job["script"] if not line.startswith(("python -m pip", "curl"))]
        proc = _bash(_dry("\n".join(lines)), root, env | job["variables"])
        assert proc.returncode == 0, (job_id, proc.stderr)
        assert (root / f"stackwise-summary-{job_id}.md").read_text().startswith("## Pipeline `tiny`")
    assert "STACKWISE_FROM_STEP" in doc["variables"]  # the manual run's form field
    proc = _bash(_dry(doc["dev"]["script"][0]), root, env | {"STACKWISE_FROM_STEP": "nosuch"})
    assert proc.returncode == 2  # the run's exit code is the job's, after the summary is written


def test_gitlab_oidc_lines_leave_credentials_each_cloud_sdk_reads(tmp_path):
    root = _project(tmp_path / "project")
    assert ci(root, "--gitlab", "--env", "a=dev-aws", "--env", "g=dev-gcp", "--env", "z=dev-azure")[0] == 0
    doc = yaml.safe_load((root / ".gitlab-ci.yml").read_text())
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwcm9qZWN0X3BhdGg6ZzpwIn0.c2lnbmF0dXJl"
    ci_vars = {"STACKWISE_ID_TOKEN": token, "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/ci",
               "GCP_WORKLOAD_IDENTITY_PROVIDER": "projects/123/locations/global/workloadIdentityPools/ci/providers/gl",
               "GCP_SERVICE_ACCOUNT": "ci@demo.iam.gserviceaccount.com", "AZURE_CLIENT_ID": "00000000-0000-0000-0000-0000000000c1",
               "AZURE_TENANT_ID": "00000000-0000-0000-0000-0000000000e1", "HOME": str(tmp_path)}
    probe = {
        "a": "import boto3; c = boto3.Session().get_credentials(); print(c.method)",
        "g": "import google.auth, json; c, _ = google.auth.load_credentials_from_file(__import__('os').environ"
             "['GOOGLE_APPLICATION_CREDENTIALS']); print(type(c).__module__, c.service_account_email, c._audience)",
        "z": "from azure.identity import WorkloadIdentityCredential as W; W(); import os; "
             "print(open(os.environ['AZURE_FEDERATED_TOKEN_FILE']).read() == os.environ['STACKWISE_ID_TOKEN'])",
    }
    expect = {"a": "assume-role-with-web-identity",
              "g": "google.auth.identity_pool ci@demo.iam.gserviceaccount.com //iam.googleapis.com/projects/123/"
                   "locations/global/workloadIdentityPools/ci/providers/gl", "z": "True"}
    for job_id in ("a", "g", "z"):
        lines = [x for x in doc[job_id]["before_script"] if not x.startswith(("python -m pip", "curl", "export PATH"))]
        script = "\n".join(lines) + f"\n{sys.executable} -c \"{probe[job_id]}\""
        proc = _bash(script, root, _env() | ci_vars | doc[job_id]["variables"])
        assert proc.returncode == 0, (job_id, proc.stderr)
        assert proc.stdout.strip().splitlines()[-1] == expect[job_id], (job_id, proc.stdout)


def test_ci_init_loads_no_cloud_or_ml_sdk(tmp_path):
    root = _project(tmp_path / "project")
    # Modules loaded before any code runs do not count (a namespace .pth imports `google` at start-up).
    script = ("import sys\nbase = set(sys.modules)\nfrom stackwise.cli.ci import ci_app\n"
              "ci_app(['init', '--github', '--env', 'dev=dev-aws', '--env', 'prod=prod-aws'], standalone_mode=False)\n"
              "heavy = {'boto3', 'google', 'azure', 'torch', 'transformers', 'pulumi', 'mlflow', 'lancedb', 'numpy'}\n"
              "print(sorted({m.split('.')[0] for m in set(sys.modules) - base} & heavy))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
