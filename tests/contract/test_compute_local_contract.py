"""The local compute backend under the compute contract: real supervisor and workload processes.

"succeed" jobs index one small document into an index built once per module (so they read the
store and embed nothing); "fail" jobs name a source that does not exist; "hold" jobs build a new
index, which loads the shipped embedding model for seconds, so the suite can time out on them
and cancel them.
"""

from __future__ import annotations

import pytest

from stackwise.specs import IndexSpec
from stackwise.testing.compute import ComputeContract, ComputeDriver

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


@pytest.fixture(scope="module")
def local_home(tmp_path_factory):
    """A state folder whose index `kb` is built once (one job that loads the model)."""
    from stackwise.adapters.compute.local import LocalCompute

    root = tmp_path_factory.mktemp("local-compute")
    home, docs = root / ".stackwise", root / "docs"
    docs.mkdir()
    (docs / "note.txt").write_text("Keys are rotated every ninety days by the platform team.\n")
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
