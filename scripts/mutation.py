"""Mutation testing of the modules that carry stackwise's central promises (cosmic-ray).

Run it with `bash scripts/mutation.sh [TARGET ...]` (outside CI: it takes tens of minutes on two
cores). For each target it copies the working tree to build/mutation/tree (the repository itself is
never mutated), lets cosmic-ray mutate one module there, runs the target's tests against the copy
for every mutant, and writes build/mutation/report.md: the score per target and every surviving
mutant with its diff.

Mutants are sampled one per site: of the variants cosmic-ray makes for one operator at one place
(`a + b` becomes `a - b`, `a * b`, `a ** b` ...) the most telling one is kept (`-` for `+`, `!=` for
`==`), so a run stays within the budget of a working session. A target may also name the
functions to mutate (the gate's functions of the registry, not its MLflow plumbing).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "build" / "mutation"
TREE = WORK / "tree"
IMPORT_ROOT = WORK / "importroot"  # holds `stackwise` -> TREE/sdk, so tests import the mutated copy


@dataclass(frozen=True)
class Target:
    module: str
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()  # empty: the whole module


TARGETS: dict[str, Target] = {
    "filters": Target("sdk/filters.py", ("tests/unit/test_filters.py", "tests/unit/test_specs_filters.py",
                                          "tests/unit/test_inputs_filter_depth.py",
                                          "tests/contract/test_embedded_filters.py")),
    # Each store's dialect of the filter (sdk/filters.py until issue 18 moved them beside the adapters).
    "filters-lance": Target("adapters/vectors/embedded_filters.py", ("tests/unit/test_filters.py",
                                                                     "tests/contract/test_embedded_filters.py")),
    "filters-pinecone": Target("adapters/vectors/pinecone_filters.py", ("tests/unit/test_filters.py",
                                                                        "tests/contract/test_pinecone_filters.py")),
    "filters-milvus": Target("adapters/vectors/milvus_filters.py", ("tests/unit/test_filters.py",
                                                                    "tests/contract/test_milvus_filters.py")),
    "filters-weaviate": Target("adapters/vectors/weaviate_filters.py", ("tests/unit/test_filters.py",
                                                                        "tests/contract/test_weaviate_store.py")),
    "gate": Target("sdk/model_registry.py", ("tests/unit/test_gate_same_data.py", "tests/unit/test_inputs_model_names.py"),
                   functions=("check_alias", "check_model_name", "gate_metrics", "evaluations", "promote", "_move")),
    "documents": Target("sdk/documents.py", ("tests/unit/test_index_identity.py", "tests/unit/test_documents.py")),
    "index": Target("sdk/workloads/index.py", ("tests/unit/test_index_identity.py", "tests/e2e/test_index_search.py")),
    "embedded": Target("adapters/vectors/embedded.py", ("tests/contract/test_embedded_store.py",)),
    "embedded-table": Target("adapters/vectors/embedded_table.py", ("tests/contract/test_embedded_store.py",
                                                                     "tests/contract/test_embedded_filters.py")),
    "embedded-damage": Target("adapters/vectors/embedded_damage.py", ("tests/contract/test_embedded_store.py",)),
    "submit": Target("adapters/compute/base.py", ("tests/contract/test_compute_sagemaker.py",)),
}

# Of the variants at one site, the one kept: the opposite operator where there is one.
PREFERRED = ("Sub", "Add", "Div", "Mul", "NotEq", "Eq", "GtE", "LtE", "Lt", "Gt", "IsNot", "Is", "NotIn", "In")


def copy_tree(rev: str | None) -> None:
    """The files of commit `rev`, or of the working tree (tracked and new, not ignored), under TREE."""
    if TREE.exists():
        shutil.rmtree(TREE)
    TREE.mkdir(parents=True)
    if rev:
        archive = subprocess.run(["git", "archive", rev], cwd=REPO, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(TREE)], input=archive, check=True)
    else:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                               check=True, capture_output=True).stdout.decode().split("\0")
        for name in filter(None, files):
            source = REPO / name
            if source.is_file():
                (TREE / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, TREE / name)
    # The package maps sdk/ -> stackwise, adapters/ -> stackwise.adapters, infra/ -> stackwise.infra.
    (TREE / "sdk" / "adapters").symlink_to("../adapters")
    (TREE / "sdk" / "infra").symlink_to("../infra")
    IMPORT_ROOT.mkdir(parents=True, exist_ok=True)
    link = IMPORT_ROOT / "stackwise"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(TREE / "sdk")


def python() -> str:
    return str(REPO / ".venv" / "bin" / "python")


def test_command(target: Target) -> str:
    """pytest over the target's tests, one run per test root (tests/unit and tests/contract
    have conftests of the same module name and cannot share a run)."""
    roots: dict[str, list[str]] = {}
    for test in target.tests:
        if (TREE / test).exists():
            roots.setdefault(test.split("/")[1], []).append(test)
    env = f"env PYTHONPATH={IMPORT_ROOT} OMP_NUM_THREADS=1 MKL_NUM_THREADS=1"
    runs = " && ".join(f"{env} {python()} -m pytest -x -q -p no:cacheprovider {' '.join(tests)}"
                       for tests in roots.values())
    # cosmic-ray splits the command with shlex and runs it without a shell: `&&` needs one.
    return f"sh -c {shlex.quote(runs)}" if len(roots) > 1 else runs


def write_config(name: str, target: Target, timeout: float) -> Path:
    config = WORK / f"{name}.toml"
    config.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(target.module)}\n"
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(test_command(target))}\n\n"
        "[cosmic-ray.distributor]\nname = \"local\"\n", encoding="utf-8")
    return config


def function_lines(path: Path, names: tuple[str, ...]) -> list[tuple[int, int]]:
    """Line ranges of the named functions and methods."""
    spans = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in names:
            spans.append((node.lineno, node.end_lineno or node.lineno))
    missing = set(names) - {n.name for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if missing:
        raise SystemExit(f"mutation: {path}: no function named {', '.join(sorted(missing))}; "
                         "fix TARGETS in scripts/mutation.py")
    return spans


def inert_spans(path: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where a mutant cannot change behaviour: annotations (never evaluated under
    `from __future__ import annotations`, which every module here has) and `if TYPE_CHECKING:`."""
    spans = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        parts = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            parts.append(node.returns)
        elif isinstance(node, ast.arg):
            parts.append(node.annotation)
        elif isinstance(node, ast.AnnAssign):
            parts.append(node.annotation)
        elif isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            parts.append(node.test)
        spans += [((p.lineno, p.col_offset), (p.end_lineno, p.end_col_offset)) for p in parts if p is not None]
    return spans


