"""Container compute: a local stack whose jobs run in the stack's training image, with podman or
docker on this machine (`stackwise:compute: {kind: container, image: IMAGE}`), the local
analogue of SageMaker's local mode.

Each job is a local job (the same SQLite record, log, wait, cancel and job identity as
`LocalCompute`) whose supervisor starts the image instead of a Python process: the image's
entrypoint runs the bootstrap, exactly as on a cloud, with the spec and the job context in
`STACKWISE_SPEC_B64` / `STACKWISE_CONTEXT_B64` and the job folder as `STACKWISE_JOB_URI`
(file://, bind-mounted at the same path, so result.json lands where the supervisor reads it).
An index job with `workers: N` runs N containers, each told its rank (`NODE_RANK`) and the
count (`STACKWISE_NNODES`), as a cloud's nodes are.

Mounted at the same paths: the state folder (read-write: artifacts, the embedded vector store,
MLflow, the model cache), the working directory and any local file or folder the spec names
(read-only). Object stores are reached through fsspec with the credentials in the environment:
variables starting with AWS_, GOOGLE_, AZURE_, HF_ and the thread caps are passed through, and so
is every variable an `env://` secret reference of the context names. The container runs as the
calling user (`--user UID:GID`), so what it writes belongs to them; it shares the host network.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any

from stackwise.errors import ConfigError

from .base import ENV_CONTEXT, ENV_JOB_URI, ENV_KIND, ENV_SPEC, b64
from .checks import DATA_FIELDS, MODEL_FIELDS, is_local
from .local import LocalCompute

CONTAINER_FILE = "container.json"
PASS_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_", "HF_", "TRANSFORMERS_", "STACKWISE_THREADS", "OMP_NUM_THREADS",
                 "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM", "NO_PROXY", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY")


def _local_paths(spec: Any, cwd: str) -> list[str]:
    """Absolute paths on this machine that the spec names (files, folders, a glob's folder)."""
    found = []
    for field in DATA_FIELDS.get(spec.kind, ()) + MODEL_FIELDS.get(spec.kind, ()):
        raw = getattr(spec, field, None)
        for value in raw if isinstance(raw, list) else [raw]:
            if not isinstance(value, str) or not is_local(value):
                continue
            path = value.removeprefix("file://")
            if glob.has_magic(path):
                path = path[: min(path.index(c) for c in "*?[" if c in path)].rsplit("/", 1)[0] or "."
            full = Path(cwd, path).expanduser()
            if full.exists():
                found.append(str(full.resolve()))
    return found


class ContainerCompute(LocalCompute):
    """Runs each job in the stack's training image; see the module docstring."""

    def __init__(self, stack: Any = None, home: Path | None = None):
        super().__init__(stack, home)
        compute = dict((getattr(stack, "config", None) or {}).get("compute") or {})
        self.image = compute.get("image")
        self.engine_name = compute.get("engine")
        self._engine_found: str | None = None
        if not self.image:
            raise ConfigError("the container compute backend needs an image", where="stackwise:compute.image",
                              fix="build it with `stackwise image build` and set stackwise:compute.image to its tag")

    def _engine(self) -> str:
        """The engine to run jobs with, found once per backend (finding docker asks its daemon)."""
        if self._engine_found is None:
            from stackwise.images import find_engine

            if self.engine_name:
                os.environ.setdefault("STACKWISE_CONTAINER_ENGINE", self.engine_name)
            self._engine_found = find_engine()
        return self._engine_found

    def _preflight(self, spec: Any) -> None:
        from stackwise.images import image_exists

        engine = self._engine()
        if not image_exists(engine, self.image):
            raise ConfigError(f"the stack's training image {self.image} is not in {engine}'s image store",
                              where="stackwise:compute.image",
                              fix="build it with `stackwise image build` (or pull it), then submit again")

    def _prepare_job(self, job_dir: Path, spec: Any, context: Any) -> None:
        engine = self._engine()
        cwd = os.getcwd()
        home = str(self.db.home.resolve())
        mounts = [(home, "rw"), (cwd, "ro")]
        for path in _local_paths(spec, cwd):
            if not any(path == m or path.startswith(m.rstrip("/") + "/") for m, _ in mounts):
                mounts.append((path, "ro"))
        names = {ref.removeprefix("env://").split("#")[0] for ref in
                 [*context.secrets.values(), context.vector_store.api_key_secret or ""] if ref.startswith("env://")}
        env = {k: v for k, v in os.environ.items() if k.startswith(PASS_PREFIXES) or k in names}
        env.update({ENV_KIND: spec.kind, ENV_JOB_URI: job_dir.resolve().as_uri(), ENV_SPEC: b64(spec),
                    ENV_CONTEXT: b64(context), "PYTHONUNBUFFERED": "1",
                    "STACKWISE_MODEL_CACHE": str(Path(home) / "models")})
        (job_dir / CONTAINER_FILE).write_text(json.dumps({
            "engine": engine, "image": self.image, "mounts": mounts, "env": env, "workdir": cwd,
            "user": f"{os.getuid()}:{os.getgid()}"}, indent=2), encoding="utf-8")


def container_command(job_dir: Path, job_id: str, shard: int | None = None, count: int = 1) -> list[str]:
    """The `run` command of one container of a job (one shard of `count`, or the whole job)."""
    config = json.loads((job_dir / CONTAINER_FILE).read_text(encoding="utf-8"))
    name = container_name(job_id, shard)
    cmd = [config["engine"], "run", "--rm", "--name", name, "--network=host", "--user", config["user"],
           "--workdir", config["workdir"]]
    for path, mode in config["mounts"]:
        cmd += ["-v", f"{path}:{path}:{mode}"]
    env = dict(config["env"])
    if shard is not None:
        env.update(NODE_RANK=str(shard), STACKWISE_NNODES=str(count))
    for key, value in sorted(env.items()):
        cmd += ["-e", f"{key}={value}"]
    return [*cmd, config["image"]]


def container_name(job_id: str, shard: int | None = None) -> str:
    return f"sw-{job_id}" + (f"-{shard}" if shard is not None else "")


def stop_containers(job_dir: Path, job_id: str, count: int, grace_s: int = 5) -> None:
    """Stop the job's containers (SIGTERM, then SIGKILL after `grace_s`)."""
    import subprocess

    engine = json.loads((job_dir / CONTAINER_FILE).read_text(encoding="utf-8"))["engine"]
    names = [container_name(job_id)] if count == 1 else [container_name(job_id, i) for i in range(count)]
    subprocess.run([engine, "stop", "--time", str(grace_s), *names], capture_output=True, timeout=120)
