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
