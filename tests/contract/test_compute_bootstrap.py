"""The in-job bootstrap: each cloud's cluster description becomes MASTER_ADDR / NODE_RANK."""

from __future__ import annotations

import json

from stackwise.adapters.compute.bootstrap import cluster_env


def test_sagemaker_resource_config(tmp_path):
    config = tmp_path / "resourceconfig.json"
    config.write_text(json.dumps({"current_host": "algo-2", "hosts": ["algo-2", "algo-1"]}))
    assert cluster_env({}, str(config)) == {"MASTER_ADDR": "algo-1", "MASTER_PORT": "29500", "NODE_RANK": "1",
                                            "NNODES": "2"}


def test_vertex_cluster_spec(tmp_path):
    spec = {"cluster": {"workerpool0": ["cmle-training-workerpool0-ab-0:2222"],
                        "workerpool1": ["w1-0:2222", "w1-1:2222"]},
            "task": {"type": "workerpool1", "index": 1}}
    env = cluster_env({"CLUSTER_SPEC": json.dumps(spec)}, str(tmp_path / "none"))
    assert env == {"MASTER_ADDR": "cmle-training-workerpool0-ab-0", "MASTER_PORT": "2222", "NODE_RANK": "2",
                   "NNODES": "3"}


def test_platform_variables_win_and_one_node_is_rank_0(tmp_path):
    assert cluster_env({}, str(tmp_path / "none")) == {"NODE_RANK": "0", "NNODES": "1"}
    env = cluster_env({"MASTER_ADDR": "10.0.0.4", "NODE_RANK": "3", "MASTER_PORT": "6105"}, str(tmp_path / "none"))
    assert (env["MASTER_ADDR"], env["NODE_RANK"], env["MASTER_PORT"]) == ("10.0.0.4", "3", "6105")


# -- index shards ------------------------------------------------------------------------------
def test_index_nodes_get_their_shard_from_each_clouds_cluster_description(tmp_path):
    from stackwise.adapters.compute.bootstrap import shard_env

    config = tmp_path / "resourceconfig.json"
    config.write_text(json.dumps({"current_host": "algo-3", "hosts": ["algo-1", "algo-2", "algo-3"]}))
    assert shard_env("index", cluster_env({}, str(config))) == {"STACKWISE_SHARD_INDEX": "2",
                                                               "STACKWISE_SHARD_COUNT": "3"}
    vertex = {"cluster": {"workerpool0": ["chief:2222"], "workerpool1": ["w-0:2222", "w-1:2222", "w-2:2222"]},
              "task": {"type": "workerpool0", "index": 0}}
    assert shard_env("index", cluster_env({"CLUSTER_SPEC": json.dumps(vertex)}, str(tmp_path / "none"))) == {
        "STACKWISE_SHARD_INDEX": "0", "STACKWISE_SHARD_COUNT": "4"}
    vertex["task"] = {"type": "workerpool1", "index": 2}
    assert shard_env("index", cluster_env({"CLUSTER_SPEC": json.dumps(vertex)}, str(tmp_path / "none"))) == {
        "STACKWISE_SHARD_INDEX": "3", "STACKWISE_SHARD_COUNT": "4"}
    # Azure ML (PyTorch distribution): NODE_RANK from the platform, the count from the request.
    azure = cluster_env({"NODE_RANK": "1", "MASTER_ADDR": "10.0.0.4", "STACKWISE_NNODES": "2"}, str(tmp_path / "none"))
    assert shard_env("index", azure) == {"STACKWISE_SHARD_INDEX": "1", "STACKWISE_SHARD_COUNT": "2"}
    assert shard_env("finetune", azure) == {}


