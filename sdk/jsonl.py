"""Reading JSON Lines from any fsspec URI, with errors that name the file and the line.

The one reader behind fine-tuning datasets, evaluation data and `.jsonl` documents to index:
each caller adds only what its records must hold.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from .errors import InputError


def read_bytes(uri: str, what: str) -> bytes:
    """The file's bytes; `what` names it in errors ("dataset", "evaluation data")."""
    import fsspec

    try:
        with fsspec.open(uri, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise InputError(f"{what} {uri} does not exist", where=uri, fix="check the path or URI") from None
    except IsADirectoryError:
        raise InputError(f"{what} {uri} is a folder, not a file", where=uri, fix="name one file") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {what} {uri}: {exc}", where=uri, fix="check the URI and credentials") from None


def decode(raw: bytes, uri: str, what: str) -> str:
    """UTF-8 text (a BOM is dropped); a bad byte is reported with its line."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(f"{what} is not UTF-8 text (byte {exc.start})", where=f"{uri} line {line}",
                         fix="save the file as UTF-8") from None


def records(text: str, uri: str, fix: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; `fix` says what a line should hold."""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{uri} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON on line {number}: {exc.msg} (column {exc.colno})", where=where,
                             fix="write one JSON object per line (JSONL)") from None
        if not isinstance(record, dict):
            raise InputError(f"line {number} is a JSON {type(record).__name__}, not an object", where=where,
                             fix=fix)
        yield number, record
