"""Stack resolution: which stack is active, its config, and its validated outputs.

The name comes from the call, else `STACKWISE_STACK`, else `local`. Config is read from
`stacks/Pulumi.<name>.yaml`; the `local` stack falls back to built-in defaults so a user who
only installed the package can run it anywhere. Outputs come, in order, from the JSON file
named by `STACKWISE_OUTPUTS`, `.stackwise/outputs/<name>.json` (written by `stackwise sync`),
or `pulumi stack output --json --show-secrets`; the local stack derives them from its config.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .clouds import stack_clouds
from .contract import StackOutputs, VectorStoreOutput
from .errors import ConfigError
from .paths import stacks_dir, state_dir
from .registry import VECTOR_STORES, hosted_vector_store_kinds, vector_store_kinds
from .userinput import load_yaml, read_text, shorten

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_NAMESPACE = "stackwise"
# Keys the SDK reads from any stack file. The Pulumi program validates the rest of a
# cloud stack's config; the local stack is wholly the SDK's, so its keys are checked here.
_LOCAL_KEYS = {"cloud", "region", "artifactStore", "vectorStore", "embeddingModel", "trackingUri", "compute",
               "allowedLicenses", "allowGated", "maxJobCostUsd", "kubernetes"}
# Compute backends a stack may choose (`stackwise:compute: {kind: ...}`): a local stack runs jobs as
# processes, in its training image, or on a Kubernetes cluster; a cloud stack on the cloud's ML service
# (`managed`, the default) or on a Kubernetes cluster (docs/kubernetes.md).
LOCAL_COMPUTE = ("local", "container", "kubernetes")
CLOUD_COMPUTE = ("managed", "kubernetes")
# `stackwise:kubernetes` keys the SDK reads on the submitting machine (the rest become outputs).
KUBERNETES_CLIENT_KEYS = ("kubeconfig", "context")


@dataclass(frozen=True)
class Stack:
    """An active environment: its name, where its config came from, and its outputs."""

    name: str
    cloud: str
    region: str
    config: dict[str, Any]
    source: str
    _outputs: StackOutputs | None = field(default=None, repr=False)

    @property
    def outputs(self) -> StackOutputs:
        """The validated stack contract (read lazily: listing stacks needs no outputs)."""
        if self._outputs is None:
            object.__setattr__(self, "_outputs", _load_outputs(self))
        assert self._outputs is not None
        return self._outputs

    @property
    def is_local(self) -> bool:
        return self.cloud == "local"

    @property
    def compute_kind(self) -> str:
        """Which compute backend runs this stack's jobs: the cloud's ML service, a Kubernetes
        cluster (`kubernetes`), or on a local stack `local` (processes) or `container` (the stack's
        training image, with podman or docker)."""
        kind = (self.config.get("compute") or {}).get("kind")
        if kind == "kubernetes":
            return "kubernetes"
        return self.cloud if not self.is_local else str(kind or "local")

    @property
    def deploy_kind(self) -> str:
        """Which deploy backend serves this stack's endpoints: a stack whose jobs run on Kubernetes
        serves there too; otherwise the cloud's endpoints (`local`: `stackwise serve`)."""
        return "kubernetes" if self.compute_kind == "kubernetes" else self.cloud


def stack_name(name: str | None = None) -> str:
    """The active stack's name: the argument, else `$STACKWISE_STACK`, else `local`."""
    chosen = name or os.environ.get("STACKWISE_STACK") or "local"
    if not _NAME.fullmatch(chosen):
        raise ConfigError(
            f"invalid stack name {shorten(chosen)}",
            where="--stack / STACKWISE_STACK",
            fix="use letters, digits, '-', '_' or '.', e.g. dev-aws",
        )
    return chosen


def stack_files() -> dict[str, Path]:
    """Stack name -> file, for every `stacks/Pulumi.<name>.yaml` in the project."""
    folder = stacks_dir()
    if folder is None:
        return {}
    return {p.name[len("Pulumi.") : -len(".yaml")]: p for p in sorted(folder.glob("Pulumi.*.yaml"))}


