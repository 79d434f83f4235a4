"""One learner against two data-parallel learners on the same GRPO run (this machine, CPU, gloo).

    .venv/bin/python bench/data_parallel.py [--steps 20] [extra key=value ...]

Runs pipelines/grpo.py on the demo defaults twice, one after the other, with cluster.learner.count=1 and 2
(cluster.num_cpus=3, so that both plans get the same per-actor shares), and prints the mean step time and its
parts (steps 3 onwards), and how far apart the two runs end up: the sampled reward of every step and the
held-out reward should match, because the group's update equals one learner's on the whole batch.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ("time/step", "time/generate", "time/logprobs", "time/update", "time/sync")


def run(count: int, args, extra: list[str]) -> tuple[list[dict], dict]:
    out = REPO / "runs" / "bench-dp"
    cmd = [sys.executable, str(REPO / "pipelines" / "grpo.py"), f"runs_dir={out}", f"run_name=learners-{count}",
           f"train.steps={args.steps}", "progress=false", "checkpoint.every=0", "cluster.num_cpus=3",
           f"cluster.learner.count={count}", *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    d = out / f"learners-{count}"
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    return rows, json.loads((d / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    args, extra = ap.parse_known_args()
    res = {c: run(c, args, extra) for c in (1, 2)}
    for c, (rows, summary) in res.items():
        parts = {k: round(statistics.mean(r[k] for r in rows[2:]), 2) for k in PARTS}
        print(f"learners={c}: {parts}, held-out {summary['heldout_reward_start']:.3f} -> {summary['heldout_reward_end']:.3f}")
    (a, _), (b, _) = res[1], res[2]
    print("max |sampled reward difference| over the steps:", max(abs(x["reward/mean"] - y["reward/mean"]) for x, y in zip(a, b)))


if __name__ == "__main__":
    main()
