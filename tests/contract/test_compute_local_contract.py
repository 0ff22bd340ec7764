"""The local compute backend under the compute contract: real supervisor and workload processes.

"succeed" jobs and the real jobs index three small documents into an index built once per module
(so they read the store and embed nothing; the sharded real job's two workers own two and one of
them); "fail" jobs name a source that does not exist; "hold" jobs build a new index, which loads
the shipped embedding model for seconds, so the suite can time out on them and cancel them.
"""

from __future__ import annotations

import pytest

from stackwise.specs import IndexSpec
from stackwise.testing.compute import ComputeContract, ComputeDriver, RealJob

pytest.importorskip("lancedb", reason="install stackwise[local]")
pytestmark = pytest.mark.slow


class LocalDriver(ComputeDriver):
    timeout = 240.0

    def __init__(self, backend, docs):
        self._backend, self.docs = backend, docs

    def backend(self):
        return self._backend

    def spec(self, outcome, n=0):
        if outcome == "fail":
            return IndexSpec(source=str(self.docs / "missing"), index=f"fail{n}")
        if outcome == "hold":
            return IndexSpec(source=str(self.docs), index=f"new{n}")
        # Same chunks as the warm index, another digest: the job embeds nothing.
        return IndexSpec(source=str(self.docs), index="kb", embedding={"batch_size": 100 + n})

    def real_job(self, workers=1):
        spec = IndexSpec(source=str(self.docs), index="kb", workers=workers, embedding={"batch_size": 300 + workers})
        return RealJob(spec, {"index": "kb", "source": f"file://{self.docs.resolve()}", "model": "all-MiniLM-L6-v2",
                              "documents": 3, "chunks": 3, "unchanged": 3, "added": 0, "embedded": 0, "pruned": 0,
                              "skipped": [], "shards": workers})


@pytest.fixture(scope="module")
def local_home(tmp_path_factory):
    """A state folder whose index `kb` is built once (one job that loads the model)."""
    from stackwise.adapters.compute.local import LocalCompute

    root = tmp_path_factory.mktemp("local-compute")
    from cloud_fixtures import write_corpus

    home, docs = root / ".stackwise", root / "docs"
    docs.mkdir()
    write_corpus(f"file://{docs}", (2, 1))  # three files: two of shard 0 of 2, one of shard 1
    mp = pytest.MonkeyPatch()
    mp.setenv("STACKWISE_HOME", str(home))
    mp.setenv("OMP_NUM_THREADS", "1")
    mp.delenv("STACKWISE_STACK", raising=False)
    mp.delenv("STACKWISE_OUTPUTS", raising=False)
    info = LocalCompute(home=home).submit(IndexSpec(source=str(docs), index="kb")).wait(timeout=300)
    assert info.state.value == "SUCCEEDED", info.error
    yield home, docs
    mp.undo()


class TestLocalContract(ComputeContract):
    @pytest.fixture
    def driver(self, local_home):
        from stackwise.adapters.compute.local import LocalCompute

        home, docs = local_home
        return LocalDriver(LocalCompute(home=home), docs)
