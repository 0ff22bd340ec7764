"""The `container` compute backend: a local stack whose jobs run in the training image built from
this repository, under the compute contract suite, and through the CLI as a user runs it.

"succeed" jobs index one small document into an index built once per module (so they embed
nothing); the contract's real jobs re-index a three-file corpus (two files of shard 0 of 2, one of
shard 1) whose index is built once too, so their reports are known by hand; "fail" jobs name a source that does not exist, "hold" jobs build a new index, which
loads the embedding model inside the container for seconds, so the suite can cancel them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stackwise.specs import IndexSpec
from stackwise.testing.compute import ComputeContract, ComputeDriver, RealJob

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS / "emulators") not in sys.path:
    sys.path.insert(0, str(TESTS / "emulators"))

pytest.importorskip("lancedb", reason="install stackwise[local]")
pytestmark = pytest.mark.slow


def _stack_file(folder: Path, image: str) -> Path:
    (folder / "stacks").mkdir(parents=True, exist_ok=True)
    (folder / "Pulumi.yaml").write_text("name: containers\nruntime: python\n", encoding="utf-8")
    path = folder / "stacks" / "Pulumi.boxed.yaml"
    path.write_text("config:\n  stackwise:cloud: local\n  stackwise:region: local\n"
                    f"  stackwise:compute:\n    kind: container\n    image: {image}\n", encoding="utf-8")
    return path


class ContainerDriver(ComputeDriver):
    timeout = 300.0

    def __init__(self, backend, docs, corpus):
        self._backend, self.docs, self.corpus = backend, docs, corpus

    def backend(self):
        return self._backend

    def spec(self, outcome, n=0):
        if outcome == "fail":
            return IndexSpec(source=str(self.docs / "missing"), index=f"fail{n}")
        if outcome == "hold":
            return IndexSpec(source=str(self.docs), index=f"new{n}")
        return IndexSpec(source=str(self.docs), index="kb", embedding={"batch_size": 100 + n})

    def real_job(self, workers=1):
        spec = IndexSpec(source=str(self.corpus), index="kb3", workers=workers, embedding={"batch_size": 300 + workers})
        return RealJob(spec, {"index": "kb3", "source": f"file://{self.corpus.resolve()}", "model": "all-MiniLM-L6-v2",
                              "documents": 3, "chunks": 3, "unchanged": 3, "added": 0, "embedded": 0, "pruned": 0,
                              "skipped": [], "shards": workers})


@pytest.fixture(scope="module")
def boxed(images, engine, tmp_path_factory):
    """A project whose stack `boxed` runs jobs in the training image; index `kb` built once."""
    import stackwise

    root = tmp_path_factory.mktemp("boxed")
    _stack_file(root, images["train"]["image"])
    docs = root / "docs"
    docs.mkdir()
    (docs / "note.txt").write_text("Keys are rotated every ninety days by the platform team.\n")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv("STACKWISE_HOME", str(root / ".stackwise"))
    mp.setenv("STACKWISE_STACKS_DIR", str(root / "stacks"))
    mp.setenv("OMP_NUM_THREADS", "1")
    mp.setenv("STACKWISE_THREADS", "1")
    for key in ("STACKWISE_STACK", "STACKWISE_OUTPUTS"):
        mp.delenv(key, raising=False)
    platform = stackwise.connect("boxed")
    info = platform.index(IndexSpec(source=str(docs), index="kb")).wait(timeout=600)
    assert info.state.value == "SUCCEEDED", info.error + "\n" + "\n".join(platform.compute.logs(info.id))
    from cloud_fixtures import write_corpus

    corpus = root / "corpus"
    corpus.mkdir()
    write_corpus(f"file://{corpus}", (2, 1))
    info = platform.index(IndexSpec(source=str(corpus), index="kb3")).wait(timeout=600)
    assert info.state.value == "SUCCEEDED", info.error + "\n" + "\n".join(platform.compute.logs(info.id))
    yield root, docs, corpus, platform
    mp.undo()


class TestContainerContract(ComputeContract):
    @pytest.fixture
    def driver(self, boxed):
        from stackwise.adapters.compute.container import ContainerCompute

        root, docs, corpus, platform = boxed
        assert isinstance(platform.compute, ContainerCompute)
        return ContainerDriver(platform.compute, docs, corpus)


def test_the_job_ran_in_the_image_and_wrote_the_stacks_store(boxed, images):
    root, docs, _, platform = boxed
    (job,) = [j for j in platform.jobs.list(limit=500) if j.spec.get("index") == "kb" and j.attempt == 1
              and j.spec.get("embedding", {}).get("batch_size") == 64]
    log = "\n".join(platform.compute.logs(job.id))
    config = json.loads((Path(job.log_path).parent / "container.json").read_text())
    assert config["image"] == images["train"]["image"]
    assert "@@result" in log and "Traceback" not in log
    # The image's interpreter ran it (this machine's venv is elsewhere), through the bootstrap.
    assert "stackwise bootstrap: index job" in log and "python /opt/stackwise/bin/python" in log, log[:2000]
    hits = platform.search("kb", "how often are keys rotated?", k=1)
    assert hits and hits[0].doc_id.endswith("note.txt")


def test_the_cli_indexes_in_containers_with_two_workers_and_a_missing_image_is_exit_2(boxed, tmp_path):
    root, docs, _, _ = boxed
    for number in range(4):
        (docs / f"extra-{number}.txt").write_text(f"Document {number} about subject {number * 7}.\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKWISE_")}
    env.update(STACKWISE_HOME=str(root / ".stackwise"), STACKWISE_STACKS_DIR=str(root / "stacks"),
               STACKWISE_THREADS="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "stackwise.cli", "index", str(docs), "--index", "sharded",
                           "--workers", "2", "--stack", "boxed", "--json"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert (report["documents"], report["shards"]) == (5, 2)
    # A stack naming an image that is not built: exit 2, what, where and fix, no job record.
    other = tmp_path / "other"
    _stack_file(other, "localhost/stackwise/train:not-built")
    env.update(STACKWISE_HOME=str(other / ".stackwise"), STACKWISE_STACKS_DIR=str(other / "stacks"))
    proc = subprocess.run([sys.executable, "-m", "stackwise.cli", "index", str(docs), "--index", "kb",
                           "--stack", "boxed"], cwd=other, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "not-built" in proc.stderr and "stackwise image build" in proc.stderr and "Traceback" not in proc.stderr
