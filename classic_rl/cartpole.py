"""CartPole-v1 for the deep-RL scripts: vector environments, finished-episode statistics, greedy evaluation.

CartPole (Barto, Sutton & Anderson 1983): +1 per step while the pole stands, at most 500 steps (a time limit,
i.e. a truncation, not a terminal state); a uniformly random policy scores about 22.
"""
from __future__ import annotations

import time
from typing import Callable

import gymnasium as gym
import numpy as np
import torch

ENV_ID = "CartPole-v1"


def make_envs(num_envs: int, seed: int, env_id: str = ENV_ID) -> gym.vector.VectorEnv:
    """``num_envs`` copies stepped in lockstep. An episode that ends is reset within the same step (its last
    observation goes to ``info["final_obs"]``, needed to bootstrap a time-limit cut), and its return and
    length to ``info["episode"]``."""
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id, disable_env_checker=True) for _ in range(num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    envs.action_space.seed(seed)
    return envs


def finished_episodes(info: dict) -> list[tuple[float, int]]:
    """(return, length) of every episode that ended in this vector step."""
    if "_episode" not in info:
        return []
    idx = np.flatnonzero(info["_episode"])
    return [(float(info["episode"]["r"][i]), int(info["episode"]["l"][i])) for i in idx]


def final_observations(info: dict, ended: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """The true last observation of each env whose episode ended this step (``next_obs`` already holds the
    reset one); other rows are copied from ``next_obs``."""
    obs = next_obs.copy()
    for i in np.flatnonzero(ended):
        obs[i] = info["final_obs"][i]
    return obs


def evaluate(act: Callable[[torch.Tensor], torch.Tensor], episodes: int = 10, seed: int = 10_000,
             env_id: str = ENV_ID) -> np.ndarray:
    """Returns of ``episodes`` episodes (reset seeds seed, seed+1, ...) acting with ``act(obs [1, 4]) -> [1]``;
    scripts pass their greedy policy."""
    env = gym.make(env_id)
    returns = np.zeros(episodes)
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done = False
        while not done:
            with torch.no_grad():
                a = int(act(torch.as_tensor(obs, dtype=torch.float32)[None])[0])
            obs, r, terminated, truncated, _ = env.step(a)
            returns[i] += r
            done = terminated or truncated
    env.close()
    return returns


def random_returns(episodes: int = 10, seed: int = 10_000, env_id: str = ENV_ID) -> np.ndarray:
    """The baseline every method must beat: uniformly random actions on the same evaluation episodes."""
    rng = np.random.default_rng(seed)
    return evaluate(lambda obs: torch.as_tensor(rng.integers(0, 2, size=len(obs))), episodes, seed, env_id)


def finish_run(log, args, algo: str, act: Callable[[torch.Tensor], torch.Tensor], global_step: int,
               episodes: list[tuple[float, int]], start: float, curves: list[str], name: str) -> dict:
    """End of every CartPole script: the greedy policy ``act`` evaluated beside a random one on the same
    ``args.eval_episodes`` episodes, the summary written to ``log`` (a :class:`runlog.RunLog`, then closed)
    with ``curves`` plotted under the title "<name> on CartPole-v1, seed <args.seed>"; returns the summary.
    ``episodes`` are the training episodes' (return, length); ``start`` the run's ``time.time()``."""
    greedy = evaluate(act, args.eval_episodes)
    summary = {
        "algo": algo, "seed": args.seed, "global_step": global_step, "episodes": len(episodes),
        "train/return_last100": float(np.mean([r for r, _ in episodes[-100:]])) if episodes else float("nan"),
        "eval/return_mean": float(greedy.mean()), "eval/return_std": float(greedy.std()),
        "random/return_mean": float(random_returns(args.eval_episodes).mean()),
        "wall_s": time.time() - start,
    }
    log.summary(summary)
    log.plot(curves, "curves.png", title=f"{name} on {ENV_ID}, seed {args.seed}")
    log.close()
    return summary
