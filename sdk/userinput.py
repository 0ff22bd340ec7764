"""User input that must be bounded before stackwise uses it: YAML files, values quoted in
messages, and numeric environment settings.

- `load_yaml` / `read_yaml`: the one YAML loader for every file a user writes (stack files,
  gate files, spec files). It is PyYAML's safe loader with two bounds: a document expands to
  at most `MAX_YAML_NODES` nodes once its aliases are followed (a "billion laughs" file is
  refused while it is parsed, before anything is built), and nests at most `MAX_YAML_DEPTH`
  deep. Anchors, aliases and `<<` merges of ordinary size keep working. Every failure (bad
  syntax, not UTF-8, unreadable, too large) is the caller's `StackwiseError` subclass with
  the file and line.
- `shorten`: the form in which any user value may appear in a message: a bounded `repr`
  that never walks more than a few items of a container, however large or shared it is.
- `env_threads`: `STACKWISE_THREADS`, validated.

Only the standard library is imported here; PyYAML loads on first use.
"""

from __future__ import annotations

import os
import reprlib
from pathlib import Path
from typing import Any

from .errors import ConfigError, StackwiseError

# A stack, gate or spec file has tens of nodes; 100,000 leaves room for generated files while a
# bomb is refused after ~100,000 steps (milliseconds) instead of exhausting memory.
MAX_YAML_NODES = 100_000
# Deep nesting would otherwise end in RecursionError inside PyYAML's recursive composer.
MAX_YAML_DEPTH = 64

_short = reprlib.Repr()
_short.maxlevel = 3
_short.maxtuple = _short.maxlist = _short.maxarray = _short.maxdict = 4
_short.maxset = _short.maxfrozenset = _short.maxdeque = 4
_short.maxstring = _short.maxother = 60
_short.maxlong = 40


def shorten(value: Any, limit: int = 80) -> str:
    """A `repr` of `value` of at most `limit` characters, safe to put in any message.

    Containers show their first few items and nesting stops after a few levels, so a value
    built from shared references (a YAML alias bomb) or one of any size costs a bounded amount
    of work; an object whose repr fails is named by its type."""
    try:
        text = _short.repr(value)
    except Exception:  # a repr that raises (e.g. an int over Python's digit limit)
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


_ALIAS_FIX = "write the values out instead of nesting aliases (*name)"


def _bounded_loader() -> tuple[type, type]:
    import yaml
    from yaml.composer import ComposerError
    from yaml.events import AliasEvent

    class OverBound(ComposerError):
        """The document is over a bound (or an alias contains itself): refused, not malformed."""

    class BoundedSafeLoader(yaml.SafeLoader):
        """SafeLoader that counts the nodes a document expands to (an alias counts the whole
        node it names) and its nesting depth, and stops at the bounds."""

        def __init__(self, stream: Any) -> None:
            super().__init__(stream)
            self._nodes = 0
            self._depth = 0
            self._sizes: dict[int, int] = {}

        def _refuse(self, problem: str, fix: str) -> ComposerError:
            error = OverBound(None, None, problem, self.peek_event().start_mark)
            error.fix = fix  # type: ignore[attr-defined]
            return error

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(AliasEvent):
                event = self.peek_event()
                node = super().compose_node(parent, index)
                size = self._sizes.get(id(node))
                if size is None:  # the alias names a node that contains it
                    raise OverBound(None, None, f"alias *{event.anchor} refers to a node that contains it",
                                        event.start_mark)
                self._nodes += size
            else:
                self._depth += 1
                if self._depth > MAX_YAML_DEPTH:
                    raise self._refuse(f"the document nests more than {MAX_YAML_DEPTH} levels deep",
                                       "flatten the file: stackwise's files nest a few levels")
                before = self._nodes
                node = super().compose_node(parent, index)
                self._depth -= 1
                self._nodes += 1
                self._sizes[id(node)] = self._nodes - before
            if self._nodes > MAX_YAML_NODES:
                raise self._refuse(f"the document expands to more than {MAX_YAML_NODES:,} values once its "
                                   "aliases (*name) are followed", _ALIAS_FIX)
            return node

    return BoundedSafeLoader, OverBound


_LOADER: tuple[type, type] | None = None


