"""Property tests over the CLI's inputs (hypothesis): whatever a user types as a name, a number, a
filter or a YAML file, the CLI answers with an exit code from the documented set (never 70, the
code of an unexpected error, and never a traceback), and a refused command writes nothing.

Each command runs in this process through `stackwise.cli.main` (the console entry point itself),
against an empty local stack in a temporary state folder. Examples are derandomized so CI
reruns exactly the same inputs; a failure prints the smallest input that shows it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="install stackwise[dev]")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

DOCUMENTED = {0, 1, 2, 3, 4, 130}
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Text a user could type: printable and hostile characters, SQL wildcards, path parts, case variants.
WORDS = st.sampled_from(["", " ", "%", "_", "_____", "../x", "../../x", "a/b", "a b", "UPPER", "x" * 300, "champion",
                         " champion", "CHAMPION", "previous-champion", "v1", "-1", "0", "nan", "1e309", "\x00",
                         "é", "名前", "$(id)", "'; drop table jobs; --", "*", "?", "[", "{", "~", ".", "..", "/"])
NAMES = st.one_of(WORDS, st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                                 max_size=40))


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv("STACKWISE_HOME", str(state))
    monkeypatch.setenv("STACKWISE_STACK", "local")
    # The state a user has after a first command (the job database exists): a refused command
    # must then leave every file as it was.
    from stackwise.cli import main

    for command in (["jobs", "list"], ["models", "list"]):
        monkeypatch.setattr(sys, "argv", ["stackwise", *command])
        with pytest.raises(SystemExit) as done:
            main()
        assert done.value.code in (0, None), command
    return state


def _snapshot(root: Path) -> dict[str, str]:
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


def _cli(capsys, *args: str) -> tuple[int, str]:
    from stackwise.cli import main

    argv = sys.argv
    sys.argv = ["stackwise", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out + err


def _check(capsys, home: Path, *args: str, refused_writes_nothing: bool = True) -> int:
    before = _snapshot(home)
    code, output = _cli(capsys, *args)
    assert code in DOCUMENTED, f"stackwise {args!r} exited {code}:\n{output[-2000:]}"
    assert "Traceback (most recent call last)" not in output, f"stackwise {args!r}:\n{output[-2000:]}"
    if code == 2 and refused_writes_nothing:
        after = _snapshot(home)
        changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        assert not changed, f"stackwise {args!r} was refused but changed {sorted(changed)[:10]}"
    return code


@SETTINGS
@given(job_id=NAMES)
def test_job_ids(job_id, home, capsys):
    for command in ("show", "cancel", "logs"):
        _check(capsys, home, "jobs", command, job_id)


@SETTINGS
@given(limit=st.one_of(st.integers(), st.sampled_from(["99999999999999999999", "-1", "abc", "1e3", ""])),
       timeout=st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                         st.sampled_from(["nan", "inf", "-inf", "-1", "abc", "1e309"])))
def test_job_numbers(limit, timeout, home, capsys):
    _check(capsys, home, "jobs", "list", "--limit", str(limit))
    _check(capsys, home, "jobs", "wait", "no-such-job", "--timeout", str(timeout))


@SETTINGS
@given(port=st.one_of(st.integers(max_value=0), st.integers(min_value=65536),
                      st.sampled_from(["-1", "70000", "abc", "99999999999999999999", ""])))
def test_serve_ports_out_of_range_are_refused(port, home, capsys):
    assert _check(capsys, home, "serve", "--port", str(port)) == 2


@settings(SETTINGS, max_examples=15)  # each call opens the MLflow registry (about 0.3 s)
@given(name=NAMES, version=NAMES, alias=NAMES)
def test_model_names_versions_and_aliases(name, version, alias, home, capsys):
    _check(capsys, home, "models", "show", name)
    _check(capsys, home, "models", "alias", name, version, alias)


@SETTINGS
@given(index=NAMES)
def test_index_names(index, home, capsys, tmp_path):
    source = tmp_path / "no-such-folder"
    _check(capsys, home, "index", str(source), "--index", index)
    _check(capsys, home, "search", "anything", "--index", index)


JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
                    lambda inner: st.one_of(st.lists(inner, max_size=3),
                                            st.dictionaries(st.one_of(st.text(max_size=6),
                                                                      st.sampled_from(["$and", "$or", "$not", "$in",
                                                                                       "$gte", "$eq", "$nin"])),
                                                            inner, max_size=3)),
                    max_leaves=20)


def _nested(depth: int) -> str:
    text = '{"lang": "en"}'
    for _ in range(depth):
        text = '{"$and": [' + text + "]}"
    return text


@SETTINGS
@given(where=st.one_of(JSON.map(json.dumps), st.text(max_size=60), st.integers(1, 2000).map(_nested)))
def test_filters(where, home, capsys):
    # The index does not exist: a filter is either refused (2) or the unknown index is (2).
    assert _check(capsys, home, "search", "anything", "--index", "kb", "--where-json", where) == 2


YAML_BITS = st.sampled_from([
    "stackwise:cloud: aws\n", "stackwise:cloud: [unclosed\n", "config: {stackwise:cloud: &a [*a]}\n",
    "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n",
    "\t- tab\n", "base: smollm2\n", "data: /no/such/file.jsonl\n", "--- !!python/object:os.system ls\n",
    "x: \xff\xfe\n", "config:\n  stackwise:cloud: venus\n", "[1, 2\n", "method: qlora\nbase: 7\n",
])


@SETTINGS
@given(parts=st.lists(st.one_of(YAML_BITS, st.text(max_size=40)), min_size=1, max_size=4))
def test_yaml_spec_and_stack_files(parts, home, capsys, tmp_path):
    text = "".join(parts)
    spec = tmp_path / "finetune.yaml"
    spec.write_text(text, encoding="utf-8", errors="surrogateescape")
    _check(capsys, home, "finetune", "--spec", str(spec), "--detach")
    project = tmp_path / "project"
    (project / "stacks").mkdir(parents=True, exist_ok=True)
    (project / "Pulumi.yaml").write_text("name: demo\nruntime: python\n", encoding="utf-8")
    (project / "stacks" / "Pulumi.fuzz.yaml").write_text(text, encoding="utf-8", errors="surrogateescape")
    cwd = os.getcwd()
    os.chdir(project)
    try:
        _check(capsys, home, "stacks")
        _check(capsys, home, "plan", "--stack", "fuzz")
    finally:
        os.chdir(cwd)
