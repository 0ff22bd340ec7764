"""The entrypoint of every cloud job: `python -m stackwise.adapters.compute.bootstrap`.

It runs inside the stack's training image on each node of a SageMaker training job, a Vertex
CustomJob or an Azure ML command job, and imports no control-plane SDK (only fsspec):

1. reads the spec: inline from `$STACKWISE_SPEC_B64`, else `spec.json` in the job's folder
   (`$STACKWISE_JOB_URI`, or SageMaker's `spec` input channel);
2. turns the cloud's description of the cluster into the variables the workloads read:
   `MASTER_ADDR`, `MASTER_PORT`, `NODE_RANK`, `NNODES` (SageMaker: resourceconfig.json;
   Vertex: `CLUSTER_SPEC`; Azure ML's PyTorch distribution sets them already);
3. runs `python -m stackwise.workloads.<kind> --spec spec.json --result result.json`;
4. node 0 copies `result.json` (or `error.json`) to the job's folder, where the adapter's
   `outputs` point, and the job's exit code is the workload's.

An index job with `workers: N` runs on N nodes, one shard each: the bootstrap sets
`STACKWISE_SHARD_INDEX` = the node's rank and `STACKWISE_SHARD_COUNT` = the node count (the
workload refuses a count other than the spec's workers), and every node copies its report to
`<job>/shards/<rank>/result.json` (or `error.json`); the adapter sums them when it reads the
job's outputs (`stackwise.workloads.index.merge_reports`).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

SAGEMAKER_RESOURCE_CONFIG = "/opt/ml/input/config/resourceconfig.json"
SAGEMAKER_SPEC = "/opt/ml/input/data/spec/spec.json"
DEFAULT_PORT = "29500"


def cluster_env(env: Mapping[str, str], sagemaker_config: str = SAGEMAKER_RESOURCE_CONFIG) -> dict[str, str]:
    """MASTER_ADDR, MASTER_PORT, NODE_RANK and NNODES for this node, from what the cloud provides.

    Values the platform already set (Azure ML, Vertex's PyTorch variables) are kept.
    """
    out: dict[str, str] = {}
    if os.path.isfile(sagemaker_config):
        config = json.loads(Path(sagemaker_config).read_text())
        hosts = sorted(config["hosts"])
        out.update(MASTER_ADDR=hosts[0], MASTER_PORT=DEFAULT_PORT, NODE_RANK=str(hosts.index(config["current_host"])),
                   NNODES=str(len(hosts)))
    elif env.get("CLUSTER_SPEC"):
        spec = json.loads(env["CLUSTER_SPEC"])
        cluster, task = spec["cluster"], spec["task"]
        chief = cluster["workerpool0"][0]
        host, _, port = chief.partition(":")
        workers = len(cluster.get("workerpool1", []))
        rank = 0 if task["type"] == "workerpool0" else 1 + int(task["index"])
        out.update(MASTER_ADDR=host, MASTER_PORT=port or DEFAULT_PORT, NODE_RANK=str(rank), NNODES=str(1 + workers))
    for key in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        if env.get(key):
            out[key] = env[key]
    out.setdefault("NODE_RANK", "0")
    # Azure ML's PyTorch distribution sets MASTER_ADDR/MASTER_PORT/NODE_RANK (kept above) but not
    # the node count; the Azure request carries it as STACKWISE_NNODES.
    out.setdefault("NNODES", env.get("STACKWISE_NNODES") or "1")
    return out


def shard_env(kind: str, cluster: Mapping[str, str]) -> dict[str, str]:
    """The shard variables of an index job's node: its rank among the job's nodes."""
    if kind != "index":
        return {}
    return {"STACKWISE_SHARD_INDEX": cluster["NODE_RANK"], "STACKWISE_SHARD_COUNT": cluster["NNODES"]}


def _read(uri: str) -> bytes:
    import fsspec

    with fsspec.open(uri, "rb") as handle:
        return handle.read()


def _write(uri: str, data: bytes) -> None:
    import fsspec

    with fsspec.open(uri, "wb") as handle:
        handle.write(data)


def main() -> int:
    kind = os.environ["STACKWISE_JOB_KIND"]
    job_uri = os.environ["STACKWISE_JOB_URI"].rstrip("/")
    work = Path(tempfile.mkdtemp(prefix="stackwise-job-"))
    spec_path = work / "spec.json"
    if os.environ.get("STACKWISE_SPEC_B64"):
        spec_path.write_bytes(base64.b64decode(os.environ["STACKWISE_SPEC_B64"]))
    elif os.path.isfile(SAGEMAKER_SPEC):
        spec_path.write_bytes(Path(SAGEMAKER_SPEC).read_bytes())
    else:
        spec_path.write_bytes(_read(f"{job_uri}/spec.json"))
    cluster = cluster_env(os.environ)
    shards = shard_env(kind, cluster)
    env = dict(os.environ, **cluster, **shards, STACKWISE_JOB_DIR=str(work))
    result = work / "result.json"
    code = subprocess.call([sys.executable, "-m", f"stackwise.workloads.{kind}", "--spec", str(spec_path),
                            "--result", str(result)], env=env)
    if shards and int(shards["STACKWISE_SHARD_COUNT"]) > 1:
        target = f"{job_uri}/shards/{shards['STACKWISE_SHARD_INDEX']}"
    elif env["NODE_RANK"] == "0":
        target = job_uri
    else:
        return code
    for name in ("result.json", "error.json"):
        if (work / name).is_file():
            _write(f"{target}/{name}", (work / name).read_bytes())
    return code


if __name__ == "__main__":
    raise SystemExit(main())
