"""Stack resolution: the name, the config file, and the validated outputs.

Every test runs in an empty working directory with no STACKWISE_* variables (conftest.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import stackwise
from stackwise import ConfigError, StackOutputs, load_stack

AWS_OUTPUTS = {
    "cloud": "aws",
    "region": "us-east-1",
    "artifact_store": "s3://demo-artifacts",
    "job_role": "arn:aws:iam::123456789012:role/demo",
    "vector_store": {"kind": "pinecone", "host": "https://kb.pinecone.io", "api_key_secret": "env://PINECONE_API_KEY"},
    "secrets": {"hf_token": "aws-sm://arn:aws:secretsmanager:us-east-1:1:secret:hf"},
}


def write_outputs(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.fixture
def project(tmp_path, write_project, make_stack_yaml):
    """A project with a local stack file and two cloud stacks; the cwd is its root."""
    return write_project(tmp_path, {
        "local": make_stack_yaml("local", "local"),
        "dev-aws": make_stack_yaml("aws", "us-east-1"),
        "dev-gcp": make_stack_yaml("gcp", "europe-west4"),
    })


# -- the name ------------------------------------------------------------------------------------
def test_name_defaults_to_local_from_the_project_file(project):
    stack = load_stack()
    assert (stack.name, stack.cloud) == ("local", "local")
    assert stack.source == str(project / "stacks" / "Pulumi.local.yaml")


def test_environment_variable_chooses_the_stack(project, monkeypatch):
    monkeypatch.setenv("STACKWISE_STACK", "dev-gcp")
    stack = load_stack()
    assert (stack.name, stack.cloud, stack.region) == ("dev-gcp", "gcp", "europe-west4")


def test_argument_wins_over_the_environment(project, monkeypatch):
    monkeypatch.setenv("STACKWISE_STACK", "dev-gcp")
    stack = load_stack("dev-aws")
    assert (stack.name, stack.cloud, stack.region) == ("dev-aws", "aws", "us-east-1")


@pytest.mark.parametrize("bad", ["../etc/passwd", "a b", "-x", "dev\n"])
def test_invalid_stack_name_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="invalid stack name"):
        load_stack(bad)


# -- the local stack without a project -----------------------------------------------------------
def test_local_stack_works_in_an_empty_folder_with_state_under_dot_stackwise(tmp_path):
    stack = load_stack()
    assert (stack.name, stack.cloud, stack.region) == ("local", "local", "local")
    assert stack.source == "built-in defaults"
    outputs = stack.outputs
    assert isinstance(outputs, StackOutputs)
    state = (tmp_path / ".stackwise").resolve()
    assert outputs.artifact_store == str(state / "artifacts")
    assert outputs.vector_store.kind == "embedded"
    assert outputs.vector_store.uri == str(state / "vectors")
    assert outputs.embedding_model == "all-MiniLM-L6-v2"
    assert not (tmp_path / ".stackwise").exists(), "resolving a stack must not write state"


def test_local_stack_state_follows_stackwise_home(tmp_path, monkeypatch):
    home = tmp_path / "elsewhere"
    monkeypatch.setenv("STACKWISE_HOME", str(home))
    outputs = load_stack().outputs
    assert outputs.artifact_store == str(home.resolve() / "artifacts")
    assert outputs.vector_store.uri == str(home.resolve() / "vectors")


def test_connect_returns_a_platform_for_the_local_stack(tmp_path, monkeypatch):
    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / "state"))
    platform = stackwise.connect()
    assert isinstance(platform, stackwise.Platform)
    assert platform.stack.name == "local" and platform.stack.is_local
    assert platform.stack.outputs.artifact_store.startswith(str((tmp_path / "state").resolve()))


def test_connect_validates_the_stack_at_once():
    with pytest.raises(ConfigError, match="unknown stack 'nope'"):
        stackwise.connect("nope")


# -- finding the project's stacks/ ---------------------------------------------------------------
def test_stacks_folder_is_found_from_a_subfolder(project, monkeypatch):
    sub = project / "src" / "pkg"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    stack = load_stack("dev-aws")
    assert stack.source == str(project / "stacks" / "Pulumi.dev-aws.yaml")


def test_stacks_folder_of_a_parent_needs_pulumi_yaml_beside_it(tmp_path, monkeypatch, make_stack_yaml):
    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks" / "Pulumi.dev-aws.yaml").write_text(make_stack_yaml("aws"))
    sub = tmp_path / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    with pytest.raises(ConfigError, match="unknown stack 'dev-aws'"):
        load_stack("dev-aws")


def test_unknown_stack_lists_the_known_ones(project):
    with pytest.raises(ConfigError) as caught:
        load_stack("prod")
    message = str(caught.value)
    assert "unknown stack 'prod'" in message
    for known in ("local", "dev-aws", "dev-gcp"):
        assert known in message
    assert "Pulumi.prod.yaml" in message


def test_unknown_stack_without_a_project_says_local_is_the_choice():
    with pytest.raises(ConfigError) as caught:
        load_stack("dev-aws")
    assert "local" in caught.value.fix


# -- invalid stack files -------------------------------------------------------------------------
def test_unknown_cloud_names_the_file_and_the_key(tmp_path, write_project, make_stack_yaml):
    write_project(tmp_path, {"dev-ibm": make_stack_yaml("ibm")})
    with pytest.raises(ConfigError) as caught:
        load_stack("dev-ibm")
    message = str(caught.value)
    assert "'ibm'" in message
    assert str(tmp_path / "stacks" / "Pulumi.dev-ibm.yaml") in message
    assert "stackwise:cloud" in message
    assert "aws" in caught.value.fix


def test_missing_cloud_is_a_config_error(tmp_path, write_project):
    write_project(tmp_path, {"empty": "config:\n  stackwise:region: us-east-1\n"})
    with pytest.raises(ConfigError, match="stackwise:cloud"):
        load_stack("empty")


def test_malformed_yaml_names_the_line(tmp_path, write_project):
    text = "config:\n  stackwise:cloud: aws\n  stackwise:region: [us-east-1\n  stackwise:x: 1\n"
    write_project(tmp_path, {"broken": text})
    with pytest.raises(ConfigError) as caught:
        load_stack("broken")
    assert "not valid YAML" in caught.value.what
    assert "Pulumi.broken.yaml line " in caught.value.where


def test_yaml_that_is_not_a_mapping_is_a_config_error(tmp_path, write_project):
    write_project(tmp_path, {"list": "- a\n- b\n"})
    with pytest.raises(ConfigError, match="config:"):
        load_stack("list")


def test_unknown_key_in_the_local_stack_is_named(tmp_path, write_project, make_stack_yaml):
    write_project(tmp_path, {"local": make_stack_yaml("local", "local", vectorStor="x")})
    with pytest.raises(ConfigError) as caught:
        load_stack()
    assert "stackwise:vectorStor" in str(caught.value)
    assert "vectorStore" in caught.value.fix


def test_keys_of_other_namespaces_are_ignored(tmp_path, write_project):
    text = "config:\n  aws:region: us-east-1\n  stackwise:cloud: local\n  stackwise:region: local\n"
    write_project(tmp_path, {"local": text})
    assert load_stack().cloud == "local"


def test_local_stack_rejects_a_hosted_vector_store(tmp_path, write_project):
    text = "config:\n  stackwise:cloud: local\n  stackwise:vectorStore:\n    kind: pinecone\n"
    write_project(tmp_path, {"local": text})
    with pytest.raises(ConfigError, match="embedded"):
        load_stack().outputs


# -- outputs -------------------------------------------------------------------------------------
def test_outputs_env_file_wins_over_the_synced_file(project, tmp_path, monkeypatch):
    synced = dict(AWS_OUTPUTS, region="synced-region")
    write_outputs(tmp_path / ".stackwise" / "outputs" / "dev-aws.json", synced)
    chosen = write_outputs(tmp_path / "env.json", dict(AWS_OUTPUTS, region="env-region"))
    monkeypatch.setenv("STACKWISE_OUTPUTS", str(chosen))
    assert load_stack("dev-aws").outputs.region == "env-region"
    monkeypatch.delenv("STACKWISE_OUTPUTS")
    assert load_stack("dev-aws").outputs.region == "synced-region"


def test_synced_outputs_follow_stackwise_home(project, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("STACKWISE_HOME", str(home))
    write_outputs(home / "outputs" / "dev-aws.json", AWS_OUTPUTS)
    outputs = load_stack("dev-aws").outputs
    assert outputs.artifact_store == "s3://demo-artifacts"
    assert outputs.vector_store.api_key_secret == "env://PINECONE_API_KEY"


def test_synced_outputs_override_the_local_defaults(tmp_path):
    local = {"cloud": "local", "region": "local", "artifact_store": "/data/artifacts",
             "vector_store": {"kind": "embedded", "uri": "/data/vectors"}}
    write_outputs(tmp_path / ".stackwise" / "outputs" / "local.json", local)
    assert load_stack().outputs.vector_store.uri == "/data/vectors"


def test_no_outputs_and_no_pulumi_says_how_to_fix(project, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no `pulumi` on PATH
    with pytest.raises(ConfigError) as caught:
        load_stack("dev-aws").outputs
    assert "no outputs for stack 'dev-aws'" in caught.value.what
    assert "stackwise sync" in caught.value.fix and "STACKWISE_OUTPUTS" in caught.value.fix


def test_outputs_file_that_does_not_exist(project, monkeypatch, tmp_path):
    monkeypatch.setenv("STACKWISE_OUTPUTS", str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="not found"):
        load_stack("dev-aws").outputs


def test_outputs_file_that_is_not_json_names_the_line(project, monkeypatch, tmp_path):
    path = write_outputs(tmp_path / "out.json", '{\n  "cloud": "aws",\n  oops\n}')
    monkeypatch.setenv("STACKWISE_OUTPUTS", str(path))
    with pytest.raises(ConfigError) as caught:
        load_stack("dev-aws").outputs
    assert "not valid JSON" in caught.value.what
    assert caught.value.where == f"{path} line 3"


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda d: d.pop("artifact_store"), "artifact_store"),
        (lambda d: d.pop("vector_store"), "vector_store"),
        (lambda d: d.update(cloud="ibm"), "cloud"),
        (lambda d: d.update(surprise=1), "surprise"),
        (lambda d: d["vector_store"].update(kind="faiss"), "vector_store.kind"),
        (lambda d: d["vector_store"].update(api_key_secret="pcsk_literal_key"), "vector_store.api_key_secret"),
        (lambda d: d.update(secrets={"hf_token": "hf_literal"}), "secrets"),
        (lambda d: d["vector_store"].update(api_key_secret="env://KEY\n"), "vector_store.api_key_secret"),
    ],
)
def test_outputs_failing_the_contract_name_the_key(project, monkeypatch, tmp_path, change, key):
    data = json.loads(json.dumps(AWS_OUTPUTS))
    change(data)
    monkeypatch.setenv("STACKWISE_OUTPUTS", str(write_outputs(tmp_path / "out.json", data)))
    with pytest.raises(ConfigError) as caught:
        load_stack("dev-aws").outputs
    assert f"invalid at {key}" in caught.value.what
    assert str(tmp_path / "out.json") in caught.value.where


def test_outputs_of_another_cloud_are_refused(project, monkeypatch, tmp_path):
    gcp = {"cloud": "gcp", "region": "europe-west4", "artifact_store": "gs://demo",
           "vector_store": {"kind": "embedded", "uri": "gs://demo/vectors"}, "gcp_project": "demo"}
    monkeypatch.setenv("STACKWISE_OUTPUTS", str(write_outputs(tmp_path / "out.json", gcp)))
    with pytest.raises(ConfigError) as caught:
        load_stack("dev-aws").outputs
    assert "configured for aws" in caught.value.what and "gcp" in caught.value.what


@pytest.mark.parametrize(
    "plant",
    [
        lambda d: d["vector_store"].update(api_key_secret="sk-live-123"),
        lambda d: d.update(secrets={"openai": "sk-live-123"}),
        lambda d: d.update(region={"token": "sk-live-123"}),
        lambda d: d.update(artifact_store=["sk-live-123"]),
    ],
)
def test_errors_never_echo_a_secret_value(project, monkeypatch, tmp_path, plant):
    data = json.loads(json.dumps(AWS_OUTPUTS))
    plant(data)
    monkeypatch.setenv("STACKWISE_OUTPUTS", str(write_outputs(tmp_path / "out.json", data)))
    with pytest.raises(ConfigError) as caught:
        load_stack("dev-aws").outputs
    error = caught.value
    for text in (str(error), repr(error), error.what, error.where or "", error.fix or ""):
        assert "sk-live-123" not in text


def test_errors_are_value_errors_with_what_where_fix(project):
    with pytest.raises(ValueError) as caught:
        load_stack("prod")
    error = caught.value
    assert isinstance(error, stackwise.StackwiseError) and error.exit_code == 2
    assert error.where and error.fix
    assert f"where: {error.where}" in str(error) and f"fix: {error.fix}" in str(error)


# -- compute kinds ---------------------------------------------------------------------------------
ON_PREM = """config:
  stackwise:cloud: local
  stackwise:artifactStore: s3://minio-artifacts
  stackwise:compute: {kind: kubernetes, image: registry.internal/stackwise/train:1}
  stackwise:kubernetes:
    context: lab
    namespace: ml-jobs
    serviceAccount: stackwise-jobs
    queue: team-a
    gpuValues: {A100-80GB: a100-80}
    gpuLabel: lab.example.com/gpu
