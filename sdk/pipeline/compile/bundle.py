"""The files a compiled pipeline's steps read in the cloud, content-addressed in the artifact store:

    <artifact store>/pipelines/<name>/files/<sha256>/stackwise.yaml          the pipeline file
    <artifact store>/pipelines/<name>/files/<sha256>/<relative path>         each relative local input
    <artifact store>/pipelines/<name>/files/<sha256>/_stack/Pulumi.<S>.yaml  the stack's stackwise: config
    <artifact store>/pipelines/<name>/files/<sha256>/_stack/outputs.json     the stack's outputs

`stackwise.pipeline.spec.load` of the bundled file resolves relative data paths against its folder, so a
relative input is found at the same relative path in the bundle. The sha256 covers every file of the
bundle (names and bytes): a changed input is a new folder, and a step never reads a half-replaced bundle.
An absolute local path, or one outside the pipeline's folder, cannot be reached from the cloud and is
refused, naming the step and key. The stack file keeps only its `stackwise:` keys, without `secure:` values;
the outputs hold no secrets (the contract keeps only secret references).
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import MissingDependencyError, SpecError, StoreError
from ...userinput import file_sha256

if TYPE_CHECKING:
    from ..spec import Pipeline

FILE_NAME = "stackwise.yaml"
STACK_FOLDER = "_stack"
OUTPUTS_NAME = "outputs.json"


def stack_file_name(stack: str) -> str:
    return f"{STACK_FOLDER}/Pulumi.{stack}.yaml"


@dataclass(frozen=True)
class Bundle:
    folder: str  # <store>/pipelines/<name>/files/<sha256>
    digest: str
    files: tuple[tuple[str, Path | bytes], ...]  # (relative name, local file or content)

    @property
    def file_uri(self) -> str:
        return f"{self.folder}/{FILE_NAME}"

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.files]

    def upload(self) -> None:
        """Copy every file to `folder` through fsspec (the pipeline file last: a bundle whose
        stackwise.yaml exists is complete)."""
        import fsspec

        try:
            fs, root = fsspec.core.url_to_fs(self.folder)
        except ImportError as exc:
            from ...userinput import _STORE_EXTRAS

            extra = _STORE_EXTRAS.get(self.folder.split("://", 1)[0])
            raise MissingDependencyError(f"uploading to {self.folder} needs its fsspec implementation ({exc})",
                                         where=self.folder, fix=f"pip install 'stackwise[{extra}]'" if extra
                                         else "install it") from None
        ordered = sorted(self.files, key=lambda item: item[0] == FILE_NAME)
        for name, source in ordered:
            target = f"{root.rstrip('/')}/{name}"
            try:
                fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                if isinstance(source, Path):
                    fs.put_file(str(source), target)
                else:
                    fs.pipe_file(target, source)
            except OSError as exc:
                raise StoreError(f"cannot upload {name} to the artifact store: {exc}", where=f"{self.folder}/{name}",
                                 fix="check this machine's credentials for the store (and that it exists)") from None


def _expand(path: Path) -> list[Path]:
    """The files a data input names: itself, every file under a folder, or the matches of a glob."""
    text = str(path)
    if any(c in text for c in "*?["):
        matches = [Path(p) for p in sorted(globlib.glob(text, recursive=True))]
        return [f for m in matches for f in _expand(m)]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path] if path.is_file() else []


def _inside(path: Path, root: Path) -> str | None:
    """`path` relative to `root` (posix), or None when it lies outside."""
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return None


def local_inputs(pipeline: "Pipeline") -> dict[str, Path]:
    """Relative name -> local file, for every local data or file input of every step."""
    from ..hashing import is_remote
    from ..kinds import data_inputs

    root = pipeline.root.resolve()
    out: dict[str, Path] = {}
    for name in pipeline.order:
        for key, value in data_inputs(pipeline, name):
            if is_remote(value) or value.startswith("models:/"):
                continue
            where = f"{pipeline.path}: steps.{name}.{key if key.startswith('deps') else 'with.' + key}"
            path = Path(value.removeprefix("file://")).expanduser()
            outside = SpecError(f"step {name!r} reads {value}, outside the pipeline's folder, which the cloud's "
                                "machines cannot reach", where=where,
                                fix=f"move it under {root} and give a relative path, or put it in the object store "
                                    "and give its URI")
            if not any(c in value for c in "*?[") and _inside(path, root) is None:
                raise outside
            files = _expand(path)
            if not files:
                raise SpecError(f"step {name!r} reads {value}, which does not exist", where=where,
                                fix="create it before compiling (it is uploaded with the pipeline file)")
            for file in files:
                rel = _inside(file, root)
                if rel is None:
                    raise outside
                if rel == FILE_NAME or rel.startswith(f"{STACK_FOLDER}/"):
                    raise SpecError(f"step {name!r} reads {rel}, a name the bundle keeps for itself", where=where,
                                    fix=f"rename it (not {FILE_NAME} or under {STACK_FOLDER}/)")
                out[rel] = file
    return out


def stack_texts(stack: Any) -> dict[str, bytes]:
    """The stack's file (its stackwise: keys, no `secure:` values) and its outputs, as the steps read them."""
    import yaml

    config = {f"stackwise:{k}": v for k, v in sorted(stack.config.items())
              if not (isinstance(v, dict) and set(v) == {"secure"})}
    outputs: dict[str, Any] = stack.outputs.model_dump(mode="json", exclude_none=True)
    return {stack_file_name(stack.name): yaml.safe_dump({"config": config}, sort_keys=True).encode(),
            f"{STACK_FOLDER}/{OUTPUTS_NAME}": (json.dumps(outputs, indent=1, sort_keys=True) + "\n").encode()}


def make_bundle(pipeline: "Pipeline", stack: Any) -> Bundle:
    files: dict[str, Path | bytes] = {FILE_NAME: pipeline.path.read_bytes()}
    files.update(local_inputs(pipeline))
    files.update(stack_texts(stack))
    listing = sorted((name, hashlib.sha256(src).hexdigest() if isinstance(src, bytes) else file_sha256(src))
                     for name, src in files.items())
    digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
    store = str(stack.outputs.artifact_store).rstrip("/")
    return Bundle(folder=f"{store}/pipelines/{pipeline.name}/files/{digest}", digest=digest,
                  files=tuple(sorted(files.items())))
