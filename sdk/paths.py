"""Where stackwise keeps local state: `.stackwise/` in the working directory, or `$STACKWISE_HOME`."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """The state folder (not created here). Raises `ConfigError` when the path exists and is
    not a folder (STACKWISE_HOME naming a file), before anything tries to write under it."""
    home = os.environ.get("STACKWISE_HOME")
    folder = Path(home).expanduser().resolve() if home else (Path.cwd() / ".stackwise").resolve()
    if folder.exists() and not folder.is_dir():
        from .errors import ConfigError

        raise ConfigError(
            f"the state folder {folder} is a file, not a folder",
            where="STACKWISE_HOME" if home else "the working directory's .stackwise",
            fix="point STACKWISE_HOME at a folder (it is created if missing), or unset it"
            if home else "move the file .stackwise away, or set STACKWISE_HOME to a folder",
        )
    return folder


def stacks_dir() -> Path | None:
    """The nearest `stacks/` folder at or above the working directory, if any.

    Projects keep `stacks/Pulumi.<stack>.yaml` beside `Pulumi.yaml`; looking upward lets
    commands run from any subfolder, as `git` and `pulumi` do.
    """
    override = os.environ.get("STACKWISE_STACKS_DIR")
    if override:
        return Path(override).expanduser().resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        candidate = folder / "stacks"
        if candidate.is_dir() and (folder / "Pulumi.yaml").is_file():
            return candidate
    if (here / "stacks").is_dir():
        return here / "stacks"
    return None
