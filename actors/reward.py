"""The reward role: a pool of scorers in-process, or the REST reward service, behind one call.

Per item it returns a score and a status; a failing or slow scorer costs its items, never the step. An item that
some scorer could not judge (score None: error, timeout, infra_error) is not a verdict: its reward is None and
``valid`` is False, so the trainer leaves it out of the loss instead of training on a made-up 0
(pipelines/rl_loop.py); ``failures`` counts each (scorer, status) so a run can say which scorer failed.
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
        """``{"rewards": [sum_k w_k s_k, or None], "valid": [bool], "statuses", "per_scorer": {k: mean over
        judged items}, "failed": count, "failures": {"scorer:status": count}, "seconds"}``."""
        t0 = time.time()
        items = [Item(p, c, r) for p, c, r in zip(prompts, completions, references)]
        if self.client is not None:
            per = {name: self.client.score(name, items) for name in self.weights}
            comp = {n: [per[n][i].score for i in range(len(items))] for n in self.weights}
            comp_status = {n: [per[n][i].status for i in range(len(items))] for n in self.weights}
        else:
            results = self.scorer.score(items)
            comp = {n: [r.details.get("scores", {}).get(n) for r in results] for n in self.weights}
            comp_status = {n: [r.details.get("statuses", {}).get(n, r.status) for r in results] for n in self.weights}
        rewards, valid, statuses, failures = [], [], [], {}
        for i in range(len(items)):
            bad = [n for n in self.weights if comp[n][i] is None]
            for n in bad:
                key = f"{n}:{comp_status[n][i]}"
                failures[key] = failures.get(key, 0) + 1
            valid.append(not bad)
            rewards.append(sum(w * comp[n][i] for n, w in self.weights.items()) if not bad else None)
            statuses.append("ok" if not bad else comp_status[bad[0]][i])
        per_scorer = {n: (sum(v for v in vals if v is not None) / max(1, sum(v is not None for v in vals)))
                      for n, vals in comp.items()}
        return {"rewards": rewards, "valid": valid, "statuses": statuses, "per_scorer": per_scorer,
                "failed": sum(not v for v in valid), "failures": failures, "seconds": time.time() - t0}


RewardActor = ray.remote(RewardWorker)


def merge_scores(parts: list[dict]) -> dict:
    """One ``score`` result from the shares of several reward actors, items in their original order; a
    scorer's mean is weighted by each share's size."""
    sizes = [len(p["rewards"]) for p in parts]
    total = max(1, sum(sizes))
    names = parts[0]["per_scorer"] if parts else {}
    failures: dict[str, int] = {}
    for p in parts:
        for k, v in p["failures"].items():
            failures[k] = failures.get(k, 0) + v
    return {"rewards": [r for p in parts for r in p["rewards"]], "valid": [v for p in parts for v in p["valid"]],
            "statuses": [s for p in parts for s in p["statuses"]],
            "per_scorer": {n: sum(p["per_scorer"][n] * k for p, k in zip(parts, sizes)) / total for n in names},
            "failed": sum(p["failed"] for p in parts), "failures": failures,
            "seconds": max((p["seconds"] for p in parts), default=0.0)}


@ray.remote(num_cpus=0)
def _merge_scores(*parts: dict) -> dict:
    return merge_scores(list(parts))


class RewardPool:
    """``cluster.reward.count`` reward actors used as one: :meth:`score` gives each a contiguous share of the
    items and returns the merged result (blocking)."""

    def __init__(self, plan, pg, reward_cfg, max_restarts: int = 3):
        # A reward actor that dies (OOM, a scorer's crash, kill -9) is restarted by Ray and its call retried on the
        # new one: scoring is a pure function of its inputs, so a retry is safe.
        self.actors = [RewardActor.options(**actor_options(plan, pg, "reward", p.index), max_restarts=max_restarts,
                                           max_task_retries=max_restarts).remote(reward_cfg)
                       for p in plan.of("reward")]

    def score(self, prompts: list[str], completions: list[str], references: list) -> dict:
        return ray.get(self.score_ref(prompts, completions, references))

    def score_ref(self, prompts: list[str], completions: list[str], references: list):
        """:meth:`score` without waiting: one ObjectRef of the merged result, for a caller with a deadline."""
        if len(self.actors) == 1:
            return self.actors[0].score.remote(prompts, completions, references)
        refs = [a.score.remote(prompts[lo:hi], completions[lo:hi], references[lo:hi])
                for a, (lo, hi) in zip(self.actors, shares(len(prompts), len(self.actors)))]
        return _merge_scores.remote(*refs)
