"""Runs a SageMaker training job that the adapter created in moto the way SageMaker runs it:
the job's image in real containers, one per instance, under SageMaker's training contract.

What SageMaker does, and this runner does, per instance `algo-<i>` (docs: "How Amazon SageMaker
Runs Your Training Image", "Use checkpoints in Amazon SageMaker"):
- `/opt/ml/input/config/resourceconfig.json` (`current_host`, `hosts`, `network_interface_name`),
  `hyperparameters.json` (the request's HyperParameters, values as strings) and
  `inputdataconfig.json`;
- each File-mode channel downloaded from its S3 prefix to `/opt/ml/input/data/<channel>/`;
- `CheckpointConfig`: the S3 URI restored into `LocalPath` (/opt/ml/checkpoints) before the
  container starts, and what the container left there uploaded back when it ends;
- `/opt/ml/model` and `/opt/ml/output` empty and writable; `/opt/ml/output/failure` read as the
  failure reason;
- the container started as `<image> train` with the request's Environment (plus, here, the moto
  endpoint and test credentials, which SageMaker would give through the job's role), and the job's
  status Completed when every instance exits 0, else Failed with an `AlgorithmError` reason.
The containers share the host's network (moto listens on the host's loopback).

With no container engine (`engine=None`) each instance is a process of this machine instead
(`cloud_fixtures.image_process`): the image's command (`python -m stackwise.adapters.compute.bootstrap
train`) with the same environment, its instance folder seen at /opt/ml through a mount namespace.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from cloud_fixtures import image_process, stop_process

IMAGE_ENTRYPOINT = ["python", "-m", "stackwise.adapters.compute.bootstrap"]  # the training image's


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


class SageMakerRunner:
    def __init__(self, emulator: Any, engine: list[str] | None, workdir: Path, env: dict[str, str]):
        import boto3

        import secrets

        self.emulator, self.engine, self.workdir, self.env = emulator, engine, workdir, env
        self.suffix = secrets.token_hex(3)  # container names stay unique across concurrent test sessions
        self.s3 = boto3.client("s3", region_name=emulator.region, endpoint_url=emulator.endpoint)
        self.processes: dict[tuple[str, str], subprocess.Popen] = {}  # (job, host) -> node, without an engine

    # -- S3 <-> folders ----------------------------------------------------------------------------
    def _download(self, uri: str, folder: Path) -> int:
        bucket, prefix = _split(uri)
        count = 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                rel = item["Key"][len(prefix):].lstrip("/") or Path(item["Key"]).name
                target = folder / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                self.s3.download_file(bucket, item["Key"], str(target))
                count += 1
        return count

    def _upload(self, folder: Path, uri: str) -> int:
        bucket, prefix = _split(uri)
        count = 0
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            self.s3.upload_file(str(path), bucket, f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}")
            count += 1
        return count

    # -- one job -------------------------------------------------------------------------------------
    def prepare(self, name: str, host: str, hosts: list[str]) -> Path:
        """The /opt/ml folder of one instance, laid out as SageMaker lays it out."""
        job = self.emulator.job(name)
        root = self.workdir / name / host / "opt-ml"
        config = root / "input" / "config"
        config.mkdir(parents=True, exist_ok=True)
        (config / "resourceconfig.json").write_text(json.dumps(
            {"current_host": host, "current_instance_type": job.resource_config["InstanceType"], "hosts": hosts,
             "network_interface_name": "eth0"}))
        (config / "hyperparameters.json").write_text(json.dumps({k: str(v) for k, v in job.hyper_parameters.items()}))
        channels = {c["ChannelName"]: c for c in job.input_data_config}
        (config / "inputdataconfig.json").write_text(json.dumps(
            {n: {"TrainingInputMode": c.get("InputMode", "File"), "S3DistributionType": "FullyReplicated",
                 "RecordWrapperType": "None"} for n, c in channels.items()}))
        for channel_name, channel in channels.items():
            source = channel["DataSource"]["S3DataSource"]["S3Uri"]
            self._download(source, root / "input" / "data" / channel_name)
        for sub in ("model", "output", "checkpoints"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        checkpoint = job.checkpoint_config or {}
        if checkpoint.get("S3Uri"):
            self._download(checkpoint["S3Uri"], root / "checkpoints")
        # SageMaker's host prepares /opt/ml for whichever user the image runs as (ours: uid 1000).
        for path in [root, *root.rglob("*")]:
            path.chmod(0o777 if path.is_dir() else 0o666)
        return root

    def start(self, name: str) -> list[tuple[str, subprocess.Popen, Path]]:
        """Start one container per instance (the job moves to InProgress); see `finish`."""
        job = self.emulator.job(name)
        count = int(job.resource_config["InstanceCount"])
        hosts = [f"algo-{i + 1}" for i in range(count)]
        self.emulator.move(name, "InProgress", secondary="Training")
        image = job.algorithm_specification["TrainingImage"]
        entry = job.algorithm_specification.get("ContainerEntrypoint")
        running = []
        for host in hosts:
            root = self.prepare(name, host, hosts)
            env = {**(getattr(job, "environment", None) or {}), **self.env}
            log = self.workdir / name / f"{host}.log"
            if self.engine is None:
                proc = image_process([*(entry or IMAGE_ENTRYPOINT), "train"], env, log, root.parent, opt_ml=root)
                self.processes[(name, host)] = proc
                running.append((host, proc, root))
                continue
            cmd = [*self.engine, "run", "--rm", "--network=host", "--name", f"{name}-{host}-{self.suffix}",
                   "--add-host", f"{host}:127.0.0.1", "-v", f"{root}:/opt/ml"]
            for key, value in sorted(env.items()):
                cmd += ["-e", f"{key}={value}"]
            if entry:  # AlgorithmSpecification.ContainerEntrypoint replaces the image's ENTRYPOINT
                cmd += ["--entrypoint", entry[0], image, *entry[1:], "train"]
            else:
                cmd += [image, "train"]
            with open(log, "wb") as out:
                running.append((host, subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                                       stdin=subprocess.DEVNULL), root))
        return running

    def finish(self, name: str, running: list[tuple[str, subprocess.Popen, Path]], timeout: float = 900) -> list[int]:
        """Wait for the containers, upload checkpoints, and set the job's final status."""
        job = self.emulator.job(name)
        deadline = time.monotonic() + timeout
        codes = []
        for host, proc, root in running:
            try:
                codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                self.kill(name, host)
                codes.append(proc.wait())
        checkpoint = job.checkpoint_config or {}
        if checkpoint.get("S3Uri"):
            self._upload(running[0][2] / "checkpoints", checkpoint["S3Uri"])
        if all(code == 0 for code in codes):
            self.emulator.move(name, "Completed")
        else:
            failure = ""
            for _, _, root in running:
                if (root / "output" / "failure").is_file():
                    failure = (root / "output" / "failure").read_text()[:1024]
            self.emulator.move(name, "Failed", failure=f"AlgorithmError: exit codes {codes}. {failure}".strip())
        return codes

    def kill(self, name: str, host: str = "algo-1") -> None:
        """What a spot interruption or an instance failure does to one instance: SIGKILL."""
        if self.engine is None:
            if (name, host) in self.processes:
                stop_process(self.processes[(name, host)])
            return
        subprocess.run([*self.engine, "kill", "--signal", "KILL", f"{name}-{host}-{self.suffix}"], capture_output=True,
                       timeout=60)

    def run(self, name: str, timeout: float = 900) -> list[int]:
        return self.finish(name, self.start(name), timeout)

    def log(self, name: str, host: str = "algo-1") -> str:
        path = self.workdir / name / f"{host}.log"
        return path.read_text(errors="replace") if path.is_file() else ""