def sample(session: Path, target: Target) -> tuple[int, int]:
    """Skip all but one variant per (place, operator), mutants in annotations, and everything
    outside the target's functions."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    spans = function_lines(TREE / target.module, target.functions) if target.functions else None
    inert = inert_spans(TREE / target.module)
    groups: dict[tuple, list[tuple[str, str]]] = {}
    with use_db(str(session), WorkDB.Mode.open) as db:
        items = list(db.pending_work_items)
        skip = []
        for item in items:
            mutation = item.mutations[0]
            line = mutation.start_pos[0]
            if spans is not None and not any(a <= line <= b for a, b in spans):
                skip.append(item.job_id)
                continue
            if any(a <= tuple(mutation.start_pos) < b for a, b in inert):
                skip.append(item.job_id)
                continue
            family, _, variant = mutation.operator_name.rpartition("_")
            if not family.startswith(("core/ReplaceBinaryOperator", "core/ReplaceComparisonOperator")):
                family, variant = mutation.operator_name, ""
            key = (str(mutation.module_path), tuple(mutation.start_pos), family)
            groups.setdefault(key, []).append((variant, item.job_id))
        for variants in groups.values():
            variants.sort(key=lambda v: (PREFERRED.index(v[0]) if v[0] in PREFERRED else len(PREFERRED), v[0]))
            skip.extend(job for _, job in variants[1:])
        db.set_multiple_results(skip, WorkResult(output="sampled out", worker_outcome=WorkerOutcome.SKIPPED))
        return len(items), len(items) - len(skip)


def results(session: Path) -> list[dict]:
    from cosmic_ray.work_db import WorkDB, use_db

    rows = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome != "normal":
                if result.worker_outcome == "skipped":
                    continue
            m = item.mutations[0]
            rows.append({"line": m.start_pos[0], "operator": m.operator_name.removeprefix("core/"),
                         "outcome": result.worker_outcome, "test": result.test_outcome, "diff": result.diff or ""})
    return rows


def run_target(name: str, target: Target, timeout: float) -> dict:
    session = WORK / f"{name}.sqlite"
    session.unlink(missing_ok=True)
    config = write_config(name, target, timeout)
    cosmic = str(Path(sys.executable).parent / "cosmic-ray")
    # Run as cosmic-ray runs it (shlex-split, no shell), so a command it cannot run fails here.
    baseline = subprocess.run(shlex.split(test_command(target)), cwd=TREE, capture_output=True, text=True)
    if baseline.returncode != 0:
        raise SystemExit(f"mutation: {name}: the tests fail before any mutation:\n{baseline.stdout[-2000:]}")
    subprocess.run([cosmic, "init", str(config), str(session)], cwd=TREE, check=True)
    made, kept = sample(session, target)
    print(f"[{name}] {target.module}: {made} mutants made, {kept} kept (one per site)", flush=True)
    started = time.monotonic()
    subprocess.run([cosmic, "exec", str(config), str(session)], cwd=TREE, check=True)
    rows = results(session)
    killed = sum(r["test"] == "killed" for r in rows)
    timeouts = sum(r["outcome"] == "abnormal" for r in rows)  # a timeout kills the mutant too
    survived = [r for r in rows if r["test"] == "survived"]
    scored = killed + len(survived)
    summary = {"target": name, "module": target.module, "mutants": kept, "killed": killed,
               "survived": len(survived), "abnormal": timeouts,
               "score": round(killed / scored, 3) if scored else None,
               "minutes": round((time.monotonic() - started) / 60, 1), "surviving": survived}
    print(f"[{name}] score {summary['score']} ({killed} killed, {len(survived)} survived, "
          f"{timeouts} abnormal) in {summary['minutes']} min", flush=True)
    return summary


def report(summaries: list[dict]) -> str:
    lines = ["# Mutation run", "", f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             "`bash scripts/mutation.sh " + " ".join(s["target"] for s in summaries) + "`", "",
             "| target | module | mutants | killed | survived | score | minutes |", "|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s['target']} | {s['module']} | {s['mutants']} | {s['killed']} | {s['survived']} | "
                     f"{s['score']} | {s['minutes']} |")
    for s in summaries:
        lines += ["", f"## Surviving in {s['module']}", ""]
        for r in sorted(s["surviving"], key=lambda r: r["line"]):
            diff = "\n".join(l for l in r["diff"].splitlines() if l.startswith(("+", "-"))
                             and not l.startswith(("+++", "---")))
            lines += [f"- line {r['line']}, {r['operator']}", "```diff", diff, "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help=f"of {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one mutant's tests may take")
    parser.add_argument("--rev", help="mutate this commit's files (default: the working tree)")
    parser.add_argument("--out", default="report", help="report file name under build/mutation (no suffix)")
    args = parser.parse_args(argv)
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        print(f"mutation: unknown target {', '.join(unknown)}; choose from {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    WORK.mkdir(parents=True, exist_ok=True)
    copy_tree(args.rev)
    summaries = [run_target(name, TARGETS[name], args.timeout) for name in (args.targets or TARGETS)]
    (WORK / f"{args.out}.md").write_text(report(summaries), encoding="utf-8")
    (WORK / f"{args.out}.json").write_text(json.dumps(summaries, indent=1), encoding="utf-8")
    print(f"report: {WORK / (args.out + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