def test_a_shard_node_runs_the_workload_and_uploads_under_its_shard(tmp_path, monkeypatch):
    """The bootstrap for real: the spec from the environment, the workload in a subprocess, its
    error file copied to `<job>/shards/<rank>/`. The node is told it is one of 3 while the spec
    asks for 2 workers, which the workload must refuse (exit 2) before reading anything."""
    import base64

    from stackwise.adapters.compute import bootstrap
    from stackwise.specs import IndexSpec

    spec = IndexSpec(source=str(tmp_path / "docs"), index="kb", workers=2)
    job = tmp_path / "job"
    cluster = {"cluster": {"workerpool0": ["chief:2222"], "workerpool1": ["w-0:2222", "w-1:2222"]},
               "task": {"type": "workerpool1", "index": 0}}
    for key in ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "STACKWISE_NNODES", "STACKWISE_SHARD_INDEX",
                "STACKWISE_SHARD_COUNT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("STACKWISE_JOB_KIND", "index")
    monkeypatch.setenv("STACKWISE_JOB_URI", f"file://{job}")
    monkeypatch.setenv("STACKWISE_SPEC_B64", base64.b64encode(spec.model_dump_json().encode()).decode())
    monkeypatch.setenv("STACKWISE_CONTEXT_B64", base64.b64encode(_context(tmp_path).model_dump_json().encode()).decode())
    monkeypatch.setenv("CLUSTER_SPEC", json.dumps(cluster))
    assert bootstrap.main(["train"]) == 2  # SageMaker's `train` argument is ignored
    error = json.loads((job / "shards" / "1" / "error.json").read_text())
    assert "shard 1 of 3" in error["error"] and "2 workers" in error["error"]
    assert not (job / "error.json").exists()


def _context(tmp_path, **changes):
    from stackwise.contract import JobContext, VectorStoreOutput

    return JobContext(stack="local", cloud="local", region="local", artifact_store=str(tmp_path / "artifacts"),
                      vector_store=VectorStoreOutput(kind="embedded", uri=str(tmp_path / "vectors")), **changes)


def _single_node(monkeypatch, job):
    for key in ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "STACKWISE_NNODES", "STACKWISE_SHARD_INDEX",
                "STACKWISE_SHARD_COUNT", "CLUSTER_SPEC", "STACKWISE_SPEC_B64", "STACKWISE_CONTEXT_B64"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("STACKWISE_JOB_KIND", "index")
    monkeypatch.setenv("STACKWISE_JOB_URI", f"file://{job}")


def test_a_job_without_or_with_a_bad_context_fails_with_exit_2_before_any_workload(tmp_path, monkeypatch, capsys):
    """No context, a context missing a key, a spec of another kind: exit 2, error.json says what
    and where, and no workload process starts (it would write result.json or its own error)."""
    from stackwise.adapters.compute import bootstrap
    from stackwise.specs import FineTuneSpec, IndexSpec

    job = tmp_path / "job"
    _single_node(monkeypatch, job)
    spec = IndexSpec(source=str(tmp_path / "docs"), index="kb")
    (job / "input").mkdir(parents=True)
    (job / "input" / "spec.json").write_text(spec.model_dump_json())
    assert bootstrap.main([]) == 2
    error = json.loads((job / "error.json").read_text())["error"]
    assert "no context.json" in error and "input/context.json" in error and error.count("fix:") == 1
    # A context that lacks the vector store: named by its key.
    broken = json.loads(_context(tmp_path).model_dump_json())
    del broken["vector_store"]
    (job / "input" / "context.json").write_text(json.dumps(broken))
    assert bootstrap.main([]) == 2
    error = json.loads((job / "error.json").read_text())["error"]
    assert "context.json is invalid at vector_store" in error
    # The spec of another kind than the job runs.
    (job / "input" / "context.json").write_text(_context(tmp_path).model_dump_json())
    (job / "input" / "spec.json").write_text(FineTuneSpec(base="smollm2-135m-instruct", data="d.jsonl").model_dump_json())
    assert bootstrap.main([]) == 2
    assert "kind 'index' but its spec is a 'finetune' spec" in capsys.readouterr().err
    assert not (job / "result.json").exists()


def test_the_image_without_job_variables_says_what_runs_it(monkeypatch, capsys):
    from stackwise.adapters.compute import bootstrap

    monkeypatch.delenv("STACKWISE_JOB_KIND", raising=False)
    monkeypatch.delenv("STACKWISE_JOB_URI", raising=False)
    assert bootstrap.main(["train"]) == 2
    assert "$STACKWISE_JOB_KIND is not set" in capsys.readouterr().err


def test_a_node_of_a_multi_node_job_that_knows_no_rank_refuses_to_run(tmp_path, monkeypatch, capsys):
    """Without NODE_RANK, CLUSTER_SPEC or resourceconfig.json every node would be rank 0."""
    from stackwise.adapters.compute import bootstrap

    _single_node(monkeypatch, tmp_path / "job")
    monkeypatch.setenv("STACKWISE_NNODES", "2")
    assert bootstrap.main([]) == 2
    assert "runs on 2 nodes but nothing tells this node its rank" in capsys.readouterr().err
