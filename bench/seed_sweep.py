"""One configuration of an RL pipeline over several seeds: held-out reward before and after, and the worst case.

    .venv/bin/python bench/seed_sweep.py [--seeds 0,1,2,3,4] [--script grpo] [--tag demo] [--jobs 1] [key=value ...]

Each run is `pipelines/<script>.py seed=S` with the demo defaults (config/tiny-cpu.yaml) and the extra `key=value`
arguments; runs go to runs/sweep/<tag>-s<seed>/. Prints a markdown table (seed, held-out start -> end, gain, train
reward over the first and last tenth of the steps, peak KL, s/step) and, last, one JSON line with every run and
the smallest gain. A configuration is robust when the smallest gain is positive and no run collapsed: learning
claims on this project are made over seeds, never on the one that was tried (docs/grpo.md).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(seed: int, args, extra: list[str]) -> dict:
    name = f"{args.tag}-s{seed}"
    out_dir = REPO / "runs" / "sweep"
    cmd = [sys.executable, str(REPO / "pipelines" / f"{args.script}.py"), f"runs_dir={out_dir}", f"run_name={name}",
           f"seed={seed}", "progress=false", "tensorboard=false", "overwrite=true", *extra]
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / f"{name}.log"
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        return {"seed": seed, "error": f"exit {rc}, see {log}"}
    s = json.loads((out_dir / name / "summary.json").read_text())
    rows = [json.loads(line) for line in (out_dir / name / "metrics.jsonl").read_text().splitlines() if line.strip()]
    k = max(1, len(rows) // 10)
    r = [row["reward/mean"] for row in rows]
    return {"seed": seed, "start": round(s["heldout_reward_start"], 4), "end": round(s["heldout_reward_end"], 4),
            "gain": round(s["heldout_reward_end"] - s["heldout_reward_start"], 4),
            "train_first": round(sum(r[:k]) / k, 4), "train_last": round(sum(r[-k:]) / k, 4),
            "kl_max": round(max(row.get("actor/kl_loss", row.get("actor/kl_reward", 0.0)) for row in rows), 4), "s_per_step": round(s["mean_step_s"], 2),
            # multi-turn runs (env.name set): the same held-out task with no tool offered, at the end
            **({"end_no_tools": round(s["heldout_reward_end_without_tools"], 4)}
               if "heldout_reward_end_without_tools" in s else {})}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--script", default="grpo", choices=["grpo", "ppo"])
    ap.add_argument("--tag", default="demo")
    ap.add_argument("--jobs", type=int, default=1)
    args, extra = ap.parse_known_args()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    with ThreadPoolExecutor(args.jobs) as pool:
        res = list(pool.map(lambda s: run(s, args, extra), seeds))
    print(f"\n`{args.script}.py {' '.join(extra)}` ({args.tag})\n")
    print("| seed | held-out start -> end | gain | train reward first -> last tenth | max KL | s/step |")
    print("|---|---|---|---|---|---|")
    for r in res:
        if "error" in r:
            print(f"| {r['seed']} | {r['error']} | | | | |")
        else:
            no_tools = f" (no tools: {r['end_no_tools']:.3f})" if "end_no_tools" in r else ""
            print(f"| {r['seed']} | {r['start']:.3f} -> {r['end']:.3f}{no_tools} | {r['gain']:+.3f} | "
                  f"{r['train_first']:.3f} -> {r['train_last']:.3f} | {r['kl_max']:.3f} | {r['s_per_step']:.2f} |")
    gains = [r["gain"] for r in res if "error" not in r]
    print(json.dumps({"tag": args.tag, "args": extra, "runs": res, "min_gain": min(gains) if gains else None}))


if __name__ == "__main__":
    main()
