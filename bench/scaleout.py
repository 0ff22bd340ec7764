#!/usr/bin/env python
"""Index scale-out: `stackwise index SOURCE --index NAME --stack S --workers N --json` as N grows,
on the local stack (N workload processes) and on the container stack (N containers of the
training image), and the projected cloud cost of indexing one million chunks.

1. jobs: the real CLI job, a fresh index each run, on real text (gensim's Lee corpus, one file per
   article; articles are repeated, marked as copies, when --docs asks for more than the 300 it has).
   The worker counts run in a mirrored order (1, 2, 4, 4, 2, 1) so drift shows, the two stacks
   alternating which goes first at each step, `--runs` times. Per run: wall seconds from submit
   to the report, the workload's own seconds (the slowest shard, model load included, process
   start-up not), chunks, chunks/s, the load average before and after, and how busy the machine's
   CPUs were during the run (/proc/stat, every process counted, not only this job's). Per stack
   and N: the medians and chunks/s as a ratio to N = 1 of the same stack (the speed-up).
2. cost: for each cloud, the instance its compute adapter picks for an index job
   (`sagemaker.instance_type`, `vertex.machine_spec`, `azureml.vm_size`), priced from the GPU
   catalog through `stackwise.catalog` (never by hand), at the per-worker rate measured here:

       USD per 1M chunks = hourly price x 1,000,000 / (r x 3600)

   r = chunks / workload seconds of one worker (N = 1, median; the container stack's when it ran,
   since cloud jobs run that image). N instances cost the same if each keeps rate r (N times the
   price for 1/N of the time); instance provisioning and image pull are not measured here and not
   included. r is this machine's (2 cores) rate: a cloud instance's differs (other CPUs, more
   vCPUs), so the figures are a formula applied to a measurement, not a quote.

    python bench/scaleout.py [--quick] [--docs 600] [--runs 1] [--workers 1,2,4]
                             [--stacks local,container] [--image IMAGE] [--out bench/out/scaleout.json]

No timing is asserted anywhere in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))
from images import make_project  # noqa: E402  (bench/images.py: the same one-stack project)

# 600 documents (the 300 Lee articles twice) are about 1,000 chunks: even at N = 4 each worker embeds
# about 250, several times its model load, and the default run stays near 15 minutes on 2 idle cores.
DEFAULT_DOCS = 600
CLOUDS = ("aws", "gcp", "azure")


# -- machine state ----------------------------------------------------------------------------------
def _loadavg() -> list[float]:
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return []


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user
    return total - idle, total


def _code_state() -> dict[str, Any]:
    """Which code the jobs ran: HEAD and a digest of the uncommitted changes (read-only git), so
    a run during which someone edited the working tree shows it (the two digests differ)."""
    import hashlib

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout

    untracked = git("ls-files", "--others", "--exclude-standard").split()
    digest = hashlib.sha256(git("diff", "HEAD").encode())
    for name in sorted(untracked):
        try:
            digest.update(name.encode() + b"\0" + (REPO / name).read_bytes())
        except OSError:
            pass
    return {"head": git("rev-parse", "--short", "HEAD").strip(), "changed": git("status", "--porcelain").splitlines(),
            "worktree_digest": digest.hexdigest()[:16]}


def _top_processes(count: int = 8) -> list[str]:
    proc = subprocess.run(["ps", "aux", "--sort=-%cpu"], capture_output=True, text=True)
    return [line[:200] for line in proc.stdout.splitlines()[: count + 1]]


# -- corpus and projects ----------------------------------------------------------------------------
def write_corpus(folder: Path, docs: int) -> dict[str, Any]:
    """`docs` text files from the Lee corpus, one article each; past its 300 articles they repeat,
    each repeat starting with a line that makes it a distinct document (so it is embedded again)."""
    import importlib.util

    found = importlib.util.find_spec("gensim")  # its data file only: importing gensim loads cloud SDKs
    if found is None or not found.submodule_search_locations:
        raise SystemExit("the corpus is gensim's Lee corpus: pip install gensim")
    path = Path(list(found.submodule_search_locations)[0]) / "test" / "test_data" / "lee_background.cor"
    articles = [x.strip() for x in path.read_text(encoding="latin-1").splitlines() if x.strip()]
    folder.mkdir(parents=True)
    chars = 0
    for number in range(docs):
        text = articles[number % len(articles)]
        if number >= len(articles):
            text = f"Copy {number // len(articles)} of article {number % len(articles)}.\n{text}"
        (folder / f"lee-{number:05d}.txt").write_text(text + "\n", encoding="utf-8")
        chars += len(text)
    return {"source": str(path), "articles": len(articles), "documents": docs,
            "repeated": max(0, docs - len(articles)), "characters": chars}


def build_image(engine: str) -> str:
    """The training image as bench/images.py and the container tests build it (a cache hit when
    an image of the current source exists; a source change rebuilds its install layer)."""
    from stackwise.images import DEFAULT_EXTRAS, LOCAL_BASE_IMAGE, build_images, make_base_image, make_wheelhouse

    make_base_image(LOCAL_BASE_IMAGE, engine=engine)
    wheels = make_wheelhouse(DEFAULT_EXTRAS, python=sys.executable)
    built = build_images("localhost/stackwise", LOCAL_BASE_IMAGE, wheels, DEFAULT_EXTRAS, engine=engine,
                         build_args={"HF_HUB_OFFLINE": "1"})
    return built["train"]["image"]


class JobFailed(RuntimeError):
    """A job that failed or did not index the whole corpus into a fresh index."""


# -- one job ---------------------------------------------------------------------------------------
def _last_json(text: str) -> dict[str, Any]:
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON in the output")
    return json.loads(text[start:])


def run_job(stack: str, workers: int, docs: Path, root: Path, env: dict[str, str], name: str,
            timeout: float) -> dict[str, Any]:
    load_before = _loadavg()
    busy0, total0 = _cpu_ticks()
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "stackwise.cli", "index", str(docs), "--index", name,
                           "--stack", "bench", "--workers", str(workers), "--json"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - started
    busy1, total1 = _cpu_ticks()
    if proc.returncode != 0:
        raise JobFailed(f"{stack} job (workers={workers}) failed, exit {proc.returncode}: "
                        f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    report = _last_json(proc.stdout)
    chunks = int(report["chunks"])
    if report.get("embedded") != chunks or report.get("added") != chunks or int(report.get("shards", 1)) != workers:
        raise JobFailed(f"{stack} job (workers={workers}) did not embed every chunk into a fresh index "
                        f"with {workers} shards: {json.dumps({k: v for k, v in report.items() if k != 'skipped'})}")
    return {
        "stack": stack, "workers": workers, "index": name, "chunks": chunks, "documents": report["documents"],
        "wall_s": round(wall, 2), "workload_s": report["seconds"], "chunks_per_s": round(chunks / wall, 2),
        "workload_chunks_per_s": round(chunks / report["seconds"], 2) if report["seconds"] else None,
        "load_before": load_before, "load_after": _loadavg(),
        "machine_cpu_busy": round((busy1 - busy0) / max(1, total1 - total0), 3),
    }


def schedule(workers: list[int], stacks: list[str], runs: int) -> list[tuple[str, int]]:
    """Mirrored worker order per run (1, 2, 4, 4, 2, 1); at each step the stacks alternate which goes first."""
    order: list[tuple[str, int]] = []
    step = 0
    for _ in range(runs):
        for n in workers + workers[::-1]:
            for stack in (stacks if step % 2 == 0 else stacks[::-1]):
                order.append((stack, n))
            step += 1
    return order


def summarize(results: list[dict[str, Any]], workers: list[int], stacks: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for stack in stacks:
        rows: dict[str, Any] = {}
        for n in workers:
            mine = [r for r in results if r["stack"] == stack and r["workers"] == n]
            if not mine:
                continue
            walls = [r["wall_s"] for r in mine]
            median_wall = statistics.median(walls)
            chunks = mine[0]["chunks"]
            rows[str(n)] = {
                "runs": len(mine), "chunks": chunks, "wall_s": walls, "wall_min_s": min(walls),
                "wall_median_s": median_wall, "chunks_per_s": round(chunks / median_wall, 2),
                "workload_median_s": statistics.median(r["workload_s"] for r in mine),
                "load_before": [r["load_before"][0] for r in mine if r["load_before"]],
                "load_after": [r["load_after"][0] for r in mine if r["load_after"]],
                "machine_cpu_busy_median": statistics.median(r["machine_cpu_busy"] for r in mine),
            }
        base = rows.get("1")
        for n, row in rows.items():
            if base:
                row["ratio_to_1"] = round(row["chunks_per_s"] / base["chunks_per_s"], 2)
                row["efficiency"] = round(row["ratio_to_1"] / int(n), 2)
        summary[stack] = rows
    return summary


# -- cost ------------------------------------------------------------------------------------------
def _instance(spec: Any, cloud: str) -> dict[str, Any]:
    """What the cloud's compute adapter asks for this index spec (its pure request builder)."""
    from stackwise.adapters.compute import azureml, sagemaker, vertex

    stack = SimpleNamespace(outputs=SimpleNamespace(default_gpu=None))  # read for finetune jobs only
    if cloud == "gcp":
        machine = vertex.machine_spec(spec, stack)
        return {"instance": machine["machineType"], "accelerator": machine.get("acceleratorType")}
    if cloud == "aws":
        return {"instance": sagemaker.instance_type(spec, stack), "accelerator": None}
    return {"instance": azureml.vm_size(spec, stack), "accelerator": None}


