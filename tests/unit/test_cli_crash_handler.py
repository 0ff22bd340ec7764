"""The CLI's one top-level handler: an unexpected exception (a bug) is one line naming a log file
that holds the traceback, secrets masked, exit code 70; never a traceback on the terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = '''
import stackwise.cli as cli

@cli.app.command("boom")
def boom(kind: str = "runtime"):
    if kind == "interrupt":
        raise KeyboardInterrupt
    from stackwise.secrets import resolve_secret
    value = resolve_secret("env://SW_BOOM_SECRET", what="the test secret")
    raise RuntimeError(f"it broke near {value}\\nsecond line")

cli.main()
'''
SECRET = "hunter2-do-not-print-me"


def _run(tmp_path: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "boom.py"
    script.write_text(SCRIPT, encoding="utf-8")
    env = {**os.environ, "STACKWISE_HOME": str(home), "SW_BOOM_SECRET": SECRET, "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, str(script), "boom", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_an_unexpected_error_is_one_line_a_log_file_and_exit_70(tmp_path):
    home = tmp_path / "state"
    proc = _run(tmp_path, home)
    assert proc.returncode == 70, proc.stderr
    assert "Traceback" not in proc.stderr and SECRET not in proc.stderr + proc.stdout
    assert "unexpected RuntimeError" in proc.stderr and "it broke near *** second line" in proc.stderr
    log = Path(re.search(r"the traceback is in (\S+)", proc.stderr).group(1))
    assert log.parent == home / "logs" and log.name.startswith("crash-")
    text = log.read_text(encoding="utf-8")
    assert "Traceback (most recent call last)" in text and "RuntimeError: it broke near ***" in text
    assert SECRET not in text


def test_the_log_falls_back_to_the_temporary_folder_when_the_state_folder_is_unusable(tmp_path):
    home = tmp_path / "a-file"
    home.write_text("not a folder", encoding="utf-8")
    proc = _run(tmp_path, home)
    assert proc.returncode == 70, proc.stderr
    log = Path(re.search(r"the traceback is in (\S+)", proc.stderr).group(1))
    assert log.parent == tmp_path / "tmp" and "Traceback" in log.read_text(encoding="utf-8")
    assert home.read_text(encoding="utf-8") == "not a folder"


def test_an_interrupt_exits_130_without_a_log(tmp_path):
    home = tmp_path / "state"
    proc = _run(tmp_path, home, "--kind", "interrupt")
    assert proc.returncode == 130 and "Traceback" not in proc.stderr
    assert not (home / "logs").exists()
