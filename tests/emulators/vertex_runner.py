"""Runs a Vertex AI CustomJob that the adapter created on the local Vertex server
(tests/emulators/vertex_server.py) the way Vertex AI runs it: the job's image in real containers,
one per replica of every worker pool, under Vertex's custom-container contract.

What Vertex does, and this runner does, per replica (docs: "Distributed training" for
`CLUSTER_SPEC`, the `CustomJobSpec` REST reference for the `AIP_*` variables, "Configure container
settings for custom training" for command/args):
- worker pool `p` of `jobSpec.workerPoolSpecs` runs `replicaCount` replicas, task `workerpool<p>`
  index 0..n-1; worker pool 0 is the primary replica;
- `CLUSTER_SPEC` (JSON) on every replica: `cluster` maps each non-empty pool `workerpool<p>` to
  the `host:port` of its replicas, `environment` is "cloud", `task` is this replica's
  `{"type": "workerpool<p>", "index": i}`, `job` the CustomJobSpec as given;
- with `baseOutputDirectory`: `AIP_MODEL_DIR` = `<prefix>/model/`, `AIP_CHECKPOINT_DIR` =
  `<prefix>/checkpoints/`, `AIP_TENSORBOARD_LOG_DIR` = `<prefix>/logs/`;
- `CLOUD_ML_JOB_ID` = the CustomJob's id; no `TF_CONFIG` (the image is not a TensorFlow one, and
  stackwise must not depend on it);
- `containerSpec.env` as given; `containerSpec.command` replaces the image's ENTRYPOINT and
  `containerSpec.args` its CMD;
- the job's state RUNNING once the replicas start, then SUCCEEDED when every replica exits 0, else
  FAILED with Vertex's message naming the first replica that failed and its exit status.
Here, in addition: the emulator endpoints and test settings in `env` (what the job's service
account and Google's network would give a real job), each replica's output as Cloud Logging
entries on a `LoggingServer` (tests/emulators/gcp_logging_server.py) when one is given, and every
replica on the host's network with its cluster host name mapped to 127.0.0.1.

With no container engine (`engine=None`) each replica is a process of this machine instead
(`cloud_fixtures.image_process`): the containerSpec's command and args (else the image's entrypoint,
`python -m stackwise.adapters.compute.bootstrap`) with the same environment.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_fixtures import image_process, stop_process

IMAGE_ENTRYPOINT = ["python", "-m", "stackwise.adapters.compute.bootstrap"]  # the training image's
PORT = 2222  # the port Vertex puts in CLUSTER_SPEC's host:port entries


@dataclass
class Replica:
    task: str  # workerpool<p>-<i>, Vertex's task name (Cloud Logging's task_name label)
    pool: int
    index: int
    proc: subprocess.Popen
    log: Path


class VertexRunner:
    def __init__(self, server: Any, engine: list[str] | None, workdir: Path, env: dict[str, str],
                 logging: Any = None):
        self.server, self.engine, self.workdir, self.env, self.logging = server, engine, workdir, env, logging
        # Container names are unique per runner: job ids repeat across test sessions (the server
        # counts from 1001), and another session may be running the same test on this machine.
        self.token = secrets.token_hex(4)
        self.processes: dict[tuple[str, str], subprocess.Popen] = {}  # (job, task) -> replica, without an engine

    def job(self, job_id: str) -> dict[str, Any]:
        return self.server.jobs[job_id]

    @staticmethod
    def host(job_id: str, pool: int, index: int) -> str:
        return f"cmle-training-workerpool{pool}-{job_id}-{index}"

    def container(self, job_id: str, task: str) -> str:
        return f"vertex-{job_id}-{task}-{self.token}"

    def replica_env(self, job_id: str, pool: int, index: int) -> dict[str, str]:
        """The environment Vertex gives replica `index` of worker pool `pool`."""
        job = self.job(job_id)
        spec = job["jobSpec"]
        pools = spec["workerPoolSpecs"]
        counts = [int((pool_spec or {}).get("replicaCount") or 0) for pool_spec in pools]
        cluster = {f"workerpool{p}": [f"{self.host(job_id, p, i)}:{PORT}" for i in range(n)]
                   for p, n in enumerate(counts) if n}
        env = {e["name"]: e["value"] for e in (pools[pool].get("containerSpec") or {}).get("env", [])}
        env["CLUSTER_SPEC"] = json.dumps({"cluster": cluster, "environment": "cloud",
                                          "task": {"type": f"workerpool{pool}", "index": index}, "job": spec})
        prefix = ((spec.get("baseOutputDirectory") or {}).get("outputUriPrefix") or "").rstrip("/")
        if prefix:
            env.update(AIP_MODEL_DIR=f"{prefix}/model/", AIP_CHECKPOINT_DIR=f"{prefix}/checkpoints/",
                       AIP_TENSORBOARD_LOG_DIR=f"{prefix}/logs/")
        env["CLOUD_ML_JOB_ID"] = job_id
        return {**env, **self.env}

    def start(self, job_id: str) -> list[Replica]:
        """Start one container per replica of every worker pool; the job moves to RUNNING."""
        job = self.job(job_id)
        pools = job["jobSpec"]["workerPoolSpecs"]
        hosts = [self.host(job_id, p, i) for p, spec in enumerate(pools) if spec
                 for i in range(int(spec.get("replicaCount") or 0))]
        folder = self.workdir / job_id
        folder.mkdir(parents=True, exist_ok=True)
        self.server.move(job_id, "JOB_STATE_RUNNING")
        running = []
        for pool, spec in enumerate(pools):
            if not spec:
                continue
            container = spec["containerSpec"]
            for index in range(int(spec.get("replicaCount") or 0)):
                task = f"workerpool{pool}-{index}"
                log = folder / f"{task}.log"
                command, args = list(container.get("command") or []), list(container.get("args") or [])
                if self.engine is None:
                    proc = image_process([*(command or IMAGE_ENTRYPOINT), *args], self.replica_env(job_id, pool, index),
                                         log, folder)
                    self.processes[(job_id, task)] = proc
                    running.append(Replica(task, pool, index, proc, log))
                    continue
                cmd = [*self.engine, "run", "--rm", "--network=host", "--name", self.container(job_id, task)]
                for host in hosts:
                    cmd += ["--add-host", f"{host}:127.0.0.1"]
                for key, value in sorted(self.replica_env(job_id, pool, index).items()):
                    cmd += ["-e", f"{key}={value}"]
                if command:  # containerSpec.command replaces the image's ENTRYPOINT, args its CMD
                    cmd += ["--entrypoint", command[0], container["imageUri"], *command[1:], *args]
                else:
                    cmd += [container["imageUri"], *args]
                with open(log, "wb") as out:
                    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                running.append(Replica(task, pool, index, proc, log))
        return running

    def finish(self, job_id: str, running: list[Replica], timeout: float = 900) -> dict[str, int]:
        """Wait for the replicas, ship their output to Cloud Logging, and end the job as Vertex does."""
        deadline = time.monotonic() + timeout
        codes: dict[str, int] = {}
        for replica in running:
            try:
                codes[replica.task] = replica.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(job_id, replica.task)
                codes[replica.task] = replica.proc.wait()
        if self.logging is not None:
            project = self.job(job_id)["name"].split("/")[1]
            for replica in running:
                lines = replica.log.read_text(errors="replace").splitlines()
                self.logging.add(job_id, lines, task=replica.task, project=project)
        failed = [(task, code) for task, code in codes.items() if code != 0]
        if failed:
            task, code = failed[0]
            self.server.move(job_id, "JOB_STATE_FAILED",
                             error=f"The replica {task} exited with a non-zero status of {code}. "
                             "Termination reason: Error. To find out more about why your job exited please "
                             "check the logs.")
        else:
            self.server.move(job_id, "JOB_STATE_SUCCEEDED")
        return codes

    def kill(self, job_id: str, task: str = "workerpool0-0") -> None:
        """What a preemption or a machine failure does to one replica: SIGKILL."""
        if self.engine is None:
            if (job_id, task) in self.processes:
                stop_process(self.processes[(job_id, task)])
            return
        subprocess.run([*self.engine, "kill", "--signal", "KILL", self.container(job_id, task)], capture_output=True,
                       timeout=60)

    def run(self, job_id: str, timeout: float = 900) -> dict[str, int]:
        return self.finish(job_id, self.start(job_id), timeout)

    def log(self, job_id: str, task: str = "workerpool0-0") -> str:
        path = self.workdir / job_id / f"{task}.log"
        return path.read_text(errors="replace") if path.is_file() else ""
