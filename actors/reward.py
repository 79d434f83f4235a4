"""The reward role: a pool of scorers in-process, or the REST reward service, behind one call.

Per item it returns a score and a status; a failing or slow scorer costs its items, never the step.
"""
from __future__ import annotations

import os
import time

import ray

from cluster import actor_options, shares
from rewards.base import Item


class RewardWorker:
    def __init__(self, reward_cfg):
        self.cfg = reward_cfg
        self.weights = dict(reward_cfg.scorers)
        if reward_cfg.remote_url:
            from rewards.client import RewardClient

            self.client = RewardClient(reward_cfg.remote_url, os.environ.get(reward_cfg.remote_token_env, ""),
                                       timeout_s=reward_cfg.timeout_s)
            self.scorer = None
        else:
            from rewards.compose import WeightedScorer
            from rewards.registry import enable_plugins
            from rewards.remote import allow_destinations

            enable_plugins(reward_cfg.plugins)
            allow_destinations(reward_cfg.remote_allow)
            self.client = None
            self.scorer = WeightedScorer(self.weights, reward_cfg.options, timeout_s=reward_cfg.timeout_s)

    def score(self, prompts: list[str], completions: list[str], references: list) -> dict:
        t0 = time.time()
        items = [Item(p, c, r) for p, c, r in zip(prompts, completions, references)]
        if self.client is not None:
            per = {name: self.client.score(name, items) for name in self.weights}
            rewards, statuses, comp = [], [], {n: [] for n in self.weights}
            for i in range(len(items)):
                total = 0.0
                for n, w in self.weights.items():
                    s = per[n][i].score
                    comp[n].append(s)
                    total += w * (s or 0.0)
                rewards.append(total)
                statuses.append("ok" if any(per[n][i].score is not None for n in self.weights) else per[next(iter(self.weights))][i].status)
        else:
            results = self.scorer.score(items)
            rewards = [r.score if r.score is not None else 0.0 for r in results]
            statuses = [r.status for r in results]
            comp = {n: [r.details.get("scores", {}).get(n) for r in results] for n in self.weights}
        per_scorer = {n: sum(v or 0.0 for v in vals) / max(1, len(vals)) for n, vals in comp.items()}
        n_bad = sum(s != "ok" for s in statuses)
        return {"rewards": rewards, "statuses": statuses, "per_scorer": per_scorer, "failed": n_bad,
                "seconds": time.time() - t0}


RewardActor = ray.remote(RewardWorker)


def merge_scores(parts: list[dict]) -> dict:
    """One ``score`` result from the shares of several reward actors, items in their original order; a
    scorer's mean is weighted by each share's size."""
    sizes = [len(p["rewards"]) for p in parts]
    total = max(1, sum(sizes))
    names = parts[0]["per_scorer"] if parts else {}
    return {"rewards": [r for p in parts for r in p["rewards"]], "statuses": [s for p in parts for s in p["statuses"]],
            "per_scorer": {n: sum(p["per_scorer"][n] * k for p, k in zip(parts, sizes)) / total for n in names},
            "failed": sum(p["failed"] for p in parts), "seconds": max((p["seconds"] for p in parts), default=0.0)}


class RewardPool:
    """``cluster.reward.count`` reward actors used as one: :meth:`score` gives each a contiguous share of the
    items and returns the merged result (blocking)."""

    def __init__(self, plan, pg, reward_cfg):
        self.actors = [RewardActor.options(**actor_options(plan, pg, "reward", p.index)).remote(reward_cfg)
                       for p in plan.of("reward")]

    def score(self, prompts: list[str], completions: list[str], references: list) -> dict:
        if len(self.actors) == 1:
            return ray.get(self.actors[0].score.remote(prompts, completions, references))
        refs = [a.score.remote(prompts[lo:hi], completions[lo:hi], references[lo:hi])
                for a, (lo, hi) in zip(self.actors, shares(len(prompts), len(self.actors)))]
        return merge_scores(ray.get(refs))
