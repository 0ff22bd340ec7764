"""Environment settings a user gets wrong (STACKWISE_OUTPUTS, STACKWISE_HOME, STACKWISE_THREADS)
are exit code 2 with a what/where/fix message: never a traceback, never a job that fails later."""

from __future__ import annotations

import pytest

from stackwise.errors import ConfigError


def _refused(proc, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr[-2000:]


def test_outputs_naming_a_folder(run_cli, tmp_path):
    proc = run_cli("indexes", env={"STACKWISE_OUTPUTS": str(tmp_path)})
    _refused(proc, "is a folder", "STACKWISE_OUTPUTS")


def test_outputs_not_utf8(run_cli, tmp_path):
    bad = tmp_path / "outputs.json"
    bad.write_bytes(b'{"cloud": "loc\xe9l"}')
    proc = run_cli("indexes", env={"STACKWISE_OUTPUTS": str(bad)})
    _refused(proc, "not UTF-8", "outputs.json")


def test_home_naming_a_regular_file(run_cli, tmp_path):
    home = tmp_path / "home-file"
    home.write_text("not a folder")
    proc = run_cli("jobs", "list", env={"STACKWISE_HOME": str(home)})
    _refused(proc, "is a file, not a folder", "STACKWISE_HOME")
    assert home.read_text() == "not a folder"


def test_state_dir_refuses_a_file(tmp_path, monkeypatch):
    from stackwise.paths import state_dir

    (tmp_path / "f").write_text("")
    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / "f"))
    with pytest.raises(ConfigError, match="is a file"):
        state_dir()
    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / "new"))
    assert state_dir() == tmp_path / "new"


@pytest.mark.parametrize("value", ["abc", "-5", "0", "1.5", "9" * 5000])
def test_threads_refused_by_every_command(run_cli, value):
    proc = run_cli("jobs", "list", env={"STACKWISE_THREADS": value})
    _refused(proc, "STACKWISE_THREADS", "is not a number of threads")


@pytest.mark.parametrize("value, expected", [("", None), (" 3 ", 3), ("1", 1)])
def test_env_threads_reads_good_values(monkeypatch, value, expected):
    from stackwise.userinput import env_threads

    monkeypatch.setenv("STACKWISE_THREADS", value)
    assert env_threads() == expected


def test_threads_read_where_torch_is_configured_is_a_config_error(monkeypatch):
    """The readers inside jobs (embeddings, evaluation, training) raise the same clear error."""
    pytest.importorskip("torch")
    from stackwise.embeddings import set_torch_threads

    monkeypatch.setenv("STACKWISE_THREADS", "abc")
    with pytest.raises(ConfigError, match="STACKWISE_THREADS"):
        set_torch_threads()
