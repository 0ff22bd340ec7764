"""Where a pipeline keeps its runs, its step cache and the jobs in flight.

`<artifact store>/pipelines/<name>/` (the local stack's is under `.stackwise/`; a cloud stack's is in its
bucket, so every CI runner and laptop on that stack sees the same cache):

- `runs/<run id>.json`: one record per run (steps, states, keys, input hashes, outputs, timings),
  rewritten after every step transition, so a killed run leaves its record as far as it got;
- `cache/<step>-<key>.json`: the outputs of a step that finished with that cache key;
- `inflight/<step>-<key>.json`: the job a step submitted, so a rerun after a crash follows (or takes the
  result of) that job instead of submitting it again;
- `outputs/<step>-<key>/`: files a step writes (curated data, reports);
- `hashes.json`: local file hashes by (size, mtime), so unchanged data is not read again.

A local state folder is locked (flock) while a run holds it: a second concurrent run is refused.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from typing import Any

from ..errors import SpecError


class PipelineState:
    def __init__(self, base: str):
        import fsspec

        self.base = base.rstrip("/")
        # Its own filesystem with no listings cache: runs and cache entries other processes write are seen.
        self.fs, self.root = fsspec.core.url_to_fs(self.base, skip_instance_cache=True, use_listings_cache=False)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.local = "file" in protocols
        self._lock: Any = None

    def uri(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # -- json files -------------------------------------------------------------------------
    def read(self, *parts: str) -> Any:
        try:
            with self.fs.open(self._path(*parts), "r", encoding="utf-8") as fh:
                return json.load(fh)
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # a record cut by a crash mid-write (remote stores have no atomic rename): ignored

    def write(self, data: Any, *parts: str) -> None:
        path = self._path(*parts)
        text = json.dumps(data, indent=1, default=str)  # insertion order: steps in dependency order
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}-{threading.get_ident()}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, path)  # atomic: a reader sees the old record or the new one
        else:
            with self.fs.open(path, "w", encoding="utf-8") as fh:
                fh.write(text)

    def remove(self, *parts: str) -> None:
        try:
            self.fs.rm(self._path(*parts))
        except FileNotFoundError:
            pass

    def listing(self, *parts: str) -> list[str]:
        try:
            return sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(self._path(*parts), detail=False))
        except FileNotFoundError:
            return []

    # -- lock -------------------------------------------------------------------------------
    def lock(self) -> None:
        if not self.local:
            return  # object stores have no lock; docs/pipelines.md says to run one pipeline per stack at a time
        import fcntl

        os.makedirs(self.root, exist_ok=True)
        handle = open(self._path("lock"), "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise SpecError(f"another run of this pipeline holds its state ({holder})", where=self.uri("lock"),
                            fix="wait for it to finish (stackwise pipeline status), or stop it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._lock = handle

    def held(self) -> bool:
        """Whether a run holds the lock now (a local state folder; on an object store: unknown, so True)."""
        if not self.local:
            return True
        import fcntl

        try:
            with open(self._path("lock"), "a+") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
            return False
        except OSError:
            return True

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- runs -------------------------------------------------------------------------------
    @staticmethod
    def new_run_id() -> str:
        return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)

    def runs(self) -> list[dict[str, Any]]:
        out = []
        for name in self.listing("runs"):
            if name.endswith(".json"):
                record = self.read("runs", name)
                if record:
                    out.append(record)
        return sorted(out, key=lambda r: r.get("started", 0))

    def run(self, run_id: str) -> dict[str, Any] | None:
        if run_id in ("latest", "last"):
            runs = self.runs()
            return runs[-1] if runs else None
        return self.read("runs", f"{run_id}.json")