def load_yaml(text: str, where: str, error: type[StackwiseError] = ConfigError, what: str = "file") -> Any:
    """Parse one YAML document with the bounded safe loader (see the module docstring).

    Raises `error` naming `where` and the line on bad syntax or a document over the bounds."""
    global _LOADER
    import yaml

    if _LOADER is None:
        _LOADER = _bounded_loader()
    loader, over_bound = _LOADER
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        bounded = isinstance(exc, over_bound)
        raise error(
            f"{what} is not valid YAML: {problem}" if not bounded else f"{what} is refused: {problem}",
            where=f"{where}{line}",
            fix=getattr(exc, "fix", "") if bounded else "fix the YAML syntax (indentation, a missing ':' or quote)",
        ) from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer over Python's 4300-digit limit
        raise error(f"{what} holds a value stackwise cannot read: {str(exc)[:120]}", where=where,
                    fix="correct the value (numbers of at most a few digits, strings in quotes)") from None


def read_text(path: str | Path, where: str | None = None, error: type[StackwiseError] = ConfigError,
              what: str = "file", fix: str = "check the path") -> str:
    """A user's UTF-8 text file; a missing, unreadable, non-file or non-UTF-8 path raises `error`."""
    where = where or str(path)
    if "://" in str(path) and not str(path).startswith("file://"):  # an object store URI (through fsspec)
        data = read_remote_bytes(str(path), where=where, error=error, what=what, fix=fix)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise error(f"{what} is not UTF-8 text (byte {exc.start} cannot be decoded)", where=where,
                        fix="save it as UTF-8") from None
    try:
        return Path(str(path).removeprefix("file://")).read_text(encoding="utf-8")
    except IsADirectoryError:
        raise error(f"{what} is a folder, not a file: {path}", where=where, fix=fix) from None
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8 text (byte {exc.start} cannot be decoded)", where=where,
                    fix="save it as UTF-8") from None
    except OSError as exc:
        raise error(f"cannot read {what}: {exc.strerror or exc}", where=where, fix=fix) from None


# The extra that brings each object store's fsspec implementation.
_STORE_EXTRAS = {"s3": "aws", "gs": "gcp", "gcs": "gcp", "az": "azure", "abfs": "azure", "abfss": "azure"}


def read_remote_bytes(uri: str, where: str | None = None, error: type[StackwiseError] = ConfigError,
                      what: str = "file", fix: str = "check the URI") -> bytes:
    """The bytes of an object store file (`s3://`, `gs://`, `az://`, ... through fsspec); a missing object,
    a refused read or a store without its fsspec implementation raises `error` naming the URI."""
    import fsspec

    where = where or uri
    scheme = uri.split("://", 1)[0]
    try:
        with fsspec.open(uri, "rb") as handle:
            return handle.read()
    except ImportError as exc:
        from .errors import MissingDependencyError

        extra = _STORE_EXTRAS.get(scheme)
        raise MissingDependencyError(f"reading {scheme}:// needs its fsspec implementation ({exc})", where=where,
                                     fix=f"pip install 'stackwise[{extra}]'" if extra else "install it") from None
    except ValueError as exc:  # fsspec: an unknown protocol
        raise error(f"cannot read {what}: {exc}", where=where, fix=fix) from None
    except FileNotFoundError:
        raise error(f"{what} not found: {uri}", where=where, fix=fix) from None
    except OSError as exc:
        raise error(f"cannot read {what}: {exc.strerror or exc}", where=where, fix=fix) from None


def read_yaml(path: str | Path, error: type[StackwiseError] = ConfigError, what: str = "file",
              fix: str = "check the path") -> Any:
    """`read_text` then `load_yaml`: the one way stackwise reads a user's YAML file."""
    return load_yaml(read_text(path, error=error, what=what, fix=fix), str(path), error=error, what=what)


def cache_dir() -> Path:
    """stackwise's local cache: `$STACKWISE_CACHE`, default `~/.cache/stackwise` (ONNX exports,
    copies of object-store graph indexes)."""
    return Path(os.environ.get("STACKWISE_CACHE") or Path.home() / ".cache" / "stackwise")


def env_threads() -> int | None:
    """`STACKWISE_THREADS` as a positive whole number of threads, None when unset or empty.

    Raises `ConfigError` on anything else (`abc`, `0`, `-5`)."""
    raw = os.environ.get("STACKWISE_THREADS", "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1 or value > 4096:
        raise ConfigError(
            f"STACKWISE_THREADS={shorten(raw, 40)} is not a number of threads",
            where="environment variable STACKWISE_THREADS",
            fix="set it to a whole number from 1 to 4096 (e.g. STACKWISE_THREADS=4), or unset it",
        )
    return value


def file_sha256(path: str | Path) -> str:
    """The sha256 (hex) of a file's bytes, read in 1 MiB blocks (hashlib.file_digest needs Python 3.11)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
