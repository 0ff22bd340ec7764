"""The entrypoint of every cloud job: `python -m stackwise.adapters.compute.bootstrap`.

It runs inside the stack's training image on each node of a SageMaker training job, a Vertex
CustomJob, an Azure ML command job or a Kubernetes Job, and imports no control-plane SDK (only fsspec):

1. reads the spec and the job context (`stackwise.contract.JobContext`: artifact store, vector
   store, tracking URI, secret references): inline from `$STACKWISE_SPEC_B64` and
   `$STACKWISE_CONTEXT_B64` (Vertex, Azure ML), else `spec.json` and `context.json` from
   SageMaker's `stackwise` input channel, else from the job's folder (`$STACKWISE_JOB_URI`/input/);
   both are validated here: a bad or missing one fails the job with exit 2 and an `error.json`
   that names it, before any workload starts;
2. turns the cloud's description of the cluster into the variables the workloads read:
   `MASTER_ADDR`, `MASTER_PORT`, `NODE_RANK`, `NNODES` (SageMaker: resourceconfig.json;
   Vertex: `CLUSTER_SPEC`; Azure ML's PyTorch distribution sets them already; a Kubernetes
   Indexed Job: `JOB_COMPLETION_INDEX` is the rank, the adapter sets the rest);
3. runs `python -m stackwise.workloads.<kind> --spec spec.json --context context.json --result result.json`
   (an argument `train`, which SageMaker passes to the image, is ignored);
4. node 0 copies `result.json` (or `error.json`) to the job's folder, where the adapter's
   `outputs` point, and the job's exit code is the workload's.

An index job with `workers: N` runs on N nodes, one shard each: the bootstrap sets
`STACKWISE_SHARD_INDEX` = the node's rank and `STACKWISE_SHARD_COUNT` = the node count (the
workload refuses a count other than the spec's workers), and every node copies its report to
`<job>/shards/<rank>/result.json` (or `error.json`); every cloud adapter (SageMaker, Vertex,
Azure ML: the shared `base.py` `outputs_for`) reads and sums them when it builds a SUCCEEDED
job's outputs (`stackwise.workloads.index.merge_reports`).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

SAGEMAKER_RESOURCE_CONFIG = "/opt/ml/input/config/resourceconfig.json"
SAGEMAKER_CHANNEL = "/opt/ml/input/data/stackwise"
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
    # A Kubernetes Indexed Job gives each pod its completion index: the node's rank.
    if env.get("JOB_COMPLETION_INDEX") and "NODE_RANK" not in out:
        out["NODE_RANK"] = env["JOB_COMPLETION_INDEX"]
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


def _input(env: Mapping[str, str], job_uri: str, variable: str, file: str, channel: str) -> bytes:
    """One job input: inline in `variable`, else from SageMaker's channel, else from the job's folder."""
    if env.get(variable):
        return base64.b64decode(env[variable])
    if os.path.isfile(os.path.join(channel, file)):
        return Path(channel, file).read_bytes()
    return _read(f"{job_uri}/input/{file}")


class BadJob(Exception):
    """The job's inputs are missing or invalid: exit 2 with the reason."""


