#!/usr/bin/env python
"""`stackwise plan` speed: the whole command in a fresh process per stack, and where its time goes.

Two ways to load the provider SDKs are run side by side, alternating, in the same run:
  narrow - the default: only the resource modules the program uses (infra/providers.py);
  whole  - the baseline: every service the program touches loaded whole, through the
           top-level package (`STACKWISE_NARROW_IMPORTS=0`), as the program did before.

1. cold: `stackwise plan --stack S --json` in a new process, wall and CPU seconds (min and
   median of --runs), against `python -c pass`; the load average before and after is recorded,
   because other processes on the machine slow every figure (CPU seconds suffer least).
2. phases: in one fresh process per stack and mode, the seconds of each step of the command
   (CLI import, stack file, Pulumi import, first plan = provider imports + run, second plan =
   the run alone) and how many provider modules were loaded.

    python bench/plan.py [--runs 5] [--stacks dev-aws dev-gcp dev-azure prod-aws] [--out bench/out/plan.json]

No timing is asserted anywhere in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable
STACKWISE = str(Path(PY).with_name("stackwise"))
MODES = {"narrow": "1", "whole": "0"}

PHASES = r"""
import json, sys, time
t0 = time.perf_counter()
import stackwise.cli  # what the console script imports (Typer, the SDK's CLI module)
t1 = time.perf_counter()
from stackwise.stack import load_stack
from stackwise.infra.config import InfraConfig
stack = load_stack(sys.argv[1]); InfraConfig.load(stack.config, stack.source)
t2 = time.perf_counter()
import pulumi, pulumi.runtime.mocks
from stackwise.infra.plan import plan
t3 = time.perf_counter()
first = plan(stack)
t4 = time.perf_counter()
plan(stack)
t5 = time.perf_counter()
providers = [m for m in sys.modules if m.split(".")[0] in ("pulumi_aws", "pulumi_gcp", "pulumi_azure_native")]
print(json.dumps({"import_cli": t1 - t0, "stack_file": t2 - t1, "import_pulumi": t3 - t2, "first_plan": t4 - t3,
                  "second_plan": t5 - t4, "provider_modules": len(providers), "resources": len(first["resources"])}))
"""


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_once(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 3):  # 3: over budget, still a full plan
        raise SystemExit(f"{' '.join(cmd)} exited {code}: {proc.stderr.read().decode()[-2000:]}")
    proc.stderr.close()
    return wall, usage.ru_utime + usage.ru_stime


def summary(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3)}


def cold(stacks: list[str], runs: int) -> dict:
    env = dict(os.environ)
    base = [run_once([PY, "-c", "pass"], env)[0] for _ in range(runs)]
    out: dict = {"python_pass_s": summary(base), "stacks": {}}
    for name in stacks:
        samples: dict[str, dict[str, list[float]]] = {m: {"wall": [], "cpu": []} for m in MODES}
        for _ in range(runs):
            for mode, flag in MODES.items():  # alternate, so load drifts hit both alike
                wall, cpu = run_once([STACKWISE, "plan", "--stack", name, "--json"],
                                     {**env, "STACKWISE_NARROW_IMPORTS": flag})
                samples[mode]["wall"].append(wall)
                samples[mode]["cpu"].append(cpu)
        row = {m: {k: summary(v) for k, v in s.items()} for m, s in samples.items()}
        row["whole_over_narrow"] = {k: round(row["whole"][k]["median"] / row["narrow"][k]["median"], 2)
                                    for k in ("wall", "cpu")}
        out["stacks"][name] = row
        print(f"cold {name}: narrow wall {row['narrow']['wall']} cpu {row['narrow']['cpu']}; "
              f"whole wall {row['whole']['wall']} cpu {row['whole']['cpu']}; load {loadavg()}", flush=True)
    return out


def phases(stacks: list[str], runs: int) -> dict:
    out: dict = {}
    for name in stacks:
        out[name] = {}
        for mode, flag in MODES.items():
            samples = []
            for _ in range(runs):
                proc = subprocess.run([PY, "-c", PHASES, name], cwd=REPO, capture_output=True, text=True, check=True,
                                      env={**os.environ, "STACKWISE_NARROW_IMPORTS": flag})
                samples.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            # The run with the median total, so the phases add up.
            samples.sort(key=lambda s: sum(v for k, v in s.items() if k not in ("provider_modules", "resources")))
            chosen = samples[len(samples) // 2]
            chosen = {k: round(v, 3) if isinstance(v, float) else v for k, v in chosen.items()}
            chosen["provider_imports"] = round(chosen["first_plan"] - chosen["second_plan"], 3)
            out[name][mode] = chosen
        print(f"phases {name}: narrow {out[name]['narrow']}\n  whole {out[name]['whole']}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stacks", nargs="+", default=["dev-aws", "dev-gcp", "dev-azure", "prod-aws"])
    parser.add_argument("--out", default=str(HERE / "out" / "plan.json"))
    args = parser.parse_args()
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
                    "runs": args.runs, "load_before": loadavg()}
    result["cold"] = cold(args.stacks, args.runs)
    result["phases"] = phases(args.stacks, max(1, args.runs // 2))
    result["load_after"] = loadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"load average before {result['load_before']}, after {result['load_after']}; written {args.out}")


if __name__ == "__main__":
    main()
