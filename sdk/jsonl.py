"""Reading JSON Lines from any fsspec URI, with errors that name the file and the line.

The one reader behind fine-tuning datasets, evaluation data and `.jsonl` documents to index:
each caller adds only what its records must hold.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from typing import Any

from .errors import InputError


def read_bytes(uri: str, what: str, limit: int | None = None) -> bytes:
    """The file's bytes; `what` names it in errors ("dataset", "evaluation data").

    Only a regular file is read: a FIFO, socket or device is refused at once instead of blocking
    the job forever. With `limit`, a file larger than `limit` bytes is refused (InputError)."""
    from fsspec.core import url_to_fs

    try:
        fs, path = url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise InputError(f"cannot open {what} {uri}: {exc}", where=uri,
                         fix="use a local path or an fsspec URI whose filesystem is installed") from None
    return read_file(fs, path, uri, what, limit)


def read_file(fs: Any, path: str, uri: str, what: str, limit: int | None = None) -> bytes:
    """The bytes of one regular file on the fsspec filesystem `fs`, at most `limit` of them.

    On local disk the file is opened non-blocking and checked with fstat on the open descriptor,
    so a FIFO swapped in after listing cannot block either."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    try:
        if protocol in ("file", "local"):
            return _read_local(path, uri, what, limit)
        with fs.open(path, "rb") as handle:
            raw = handle.read() if limit is None else handle.read(limit + 1)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{what} {uri} does not exist", where=uri, fix="check the path or URI") from None
    except IsADirectoryError:
        raise InputError(f"{what} {uri} is a folder, not a file", where=uri, fix="name one file") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {what} {uri}: {exc}", where=uri, fix="check the URI and credentials") from None
    _check_size(len(raw), uri, what, limit)
    return raw


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _not_regular(mode: int, uri: str, what: str) -> InputError:
    kind = next((name for test, name in _KINDS if test(mode)), "a special file")
    return InputError(f"{what} is {kind}, not a regular file", where=uri,
                      fix="remove it from the source, or name a regular file")


def _read_local(path: str, uri: str, what: str, limit: int | None) -> bytes:
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        try:  # a socket cannot be opened at all (ENXIO): say what it is
            mode = os.stat(path).st_mode
        except OSError:
            mode = None
        if mode is not None and not stat.S_ISREG(mode):
            raise _not_regular(mode, uri, what) from None
        if os.path.islink(path) and mode is None:
            raise InputError(f"{what} is a broken symbolic link", where=uri,
                             fix="fix or remove the link") from None
        raise
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _not_regular(info.st_mode, uri, what)
        _check_size(info.st_size, uri, what, limit)
        return handle.read() if limit is None else handle.read(limit + 1)


def _check_size(size: int, uri: str, what: str, limit: int | None) -> None:
    if limit is not None and size > limit:
        raise InputError(f"{what} is too large ({size:,} bytes; at most {limit:,} are read)", where=uri,
                         fix="split it into smaller files")


def decode(raw: bytes, uri: str, what: str) -> str:
    """UTF-8 text (a BOM is dropped); a bad byte is reported with its line."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(f"{what} is not UTF-8 text (byte {exc.start})", where=f"{uri} line {line}",
                         fix="save the file as UTF-8") from None


def records(text: str, uri: str, fix: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; `fix` says what a line should hold.

    Lines end at "\\n" only (JSON strings may hold U+2028 and other characters that
    `str.splitlines` would cut at). A line nested too deeply to parse is an InputError."""
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{uri} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON on line {number}: {exc.msg} (column {exc.colno})", where=where,
                             fix="write one JSON object per line (JSONL)") from None
        except RecursionError:
            raise InputError(f"line {number} is nested too deeply to parse", where=where, fix=fix) from None
        if not isinstance(record, dict):
            raise InputError(f"line {number} is a JSON {type(record).__name__}, not an object", where=where,
                             fix=fix)
        yield number, record
