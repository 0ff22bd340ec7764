"""Plays the Job controller and the kubelet for Jobs the adapter created on the Kubernetes API
stand-in (tests/emulators/kube_server.py), the way a cluster runs them.

What Kubernetes does, and this runner does, for an Indexed Job that is not suspended (the
batch/v1 Job reference and "Indexed Job for parallel processing with static work assignment"):
- one pod per completion index 0..completions-1, named `<job>-<index>-<suffix>`, labelled with the
  template's labels plus `job-name`, `batch.kubernetes.io/job-name`, `controller-uid`,
  `batch.kubernetes.io/job-completion-index`, annotated with the completion index, owned by the
  Job, its hostname `<job>-<index>` and the template's `subdomain`;
- the pod's container gets `JOB_COMPLETION_INDEX` = its index, and the template's env, command
  and image;
- pods move Pending -> Running -> Succeeded / Failed (the container's exit code in
  `containerStatuses[].state.terminated`), the Job's `status` follows (`active`, `ready`,
  `succeeded`, `failed`, `startTime`, `completedIndexes`), and it ends with the `Complete`
  condition when every index succeeded, or `Failed` (reason `PodFailurePolicy` for an exit code
  the pod failure policy says fails the Job, else `BackoffLimitExceeded`, no retries played);
- each pod's output becomes its log (pods/log).
Here, in addition: the test settings in `env` (what the pod's service account and the cluster's
network give a real job: emulator endpoints and test credentials), and every pod on the host's
network.

Engines: `engine=None` runs each pod's container as a process of this machine with the same
environment (cloud_fixtures.image_process); `engine=["podman"]` runs each pod for real with
`podman kube play` (the Pod manifest as the Job controller would make it, with the image), then
`podman kube down`.
"""

from __future__ import annotations

import copy
import datetime as dt
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cloud_fixtures import image_process, stop_process

IMAGE_ENTRYPOINT = ["python", "-m", "stackwise.adapters.compute.bootstrap"]  # the training image's


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class PodRun:
    name: str
    index: int
    log: Path
    proc: subprocess.Popen | None = None  # the process, or the `podman wait` of the played pod
    container: str | None = None  # podman: the container's name


