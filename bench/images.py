#!/usr/bin/env python
"""The training and serving images: build time cold, after a source change and on a cache hit;
their sizes; and what running a job in the training image costs against the same job as a local
process, side by side, alternating, in the same run.

1. build: the base image, the wheelhouse and both images as the container tests make them
   (stackwise.images). `--cold` first removes the images, the base image and podman's build cache,
   so the first build pays everything; a build with another VERSION build argument then stands for
   "the source changed" (the dependency layers are reused), and a third identical build is a cache hit.
2. jobs: the same small index job (6 of the Lee articles into a new index) submitted `--runs`
   times to a local stack (a process) and to a container stack (the training image), alternating;
   wall seconds from submit to SUCCEEDED, min and median, and the container/process ratio.

    python bench/images.py [--cold] [--runs 3] [--out bench/out/images.json]

No timing is asserted anywhere in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))


def _load() -> str:
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "?"


def build(engine: str, cold: bool) -> dict:
    from stackwise.images import (DEFAULT_EXTRAS, LOCAL_BASE_IMAGE, build_images, make_base_image,
                                  make_wheelhouse)

    result: dict = {}
    if cold:
        subprocess.run(f"{engine} images --format '{{{{.Repository}}}}:{{{{.Tag}}}}' | grep '^localhost/stackwise' "
                       f"| xargs -r {engine} rmi -f", shell=True, capture_output=True)
        subprocess.run([engine, "image", "prune", "-a", "-f"], capture_output=True)
        subprocess.run([engine, "builder", "prune", "-a", "-f"], capture_output=True)
    started = time.monotonic()
    make_base_image(LOCAL_BASE_IMAGE, engine=engine)
    result["base_image_s"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    wheels = make_wheelhouse(DEFAULT_EXTRAS, python=sys.executable)
    result["wheelhouse_s"] = round(time.monotonic() - started, 1)
    result["wheelhouse_mb"] = round(sum(p.stat().st_size for p in wheels.iterdir()) / 2**20)
    runs = []
    for label, version in (("first", None), ("source change", f"bench-{int(time.time())}"),
                           ("cache hit", None)):
        args = {"HF_HUB_OFFLINE": "1", **({"VERSION": version} if version else {})}
        if label == "cache hit":
            args = runs[-1]["args"]
        started = time.monotonic()
        built = build_images("localhost/stackwise", LOCAL_BASE_IMAGE, wheels, DEFAULT_EXTRAS, engine=engine,
                             build_args=args)
        runs.append({"build": label + (" (cold)" if cold and label == "first" else ""), "args": args,
                     "seconds": round(time.monotonic() - started, 1),
                     "train_cached": built["train"]["cached"], "serve_cached": built["serve"]["cached"],
                     "train_gb": round(built["train"]["size_bytes"] / 1e9, 2),
                     "serve_gb": round(built["serve"]["size_bytes"] / 1e9, 2), "image": built["train"]["image"]})
    result["builds"] = runs
    return result


def make_project(root: Path, image: str | None, threads: int = 2) -> dict[str, str]:
    """A project folder with one stack, `bench`: local compute, or the container backend with
    `image`; returns the environment that runs stackwise on it (bench/scaleout.py uses it too)."""
    (root / "stacks").mkdir(parents=True)
    (root / "Pulumi.yaml").write_text("name: bench\nruntime: python\n")
    compute = f"  stackwise:compute:\n    kind: container\n    image: {image}\n" if image else ""
    (root / "stacks" / "Pulumi.bench.yaml").write_text(
        "config:\n  stackwise:cloud: local\n  stackwise:region: local\n" + compute)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKWISE_")}
    env.update(STACKWISE_HOME=str(root / ".stackwise"), STACKWISE_STACKS_DIR=str(root / "stacks"),
               STACKWISE_THREADS=str(threads), OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    return env


def jobs(image: str, runs: int) -> dict:
    import gensim

    corpus = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
    articles = [x.strip() for x in corpus.read_text(encoding="latin-1").splitlines() if x.strip()][:6]
    work = Path(tempfile.mkdtemp(prefix="stackwise-bench-images-"))
    docs = work / "docs"
    docs.mkdir()
    for number, text in enumerate(articles):
        (docs / f"lee-{number}.txt").write_text(text + "\n")
    projects = {"process": make_project(work / "process", None), "container": make_project(work / "container", image)}
    times: dict[str, list[float]] = {mode: [] for mode in projects}
    for run in range(runs):
        for mode, env in projects.items():
            started = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "stackwise.cli", "index", str(docs), "--index", f"kb{run}",
                                   "--stack", "bench", "--json"], cwd=work, env=env, capture_output=True, text=True,
                                  timeout=900)
            if proc.returncode != 0:
                raise SystemExit(f"{mode} job failed: {proc.stderr[-2000:]}")
            times[mode].append(round(time.monotonic() - started, 2))
    summary = {mode: {"runs": values, "min": min(values), "median": statistics.median(values)}
               for mode, values in times.items()}
    summary["ratio_median"] = round(summary["container"]["median"] / summary["process"]["median"], 2)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", action="store_true", help="remove images and build cache first")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "out" / "images.json"))
    args = parser.parse_args()
    from stackwise.images import find_engine

    engine = find_engine()
    if engine == "podman":
        os.environ.setdefault("CONTAINERS_CONF", str(REPO / "scripts" / "containers.conf"))
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "engine": engine, "load_before": _load()}
    result.update(build(engine, args.cold))
    result["jobs"] = jobs(result["builds"][-1]["image"], args.runs)
    result["load_after"] = _load()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
