"""Replay of a share of past data: the simplest rehearsal for LLM fine-tuning streams.

While learning task t, the training set is the task's rows plus B = round(r * |D_t|) rows drawn uniformly
without replacement from the union of the earlier tasks' training rows (r = ``continual.replay_ratio``), the
"experience replay" baseline of continual instruction tuning (e.g. Scialom et al. 2022, "Fine-tuned Language
Models are Continual Learners", rehearsal of 1% of past data; de Masson d'Autume et al. 2019). InsCL
(:mod:`llm_continual.inscl`) spends the same budget B, split by task distance and chosen by information.
"""
from __future__ import annotations

import random
from typing import Sequence


def replay_budget(n_new: int, ratio: float) -> int:
    """B = round(ratio * n_new): replayed rows for a task of ``n_new`` training rows."""
    if n_new < 0 or ratio < 0:
        raise ValueError(f"n_new and ratio must be >= 0, got {n_new}, {ratio}")
    return int(round(ratio * n_new))


def uniform_replay(past: Sequence[Sequence[dict]], budget: int, seed: int = 0) -> list[dict]:
    """``budget`` rows drawn uniformly without replacement from the union of ``past`` tasks' rows (all of them
    when they hold fewer), in a seeded order."""
    pool = [r for rows in past for r in rows]
    rng = random.Random(seed)
    return rng.sample(pool, min(budget, len(pool)))