class KubeRunner:
    def __init__(self, server: Any, engine: list[str] | None, workdir: Path, env: dict[str, str]):
        self.server, self.engine, self.workdir, self.env = server, engine, workdir, env
        self.token = secrets.token_hex(3)
        self.runs: dict[str, list[PodRun]] = {}

    def job(self, name: str, namespace: str) -> dict[str, Any]:
        found = self.server.get("batch/v1", "jobs", namespace, name)
        assert found is not None, f"no Job {namespace}/{name}"
        return found

    def pod_manifest(self, job: dict[str, Any], index: int) -> dict[str, Any]:
        """The Pod the Job controller makes for completion index `index`."""
        meta, template = job["metadata"], job["spec"]["template"]
        name = f"{meta['name']}-{index}-{self.token}"
        labels = {**(template.get("metadata") or {}).get("labels", {}), "job-name": meta["name"],
                  "batch.kubernetes.io/job-name": meta["name"], "controller-uid": meta["uid"],
                  "batch.kubernetes.io/controller-uid": meta["uid"],
                  "batch.kubernetes.io/job-completion-index": str(index)}
        spec = copy.deepcopy(template["spec"])
        spec["hostname"] = f"{meta['name']}-{index}"
        for container in spec["containers"]:
            env = [e for e in container.get("env", []) if e["name"] != "JOB_COMPLETION_INDEX"]
            env.append({"name": "JOB_COMPLETION_INDEX", "value": str(index)})
            container["env"] = env
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels,
                             "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
                             "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                                  "uid": meta["uid"], "controller": True,
                                                  "blockOwnerDeletion": True}]},
                "spec": spec, "status": {"phase": "Pending"}}

    def _played(self, pod: dict[str, Any]) -> dict[str, Any]:
        """What `podman kube play` is given: the Pod with the test settings in its env, on the host's
        network; scheduling fields a single machine has no use for (node selector, tolerations, the
        service account, GPU limits) and container ports (podman maps none on the host's network)
        are dropped. Everything else is the Pod as the Job made it."""
        played = copy.deepcopy({k: pod[k] for k in ("apiVersion", "kind", "metadata", "spec")})
        played["metadata"] = {"name": pod["metadata"]["name"], "labels": pod["metadata"]["labels"]}
        spec = played["spec"]
        for key in ("nodeSelector", "tolerations", "serviceAccountName", "subdomain"):
            spec.pop(key, None)
        spec["hostNetwork"] = True
        for container in spec["containers"]:
            container.pop("ports", None)
            container["env"] = [*container.get("env", []), *({"name": k, "value": v} for k, v in sorted(self.env.items()))]
            resources = container.get("resources") or {}
            for part in ("limits", "requests"):
                (resources.get(part) or {}).pop("nvidia.com/gpu", None)
        return played

    def start(self, name: str, namespace: str) -> list[PodRun]:
        """Create and start the Job's pods; the Job becomes active (and ready once they run)."""
        job = self.job(name, namespace)
        assert not job["spec"].get("suspend"), f"Job {name} is suspended: Kubernetes starts no pod for it"
        folder = self.workdir / name
        folder.mkdir(parents=True, exist_ok=True)
        completions = int(job["spec"].get("completions") or 1)
        runs = []
        self.server.update_status("batch/v1", "jobs", namespace, name,
                                  {"startTime": _now(), "active": completions, "ready": 0})
        for index in range(completions):
            pod = self.pod_manifest(job, index)
            self.server.put_object(pod)
            log = folder / f"{index}.log"
            container = pod["spec"]["containers"][0]
            env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
            if self.engine is None:
                proc = image_process([*(container.get("command") or IMAGE_ENTRYPOINT), *container.get("args", [])],
                                     {**env, **self.env}, log, folder)
                runs.append(PodRun(pod["metadata"]["name"], index, log, proc))
            else:
                manifest = folder / f"{index}.yaml"
                manifest.write_text(yaml.safe_dump(self._played(pod), sort_keys=False))
                play = subprocess.run([*self.engine, "kube", "play", "--network=host", str(manifest)],
                                      capture_output=True, text=True, timeout=300)
                assert play.returncode == 0, f"podman kube play failed: {play.stdout}\n{play.stderr}"
                cname = f"{pod['metadata']['name']}-{container['name']}"
                waiter = subprocess.Popen([*self.engine, "wait", cname], stdout=subprocess.PIPE, text=True)
                runs.append(PodRun(pod["metadata"]["name"], index, log, waiter, cname))
            self.server.update_status("v1", "pods", namespace, pod["metadata"]["name"], {
                "phase": "Running", "startTime": _now(),
                "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [{"name": container["name"], "image": container["image"], "imageID": "",
                                       "ready": True, "restartCount": 0, "started": True,
                                       "state": {"running": {"startedAt": _now()}}}]})
        self.server.update_status("batch/v1", "jobs", namespace, name, {"ready": completions})
        self.runs[name] = runs
        return runs

    def _exit_code(self, run: PodRun, timeout: float) -> int:
        assert run.proc is not None
        if self.engine is None:
            return run.proc.wait(timeout=timeout)
        out, _ = run.proc.communicate(timeout=timeout)
        logs = subprocess.run([*self.engine, "logs", run.container], capture_output=True, timeout=120)
        run.log.write_bytes(logs.stdout + logs.stderr)
        return int((out or "1").strip().splitlines()[-1])

    def finish(self, name: str, namespace: str, timeout: float = 900) -> dict[int, int]:
        """Wait for the pods, publish their logs, and end the Job as its controller does."""
        deadline = time.monotonic() + timeout
        job = self.job(name, namespace)
        codes: dict[int, int] = {}
        for run in self.runs[name]:
            try:
                codes[run.index] = self._exit_code(run, max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(name)
                codes[run.index] = 137
            finally:
                if self.engine is not None:
                    subprocess.run([*self.engine, "kube", "down", str(self.workdir / name / f"{run.index}.yaml")],
                                   capture_output=True, timeout=300)
            for line in run.log.read_text(errors="replace").splitlines():
                self.server.append_log(namespace, run.name, line)
            finished = _now()
            container = job["spec"]["template"]["spec"]["containers"][0]["name"]
            self.server.update_status("v1", "pods", namespace, run.name, {
                "phase": "Succeeded" if codes[run.index] == 0 else "Failed",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{"name": container, "image": "", "imageID": "", "ready": False,
                                       "restartCount": 0,
                                       "state": {"terminated": {"exitCode": codes[run.index], "finishedAt": finished,
                                                                "reason": "Completed" if codes[run.index] == 0
                                                                else "Error"}}}]})
        failed = sorted(i for i, c in codes.items() if c != 0)
        status: dict[str, Any] = {"active": 0, "ready": 0, "succeeded": len(codes) - len(failed),
                                  "failed": len(failed),
                                  "completedIndexes": ",".join(str(i) for i, c in sorted(codes.items()) if c == 0)}
        if failed:
            rules = (job["spec"].get("podFailurePolicy") or {}).get("rules", [])
            fail_codes = {v for r in rules if r.get("action") == "FailJob"
                          for v in (r.get("onExitCodes") or {}).get("values", [])}
            by_policy = any(codes[i] in fail_codes for i in failed)
            reason = "PodFailurePolicy" if by_policy else "BackoffLimitExceeded"
            message = (f"Container {container} for pod {namespace}/{self.runs[name][failed[0]].name} failed with exit "
                       f"code {codes[failed[0]]} matching FailJob rule at index 0") if by_policy \
                else "Job has reached the specified backoff limit"
            status["conditions"] = [{"type": "FailureTarget", "status": "True", "reason": reason, "message": message,
                                     "lastTransitionTime": _now()},
                                    {"type": "Failed", "status": "True", "reason": reason, "message": message,
                                     "lastTransitionTime": _now()}]
        else:
            status["completionTime"] = _now()
            status["conditions"] = [{"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                                     "message": "Reached expected number of succeeded pods",
                                     "lastTransitionTime": _now()},
                                    {"type": "Complete", "status": "True", "reason": "CompletionsReached",
                                     "message": "Reached expected number of succeeded pods",
                                     "lastTransitionTime": _now()}]
        self.server.update_status("batch/v1", "jobs", namespace, name, status)
        return codes

    def kill(self, name: str) -> None:
        for run in self.runs.get(name, []):
            if self.engine is None and run.proc is not None:
                stop_process(run.proc)
            elif run.container:
                subprocess.run([*self.engine, "kill", "--signal", "KILL", run.container], capture_output=True,
                               timeout=60)

    def run(self, name: str, namespace: str, timeout: float = 900) -> dict[int, int]:
        self.start(name, namespace)
        return self.finish(name, namespace, timeout)
