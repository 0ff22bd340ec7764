"""Shared fixtures and helpers of the end-to-end tests: the local lifecycle, run for real.

Every job here is a real detached supervisor + workload process that loads the shipped
all-MiniLM-L6-v2 model, so the corpora are small and shared per module. Nothing is mocked:
the CLI runs in subprocesses (`python -m stackwise.cli`), the workload runs as
`python -m stackwise.workloads.index`, and the vector store is read back from disk.

Every process gets its own state folder (`STACKWISE_HOME`), 2 torch threads and no network.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

# Generous: a CI machine with 2 busy cores may take minutes for one job.
JOB_TIMEOUT_S = 300.0
CLI_TIMEOUT_S = 300.0

# Variables that would point a process at another stack or state folder than the test's.
_FOREIGN_ENV = ("STACKWISE_STACK", "STACKWISE_OUTPUTS", "STACKWISE_STACKS_DIR", "STACKWISE_HOME",
                "STACKWISE_JOB_ID", "STACKWISE_JOB_DIR")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.slow)


# -- data --------------------------------------------------------------------------------------
def lee_articles() -> list[str]:
    """gensim's Lee background corpus: 300 Australian news articles from 2001, one per line."""
    gensim = pytest.importorskip("gensim")
    path = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
    return [line.strip() for line in path.read_text(encoding="latin-1").splitlines() if line.strip()]


def tiny_lora_model(root: Path, lora_alpha: int) -> tuple[Path, Path]:
    """A tiny Llama trained on Lee articles under `root`, and a LoRA adapter on it (non-zero
    init, seeded, with the base's tokenizer): (base folder, adapter folder)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stackwise.training.tiny import build_tiny_model

    base = build_tiny_model(root / "tiny-llama", lee_articles()[:150], vocab_size=400)
    torch.manual_seed(3)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                LoraConfig(r=4, lora_alpha=lora_alpha, target_modules="all-linear",
                                           init_lora_weights=False))
    adapter = root / "adapter"
    peft_model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(base).save_pretrained(adapter)
    return Path(base), adapter


def write_txt_corpus(folder: Path, articles: list[str], first: int = 0) -> dict[int, Path]:
    """One UTF-8 .txt file per article, named by its number in the corpus."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for number, text in enumerate(articles, start=first):
        path = folder / f"lee-{number:03d}.txt"
        path.write_text(text + "\n", encoding="utf-8")
        files[number] = path
    return files


def file_uri(path: Path) -> str:
    """The doc_id the index workload gives a local file."""
    return f"file://{path.resolve()}"


# -- environment -------------------------------------------------------------------------------
def stackwise_env(home: Path, threads: int = 2) -> dict[str, str]:
    """The environment of every stackwise process a test starts: own state folder, capped threads,
    no network, the local stack."""
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    env.update(
        STACKWISE_HOME=str(home),
        STACKWISE_THREADS=str(threads),
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        NO_COLOR="1",
        COLUMNS="200",
    )
    return env


@pytest.fixture
def sw_home(tmp_path: Path) -> Iterator[Path]:
    """A fresh state folder for one test; job processes left running in it are killed after."""
    home = tmp_path / "sw-home"
    home.mkdir()
    yield home
    kill_leftover_jobs(home)


def kill_leftover_jobs(home: Path) -> None:
    """SIGKILL the supervisor and workload of every job in `home` that still runs (a failed test
    must not leave a process embedding on the CI machine's cores)."""
    if not (home / "jobs.db").is_file():
        return
    from stackwise.adapters.compute.local import JobDB

    for row in JobDB(home).rows(1000):
        for pid in (row["workload_pid"], row["supervisor_pid"]):
            if pid and not gone(pid) and _is_stackwise_process(pid):
                kill_hard(pid)