def _price(cloud: str, instance: str, accelerator: str | None) -> Any:
    """The catalog's offer for this instance, or None. On GCP the machine type alone is not enough:
    n1-standard-8 is in the catalog only as the machine with an attached T4, so the accelerator
    must match too (a CPU-only n1-standard-8 is not that offer)."""
    from stackwise import catalog

    found = catalog.offer_for_instance(cloud, instance)
    if found is not None and cloud == "gcp" and found.accelerator != accelerator:
        return None
    return found


def cost(rate: float | None, rate_basis: str) -> dict[str, Any]:
    """USD per million chunks on each cloud, for the instance its adapter picks for an index job:
    the CLI's job (no GPU) and the same spec with `compute.gpu` = each single-GPU offer of that cloud."""
    from stackwise import catalog
    from stackwise.specs import IndexSpec

    rows = []
    variants: list[tuple[str, str | None]] = [("CLI default (no GPU)", None)]
    single = sorted({o.gpu for o in catalog.catalog().offers if o.count == 1}, key=catalog.gpu_names().index)
    variants += [(f"compute.gpu={g}", g) for g in single]
    for label, gpu in variants:
        spec = IndexSpec(source="s3://bucket/docs", index="kb", compute={"gpu": gpu} if gpu else {})
        for cloud in CLOUDS:
            if gpu and not any(o.cloud == cloud and o.count == 1 for o in catalog.offers(cloud, gpu)):
                continue  # the cloud does not offer that GPU singly; its adapter would refuse the spec
            picked = _instance(spec, cloud)
            offer = _price(cloud, picked["instance"], picked["accelerator"])
            row = {"cloud": cloud, "spec": label, "instance": picked["instance"],
                   "accelerator": picked["accelerator"]}
            if offer is None:
                row.update(priced=False, note="not in the GPU catalog (it lists GPU instances only): not priced")
            else:
                hours = 1e6 / (rate * 3600) if rate else None
                row.update(priced=True, gpus=f"{offer.count} x {offer.gpu}", region=offer.region, as_of=offer.as_of,
                           on_demand_hourly=offer.on_demand_hourly, spot_hourly=offer.spot_hourly,
                           on_demand_verified="on_demand" in offer.checked, spot_verified="spot" in offer.checked,
                           instance_hours_per_million=round(hours, 2) if hours else None,
                           usd_per_million_on_demand=round(hours * offer.on_demand_hourly, 2) if hours else None,
                           usd_per_million_spot=round(hours * offer.spot_hourly, 2) if hours else None)
            rows.append(row)
    return {
        "formula": "USD per 1M chunks = hourly price x 1e6 / (r x 3600); N instances: the same total if each "
                   "keeps rate r (N x price for 1/N of the time)",
        "r_chunks_per_s": rate, "r_basis": rate_basis,
        "assumptions": [
            "each cloud instance indexes at r, the rate one worker measured here (2 cores of this machine): "
            "not measured on any cloud instance",
            "IndexSpec.embedding.device defaults to 'cpu', so an index job on a GPU instance embeds on that "
            "instance's CPUs unless the spec sets embedding.device='cuda'; with the default spec r is the "
            "relevant kind of rate on GPU instances too, and the GPU is paid for idle",
            "provisioning, image pull and the cloud's per-job overhead are not included",
            "prices: the GPU catalog (stackwise/data/gpu_catalog.yaml) through stackwise.catalog; AWS spot "
            "figures there are an estimate (30 % of on-demand)",
        ],
        "rows": rows,
    }