def load_stack(name: str | None = None) -> Stack:
    """Resolve and validate a stack's config (outputs are read on first use)."""
    chosen = stack_name(name)
    files = stack_files()
    if chosen in files:
        path = files[chosen]
        config = _read_config(read_text(path, what="stack file"), str(path))
        source = str(path)
    elif chosen == "local":
        text = resources.files("stackwise").joinpath("defaults/Pulumi.local.yaml").read_text("utf-8")
        config = _read_config(text, "built-in local stack")
        source = "built-in defaults"
    else:
        known = ", ".join(sorted({"local", *files})) or "local"
        where = str(stacks_dir() / f"Pulumi.{chosen}.yaml") if stacks_dir() else "no stacks/ folder found"
        raise ConfigError(
            f"unknown stack {shorten(chosen)}",
            where=where,
            fix=f"choose one of: {known}; or create stacks/Pulumi.{chosen}.yaml",
        )
    cloud = config.get("cloud")
    if cloud not in stack_clouds():
        raise ConfigError(
            f"stack {chosen!r} names an unknown cloud {shorten(cloud)}",
            where=f"{source}: config.stackwise:cloud",
            fix=f"set stackwise:cloud to one of: {', '.join(stack_clouds())}",
        )
    if cloud == "local":
        unknown = sorted(set(config) - _LOCAL_KEYS)
        if unknown:
            raise ConfigError(
                f"unknown key stackwise:{unknown[0]} in the local stack",
                where=source,
                fix=f"remove it; the local stack reads: {', '.join(sorted(_LOCAL_KEYS))}",
            )
    if cloud == "local":
        _check_local_compute(config.get("compute"), source)
    else:
        _check_cloud_compute(config.get("compute"), source)
    compute = config.get("compute")
    if isinstance(compute, dict) and compute.get("kind") == "kubernetes":
        _check_kubernetes(config.get("kubernetes"), source, cloud)
    region = config.get("region") or ("local" if cloud == "local" else None)
    if not isinstance(region, str):
        raise ConfigError(
            f"stack {chosen!r} has no region", where=f"{source}: config", fix="set stackwise:region"
        )
    return Stack(name=chosen, cloud=cloud, region=region, config=config, source=source)


def _check_local_compute(compute: Any, source: str) -> None:
    if compute is None:
        return
    where = f"{source}: config.stackwise:compute"
    fix = ("set compute to {kind: local} (jobs as processes), {kind: container, image: IMAGE} "
           "(jobs in the training image: build it with `stackwise image build`), optional engine: podman|docker, "
           "or {kind: kubernetes, image: IMAGE} (jobs on a cluster, with stackwise:kubernetes; docs/kubernetes.md)")
    if not isinstance(compute, dict) or set(compute) - {"kind", "image", "engine"}:
        raise ConfigError("stackwise:compute must be a mapping with kind, image and engine", where=where, fix=fix)
    kind = compute.get("kind", "local")
    if kind not in LOCAL_COMPUTE:
        raise ConfigError(f"unknown compute kind {shorten(kind)} for the local stack{_did_you_mean(kind, LOCAL_COMPUTE)}",
                          where=where, fix=fix)
    if kind in ("container", "kubernetes") and not (isinstance(compute.get("image"), str) and compute["image"].strip()):
        raise ConfigError(f"a {kind} compute stack names no image", where=where, fix=fix)
    if compute.get("engine") not in (None, "podman", "docker"):
        raise ConfigError(f"unknown container engine {shorten(compute.get('engine'))}", where=where, fix=fix)


def _check_cloud_compute(compute: Any, source: str) -> None:
    if compute is None:
        return
    where = f"{source}: config.stackwise:compute"
    fix = ("leave stackwise:compute out (jobs on the cloud's ML service), or set it to {kind: kubernetes} "
           "with stackwise:kubernetes (jobs and endpoints on a cluster; docs/kubernetes.md)")
    if not isinstance(compute, dict) or set(compute) - {"kind"}:
        raise ConfigError("stackwise:compute of a cloud stack must be a mapping with only kind", where=where, fix=fix)
    kind = compute.get("kind", "managed")
    if kind not in CLOUD_COMPUTE:
        raise ConfigError(f"unknown compute kind {shorten(kind)}{_did_you_mean(kind, CLOUD_COMPUTE)}", where=where,
                          fix=fix)