"""


def test_a_local_stack_on_a_cluster_derives_its_kubernetes_outputs(tmp_path, write_project):
    write_project(tmp_path, {"lab": ON_PREM})
    stack = load_stack("lab")
    assert (stack.compute_kind, stack.deploy_kind) == ("kubernetes", "kubernetes")
    cluster = stack.outputs.kubernetes
    assert (cluster.namespace, cluster.service_account, cluster.queue) == ("ml-jobs", "stackwise-jobs", "team-a")
    assert cluster.gpu_label == "lab.example.com/gpu" and cluster.gpu_values == {"A100-80GB": "a100-80"}
    assert stack.outputs.training_image == "registry.internal/stackwise/train:1"
    assert stack.outputs.artifact_store == "s3://minio-artifacts"


@pytest.mark.parametrize("change, message, fix", [
    ("    namspace: x\n", "unknown key stackwise:kubernetes.namspace", "namespace"),
    ("    queue: Team_A\n", "bad value for stackwise:kubernetes.queue", "docs/kubernetes.md"),
])
def test_a_bad_kubernetes_key_of_a_local_stack_is_named(tmp_path, write_project, change, message, fix):
    write_project(tmp_path, {"lab": ON_PREM.replace("    queue: team-a\n", change)})
    with pytest.raises(ConfigError) as caught:
        load_stack("lab").outputs
    assert message in caught.value.what and fix in caught.value.fix
    assert "Pulumi.lab.yaml" in caught.value.where


def test_a_local_cluster_stack_needs_a_namespace_and_an_image(tmp_path, write_project):
    write_project(tmp_path, {"lab": ON_PREM.replace("    namespace: ml-jobs\n", "")})
    with pytest.raises(ConfigError, match="at least a namespace"):
        load_stack("lab")
    write_project(tmp_path, {"lab": ON_PREM.replace(", image: registry.internal/stackwise/train:1", "")})
    with pytest.raises(ConfigError, match="names no image"):
        load_stack("lab")


def test_a_cloud_stacks_compute_kind_is_checked_with_a_suggestion(tmp_path, write_project, make_stack_yaml):
    text = make_stack_yaml("aws", "us-east-1") + "  stackwise:compute: {kind: kubernets}\n"
    write_project(tmp_path, {"dev": text})
    with pytest.raises(ConfigError) as caught:
        load_stack("dev")
    assert "did you mean 'kubernetes'" in caught.value.what and "kind: kubernetes" in caught.value.fix
    write_project(tmp_path, {"dev": make_stack_yaml("aws", "us-east-1") + "  stackwise:compute: {kind: kubernetes}\n"})
    assert (load_stack("dev").compute_kind, load_stack("dev").deploy_kind) == ("kubernetes", "kubernetes")
    write_project(tmp_path, {"dev": make_stack_yaml("aws", "us-east-1")})
    assert (load_stack("dev").compute_kind, load_stack("dev").deploy_kind) == ("aws", "aws")


def test_a_cluster_stack_whose_artifacts_are_a_local_folder_is_refused(tmp_path, write_project):
    from stackwise.adapters.compute.kubernetes import build_manifests
    from stackwise.specs import IndexSpec

    write_project(tmp_path, {"lab": ON_PREM.replace("  stackwise:artifactStore: s3://minio-artifacts\n", "")})
    with pytest.raises(ConfigError) as caught:
        build_manifests(IndexSpec(source="s3://b/docs/", index="kb"), load_stack("lab"), "sw-index-0123456789abcdef-1")
    assert "pods on a cluster cannot reach" in caught.value.what and "stackwise:artifactStore" in caught.value.where