# -- output ----------------------------------------------------------------------------------------
def markdown(result: dict[str, Any]) -> str:
    lines = [f"Index scale-out, {result['date']} ({result['cpus']} CPUs; load average before "
             f"{result['load_before']}, after {result['load_after']}; {result['chunks']} chunks from "
             f"{result['corpus']['documents']} documents; {result['threads']} torch threads per worker)", ""]
    cpus, threads = result["cpus"] or 1, result["threads"]
    over = [n for n in result["workers"] if n * threads > cpus]
    if over:
        lines += [f"**This machine has {cpus} CPUs and each worker runs {threads} torch threads: N = "
                  f"{', '.join(map(str, over))} oversubscribes them ({max(over) * threads} threads at "
                  f"N = {max(over)}), and N > {cpus} cannot scale at all here; those rows measure contention, "
                  "not scale-out. On a "
                  "cloud each worker is its own instance.**", ""]
    lines += ["| stack | workers | runs | wall s (each) | wall median s | workload median s | chunks/s | "
              "ratio to N=1 | efficiency | load 1-min before / after | machine CPU busy |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for stack, rows in result["summary"].items():
        for n, row in rows.items():
            lines.append(
                f"| {stack} | {n} | {row['runs']} | {', '.join(f'{w:.1f}' for w in row['wall_s'])} | "
                f"{row['wall_median_s']:.1f} | {row['workload_median_s']:.1f} | {row['chunks_per_s']:.2f} | "
                f"{row.get('ratio_to_1', '')} | {row.get('efficiency', '')} | "
                f"{'/'.join(f'{x:.1f}' for x in row['load_before'])} / "
                f"{'/'.join(f'{x:.1f}' for x in row['load_after'])} | {row['machine_cpu_busy_median']:.0%} |")
    c = result["cost"]
    lines += ["", f"Projected cost per 1M chunks: {c['formula']}; r = {c['r_chunks_per_s']} chunks/s "
              f"({c['r_basis']}).", "",
              "| cloud | index spec | instance the adapter picks | GPUs | $/h on demand (spot) | instance-hours "
              "per 1M | $ per 1M on demand (spot) |", "|---|---|---|---|---|---|---|"]
    for row in c["rows"]:
        instance = row["instance"] + (f" + {row['accelerator']}" if row.get("accelerator") else "")
        if not row["priced"]:
            lines.append(f"| {row['cloud']} | {row['spec']} | {instance} | - | not in the catalog | - | not priced |")
            continue
        flag = "" if row["on_demand_verified"] else " (unverified)"
        lines.append(f"| {row['cloud']} | {row['spec']} | {instance} | {row['gpus']} | {row['on_demand_hourly']}"
                     f"{flag} ({row['spot_hourly']}) | {row['instance_hours_per_million']} | "
                     f"{row['usd_per_million_on_demand']} ({row['usd_per_million_spot']}) |")
    lines += [""] + [f"- {a}" for a in c["assumptions"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=DEFAULT_DOCS,
                        help="documents: the Lee articles, repeated past 300 (default 600, about 1,000 chunks)")
    parser.add_argument("--quick", action="store_true", help="24 documents, one pass (a smoke run, minutes)")
    parser.add_argument("--runs", type=int, default=1, help="passes of the mirrored order 1,2,4,4,2,1")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--stacks", default="local,container")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per worker (STACKWISE_THREADS)")
    parser.add_argument("--image", help="training image for the container stack (default: build or reuse it)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per job")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "scaleout.json")
    args = parser.parse_args()
    docs = 24 if args.quick else args.docs
    workers = [int(x) for x in args.workers.split(",")]
    stacks = [s.strip() for s in args.stacks.split(",") if s.strip()]
    if unknown := set(stacks) - {"local", "container"}:
        parser.error(f"unknown stacks {sorted(unknown)}: use local, container")
    if 1 not in workers:
        parser.error("--workers must include 1 (the baseline of the ratios)")

    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
                              "workers": workers, "stacks": stacks, "threads": args.threads, "runs": args.runs,
                              "load_before": _loadavg(), "top_processes_before": _top_processes()}
    work = Path(tempfile.mkdtemp(prefix="stackwise-bench-scaleout-"))
    result["corpus"] = write_corpus(work / "docs", docs)
    envs: dict[str, tuple[Path, dict[str, str]]] = {}
    if "container" in stacks:
        from stackwise.images import find_engine

        engine = find_engine()
        if engine == "podman":
            os.environ.setdefault("CONTAINERS_CONF", str(REPO / "scripts" / "containers.conf"))
        started = time.monotonic()
        image = args.image or build_image(engine)
        result.update(engine=engine, image=image, image_build_s=round(time.monotonic() - started, 1))
        envs["container"] = (work / "container", make_project(work / "container", image, args.threads))
    if "local" in stacks:
        envs["local"] = (work / "local", make_project(work / "local", None, args.threads))

    results: list[dict[str, Any]] = []
    failed: dict[str, str] = {}  # a stack whose job failed runs no more jobs; the others go on
    plan = schedule(workers, stacks, args.runs)
    result["code_before"] = _code_state()
    try:
        for number, (stack, n) in enumerate(plan):
            if stack in failed:
                continue
            root, env = envs[stack]
            try:
                row = run_job(stack, n, work / "docs", root, env, f"s{number}-{stack}-w{n}", args.timeout)
            except JobFailed as exc:
                failed[stack] = str(exc)
                print(f"[{number + 1}/{len(plan)}] {exc}", file=sys.stderr, flush=True)
                continue
            results.append(row)
            print(f"[{number + 1}/{len(plan)}] {stack:9} workers={n}: {row['wall_s']:7.1f} s wall, "
                  f"{row['workload_s']:7.1f} s workload, {row['chunks_per_s']:6.2f} chunks/s, load "
                  f"{row['load_before'][0]:.2f} -> {row['load_after'][0]:.2f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["load_after"] = _loadavg()
    result["code_after"] = _code_state()
    result["failed"] = failed
    if not results:
        raise SystemExit(f"every job failed: {failed}")
    result["chunks"] = results[0]["chunks"]
    result["jobs"] = results
    result["summary"] = summarize(results, workers, stacks)
    basis = "container" if "1" in result["summary"].get("container", {}) else "local"
    ones = [r for r in results if r["stack"] == basis and r["workers"] == 1]
    if ones:
        rate: float | None = round(statistics.median(r["workload_chunks_per_s"] for r in ones), 2)
        rate_basis = (f"{basis} stack, N = 1: chunks / workload seconds, median of {len(ones)} runs; the "
                      f"end-to-end job rate (wall) was {result['summary'][basis]['1']['chunks_per_s']} chunks/s")
    else:
        rate, rate_basis = None, "no N = 1 job succeeded: no rate, nothing projected"
    result["cost"] = cost(rate, rate_basis)
    result["note"] = (f"{os.cpu_count()} CPUs here: N workers x {args.threads} torch threads above that "
                      "oversubscribes them, and other processes on the machine share them (see load and "
                      "machine_cpu_busy)")
    result["table"] = markdown(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print()
    print(result["table"])
    if result["code_before"]["worktree_digest"] != result["code_after"]["worktree_digest"]:
        print("\nthe working tree changed during the run (code_before/code_after): jobs may have run different code")
    print(f"\nwrote {args.out}")
    if failed:
        raise SystemExit(f"failed: {failed}")


if __name__ == "__main__":
    main()