def read_inputs(env: Mapping[str, str], job_uri: str, channel: str = SAGEMAKER_CHANNEL) -> tuple[bytes, bytes]:
    """The job's spec and context as validated JSON bytes; BadJob says what is wrong and where."""
    from pydantic import ValidationError

    from stackwise.contract import JobContext
    from stackwise.specs import parse_job_spec

    found = []
    for variable, file, parse in (("STACKWISE_SPEC_B64", "spec.json", parse_job_spec),
                                  ("STACKWISE_CONTEXT_B64", "context.json", JobContext.model_validate_json)):
        where = f"${variable}, {channel}/{file} or {job_uri}/input/{file}"
        try:
            raw = _input(env, job_uri, variable, file, channel)
        except (OSError, ValueError) as exc:
            raise BadJob(f"the job has no {file}: {exc}\n  where: {where}\n  fix: submit jobs through stackwise, "
                         "which sends the spec and the job context with every job") from None
        try:
            model = parse(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"]) or "(root)"
            raise BadJob(f"the job's {file} is invalid at {key}: {first['msg']}\n  where: {where}\n"
                         "  fix: resubmit the job with the stackwise version installed in the image") from None
        found.append(model.model_dump_json(indent=2).encode())
    return found[0], found[1]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["train"]:  # SageMaker runs the image as `<entrypoint> train`
        args = args[1:]
    env = os.environ
    missing = [name for name in ("STACKWISE_JOB_KIND", "STACKWISE_JOB_URI") if not env.get(name)]
    if missing:
        print(f"error: ${missing[0]} is not set: this image runs stackwise jobs, which set it\n"
              "  fix: submit the job with stackwise (a SageMaker, Vertex or Azure ML job, or the container backend)",
              file=sys.stderr, flush=True)
        return 2
    kind = env["STACKWISE_JOB_KIND"]
    job_uri = env["STACKWISE_JOB_URI"].rstrip("/")
    work = Path(tempfile.mkdtemp(prefix="stackwise-job-"))
    cluster = cluster_env(env)
    ranked = (os.path.isfile(SAGEMAKER_RESOURCE_CONFIG) or env.get("CLUSTER_SPEC") or env.get("NODE_RANK")
              or env.get("JOB_COMPLETION_INDEX"))
    if int(cluster["NNODES"]) > 1 and not ranked:
        # Every node would take rank 0: one shard indexed N times, the others never (and a job that "succeeds").
        print(f"error: this job runs on {cluster['NNODES']} nodes but nothing tells this node its rank\n"
              "  where: NODE_RANK, JOB_COMPLETION_INDEX, CLUSTER_SPEC and /opt/ml/input/config/resourceconfig.json "
              "are all unset\n"
              "  fix: run the job through its platform's distribution (Azure ML: PyTorch distribution), "
              "which sets them", file=sys.stderr, flush=True)
        return 2
    shards = shard_env(kind, cluster)
    if shards and int(shards["STACKWISE_SHARD_COUNT"]) > 1:
        target = f"{job_uri}/shards/{shards['STACKWISE_SHARD_INDEX']}"
    elif cluster["NODE_RANK"] == "0":
        target = job_uri
    else:
        target = None
    try:
        spec, context = read_inputs(env, job_uri)
    except BadJob as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        if target is not None:
            _write(f"{target}/error.json", json.dumps({"error": str(exc), "exit_code": 2}).encode())
        return 2
    if json.loads(spec)["kind"] != kind:
        print(f"error: the job runs kind {kind!r} but its spec is a {json.loads(spec)['kind']!r} spec\n"
              "  where: $STACKWISE_JOB_KIND\n  fix: resubmit the job through stackwise", file=sys.stderr, flush=True)
        return 2
    print(f"stackwise bootstrap: {kind} job {job_uri} node {cluster['NODE_RANK']} of {cluster['NNODES']} "
          f"(python {sys.executable}, host {socket.gethostname()})", flush=True)
    (work / "spec.json").write_bytes(spec)
    (work / "context.json").write_bytes(context)
    child_env = dict(env, **cluster, **shards, STACKWISE_JOB_DIR=str(work))
    result = work / "result.json"
    child = subprocess.Popen([sys.executable, "-m", f"stackwise.workloads.{kind}", "--spec", str(work / "spec.json"),
                              "--context", str(work / "context.json"), "--result", str(result)], env=child_env)
    # A platform stops a job with SIGTERM to the container's first process (this one, often PID 1,
    # which ignores signals it has no handler for): pass it on so the workload stops cleanly.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: child.send_signal(number))
    code = child.wait()
    if target is None:
        return code
    for name in ("result.json", "error.json"):
        if (work / name).is_file():
            _write(f"{target}/{name}", (work / name).read_bytes())
    return code


if __name__ == "__main__":
    raise SystemExit(main())
