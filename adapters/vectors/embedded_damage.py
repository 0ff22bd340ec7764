"""Damage detection and restore for the embedded store's Lance tables.

A data file deleted or corrupted under the store (a disk fault, a stray `rm`) is detected the
first time a process opens that version of the table (a scan of the id and promoted columns,
which opens every data file), and by any read that then fails in Lance: a StoreError names the
index, the damage, the last good version (Lance keeps versions: `checkout`) and the fix.
`recover` restores the last good version (Lance's `restore`: a new version equal to it); the
index workload calls it before indexing, so `stackwise index` heals a damaged index.
"""

from __future__ import annotations

import re

from stackwise.errors import StoreError

from .embedded_table import promoted_columns

# What Lance says when a file of the table is missing, truncated or not a Lance file.
_DAMAGE_MARKS = ("Not found", "not appear to be a Lance file", "LanceError(IO)", "fill whole buffer", "corrupt",
                 "No such file", "invalid magic")


def _is_damage(exc: BaseException) -> bool:
    return isinstance(exc, (OSError, RuntimeError, ValueError)) and any(m in str(exc) for m in _DAMAGE_MARKS)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    missing = re.search(r"Not found: (?:Wrapped error: Not found: )?(\S+\.lance)\b", text)
    return f"missing file {missing.group(1)}" if missing else text.split(", /rustc/")[0][:300]


def _probe(table) -> str | None:
    """None when every data file of the table's checked-out version opens and its id and promoted
    columns read; else what Lance said. Reads two small columns, not the vectors or the text."""
    columns = ["id", *(column for column, _, _ in promoted_columns(table).values())]
    try:
        table.search().select(columns).limit(max(table.count_rows(), 1)).to_arrow()
    except (OSError, RuntimeError, ValueError) as exc:
        if not _is_damage(exc):
            raise
        return _first_line(exc)
    return None


def last_good(table) -> tuple[int, int] | None:
    """(version, rows) of the newest version older than the checked-out one whose files all read."""
    current = table.version
    try:
        for version in sorted((v["version"] for v in table.list_versions()), reverse=True):
            if version >= current:
                continue
            table.checkout(version)
            if _probe(table) is None:
                return version, table.count_rows()
        return None
    finally:
        table.checkout_latest()


class Integrity:
    """Which table version of each index one store found intact (each version is probed once),
    and the StoreError for one that is not."""

    def __init__(self, uri: str):
        self.uri = uri
        self._intact: dict[str, int] = {}

    def check(self, name: str, table) -> None:
        """StoreError if the checked-out version of the index's table is damaged."""
        if self._intact.get(name) != table.version:
            problem = _probe(table)
            if problem is not None:
                raise self.error(name, table, problem)
            self._intact[name] = table.version

    def wrote(self, name: str, table) -> None:
        """After a write on an intact version: the version it made is intact too (no second probe)."""
        self._intact[name] = table.version

    def forget(self, name: str) -> None:
        self._intact.pop(name, None)

    def error(self, name: str, table, problem: str) -> StoreError:
        """The error for a damaged index: what Lance said, the last good version, how to fix it."""
        good = last_good(table)
        if good is None:
            fix = (f"run `stackwise indexes rebuild {name}` (re-indexes it from the sources its index jobs "
                   f"recorded), or `stackwise indexes drop {name}` and index again")
            last = "no earlier version is intact"
        else:
            fix = (f"run `stackwise index SOURCE --index {name}` (it restores version {good[0]} and re-indexes "
                   f"what that version lacks) or `stackwise indexes rebuild {name}`")
            last = f"the last good version is {good[0]} ({good[1]} chunks)"
        return StoreError(
            f"index {name!r} is damaged at version {table.version}: a data file is missing or corrupt "
            f"({problem}); {last}",
            where=f"embedded store at {self.uri}",
            fix=fix,
        )

    def reading(self, name: str, table, read):
        """`read()`, with Lance's error for a damaged file turned into the StoreError for the index."""
        try:
            return read()
        except (OSError, RuntimeError, ValueError) as exc:
            if not _is_damage(exc):
                raise
            self._intact.pop(name, None)
            raise self.error(name, table, _first_line(exc)) from None

    def restore(self, name: str, table) -> int | None:
        """Restore the table's last good version if its checked-out one is damaged (see
        `EmbeddedStore.recover`)."""
        problem = _probe(table)
        if problem is None:
            self._intact[name] = table.version
            return None
        good = last_good(table)
        if good is None:
            raise self.error(name, table, problem)
        table.restore(good[0])
        self._intact[name] = table.version
        return good[0]
