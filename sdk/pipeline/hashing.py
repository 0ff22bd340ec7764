"""Content hashes of a step's data inputs: what makes its cache key change when its data does.

- A local file: sha256 of its bytes, remembered by (path, size, mtime_ns) in the pipeline's state so an
  unchanged file is not read again; a folder or glob: sha256 over the sorted (relative path, file hash).
- A file DVC tracks (an `outs` entry of `dvc.lock` at the project root, or a `<path>.dvc` file) whose
  size matches the recorded one: DVC's own md5 (`dvc:md5:...`), read from the lock, not recomputed.
- An object store URI (s3://, gs://, az://, ...): through fsspec, the store's own checksums: the ETag
  (S3, Azure), md5Hash / crc32c (GCS), else size and modification time, over every object under it.

Nothing here loads a cloud SDK unless a URI of that cloud is hashed.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..userinput import file_sha256

_CHECKSUM_KEYS = ("ETag", "etag", "md5Hash", "content_md5", "crc32c", "md5")


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def local_path(value: str, root: Path) -> Path:
    path = Path(value.removeprefix("file://")).expanduser()
    return path if path.is_absolute() else (root / path)


class Hasher:
    """Hashes data inputs, remembering local file hashes in `memo` (a dict persisted by the caller)."""

    def __init__(self, root: Path, memo: dict[str, Any] | None = None):
        self.root = root
        self.memo: dict[str, Any] = memo if memo is not None else {}
        self._dvc: dict[str, dict[str, Any]] | None = None

    # -- DVC ------------------------------------------------------------------------------------
    def _lock(self) -> dict[str, dict[str, Any]]:
        """{absolute path: {"md5": ..., "size": ...}} of the `outs` records of the project's dvc.lock."""
        if self._dvc is not None:
            return self._dvc
        import yaml

        entries: dict[str, dict[str, Any]] = {}
        lock = self.root / "dvc.lock"
        if lock.is_file():
            try:
                data = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as exc:
                raise InputError(f"dvc.lock is not valid YAML: {exc}", where=str(lock),
                                 fix="regenerate it with `dvc repro`, or remove it") from None
            for stage in (data.get("stages") or {}).values():
                for out in (stage or {}).get("outs") or []:
                    if isinstance(out, dict) and out.get("path") and out.get("md5"):
                        entries[str((self.root / out["path"]).resolve())] = out
        self._dvc = entries
        return entries

    def dvc_record(self, path: Path) -> dict[str, Any] | None:
        """DVC's record of `path`: its dvc.lock `outs` entry, else the `<path>.dvc` file beside it (where
        `dvc add` writes it), else None. Only that one file is read: no walk over the project."""
        key = str(path.resolve())
        if key in self._lock():
            return self._lock()[key]
        dvc_file = path.with_name(path.name + ".dvc")
        if not dvc_file.is_file():
            return None
        import yaml

        try:
            data = yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, OSError):
            return None
        return next((out for out in data.get("outs") or [] if isinstance(out, dict) and out.get("md5")
                     and str((dvc_file.parent / str(out.get("path", ""))).resolve()) == key), None)

    # -- local ----------------------------------------------------------------------------------
    def _file(self, path: Path) -> str:
        stat = path.stat()
        key = str(path.resolve())
        tracked = self.dvc_record(path)
        if tracked is not None and tracked.get("size") in (None, stat.st_size):
            return f"dvc:md5:{tracked['md5']}"
        known = self.memo.get(key)
        if known and known[0] == stat.st_size and known[1] == stat.st_mtime_ns:
            return known[2]
        value = f"sha256:{file_sha256(path)}"
        self.memo[key] = [stat.st_size, stat.st_mtime_ns, value]
        return value

    def _local(self, value: str, where: str) -> str:
        path = local_path(value, self.root)
        if path.is_file():
            return self._file(path)
        tracked = self.dvc_record(path)
        if tracked is not None and str(tracked.get("md5", "")).endswith(".dir"):
            return f"dvc:md5:{tracked['md5']}"  # a DVC-tracked folder: DVC's hash of its listing
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and ".stackwise" not in p.parts)
            base = path
        elif any(c in value for c in "*?["):
            files = sorted(Path(p) for p in globlib.glob(str(path), recursive=True) if Path(p).is_file())
            base = self.root
        else:
            raise InputError(f"data input {value} does not exist", where=where,
                             fix="check the path (relative paths are read from the pipeline file's folder)")
        if not files:
            raise InputError(f"data input {value} holds no files", where=where, fix="add the data, or fix the path")
        digest = hashlib.sha256()
        for file in files:
            digest.update(f"{file.relative_to(base) if file.is_relative_to(base) else file}\0{self._file(file)}\n"
                          .encode())
        return f"tree:{digest.hexdigest()}"

    # -- object stores --------------------------------------------------------------------------
    def _remote(self, uri: str, where: str) -> str:
        import fsspec

        # A fresh filesystem with no listings cache: a long-lived process (`pipeline watch`) must see the
        # store as it is now, not a listing or an endpoint an earlier call cached.
        fs, path = fsspec.core.url_to_fs(uri, skip_instance_cache=True, use_listings_cache=False)
        try:
            if any(c in path for c in "*?["):
                listing = {p: fs.info(p) for p in fs.glob(path)}
            elif fs.isdir(path):
                listing = fs.find(path, detail=True)
            else:
                listing = {path: fs.info(path)}
        except FileNotFoundError:
            listing = {}
        except Exception as exc:  # noqa: BLE001 - a store's own error: name the URI, not a traceback
            raise InputError(f"cannot list data input {uri}: {type(exc).__name__}: {str(exc)[:200]}", where=where,
                             fix="check the URI and the stack's credentials") from None
        if not listing:
            raise InputError(f"data input {uri} does not exist or holds no objects", where=where,
                             fix="check the URI, or upload the data first")
        digest = hashlib.sha256()
        for name in sorted(listing):
            info = listing[name]
            mark = next((str(info[k]) for k in _CHECKSUM_KEYS if info.get(k)), None)
            if mark is None:
                mark = f"{info.get('size')}:{info.get('LastModified') or info.get('mtime') or info.get('updated')}"
            digest.update(f"{name}\0{mark}\n".encode())
        return f"store:{digest.hexdigest()}"

    def hash(self, value: str, where: str) -> str:
        return self._remote(value, where) if is_remote(value) else self._local(value, where)


def digest(material: Any) -> str:
    """A stable sha256 (24 hex digits) of JSON-able material."""
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:24]
