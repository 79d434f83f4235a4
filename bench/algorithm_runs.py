"""A short run of every policy-optimisation algorithm on the built-in task, held-out reward before and after.

    .venv/bin/python bench/algorithm_runs.py [--steps 60] [--algos grpo,dr_grpo,...] [--jobs 2] [extra key=value ...]

Each run is `pipelines/grpo.py algo.name=NAME` (or `pipelines/ppo.py` for an algorithm with a critic) on the demo
defaults (config/tiny-cpu.yaml) with `train.steps` shortened; extra `key=value` arguments go to every run. Prints one
line per algorithm and, last, a JSON object {algo: {heldout_reward_start, heldout_reward_end, train_reward_first,
train_reward_last, mean_step_s}} (train rewards: means over the first and last tenth of the steps).
Runs go to runs/algorithms/<algo>-s<seed>/ (two at a time by default: each role takes about one core).
The algorithms (all by default) are learners/algorithms.py ALGORITHMS' rows, and which script runs each is its
``script_for``: a new row is benched without an edit here.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from learners.algorithms import ALGORITHMS, script_for  # noqa: E402

ALGOS = list(ALGORITHMS)


def run(algo: str, args, extra: list[str]) -> dict:
    name = f"{algo}-s{args.seed}"
    cmd = [sys.executable, str(REPO / script_for(algo)), f"runs_dir={REPO / 'runs' / 'algorithms'}",
           f"run_name={name}", f"train.steps={args.steps}", f"seed={args.seed}", "progress=false",
           f"algo.name={algo}", *extra]
    log = REPO / "runs" / "algorithms" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        return {"error": f"exit {rc}, see {log}"}
    run_dir = REPO / "runs" / "algorithms" / name
    s = json.loads((run_dir / "summary.json").read_text())
    out = {k: round(s[k], 4) for k in ("heldout_reward_start", "heldout_reward_end", "mean_step_s")}
    # Greedy held-out reward moves only where the mode flips; the sampled train reward, averaged over the first
    # and last tenth of the run, shows the policy's progress with less noise.
    rows = [json.loads(line)["reward/mean"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    k = max(1, len(rows) // 10)
    out.update(train_reward_first=round(sum(rows[:k]) / k, 4), train_reward_last=round(sum(rows[-k:]) / k, 4))
    print(f"{algo:>22}: held-out reward {out['heldout_reward_start']:.3f} -> {out['heldout_reward_end']:.3f}, "
          f"train reward {out['train_reward_first']:.3f} -> {out['train_reward_last']:.3f} "
          f"({out['mean_step_s']:.1f} s/step)", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--algos", default=",".join(ALGOS))
    ap.add_argument("--jobs", type=int, default=2)
    args, extra = ap.parse_known_args()
    algos = [a for a in args.algos.split(",") if a]
    unknown = sorted(set(algos) - set(ALGOS))
    if unknown:
        sys.exit(f"unknown algorithm(s) {unknown}; choose from {ALGOS}")
    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip(algos, pool.map(lambda a: run(a, args, extra), algos)))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