def _check_kubernetes(settings: Any, source: str, cloud: str) -> None:
    """A kubernetes compute stack names its cluster settings (the namespace at least, on a local stack;
    a cloud stack's program defaults it)."""
    where = f"{source}: config.stackwise:kubernetes"
    if settings is None and cloud != "local":
        return
    if not isinstance(settings, dict) or (cloud == "local" and not settings.get("namespace")):
        raise ConfigError("a kubernetes compute stack needs stackwise:kubernetes with at least a namespace",
                          where=where, fix="add stackwise:kubernetes: {namespace: NAME, context: KUBECONFIG-CONTEXT} "
                          "(docs/kubernetes.md lists every key)")
    for key in KUBERNETES_CLIENT_KEYS:
        if settings.get(key) is not None and not (isinstance(settings[key], str) and settings[key].strip()):
            raise ConfigError(f"stackwise:kubernetes.{key} must be a non-empty string", where=where,
                              fix=f"set {key} to a {'file path' if key == 'kubeconfig' else 'kubeconfig context name'}, "
                              "or remove it to use the default")


def _did_you_mean(value: Any, choices: tuple[str, ...]) -> str:
    import difflib

    close = difflib.get_close_matches(str(value), choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _read_config(text: str, where: str) -> dict[str, Any]:
    document = load_yaml(text, where, ConfigError, what="stack file")
    if not isinstance(document, dict) or not isinstance(document.get("config", {}), dict):
        raise ConfigError(
            "stack file must be a mapping with a 'config:' mapping",
            where=where,
            fix="start the file with 'config:' and put 'stackwise:cloud: <cloud>' under it",
        )
    config: dict[str, Any] = {}
    for key, value in (document.get("config") or {}).items():
        namespace, _, short = str(key).partition(":")
        if namespace == _NAMESPACE and short:
            config[short] = value
    return config


def _load_outputs(stack: Stack) -> StackOutputs:
    env_file = os.environ.get("STACKWISE_OUTPUTS")
    if env_file:
        return _outputs_from_file(Path(env_file), stack, "STACKWISE_OUTPUTS")
    synced = state_dir() / "outputs" / f"{stack.name}.json"
    if synced.is_file():
        return _outputs_from_file(synced, stack, "stackwise sync")
    if stack.is_local:
        return local_outputs(stack)
    return _outputs_from_pulumi(stack)


def local_outputs(stack: Stack) -> StackOutputs:
    """The local stack's outputs, derived from its config under the state folder."""
    base = state_dir()

    def under(value: str) -> str:
        return value if "://" in value else str((base / value).resolve())

    vector = stack.config.get("vectorStore") or {"kind": "embedded", "path": "vectors"}
    return StackOutputs(
        cloud="local",
        region="local",
        artifact_store=under(str(stack.config.get("artifactStore", "artifacts"))),
        vector_store=_local_vector_store(stack, vector, under),
        embedding_model=str(stack.config.get("embeddingModel", "all-MiniLM-L6-v2")),
        tracking_uri=stack.config.get("trackingUri") or f"sqlite:///{base / 'mlflow.db'}",
        training_image=(stack.config.get("compute") or {}).get("image"),
        kubernetes=_local_kubernetes(stack) if stack.compute_kind == "kubernetes" else None,
    )


def _local_kubernetes(stack: Stack) -> Any:
    """A local stack's cluster settings as outputs: `stackwise:kubernetes` less the client keys
    (kubeconfig, context), camelCase keys as in every stack file."""
    from pydantic import ValidationError

    from .contract import KubernetesOutput

    settings = {k: v for k, v in (stack.config.get("kubernetes") or {}).items() if k not in KUBERNETES_CLIENT_KEYS}
    fields = {"".join("_" + c.lower() if c.isupper() else c for c in key): value for key, value in settings.items()}
    where = f"{stack.source}: config.stackwise:kubernetes"
    try:
        return KubernetesOutput.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(root)"
        camel = key.split("_")[0] + "".join(w.title() for w in key.split("_")[1:])
        if first["type"] == "extra_forbidden":
            known = sorted({*KUBERNETES_CLIENT_KEYS, *(n.split("_")[0] + "".join(w.title() for w in n.split("_")[1:])
                                                     for n in KubernetesOutput.model_fields)})
            raise ConfigError(f"unknown key stackwise:kubernetes.{camel}", where=where,
                              fix=f"remove it or correct its spelling; stackwise:kubernetes reads: {', '.join(known)}") from None
        raise ConfigError(f"bad value for stackwise:kubernetes.{camel}: {first['msg']}", where=where,
                          fix="correct it (docs/kubernetes.md lists every key)") from None


def _local_vector_store(stack: Stack, vector: Any, under) -> VectorStoreOutput:
    """The local stack's vector store: an embedded one under `path`, or a hosted store reached
    from this machine (`{kind: <a hosted kind>, host: URL, apiKeySecret: env://NAME}`), so
    local jobs can index into a hosted store without a cloud stack. Which kinds are which:
    `stackwise.registry.VECTOR_STORES`."""
    where = f"{stack.source}: config.stackwise:vectorStore"
    kind = vector.get("kind", "embedded") if isinstance(vector, dict) else None
    ref = VECTOR_STORES.get(kind) if isinstance(kind, str) else None
    if ref is not None and not ref.hosted:
        return VectorStoreOutput(kind=kind, uri=under(str(vector.get("path", "vectors"))))
    hosted = {"kind", "host", "apiKeySecret"}
    if ref is not None and vector.get("host") and not set(vector) - hosted:
        try:
            return VectorStoreOutput(kind=kind, host=str(vector["host"]), api_key_secret=vector.get("apiKeySecret"))
        except ValueError as exc:
            raise ConfigError(f"invalid vectorStore.apiKeySecret: {exc.errors()[0]['msg']}", where=where,
                              fix="reference the key, e.g. apiKeySecret: env://PINECONE_API_KEY") from None
    raise ConfigError(
        "the local stack's vector store must be the embedded store or a hosted one with a host",
        where=where,
        fix=f"set vectorStore to {{kind: {'|'.join(vector_store_kinds('embedded'))}, path: vectors}}, or to "
        f"{{kind: {'|'.join(hosted_vector_store_kinds())}, host: URL, apiKeySecret: env://NAME}}",
    )


def _validate_outputs(data: Any, stack: Stack, where: str) -> StackOutputs:
    from pydantic import ValidationError

    try:
        outputs = StackOutputs.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ConfigError(
            f"stack {stack.name!r} outputs are invalid at {key}: {first['msg']}",
            where=where,
            fix="re-run `pulumi up` and `stackwise sync`, or correct the outputs file",
        ) from None
    if outputs.cloud != stack.cloud:
        raise ConfigError(
            f"stack {stack.name!r} is configured for {stack.cloud} but its outputs say {outputs.cloud}",
            where=where,
            fix="the outputs belong to another stack: run `stackwise sync --stack " + stack.name + "`",
        )
    return outputs


def _outputs_from_file(path: Path, stack: Stack, origin: str) -> StackOutputs:
    fix = ("point STACKWISE_OUTPUTS at the stack's output JSON file, or unset it" if origin == "STACKWISE_OUTPUTS"
           else "regenerate it with `stackwise sync`")
    if not path.exists():
        raise ConfigError(f"stack outputs file not found: {path}", where=origin, fix=fix)
    try:
        data = json.loads(read_text(path, where=f"{path} ({origin})", what="the stack outputs file", fix=fix))
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"stack outputs file is not valid JSON: {exc.msg}",
            where=f"{path} line {exc.lineno}",
            fix="regenerate it with `stackwise sync`",
        ) from None
    except RecursionError:
        raise ConfigError("stack outputs file nests too deep to read", where=str(path), fix=fix) from None
    return _validate_outputs(data, stack, str(path))


