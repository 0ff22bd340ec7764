"""Curation throughput against reading the same files alone (the limit), side by side in one run.

Corpus: gensim's Lee corpora (one file per article) and the Python documentation's topics shipped
with the interpreter (one file per topic), written to a temporary folder. Rows: reading alone
(`read_documents`), then reading plus curation with each step on its own and with all steps.
Prints a table of documents/s and MB/s. Run: `python bench/curation.py` (about 30-60 s on one core).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def corpus(folder: Path) -> int:
    import gensim
    from pydoc_data.topics import topics

    data = Path(gensim.__file__).parent / "test" / "test_data"
    n = 0
    for name in ("lee_background.cor", "lee.cor"):
        for line in (data / name).read_text(encoding="latin-1").splitlines():
            if line.strip():
                (folder / f"lee-{n:04d}.txt").write_text(line.strip())
                n += 1
    for key, text in sorted(topics.items()):
        (folder / f"pydoc-{key}.txt").write_text(text)
        n += 1
    return n


def main() -> None:
    from stackwise.curation import Item, curate, parse_config
    from stackwise.documents import Source, read_documents

    off = {"dedup": {"exact": False, "near": False}, "quality": {"enabled": False},
           "language": {"enabled": False}, "pii": {"enabled": False}, "bias": {"enabled": False}}
    configs = {
        "exact dedup": {**off, "dedup": {"exact": True, "near": False}},
        "near dedup (MinHash LSH)": {**off, "dedup": {"exact": False, "near": True}},
        "quality (Gopher/C4)": {**off, "quality": {}},
        "language (py3langid)": {**off, "language": {}},
        "PII (presidio patterns)": {**off, "pii": {}},
        "bias screen": {**off, "bias": {}},
        "all steps (defaults)": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = corpus(folder)
        size = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
        parse_config(configs["all steps (defaults)"], "bench")
        # warm the lazy imports (presidio, py3langid's model) outside the timings
        curate([Item("w", ["warm up text with a@example.com in English words"])], parse_config({}, "bench"))
        rows = []
        started = time.perf_counter()
        docs, _ = read_documents(Source(str(folder)))
        read_s = time.perf_counter() - started
        rows.append(("read only (the limit)", read_s))
        for name, raw in configs.items():
            started = time.perf_counter()
            docs, _ = read_documents(Source(str(folder)))
            result = curate([Item(d.doc_id, [d.text]) for d in docs], parse_config(raw, "bench"))
            rows.append((name, time.perf_counter() - started))
            if name.startswith("all"):
                kept, dropped = result.report.kept, result.report.dropped_by_reason
    print(f"corpus: {files} files, {size:.2f} MB (gensim Lee corpora + Python doc topics)")
    print(f"{'step (read + curate)':<28} {'seconds':>8} {'docs/s':>9} {'MB/s':>7} {'vs read':>8}")
    for name, seconds in rows:
        print(f"{name:<28} {seconds:>8.2f} {files / seconds:>9.0f} {size / seconds:>7.2f} {seconds / read_s:>7.1f}x")
    print(f"all steps kept {kept} of {files}; dropped {dropped}")


if __name__ == "__main__":
    main()
