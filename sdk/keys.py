"""API keys of `stackwise serve`: `stackwise keys create | list | revoke`.

A key is `sw_<id>_<secret>` (the id is 8 hex characters, the secret 256 random bits). It is
shown once, when it is created; the state folder keeps only its name, id, creation time, last 4
characters and a salted scrypt hash of the whole key, in `<state dir>/serve-keys.json`, written
atomically with mode 0600. A server checks `Authorization: Bearer <key>` by the key's id (one
hash per check, compared with `hmac.compare_digest`), remembers keys it has verified (as a keyed
digest, never the key) so a client pays the hash once per process, and rereads the file when it
changes: a key created or revoked takes effect on the next request, with no restart.

No key is ever logged or put in an error message.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import InputError
from .paths import state_dir

KEYS_FILE = "serve-keys.json"
# scrypt's interactive-login cost (16 MiB, a few tens of ms): a key has 256 random bits, so the
# hash guards the file, not a guessable password; it is paid once per key per server process.
SCRYPT = {"n": 2**14, "r": 8, "p": 1}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
KEY = re.compile(r"^sw_([0-9a-f]{8})_[A-Za-z0-9_-]{43}$")


def keys_path() -> Path:
    return state_dir() / KEYS_FILE


@dataclass(frozen=True)
class KeyRecord:
    """One key as stored: never the key itself."""

    name: str
    id: str
    created: float
    last4: str
    salt: str  # hex
    hash: str  # hex: scrypt(key, salt, **SCRYPT)
    n: int = SCRYPT["n"]
    r: int = SCRYPT["r"]
    p: int = SCRYPT["p"]
    rpm: int | None = None  # requests per minute the server allows this key (None: no limit)

    def matches(self, key: str) -> bool:
        digest = hashlib.scrypt(key.encode(), salt=bytes.fromhex(self.salt), n=self.n, r=self.r, p=self.p,
                                maxmem=256 * self.n * self.r * self.p, dklen=32)
        return hmac.compare_digest(digest, bytes.fromhex(self.hash))

    def public(self) -> dict[str, object]:
        """What `keys list` shows."""
        return {"name": self.name, "created": self.created, "last4": self.last4, "rpm": self.rpm}


def read_keys(path: Path | None = None) -> list[KeyRecord]:
    """The stored keys (none when the file is absent)."""
    path = path or keys_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise InputError(f"the API key file cannot be read ({type(exc).__name__})", where=str(path),
                         fix="repair it, or delete it and create the keys again (stackwise keys create NAME)") from None
    return [KeyRecord(**item) for item in data.get("keys", [])]


def _write_keys(records: list[KeyRecord], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # Created 0600 from the start (not chmod-ed after), so the hashes are never readable by others.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump({"keys": [asdict(r) for r in records]}, out, indent=2)
    os.chmod(tmp, 0o600)  # an older tmp file of the same name kept its mode through O_TRUNC
    os.replace(tmp, path)


def _check_name(name: str) -> None:
    if not NAME.match(name):
        raise InputError(f"{name!r} is not a key name", where="stackwise keys NAME",
                         fix="use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")


def create_key(name: str, path: Path | None = None, rpm: int | None = None) -> tuple[str, KeyRecord]:
    """A new key named `name`: (the key, shown once; its stored record). `rpm` caps the requests per
    minute a server answers for it (429 beyond)."""
    _check_name(name)
    if rpm is not None and (isinstance(rpm, bool) or not isinstance(rpm, int) or not 1 <= rpm <= 1_000_000):
        raise InputError(f"--rpm {rpm!r} is not a number of requests per minute between 1 and 1,000,000",
                         where="stackwise keys create --rpm", fix="e.g. --rpm 60, or leave it out for no limit")
    path = path or keys_path()
    records = read_keys(path)
    if any(r.name == name for r in records):
        raise InputError(f"a key named {name!r} exists", where=str(path),
                         fix=f"choose another name, or revoke it first: stackwise keys revoke {name}")
    ids = {r.id for r in records}
    key_id = secrets.token_hex(4)
    while key_id in ids:
        key_id = secrets.token_hex(4)
    key = f"sw_{key_id}_{secrets.token_urlsafe(32)}"
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(key.encode(), salt=salt, maxmem=256 * SCRYPT["n"] * SCRYPT["r"] * SCRYPT["p"],
                            dklen=32, **SCRYPT)
    record = KeyRecord(name=name, id=key_id, created=round(time.time(), 3), last4=key[-4:], salt=salt.hex(),
                       hash=digest.hex(), rpm=rpm)
    _write_keys([*records, record], path)
    return key, record


def revoke_key(name: str, path: Path | None = None) -> KeyRecord:
    """Remove the key named `name`; InputError when there is none."""
    path = path or keys_path()
    records = read_keys(path)
    kept = [r for r in records if r.name != name]
    if len(kept) == len(records):
        raise InputError(f"no key is named {name!r}", where=str(path),
                         fix="see the names with `stackwise keys list`" if records else "no key exists yet")
    _write_keys(kept, path)
    return next(r for r in records if r.name == name)


class KeyRing:
    """The keys a server checks requests against, reread when the file changes."""

    def __init__(self, path: Path | None = None):
        self.path = path or keys_path()
        self._stamp: tuple[int, int] | None = None
        self._by_id: dict[str, KeyRecord] = {}
        self._verified: dict[bytes, str] = {}  # keyed digest of a verified key -> its name
        self._pepper = secrets.token_bytes(32)  # per process: the cache holds nothing reusable
        self._lock = threading.Lock()

    def _refresh(self) -> dict[str, KeyRecord]:
        try:
            st = self.path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                records = read_keys(self.path) if stamp else []
                self._by_id = {r.id: r for r in records}
                self._verified = {}  # a revoked key must not stay verified
                self._stamp = stamp
            return self._by_id

    def enabled(self) -> bool:
        """True when at least one key exists: prediction routes then need one."""
        return bool(self._refresh())

    def check(self, key: str | None) -> str | None:
        """The name of the key `key` is, else None. May hash once (tens of ms): call it off the event loop."""
        by_id = self._refresh()
        if not key:
            return None
        match = KEY.match(key)
        record = by_id.get(match.group(1)) if match else None
        if record is None:
            return None
        tag = hmac.new(self._pepper, key.encode(), hashlib.sha256).digest()
        with self._lock:
            name = self._verified.get(tag)
        if name is not None:
            return name
        if not record.matches(key):
            return None
        with self._lock:
            if self._by_id.get(record.id) is record:
                self._verified[tag] = record.name
        return record.name

    def rpm(self, name: str) -> int | None:
        """The requests per minute allowed to the key named `name` (None: no limit)."""
        return next((r.rpm for r in self._refresh().values() if r.name == name), None)

    def cached(self, key: str | None) -> str | None:
        """The name of an already verified key, without hashing (None: unknown or not verified yet)."""
        self._refresh()
        if not key:
            return None
        tag = hmac.new(self._pepper, key.encode(), hashlib.sha256).digest()
        with self._lock:
            return self._verified.get(tag)