def _outputs_from_pulumi(stack: Stack) -> StackOutputs:
    if shutil.which("pulumi") is None:
        raise ConfigError(
            f"no outputs for stack {stack.name!r}",
            where=f"STACKWISE_OUTPUTS unset, {state_dir() / 'outputs' / (stack.name + '.json')} missing, no pulumi CLI",
            fix="run `pulumi up` then `stackwise sync --stack " + stack.name + "` where Pulumi is installed, "
            "or set STACKWISE_OUTPUTS to the stack's output JSON",
        )
    proc = subprocess.run(
        ["pulumi", "stack", "output", "--json", "--show-secrets", "--stack", stack.name],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ConfigError(
            f"`pulumi stack output` failed for stack {stack.name!r}",
            where="pulumi stack output --stack " + stack.name,
            fix="run `pulumi up` for this stack first; pulumi said: " + proc.stderr.strip()[-300:],
        )
    return _validate_outputs(json.loads(proc.stdout), stack, "pulumi stack output")


def sync_outputs(stack: Stack) -> Path:
    """Write the stack's outputs to `.stackwise/outputs/<name>.json` so later reads need no Pulumi."""
    outputs = _outputs_from_pulumi(stack) if not stack.is_local else local_outputs(stack)
    target = state_dir() / "outputs" / f"{stack.name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(outputs.model_dump_json(indent=2), encoding="utf-8")
    os.replace(tmp, target)
    return target
