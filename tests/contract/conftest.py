"""Fixtures of the vector store contract tests: local servers that speak the hosted stores' APIs.

The servers live in tests/servers/ (plain modules, put on sys.path here). Each is started once
per session on 127.0.0.1 and emptied between tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVERS = Path(__file__).resolve().parents[1] / "servers"
EMULATORS = Path(__file__).resolve().parents[1] / "emulators"
for _folder in (SERVERS, EMULATORS):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

# A recognisable fake key: tests grep every log line, error and output for it.
PINECONE_TEST_KEY = "pcsk_TESTKEY_d0n0tl34k_7f3a9c"


@pytest.fixture(scope="session")
def pinecone_server() -> Iterator["object"]:
    pytest.importorskip("pinecone", reason="install stackwise[pinecone]")
    from pinecone_server import PineconeServer

    server = PineconeServer(dimension=8, api_key=PINECONE_TEST_KEY).start()
    yield server
    server.stop()


@pytest.fixture
def pinecone(pinecone_server, monkeypatch: pytest.MonkeyPatch):
    """The session's Pinecone server, emptied, with the test key in $PINECONE_TEST_KEY."""
    pinecone_server.reset()
    monkeypatch.setenv("PINECONE_TEST_KEY", PINECONE_TEST_KEY)
    monkeypatch.delenv("PINECONE_API_KEY", raising=False)
    yield pinecone_server
    pinecone_server.reset()


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real standalone Milvus server (PyPI `milvus`) for the session, on 127.0.0.1.

    `STACKWISE_TEST_MILVUS_URI` points the tests at a server that is already running instead.
    """
    import os

    pytest.importorskip("pymilvus", reason="install stackwise[milvus]")
    existing = os.environ.get("STACKWISE_TEST_MILVUS_URI")
    if existing:
        yield existing
        return
    pytest.importorskip("milvus", reason="install the Milvus test server: pip install 'stackwise[dev]'")
    from milvus_server import start_milvus

    server, uri, _ = start_milvus(tmp_path_factory.mktemp("milvus"))
    try:
        yield uri
    finally:
        server.stop()


# Weaviate: a local server speaking its REST + gRPC API (tests/servers/weaviate_server.py).
WEAVIATE_TEST_KEY = "wv_TESTKEY_n3v3rl34k_41c7e2"


@pytest.fixture(scope="session")
def weaviate_server() -> Iterator["object"]:
    pytest.importorskip("weaviate", reason="install stackwise[weaviate]")
    from weaviate_server import WeaviateServer

    server = WeaviateServer(api_key=WEAVIATE_TEST_KEY).start()
    yield server
    server.stop()


@pytest.fixture
def weaviate(weaviate_server, monkeypatch: pytest.MonkeyPatch):
    """The session's Weaviate server, emptied, with the test key in $WEAVIATE_TEST_KEY."""
    weaviate_server.reset()
    monkeypatch.setenv("WEAVIATE_TEST_KEY", WEAVIATE_TEST_KEY)
    monkeypatch.delenv("WEAVIATE_API_KEY", raising=False)
    yield weaviate_server
    weaviate_server.reset()


def write_lee_corpus(folder: Path, articles: int) -> Path:
    """`articles` news articles of gensim's Lee corpus as text files in `folder` (the corpus the
    hosted-store CLI tests index into each store)."""
    gensim = pytest.importorskip("gensim", reason="install stackwise[local]")
    corpus = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
    lines = [x.strip() for x in corpus.read_text(encoding="latin-1").splitlines() if x.strip()][:articles]
    folder.mkdir(parents=True, exist_ok=True)
    for number, text in enumerate(lines):
        (folder / f"lee-{number:03d}.txt").write_text(text + "\n", encoding="utf-8")
    return folder


def run_stackwise(root: Path, *args: str, expect: int = 0, drop: tuple[str, ...] = (),
                  env: dict[str, str] | None = None, outputs: list[str] | None = None) -> subprocess.CompletedProcess:
    """`python -m stackwise.cli ARGS` in `root` as a user would run it: this machine's STACKWISE_*
    (and `drop`-prefixed) variables removed, state under `root/.stackwise`, offline, 2 threads,
    plus `env`. Its stdout and stderr are appended to `outputs` (grepped for secrets later)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("STACKWISE_", *drop))}
    clean.update(STACKWISE_HOME=str(root / ".stackwise"), STACKWISE_THREADS="2", OMP_NUM_THREADS="2",
                 HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", NO_COLOR="1",
                 COLUMNS="200", **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "stackwise.cli", *args], cwd=root, env=clean, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)
    if outputs is not None:
        outputs.extend([proc.stdout, proc.stderr])
    assert proc.returncode == expect, \
        f"stackwise {' '.join(args)}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


# -- what the compute contract's real jobs write to ---------------------------------------------
@pytest.fixture(scope="session")
def job_store() -> Iterator["object"]:
    """A Pinecone server (the API, on 127.0.0.1) holding the real jobs' indexes (cloud_fixtures)."""
    pytest.importorskip("pinecone", reason="install stackwise[pinecone]")
    from cloud_fixtures import JOB_STORE_DIM, JOB_STORE_KEY
    from pinecone_server import PineconeServer

    server = PineconeServer(dimension=JOB_STORE_DIM, api_key=JOB_STORE_KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Azurite's Blob service (npm `azurite@3`, in memory) on 127.0.0.1 with the container
    `artifacts`; yields the variables adlfs reads. Installed in $STACKWISE_AZURITE_DIR (default
    ~/.cache/stackwise/azurite) by tests/containers; skipped where it is not (no network here)."""
    pytest.importorskip("adlfs", reason="install stackwise[azure]")
    pytest.importorskip("azure.storage.blob", reason="install stackwise[azure]")
    folder = Path(os.environ.get("STACKWISE_AZURITE_DIR") or "~/.cache/stackwise/azurite").expanduser()
    binary = folder / "node_modules" / ".bin" / "azurite-blob"
    if not binary.exists() or shutil.which("node") is None:
        pytest.skip(f"no Azurite in {folder} (npm install --prefix {folder} azurite@3) or no node")
    from cloud_fixtures import AZURITE_ACCOUNT, AZURITE_KEY, azurite_connection_string, running_azurite

    with running_azurite(binary, tmp_path_factory.mktemp("azurite")) as url:
        yield {"AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string(url),
               "AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT, "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY}


@pytest.fixture
def clustered_vectors():
    """3,000 float32 vectors of 32 dimensions in 40 gaussian clusters (not normalized), and
    each one's cluster: the embedded store's ANN and graph index tests search them."""
    import numpy as np

    rng = np.random.default_rng(7)
    centers = rng.normal(size=(40, 32))
    labels = rng.integers(0, 40, size=3000)
    vectors = centers[labels] + 0.35 * rng.normal(size=(3000, 32))
    return vectors.astype(np.float32), labels
