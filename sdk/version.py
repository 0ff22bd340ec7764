"""stackwise's version, and the git commit of its source when it runs from a checkout.

`stackwise --version` and the `lineage.code_version` tag of registered models both use it.
"""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def version() -> str:
    """The installed distribution's version (importlib.metadata), else the package's own."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("stackwise")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def checkout_root() -> Path | None:
    """The git checkout this package is imported from, or None (an installed wheel).

    Only the project's own layout counts (this package is `<root>/sdk` beside `<root>/.git` and
    `<root>/pyproject.toml`): a wheel installed in a virtualenv that happens to live inside some
    other git repository must not report that repository's commit."""
    root = _PACKAGE_DIR.parent
    if _PACKAGE_DIR.name == "sdk" and (root / ".git").exists() and (root / "pyproject.toml").is_file():
        return root
    return None


@lru_cache(maxsize=1)
def commit() -> str | None:
    """The short commit of the checkout (None outside a checkout, or when git is absent or fails)."""
    root = checkout_root()
    if root is None:
        return None
    try:
        proc = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, text=True,
                              capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = proc.stdout.strip()
    return sha if proc.returncode == 0 and sha else None


def version_string() -> str:
    """`stackwise 0.1.0`, with ` (commit abc123def456)` when it runs from a git checkout."""
    sha = commit()
    return f"stackwise {version()}" + (f" (commit {sha})" if sha else "")