def _is_stackwise_process(pid: int) -> bool:
    try:
        return any("stackwise" in part for part in psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


@pytest.fixture
def sdk_env(sw_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the SDK in this (pytest) process at the test's state folder."""
    for key, value in stackwise_env(sw_home).items():
        monkeypatch.setenv(key, value)
    for key in _FOREIGN_ENV:
        if key != "STACKWISE_HOME":
            monkeypatch.delenv(key, raising=False)
    return sw_home


# -- the CLI -----------------------------------------------------------------------------------
class CLIResult:
    def __init__(self, proc: subprocess.CompletedProcess[str]):
        self.proc = proc
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    def json(self) -> Any:
        try:
            return json.loads(self.stdout)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"stdout is not JSON ({exc}):\n{self}") from None

    def __str__(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout[-4000:]}\n--- stderr\n{self.stderr[-4000:]}"


def run_cli(home: Path, *args: str, cwd: Path | None = None, expect: int | None = 0,
            timeout: float = CLI_TIMEOUT_S) -> CLIResult:
    """Run `python -m stackwise.cli ARGS` in a subprocess; check its exit code unless `expect` is None."""
    proc = subprocess.run(
        [sys.executable, "-m", "stackwise.cli", *args],
        cwd=str(cwd or home.parent),
        env=stackwise_env(home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    result = CLIResult(proc)
    if expect is not None:
        assert result.returncode == expect, f"stackwise {' '.join(args)}: {result}"
    return result


# -- the store, read back from disk ------------------------------------------------------------
def vectors_uri(home: Path) -> str:
    """Where the local stack keeps the embedded store (`stackwise:vectorStore.path: vectors`)."""
    return str((home / "vectors").resolve())


def store_rows(home: Path, index: str) -> dict[str, tuple[str, str, int]]:
    """Every chunk of `index` in the state folder `home`: id -> (text, doc_id, chunk)."""
    from stackwise.adapters.vectors.embedded import EmbeddedStore

    store = EmbeddedStore(vectors_uri(home))
    if index not in store.list_indexes():
        return {}
    ids = sorted(i for chunk_ids in store.chunk_ids(index).values() for i in chunk_ids)
    records = store.fetch(index, ids)
    rows = {r.id: (r.text, r.doc_id, r.chunk) for r in records}
    assert len(rows) == len(records) == len(ids), "duplicate or missing chunk ids in the store"
    return rows


def doc_chunks(rows: dict[str, tuple[str, str, int]]) -> dict[str, set[str]]:
    """doc_id -> its chunk ids."""
    out: dict[str, set[str]] = {}
    for chunk_id, (_, doc_id, _) in rows.items():
        out.setdefault(doc_id, set()).add(chunk_id)
    return out


def folder_snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) of every file under `folder`."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# -- jobs and processes ------------------------------------------------------------------------
def job_row(home: Path, job_id: str) -> dict[str, Any]:
    """The job's row in the local job table (pids included), read without reconciling."""
    from stackwise.adapters.compute.local import JobDB

    return dict(JobDB(home).get(job_id))


def wait_for(predicate: Callable[[], Any], timeout: float = JOB_TIMEOUT_S, what: str = "condition",
             poll: float = 0.2) -> Any:
    """Poll until `predicate()` is truthy and return its value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def gone(pid: int | None) -> bool:
    """True when the process no longer runs (it does not exist, or is a zombie nobody reaped yet)."""
    if not pid:
        return True
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_hard(pid: int | None) -> None:
    """SIGKILL one process (the test's own job processes only), ignoring one already gone."""
    if not pid:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def cleanup_pids() -> Iterator[list[int]]:
    """Pids a test started; whatever still runs at teardown is SIGKILLed (one by one, by id)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if not gone(pid):
            kill_hard(pid)


# -- `stackwise serve` in a subprocess (tests/e2e/test_serving_contracts.py, test_serve_security_limits.py)
SERVE_LOAD_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(home: Path, args: list[str], cleanup_pids: list[int],
                extra_env: dict[str, str] | None = None, threads: int = 2) -> subprocess.Popen:
    """`stackwise serve ARGS` in `home`, output captured; its pid is killed at teardown."""
    proc = subprocess.Popen([sys.executable, "-m", "stackwise.cli", "serve", *args], cwd=str(home),
                            env={**stackwise_env(home, threads=threads), **(extra_env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    cleanup_pids.append(proc.pid)
    return proc


def wait_serve_ready(proc: subprocess.Popen, url: str) -> None:
    """Wait until `url` answers 200; fail with the server's output if it exits first."""
    import httpx

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"stackwise serve exited: {proc.stdout.read()}")
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, timeout=SERVE_LOAD_TIMEOUT_S, what=f"{url} answering 200")
