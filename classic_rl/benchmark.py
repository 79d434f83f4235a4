"""Several seeds of each deep-RL script on CartPole-v1, then one figure and one table of their returns.

    python -m classic_rl.benchmark --seeds 1 2 3 --out runs/classic_rl/bench          # train (skips finished runs)
    python -m classic_rl.benchmark --seeds 1 2 3 --out runs/classic_rl/bench --report # figure + table only

Runs go one after another on one torch thread (the machine is shared); each writes its own run folder
(metrics.jsonl, tb/, summary.json) under --out. The report writes cartpole_returns.png, results.md and
results.json there.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from classic_rl import a2c, dqn, ppo, reinforce
from classic_rl.gridplots import smooth

SCRIPTS = {"ppo": ppo, "dqn": dqn, "a2c": a2c, "reinforce": reinforce}
# PPO and DQN get CleanRL's budget so the numbers compare; REINFORCE and A2C have no CleanRL script.
DEFAULT_STEPS = {"ppo": 500_000, "dqn": 500_000, "a2c": 200_000, "reinforce": 200_000}
# Published CleanRL results on CartPole-v1 (docs/rl-algorithms/ppo.md and dqn.md of vwxyzjn/cleanrl).
CLEANRL = {"ppo": "490.04 ± 6.12 (ppo.py; openai/baselines PPO2: 497.54 ± 4.02)", "dqn": "488.69 ± 16.11 (dqn.py)",
           "a2c": "no CleanRL script", "reinforce": "no CleanRL script"}


def run_all(algos: list[str], seeds: list[int], out: Path, steps: dict[str, int]) -> None:
    for algo in algos:
        for seed in seeds:
            run_dir = out / f"{algo}_seed{seed}"
            if (run_dir / "summary.json").exists():
                print(f"{run_dir} done already, skipped", flush=True)
                continue
            args = SCRIPTS[algo].Args(seed=seed, total_timesteps=steps[algo], run_dir=str(run_dir), threads=1)
            print(f"training {algo} seed {seed} for {steps[algo]} steps", flush=True)
            print(SCRIPTS[algo].train(args), flush=True)


def curve(run_dir: Path, grid: np.ndarray) -> np.ndarray:
    """charts/episodic_return of one run, a trailing mean over 20 rows, on the step grid."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    pts = [(r["step"], r["charts/episodic_return"]) for r in rows if r.get("charts/episodic_return") is not None]
    steps, rets = np.array(pts, dtype=float).T
    return np.interp(grid, steps, smooth(rets, 20))


def report(algos: list[str], seeds: list[int], out: Path, steps: dict[str, int]) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = {}
    fig, axes = plt.subplots(1, len(algos), figsize=(4.2 * len(algos), 3.4), squeeze=False)
    for ax, algo in zip(axes[0], algos):
        dirs = [out / f"{algo}_seed{s}" for s in seeds if (out / f"{algo}_seed{s}" / "summary.json").exists()]
        if not dirs:
            continue
        sums = [json.loads((d / "summary.json").read_text()) for d in dirs]
        train_last = np.array([s["train/return_last100"] for s in sums])
        evals = np.array([s["eval/return_mean"] for s in sums])
        results[algo] = {"seeds": [s["seed"] for s in sums], "steps": int(sums[0]["global_step"]),
                         "train_return_last100_mean": float(train_last.mean()),
                         "train_return_last100_std": float(train_last.std()),
                         "train_return_last100_per_seed": train_last.tolist(),
                         "greedy_eval_mean": float(evals.mean()), "greedy_eval_std": float(evals.std()),
                         "greedy_eval_per_seed": evals.tolist(),
                         "random_return_mean": float(sums[0]["random/return_mean"]),
                         "wall_s_per_run": float(np.mean([s["wall_s"] for s in sums])), "cleanrl": CLEANRL[algo]}
        grid = np.linspace(0, steps[algo], 200)
        curves = np.stack([curve(d, grid) for d in dirs])
        for c, s in zip(curves, results[algo]["seeds"]):
            ax.plot(grid, c, lw=0.8, alpha=0.5, label=f"seed {s}")
        ax.plot(grid, curves.mean(0), lw=2.0, color="black", label="mean")
        if algo in ("ppo", "dqn"):
            ax.axhline(float(CLEANRL[algo].split()[0]), color="tab:red", ls="--", lw=1, label="CleanRL published")
        ax.set_title(f"{algo} on CartPole-v1 ({len(dirs)} seeds)", fontsize=10)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("episodic return (training)")
        ax.set_ylim(0, 520)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "cartpole_returns.png", dpi=110)
    plt.close(fig)

    lines = ["| algorithm | steps | seeds | training return, last 100 episodes | greedy evaluation (10 episodes) | "
             "CleanRL published |", "|---|---|---|---|---|---|"]
    for algo, r in results.items():
        lines.append(f"| {algo} | {r['steps']:,} | {len(r['seeds'])} | {r['train_return_last100_mean']:.1f} ± "
                     f"{r['train_return_last100_std']:.1f} | {r['greedy_eval_mean']:.1f} ± {r['greedy_eval_std']:.1f}"
                     f" | {r['cleanrl']} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print("\n".join(lines))
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algos", nargs="+", default=list(SCRIPTS), choices=list(SCRIPTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--out", default="runs/classic_rl/bench")
    ap.add_argument("--steps", nargs="*", default=[], metavar="ALGO=N", help="override a budget, e.g. ppo=100000")
    ap.add_argument("--report", action="store_true", help="only draw the figure and table of finished runs")
    args = ap.parse_args(argv)
    steps = dict(DEFAULT_STEPS)
    for item in args.steps:
        algo, _, n = item.partition("=")
        if algo not in SCRIPTS or not n.isdigit():
            ap.error(f"--steps takes ALGO=N with ALGO one of {list(SCRIPTS)}, got {item!r}")
        steps[algo] = int(n)
    out = Path(args.out)
    if not args.report:
        run_all(args.algos, args.seeds, out, steps)
    report(args.algos, args.seeds, out, steps)


if __name__ == "__main__":
    main()
