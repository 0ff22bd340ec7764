"""Runs an Azure ML command job that the adapter PUT on the local ARM server
(tests/emulators/azureml_server.py) the way Azure ML runs it: the image of the job's environment
in real containers, one per instance, under Azure ML's command-job contract.

What Azure ML does, and this runner does (docs: "Distributed GPU training guide (SDK v2)" for the
PyTorch variables, "Train models with Azure Machine Learning CLI, SDK, and REST API" / the command
job YAML schema for command, environment variables, `resources.instance_count` and
`distribution`):
- the image: `properties.environmentId` names an environment version
  (`.../environments/NAME/versions/V`); the job runs the image that version was registered with
  (the server's environment record, as `MLClient.environments.create_or_update` stored it);
- `resources.instanceCount` nodes, each running `properties.command` in a shell (bash) in the
  image, with `properties.environmentVariables` as given;
- with `distribution` PyTorch (`processCountPerInstance` p), on node `n` of N: `MASTER_ADDR` (node
  0's address), `MASTER_PORT`, `NODE_RANK` = n, `WORLD_SIZE` = N x p, and per process `RANK` =
  n x p + local rank, `LOCAL_RANK`; only p = 1 (what stackwise sends) is run here;
- on every node `AZUREML_RUN_ID` (the job name), `AZUREML_ARM_SUBSCRIPTION`,
  `AZUREML_ARM_RESOURCEGROUP`, `AZUREML_ARM_WORKSPACE_NAME`, `AZUREML_ARM_PROJECT_NAME` (the
  experiment);
- the job's status Running while the nodes run, then Finalizing, then Completed when every node
  exits 0, else Failed (ARM gives command jobs no failure reason); each process's output becomes
  a run-history log file (`user_logs/std_log.txt`, or `user_logs/std_log_process_<rank>.txt` with
  several processes), which `MLClient.jobs.stream` and the adapter's `logs()` read.
Here, in addition: the storage emulator's settings in `env` (what the job's managed identity would
give a real job), and every node on the host's network (node 0's address is 127.0.0.1).

With no container engine (`engine=None`) each node is a process of this machine instead
(`cloud_fixtures.image_process`): the command in bash with the same environment, `python` being
this interpreter.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_fixtures import image_process, stop_process

MASTER_PORT = "6105"
_ENV_ID = "/environments/"


@dataclass
class Node:
    rank: int
    proc: subprocess.Popen
    log: Path


class AzureMLRunner:
    def __init__(self, server: Any, engine: list[str] | None, workdir: Path, env: dict[str, str]):
        self.server, self.engine, self.workdir, self.env = server, engine, workdir, env
        # Container names are unique per runner: job names repeat across test sessions (the same
        # spec has the same name), and another session may run the same test on this machine.
        self.token = secrets.token_hex(4)
        self.processes: dict[tuple[str, int], subprocess.Popen] = {}  # (job, rank) -> node, without an engine

    def job(self, name: str) -> dict[str, Any]:
        return self.server.jobs[name]

    def image(self, name: str) -> str:
        """The image of the environment version the job names (its ARM environmentId)."""
        environment_id = self.job(name)["properties"]["environmentId"]
        env_name, _, version = environment_id.rsplit(_ENV_ID, 1)[1].partition("/versions/")
        record = self.server.environments.get(f"{env_name}:{version}")
        if record is None:
            raise LookupError(f"the job's environment {env_name}:{version} is not registered")
        return record["properties"]["image"]

    def container(self, name: str, rank: int) -> str:
        return f"azureml-{name}-{rank}-{self.token}"

    def node_env(self, name: str, rank: int) -> dict[str, str]:
        """The environment Azure ML gives node `rank` of the job."""
        job = self.job(name)
        properties = job["properties"]
        sub, rg, _, ws = _ids(job["id"])
        env = dict(properties.get("environmentVariables") or {})
        env.update(AZUREML_RUN_ID=name, AZUREML_ARM_SUBSCRIPTION=sub, AZUREML_ARM_RESOURCEGROUP=rg,
                   AZUREML_ARM_WORKSPACE_NAME=ws,
                   AZUREML_ARM_PROJECT_NAME=properties.get("experimentName") or "Default")
        distribution = properties.get("distribution") or {}
        if distribution.get("distributionType") == "PyTorch":
            per_node = int(distribution.get("processCountPerInstance") or 1)
            if per_node != 1:
                raise NotImplementedError("this runner starts one process per node (what stackwise requests)")
            count = int(properties["resources"]["instanceCount"])
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=MASTER_PORT, NODE_RANK=str(rank),
                       WORLD_SIZE=str(count * per_node), RANK=str(rank * per_node), LOCAL_RANK="0")
        return {**env, **self.env}

    def start(self, name: str) -> list[Node]:
        """Start one container per instance; the job moves to Running."""
        properties = self.job(name)["properties"]
        count = int((properties.get("resources") or {}).get("instanceCount") or 1)
        image = self.image(name)
        folder = self.workdir / name
        folder.mkdir(parents=True, exist_ok=True)
        self.server.move(name, "Running")
        running = []
        for rank in range(count):
            log = folder / f"node-{rank}.log"
            if self.engine is None:
                proc = image_process(["/bin/bash", "-c", properties["command"]], self.node_env(name, rank), log, folder)
                self.processes[(name, rank)] = proc
                running.append(Node(rank, proc, log))
                continue
            cmd = [*self.engine, "run", "--rm", "--network=host", "--name", self.container(name, rank)]
            for key, value in sorted(self.node_env(name, rank).items()):
                cmd += ["-e", f"{key}={value}"]
            cmd += ["--entrypoint", "/bin/bash", image, "-c", properties["command"]]
            with open(log, "wb") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            running.append(Node(rank, proc, log))
        return running

    def finish(self, name: str, running: list[Node], timeout: float = 900) -> list[int]:
        """Wait for the nodes, publish their logs to run history, and end the job as Azure ML does."""
        deadline = time.monotonic() + timeout
        codes = []
        for node in running:
            try:
                codes.append(node.proc.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                self.kill(name, node.rank)
                codes.append(node.proc.wait())
        self.server.move(name, "Finalizing")
        for node in running:
            file = "user_logs/std_log.txt" if len(running) == 1 else f"user_logs/std_log_process_{node.rank}.txt"
            self.server.write_logs(name, node.log.read_text(errors="replace").splitlines(), file=file)
        self.server.move(name, "Completed" if all(code == 0 for code in codes) else "Failed")
        return codes

    def kill(self, name: str, rank: int = 0) -> None:
        """What a low-priority preemption or a node failure does to one node: SIGKILL."""
        if self.engine is None:
            if (name, rank) in self.processes:
                stop_process(self.processes[(name, rank)])
            return
        subprocess.run([*self.engine, "kill", "--signal", "KILL", self.container(name, rank)], capture_output=True,
                       timeout=60)

    def run(self, name: str, timeout: float = 900) -> list[int]:
        return self.finish(name, self.start(name), timeout)

    def log(self, name: str, rank: int = 0) -> str:
        path = self.workdir / name / f"node-{rank}.log"
        return path.read_text(errors="replace") if path.is_file() else ""


def _ids(arm_id: str) -> tuple[str, str, str, str]:
    """(subscription, resource group, provider, workspace) of a workspace-scoped ARM id."""
    parts = arm_id.strip("/").split("/")
    lower = [p.lower() for p in parts]
    return (parts[lower.index("subscriptions") + 1], parts[lower.index("resourcegroups") + 1],
            parts[lower.index("providers") + 1], parts[lower.index("workspaces") + 1])
