"""`stackwise pipeline compile --target sagemaker|vertex|azureml` (stackwise.pipeline.compile): the pipeline
file as each cloud's managed pipeline, checked with that cloud's own validator, and its bundle.

Each definition is read back the way its cloud reads it (SageMaker's JSON, the Vertex PipelineSpec, the
Azure ML job through azure-ai-ml's `load_job`) and its step graph, image and commands are compared with the
pipeline file (`Pipeline.upstream`). Bad definitions are planted to show the validators refuse them. The
step command itself is run here, with a file:// artifact store standing in for the cloud's bucket, one
fresh "container" (working folder and state) per step."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
import yaml

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
TARGETS = {"sagemaker": "dev-aws", "vertex": "dev-gcp", "azureml": "dev-azure"}
IMAGES = {"dev-aws": "123456789012.dkr.ecr.us-east-1.amazonaws.com/stackwise/train:abc",
          "dev-gcp": "us-docker.pkg.dev/demo/stackwise/train:abc", "dev-azure": "demo.azurecr.io/stackwise/train:abc"}


def outputs(stack: str, store: str | None = None) -> dict:
    cloud = stack.removeprefix("dev-")
    base = {"cloud": cloud, "region": {"aws": "us-east-1", "gcp": "us-central1", "azure": "westeurope"}[cloud],
            "artifact_store": store or {"aws": "s3://demo-artifacts", "gcp": "gs://demo-artifacts",
                                        "azure": "az://artifacts"}[cloud],
            "training_image": IMAGES[stack], "vector_store": {"kind": "embedded", "uri": "memory://vectors"}}
    extra = {"aws": {"job_role": "arn:aws:iam::123456789012:role/demo-jobs",
                     "network": {"subnets": ["subnet-1", "subnet-2"], "security_groups": ["sg-1"]}},
             "gcp": {"job_role": "jobs@demo.iam.gserviceaccount.com", "gcp_project": "demo"},
             "azure": {"job_role": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/"
                                   "userAssignedIdentities/jobs", "azure_identity_client_id": "client-id",
                       "azure_subscription_id": "s", "azure_resource_group": "rg", "azure_workspace": "ws"}}[cloud]
    return {**base, **extra}


@pytest.fixture
def project(tmp_path: Path, write_project, make_stack_yaml) -> Path:
    """Stacks dev-aws, dev-gcp, dev-azure (outputs synced under .stackwise/) and local; the example pipeline."""
    from stackwise.pipeline.example import write_example

    secure = "  stackwise:someSecret:\n    secure: v1:AAAAsecret\n"
    write_project(tmp_path, {name: make_stack_yaml(name.removeprefix("dev-"), region=outputs(name)["region"]) + secure
                             for name in TARGETS.values()} | {"local": "config:\n  stackwise:cloud: local\n"})
    synced = tmp_path / ".stackwise" / "outputs"
    synced.mkdir(parents=True)
    for name in TARGETS.values():
        (synced / f"{name}.json").write_text(json.dumps(outputs(name)))
    write_example(tmp_path / "pipe", eval_passages=4)
    return tmp_path / "pipe" / "stackwise.yaml"


def graph_of(target: str, text: str) -> dict[str, dict]:
    """step -> {after, image, argv}, read from the definition as its cloud reads it."""
    if target == "sagemaker":
        steps = json.loads(text)["Steps"]
        return {s["Name"]: {"after": set(s.get("DependsOn", [])), "image": s["Arguments"]["AppSpecification"]["ImageUri"],
                            "argv": s["Arguments"]["AppSpecification"]["ContainerEntrypoint"]} for s in steps}
    if target == "vertex":
        spec = yaml.safe_load(text)
        tasks, executors = spec["root"]["dag"]["tasks"], spec["deploymentSpec"]["executors"]
        name = {task: body["taskInfo"]["name"] for task, body in tasks.items()}
        out = {}
        for task, body in tasks.items():
            label = spec["components"][body["componentRef"]["name"]]["executorLabel"]
            container = executors[label]["container"]
            out[name[task]] = {"after": {name[d] for d in body.get("dependentTasks", [])}, "image": container["image"],
                               "argv": container["command"] + container["args"]}
        return out
    from stackwise.pipeline.compile.azureml import PARENT, load

    job = load(text)
    out = {}
    for node in job.jobs.values():
        argv = shlex.split(node.component.command)
        after = {job.jobs[PARENT.match(v._data).group(1)].display_name for v in node.inputs.values()}
        out[node.display_name] = {"after": after, "image": node.component.environment.image,
                                  "argv": argv[:argv.index("--record")], "command": node.component.command}
    return out


@pytest.mark.parametrize("target", list(TARGETS))
def test_each_step_is_one_container_step_with_the_files_dependencies_image_and_command(project, target):
    from stackwise.pipeline.compile import _module, compile_definition
    from stackwise.pipeline.spec import load
    from stackwise.stack import load_stack

    pipeline, stack = load(project), TARGETS[target]
    compiled = compile_definition(pipeline, target, load_stack(stack))
    bundle = compiled.bundle
    assert bundle.folder == f"{outputs(stack)['artifact_store']}/pipelines/lee/files/{bundle.digest}"
    graph = graph_of(target, compiled.text)
    assert set(graph) == set(pipeline.order) == {"curate", "index", "finetune", "evaluate", "promote", "deploy", "check"}
    for name, step in graph.items():
        assert step["after"] == pipeline.upstream[name], name
        assert step["image"] == IMAGES[stack]
        assert step["argv"] == ["python", "-m", "stackwise.pipeline.compile.step", "--file", bundle.file_uri,
                                "--stack", stack, "--only", name]
    assert graph["promote"]["after"] == {"finetune", "evaluate"}  # a `deps: [steps.evaluate]` edge kept
    _module(target).validate(compiled.text, compiled.plan)  # what compile already ran, run again explicitly
    # the bundle: the file, each relative input at its relative path, the stack's files
    assert bundle.names == ["_stack/Pulumi.%s.yaml" % stack, "_stack/outputs.json", "curation.yaml",
                            "data/lee_docs.jsonl", "data/lee_eval.jsonl", "data/lee_passages.jsonl", "gates.yaml",
                            "stackwise.yaml"]


def test_azure_nodes_wait_for_their_upstream_records(project):
    from stackwise.pipeline.compile import compile_definition
    from stackwise.pipeline.spec import load
    from stackwise.stack import load_stack

    text = compile_definition(load(project), "azureml", load_stack("dev-azure")).text
    graph = graph_of("azureml", text)
    job = yaml.safe_load(text)
    assert job["settings"]["force_rerun"] is True  # no reuse of an earlier run of an unchanged node
    assert job["jobs"]["curate"]["identity"] == {"type": "managed", "client_id": "client-id"}
    assert graph["promote"]["command"].endswith("--record ${{outputs.record}} --after ${{inputs.after_evaluate}} "
                                                "--after ${{inputs.after_finetune}}")
    assert "--after" not in graph["curate"]["command"]


def test_names_each_cloud_refuses_are_mapped_and_clashes_refused(tmp_path, project):
    from stackwise.errors import SpecError
    from stackwise.pipeline.compile import compile_definition
    from stackwise.pipeline.spec import load
    from stackwise.stack import load_stack

    path = tmp_path / "names.yaml"
    path.write_text("name: my_pipe\nsteps:\n  prep: {kind: run, with: {command: 'true'}}\n"
                    "  load-data: {kind: run, with: {command: 'true'}, deps: [steps.prep]}\n"
                    "  clean_up: {kind: run, with: {command: 'true'}, deps: [steps.load-data]}\n"
                    "  2nd: {kind: run, with: {command: 'true'}, deps: [steps.clean_up, steps.prep]}\n")
    pipeline = load(path)
    for target, stack in TARGETS.items():
        compiled = compile_definition(pipeline, target, load_stack(stack))
        graph = graph_of(target, compiled.text)
        assert {n: g["after"] for n, g in graph.items()} == pipeline.upstream, target
    azure = yaml.safe_load(compile_definition(pipeline, "azureml", load_stack("dev-azure")).text)
    assert list(azure["jobs"]) == ["prep", "load_data", "clean_up", "s_2nd"]
    vertex = yaml.safe_load(compile_definition(pipeline, "vertex", load_stack("dev-gcp")).text)
    assert vertex["pipelineInfo"]["name"] == "my-pipe" and set(vertex["root"]["dag"]["tasks"]) == {"prep", "load-data", "clean-up", "2nd"}
    path.write_text("name: 2pipes\nsteps:\n  prep: {kind: run, with: {command: 'true'}}\n")
    vertex = yaml.safe_load(compile_definition(load(path), "vertex", load_stack("dev-gcp")).text)
    assert vertex["pipelineInfo"]["name"] == "stackwise-2pipes"
    path.write_text("name: clash\nsteps:\n  a-b: {kind: run, with: {command: 'true'}}\n"
                    "  a_b: {kind: run, with: {command: 'true'}}\n")
    for target in ("vertex", "azureml"):
        with pytest.raises(SpecError, match="same name"):
            compile_definition(load(path), target, load_stack(TARGETS[target]))


def test_vertex_output_is_what_kfps_compiler_writes_for_the_same_pipeline():
    from stackwise.pipeline.compile import Plan, StepNode, vertex

    data = json.loads((GOLDEN / "vertex_pipeline.plan.json").read_text())
    plan = Plan(pipeline=data["pipeline"], stack="dev-gcp", image=data["image"], file_uri="", outputs=None,
                description=data["description"], steps=tuple(StepNode(s["name"], "run", tuple(s["upstream"]),
                                                                      tuple(s["argv"])) for s in data["steps"]))
    assert vertex.build(plan) == (GOLDEN / "vertex_pipeline.yaml").read_text()  # kfp 2.17.3's own output
    vertex.validate(vertex.build(plan), plan)


def _compiled(project, target):
    from stackwise.pipeline.compile import compile_definition
    from stackwise.pipeline.spec import load
    from stackwise.stack import load_stack

    return compile_definition(load(project), target, load_stack(TARGETS[target]))


@pytest.mark.parametrize("plant, message", [
    (lambda d: d["Steps"][1].__setitem__("DependsOn", ["nope"]), "not a step of the pipeline"),
    (lambda d: d["Steps"][0].__setitem__("Name", "bad name"), "does not match"),
    (lambda d: d["Steps"][0]["Arguments"]["ProcessingResources"]["ClusterConfig"].__setitem__("InstanceType",
                                                                                            "ml.m5.huge"), "ProcessingInstanceType"),
    (lambda d: d["Steps"][0]["Arguments"].__setitem__("RoleArn", "demo-jobs"), "RoleArn"),
    (lambda d: d["Steps"][0]["Arguments"]["AppSpecification"].__setitem__("Entrypoint", ["x"]), "Unknown parameter"),
    (lambda d: d["Steps"][0]["Arguments"]["AppSpecification"]["ContainerEntrypoint"].append("x" * 300), "longer than 256"),
    (lambda d: d["Steps"][0]["Arguments"]["StoppingCondition"].__setitem__("MaxRuntimeInSeconds", 10**7), "above 777600"),
    (lambda d: next(s for s in d["Steps"] if s["Name"] == "finetune").__setitem__("DependsOn", ["check"]), "cycle"),
])
def test_sagemaker_validation_refuses_a_planted_error(project, plant, message):
    from stackwise.errors import SpecError
    from stackwise.pipeline.compile import sagemaker

    compiled = _compiled(project, "sagemaker")
    definition = json.loads(compiled.text)
    plant(definition)
    with pytest.raises(SpecError, match=message):
        sagemaker.validate(json.dumps(definition), compiled.plan)


@pytest.mark.parametrize("plant, message", [
    (lambda d: d["root"]["dag"]["tasks"]["index"].__setitem__("dependentTasks", ["nope"]), "not a task"),
    (lambda d: d["components"].pop("comp-index"), "not defined"),
    (lambda d: d["pipelineInfo"].__setitem__("name", "Lee_Pipe"), "pipeline name"),
    (lambda d: d["root"]["dag"]["tasks"]["finetune"].__setitem__("dependentTasks", ["check"]), "cycle"),
    # kfp's form, but a run id `2lee-<timestamp>` that Vertex refuses: caught by aiplatform's PipelineJob
    (lambda d: d["pipelineInfo"].__setitem__("name", "2lee"), "google-cloud-aiplatform refuses.*2lee"),
])
def test_vertex_validation_refuses_a_planted_error(project, plant, message):
    from stackwise.errors import SpecError
    from stackwise.pipeline.compile import vertex

    compiled = _compiled(project, "vertex")
    document = yaml.safe_load(compiled.text)
    plant(document)
    with pytest.raises(SpecError, match=message):
        vertex.validate(yaml.safe_dump(document), compiled.plan)


@pytest.mark.parametrize("plant, message", [
    (lambda d: d["jobs"].__setitem__("serve-check", d["jobs"].pop("check")), "valid python identifier"),
    (lambda d: d["jobs"]["index"]["inputs"].__setitem__("after_curate", "${{parent.jobs.nope.outputs.record}}"),
     "nope"),
    (lambda d: d["jobs"]["index"].__setitem__("is_deterministic", False), "jobs.index"),
    (lambda d: d["jobs"]["index"].__setitem__("command", d["jobs"]["index"]["command"] + " ${{inputs.missing}}"),
     "does not declare"),
    (lambda d: d["jobs"]["curate"].__setitem__("inputs", {"after_index": "${{parent.jobs.index.outputs.record}}"}),
     "cycle"),
])
def test_azureml_validation_refuses_a_planted_error(project, plant, message):
    from stackwise.errors import SpecError
    from stackwise.pipeline.compile import azureml

    document = yaml.safe_load(_compiled(project, "azureml").text)
    plant(document)
    with pytest.raises(SpecError, match=message):
        azureml.validate(yaml.safe_dump(document, sort_keys=False))


def test_bad_target_and_stacks_exit_2_naming_them(project, run_cli):
    unknown = run_cli("pipeline", "compile", "--target", "kubeflow", "--file", str(project), "--stack", "dev-aws")
    assert unknown.returncode == 2 and "sagemaker, vertex, azureml" in unknown.stderr
    local = run_cli("pipeline", "compile", "--target", "sagemaker", "--file", str(project), "--stack", "local")
    assert local.returncode == 2 and "stack 'local' is a local stack" in local.stderr
    other = run_cli("pipeline", "compile", "--target", "vertex", "--file", str(project), "--stack", "dev-aws")
    assert other.returncode == 2 and "--target sagemaker" in other.stderr
    for result in (unknown, local, other):
        assert "Traceback" not in result.stderr


def test_refuses_inputs_the_cloud_cannot_reach(tmp_path, project):
    from stackwise.errors import SpecError
    from stackwise.pipeline.compile import compile_definition
    from stackwise.pipeline.spec import load
    from stackwise.stack import load_stack

    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text('{"text": "a"}\n')
    path = tmp_path / "pipe" / "abs.yaml"
    path.write_text(f"name: abs\nsteps:\n  curate: {{kind: curate, with: {{source: {outside}}}}}\n")
    with pytest.raises(SpecError, match="outside the pipeline's folder") as err:
        compile_definition(load(path), "sagemaker", load_stack("dev-aws"))
    assert "steps.curate.with.source" in err.value.where
    path.write_text("name: outs\nsteps:\n  make: {kind: run, with: {command: 'true'}, outs: {data: out.jsonl}}\n")
    with pytest.raises(SpecError, match="declares outs"):
        compile_definition(load(path), "sagemaker", load_stack("dev-aws"))


def test_without_upload_nothing_is_written_and_the_upload_command_is_printed(project, run_cli, tmp_path):
    result = run_cli("pipeline", "compile", "--target", "sagemaker", "--file", str(project), "--stack", "dev-aws",
                     "--out", "out/lee.json", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert json.loads((tmp_path / "out" / "lee.json").read_text())["Version"] == "2020-12-01"
    assert report["bundle"]["uploaded"] is False and report["bundle"]["file"].startswith("s3://demo-artifacts/pipelines/lee/files/")
    assert shlex.split(report["upload_command"])[-1] == "--upload" and "--out out/lee.json" in report["upload_command"]
    assert "aws sagemaker create-pipeline --pipeline-name stackwise-lee" in report["run"]


def test_the_bundle_holds_the_stack_without_secure_values(project):
    from stackwise.pipeline.compile.bundle import stack_texts
    from stackwise.stack import load_stack

    texts = stack_texts(load_stack("dev-aws"))
    config = yaml.safe_load(texts["_stack/Pulumi.dev-aws.yaml"])["config"]
    assert config == {"stackwise:cloud": "aws", "stackwise:region": "us-east-1"}  # someSecret (secure) left out
    assert json.loads(texts["_stack/outputs.json"])["training_image"] == IMAGES["dev-aws"]


def test_an_uploaded_bundle_loads_from_its_uri_with_relative_paths_in_the_store(project, tmp_path):
    import fsspec

    from stackwise.pipeline.compile import compile_definition
    from stackwise.pipeline.hashing import Hasher
    from stackwise.pipeline.kinds import data_inputs, placeholder_lookup, resolve
    from stackwise.pipeline.runner import cache_keys
    from stackwise.pipeline.spec import load
    from stackwise.stack import load_stack

    synced = tmp_path / ".stackwise" / "outputs" / "dev-aws.json"
    synced.write_text(json.dumps(outputs("dev-aws", store="memory://store")))
    compiled = compile_definition(load(project), "sagemaker", load_stack("dev-aws"), upload=True)
    folder = compiled.bundle.folder
    fs = fsspec.filesystem("memory")
    assert fs.cat(f"{folder}/data/lee_docs.jsonl") == (project.parent / "data" / "lee_docs.jsonl").read_bytes()
    remote = load(compiled.bundle.file_uri)  # the promote step's gate is read from the store while it loads
    assert remote.base == folder and remote.order == load(project).order
    assert resolve(remote, "curate", placeholder_lookup(remote))["source"] == f"{folder}/data/lee_docs.jsonl"
    assert dict(data_inputs(remote, "promote"))["gate"] == f"{folder}/gates.yaml"
    keys, hashes = cache_keys(remote, "dev-aws", Hasher(remote.root))  # hashed through fsspec, in the store
    assert set(keys) == set(remote.order) and set(hashes["finetune"]) == {"data"}
    # a changed input is another bundle; the same inputs, the same one
    assert compile_definition(load(project), "sagemaker", load_stack("dev-aws")).bundle.folder == folder
    (project.parent / "gates.yaml").write_text((project.parent / "gates.yaml").read_text() + "\n# changed\n")
    assert compile_definition(load(project), "sagemaker", load_stack("dev-aws")).bundle.folder != folder


def test_the_compiled_step_commands_run_each_step_in_a_fresh_container(project, run_cli, tmp_path):
    """SageMaker's steps run in order, each from an empty folder with its own state (no stacks/, no outputs):
    the second finds the first's outputs in the pipeline's cache in the (file://) artifact store."""
    import subprocess

    (tmp_path / ".stackwise" / "outputs" / "dev-aws.json").write_text(
        json.dumps(outputs("dev-aws", store=f"file://{tmp_path}/bucket")))
    folder = project.parent
    (folder / "small.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": f"Document {i} about bushfires "
                                                           f"near Sydney, number {i}."}) + "\n" for i in range(6)))
    (folder / "two.yaml").write_text("name: two\nsteps:\n  curate: {kind: curate, with: {source: small.jsonl}}\n"
                                     "  count:\n    kind: run\n    deps: [steps.curate]\n"
                                     "    with: {command: [python, -c, \"print('counted')\"]}\n")
    result = run_cli("pipeline", "compile", "--target", "sagemaker", "--file", str(folder / "two.yaml"),
                     "--stack", "dev-aws", "--out", str(tmp_path / "two.json"), "--upload")
    assert result.returncode == 0, result.stderr
    steps = json.loads((tmp_path / "two.json").read_text())["Steps"]
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("STACKWISE_")}
    for i, step in enumerate(steps):
        container = tmp_path / f"container{i}"
        container.mkdir()
        argv = step["Arguments"]["AppSpecification"]["ContainerEntrypoint"]
        proc = subprocess.run([sys.executable, *argv[1:]], cwd=container, capture_output=True, text=True, timeout=300,
                              env={**env, "STACKWISE_HOME": str(container / ".state")})
        assert proc.returncode == 0, proc.stderr[-2000:]
        record = json.loads(proc.stdout)
        assert record["steps"][step["Name"]]["state"] == "succeeded"
        if step["Name"] == "count":
            assert record["steps"]["curate"]["state"] == "cached"
    assert (tmp_path / "bucket" / "pipelines" / "two" / "runs").is_dir()


def test_a_step_does_not_start_after_an_upstream_record_that_failed(tmp_path, capsys):
    from stackwise.pipeline.compile import step

    after = tmp_path / "after"
    after.mkdir()
    (after / "record.json").write_text(json.dumps({"run": "r1", "options": {"only": ["curate"]},
                                                   "steps": {"curate": {"state": "failed"}}}))
    assert step.main(["--file", "memory://nowhere/stackwise.yaml", "--stack", "dev-azure", "--only", "index",
                      "--after", str(after)]) == 1
    assert "curate: failed" in capsys.readouterr().err
    (after / "record.json").write_text(json.dumps({"run": "r1", "options": {"only": ["curate"]},
                                                   "steps": {"curate": {"state": "cached"}}}))
    assert step.check_upstream(str(after)) is None
