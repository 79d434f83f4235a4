"""The tabular part in pictures, one command:

    python -m classic_rl.demo --out runs/classic_rl

writes into --out
    frozenlake_planning.png  value iteration and policy iteration on FrozenLake 4x4 (slippery): V* heatmap with
                             greedy arrows, and how each converged
    maze_qlearning.png       a hand-made deterministic maze: value iteration's V* against what Q-learning learnt
                             (max_a Q and its greedy arrows), and Q-learning's learning curve
    cliff_paths.png          the classic cliff picture (Sutton & Barto 2018, Example 6.6): SARSA's safe path
                             against Q-learning's path along the edge
    cliff_returns.png        their online returns per episode, averaged over --runs runs
    cliff_values.png         both methods' max_a Q heatmaps with greedy arrows
    qlearning_cliff.gif      Q-learning's max_a Q and greedy arrows on the cliff, episode by episode
    metrics.jsonl, tb/, summary.json (through runlog.RunLog)
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from classic_rl import gridplots
from classic_rl.dynamic_programming import (
    finite_horizon_evaluation, greedy_policy, optimal_actions, policy_evaluation, policy_iteration, value_iteration,
)
from classic_rl.mdp import from_gymnasium, gridworld, gymnasium_returns, most_likely_path
from classic_rl.td_control import td_control
from runlog import RunLog

MAZE = [
    "S....",
    ".###.",
    ".#G..",
    ".#.#.",
    "...#.",
]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/classic_rl", help="folder for the pictures and logs")
    ap.add_argument("--runs", type=int, default=10, help="independent runs averaged in the cliff curves")
    ap.add_argument("--episodes", type=int, default=1000, help="episodes per cliff run")
    ap.add_argument("--rollouts", type=int, default=2000, help="FrozenLake episodes that check the optimal policy")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.runs < 1 or args.episodes < 10 or args.rollouts < 1:
        ap.error("--runs must be >= 1, --episodes >= 10 and --rollouts >= 1")
    out = Path(args.out)
    log = RunLog(out, tensorboard=True, config=vars(args))
    summary: dict = {}

    # --- 1. Planning with the model: FrozenLake 4x4, slippery ---------------------------------------------
    lake = from_gymnasium("FrozenLake-v1")
    vi = value_iteration(lake, gamma=0.99, tol=1e-10)
    pi = policy_iteration(lake, gamma=0.99, tol=1e-10)
    # gymnasium cuts FrozenLake at 100 steps: the success rate is the 100-step probability of the goal.
    success_exact = float(finite_horizon_evaluation(lake, vi.policy, horizon=100)[int(lake.start.argmax())])
    success_rollouts = float(gymnasium_returns("FrozenLake-v1", vi.policy, args.rollouts, seed=args.seed).mean())
    summary.update({"frozenlake/vi_sweeps": vi.sweeps, "frozenlake/pi_iterations": len(pi.policy_changes),
                    "frozenlake/pi_eval_sweeps": pi.sweeps, "frozenlake/V*_start": float(vi.V[0]),
                    "frozenlake/same_policy": bool(torch.equal(vi.policy, pi.policy)),
                    "frozenlake/success_100_steps_exact": success_exact,
                    "frozenlake/success_rollouts": success_rollouts})

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    gridplots.draw_values(axes[0], lake, vi.V, vi.policy, title=f"value iteration: V* and pi* (gamma 0.99)\n"
                          f"success {success_rollouts:.3f} in {args.rollouts} gymnasium episodes")
    gridplots.draw_values(axes[1], lake, pi.V, pi.policy, title=f"policy iteration: {len(pi.policy_changes)} "
                          f"improvements\n({pi.sweeps} evaluation sweeps)")
    axes[2].semilogy(vi.deltas, lw=1.5, label="value iteration: max|V_k+1 - V_k|")
    axes[2].axhline(1e-10, color="gray", ls="--", lw=1, label="tolerance")
    axes[2].set_xlabel("sweep")
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    axes[2].set_title("convergence (Bellman optimality is a gamma-contraction)", fontsize=10)
    gridplots.save(fig, out / "frozenlake_planning.png")

    # --- 2. Learning without the model: Q-learning on a deterministic maze ---------------------------------
    maze = gridworld(MAZE, name="maze")
    decision = torch.tensor([ch in "S." for ch in "".join(MAZE)])
    maze_vi = value_iteration(maze, gamma=0.9)
    # Q-learning is off-policy: it learns Q* even while exploring heavily, which reaches every dead end.
    maze_ql = td_control(maze, "q_learning", episodes=500, alpha=0.5, epsilon=0.5, gamma=0.9, seed=args.seed)
    ql_policy = greedy_policy(maze_ql.Q)
    ql_value, _ = policy_evaluation(maze, ql_policy, gamma=0.9)
    summary["maze/greedy_actions_optimal"] = bool(
        optimal_actions(maze_vi.Q)[decision].gather(1, ql_policy[decision, None]).all())
    summary["maze/max_gap_V_pi_ql_vs_V*"] = float((ql_value - maze_vi.V)[decision].abs().max())

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.0))
    vmin, vmax = float(maze_vi.V[decision].min()), float(maze_vi.V[decision].max())
    gridplots.draw_values(axes[0], maze, maze_vi.V, maze_vi.policy, "value iteration: V*, pi* (gamma 0.9)", vmin, vmax)
    gridplots.draw_values(axes[1], maze, maze_ql.Q.max(-1).values, ql_policy,
                          "Q-learning, 500 episodes: max_a Q, greedy", vmin, vmax)
    gridplots.plot_curves(axes[2], {"Q-learning (epsilon 0.5)": np.array(maze_ql.lengths)}, window=20,
                          ylabel="steps to the goal", title="episode length while exploring")
    gridplots.save(fig, out / "maze_qlearning.png")

    # --- 3. The cliff: SARSA against Q-learning -----------------------------------------------------------
    cliff = from_gymnasium("CliffWalking-v1")
    # Sutton & Barto use alpha 0.5 over 500 episodes; a smaller step over more episodes lets the greedy path of
    # every single run settle (with 0.5 a SARSA run now and then still loops), without changing the story.
    runs = {m: [td_control(cliff, m, args.episodes, alpha=0.2, epsilon=0.1, gamma=1.0, seed=args.seed + i,
                           snapshot_every=args.episodes // 20 if (m == "q_learning" and i == 0) else 0)
                for i in range(args.runs)] for m in ("sarsa", "q_learning")}
    mean_returns = {m: np.mean([r.returns for r in rs], axis=0) for m, rs in runs.items()}
    for ep in range(args.episodes):
        log.log(ep + 1, {f"cliff/{m}_return": float(mean_returns[m][ep]) for m in runs})
    paths = {m: most_likely_path(cliff, greedy_policy(runs[m][0].Q)) for m in runs}
    for m in runs:
        # how close the path comes to the cliff row (3) over the middle of the cliff, columns 2..9
        rows = [r for r, c in map(cliff.cell, paths[m]) if 2 <= c <= 9]
        summary[f"cliff/{m}_path_steps"] = len(paths[m]) - 1
        summary[f"cliff/{m}_path_rows_from_cliff"] = int(3 - max(rows)) if rows else 0
        summary[f"cliff/{m}_online_return_last100"] = float(mean_returns[m][-100:].mean())

    fig, ax = plt.subplots(figsize=(9, 3.6))
    gridplots.draw_paths(ax, cliff, {"SARSA (safe path)": paths["sarsa"], "Q-learning (optimal path)":
                                     paths["q_learning"]}, colors={"SARSA (safe path)": "#2a9d8f",
                                                                   "Q-learning (optimal path)": "#e63946"},
                         title="Cliff walking, greedy paths after learning with epsilon-greedy (epsilon 0.1)")
    gridplots.save(fig, out / "cliff_paths.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    gridplots.plot_curves(ax, {"SARSA": mean_returns["sarsa"], "Q-learning": mean_returns["q_learning"]},
                          window=10, ylabel="sum of rewards during episode", ylim=(-120, 0),
                          title=f"Cliff walking: online return, mean of {args.runs} runs (epsilon 0.1, alpha 0.2)")
    gridplots.save(fig, out / "cliff_returns.png")

    fig, axes = plt.subplots(2, 1, figsize=(9, 6.4))
    for ax, m in zip(axes, ("sarsa", "q_learning")):
        Q = runs[m][0].Q
        gridplots.draw_values(ax, cliff, Q.max(-1).values, greedy_policy(Q), annotate=False,
                              title=f"{m}: max_a Q(s,a) and greedy arrows")
    gridplots.save(fig, out / "cliff_values.png")

    gridplots.q_animation(cliff, runs["q_learning"][0].snapshots, out / "qlearning_cliff.gif")

    log.summary(summary)
    log.close()
    for k, v in summary.items():
        print(f"{k}: {v}")
    print(f"pictures in {out}/")
    return summary


if __name__ == "__main__":
    main()
