"""Preference data for the DPO and reward-model stages: read -> normalise (or build pairs from rated samples)
-> clean -> dedup -> split (:func:`prepare_rows`), resumable batches and a fingerprint of the rows.

The parts live by concern, and are importable from here as well:
- :mod:`datapipe.preference_rows`: the row formats, pairs from ratings and scored groups, cleaning, dedup, split;
- :mod:`datapipe.dpo_tokens`: DPO's pair tokenisation; :mod:`datapipe.rm_tokens`: the reward model's;
- :mod:`tasks.arithmetic_preference`: the built-in synthetic data (``builtin:arithmetic``, ``builtin:arithmetic_steps``).
"""
from __future__ import annotations

import json
import random

from datapipe.preference_rows import (
    clean_pairs, dedup_pairs, normalize_labelled, normalize_steps, split_heldout, to_pairs,
)
from datapipe.rows import Row
from tasks.arithmetic_preference import arithmetic_rated_samples, arithmetic_steps

# Also importable from here, where the stages have always imported them (one definition each, in its module):
from datapipe.dpo_tokens import collate_policy_pairs, common_prefix_length, encode_policy_pair  # noqa: F401,E402
from datapipe.preference_rows import (  # noqa: F401,E402
    PAIR_FORMATS, normalize_pair, normalize_pairs, pair_text, pairs_from_groups, pairs_from_ratings, prompt_key,
    score_groups,
)
from datapipe.rm_tokens import encode_rm, encode_steps, rm_text, step_prefixes  # noqa: F401,E402
from datapipe.tokens import render_prompt  # noqa: F401,E402


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of step ``step``'s batch: consecutive slices of per-epoch shuffles, so a resumed run draws the very
    batches the uninterrupted run would have."""
    out, pos = [], step * batch_size
    while len(out) < batch_size:
        epoch, off = divmod(pos, n)
        order = list(range(n))
        random.Random(seed * 100003 + epoch).shuffle(order)
        take = order[off:off + batch_size - len(out)]
        out += take
        pos += len(take)
    return out


def fingerprint(rows: list) -> str:
    """A short hash of the rows in order: a checkpoint remembers it, so a run never resumes onto other data."""
    import hashlib

    h = hashlib.sha1()
    for r in rows:
        h.update(json.dumps(dict(r), sort_keys=True, ensure_ascii=False, default=str).encode())
    return h.hexdigest()[:16]


def _read(spec: str) -> tuple[list, dict]:
    """Rows of a file/folder/dataset; lines that are not JSON objects are counted and named, not fatal."""
    from datapipe.io import read_rows

    errors: list = []
    rows = read_rows(spec, errors=errors)
    if errors and not rows:
        raise ValueError(f"{spec}: no readable rows; first problem: {errors[0]}")
    return rows, {"in": len(rows) + len(errors), "kept": len(rows),
                  "dropped": {"unreadable_row": len(errors)} if errors else {},
                  "examples": {"unreadable_row": [str(e) for e in errors[:3]]} if errors else {}}


def _merge(report: dict, stage: str, rep: dict) -> None:
    report[stage] = {"in": rep["in"], "kept": rep["kept"], "dropped": rep["dropped"], "examples": rep["examples"]}


def prepare_rows(spec: str, kind: str = "pairs", heldout_spec: str = "", heldout_fraction: float = 0.1,
                 builtin_size: int = 600, seed: int = 0, pair_mode: str = "best_worst", min_gap: float = 0.0,
                 near_dedup: float = 0.0, max_chars: int = 0) -> tuple[list[Row], list[Row], dict]:
    """Read -> normalise (or build pairs from rated samples) -> clean -> dedup -> split, for ``kind`` pairs,
    labels (labelled completions), steps (step-labelled solutions) or outcome (pairs or labels, whichever the
    data holds). Returns (train, heldout, report); the report
    says per stage how many rows came in, were kept and were dropped why. Raises ValueError naming the source
    when nothing usable is left."""
    def one(src: str, heldout: bool) -> tuple[list[Row], dict]:
        nonlocal kind
        report: dict = {}
        n = max(8, builtin_size // 5) if heldout else builtin_size
        if src == "builtin:arithmetic" and kind in ("pairs", "outcome"):
            kind = "pairs"
            raw = arithmetic_rated_samples(n, seed, heldout)
        elif src == "builtin:arithmetic_steps" and kind == "steps":
            raw = arithmetic_steps(n, seed, heldout)
        elif src.startswith("builtin:"):
            known = {"pairs": "builtin:arithmetic", "outcome": "builtin:arithmetic",
                     "steps": "builtin:arithmetic_steps"}.get(kind, "none")
            raise ValueError(f"no built-in {kind} data called {src!r}; built-in {kind} data: {known}")
        else:
            raw, rep = _read(src)
            _merge(report, "read", rep)
        if kind == "outcome":  # an outcome RM learns from pairs (Bradley-Terry) or from labelled completions
            head = [r for r in raw[:50] if isinstance(r, dict)]
            kind = "labels" if head and all("label" in r and "chosen" not in r for r in head) else "pairs"
        if kind == "pairs":
            rows, rep = to_pairs(raw, min_gap, pair_mode)
            _merge(report, "normalise", rep)
            rows, rep = clean_pairs(rows, max_chars or None)
            _merge(report, "clean", rep)
            rows, rep = dedup_pairs(rows, near_dedup)
            _merge(report, "dedup", rep)
        else:
            rows, rep = (normalize_steps if kind == "steps" else normalize_labelled)(raw)
            _merge(report, "normalise", rep)
            from datapipe.dedup import dedup_exact

            rows, rep = dedup_exact(rows, key_fn=lambda r: json.dumps(dict(r), sort_keys=True, ensure_ascii=False))
            _merge(report, "dedup", rep)
        if not rows:
            first = next((ex[0] for st in report.values() for ex in st["examples"].values() if ex), "no rows at all")
            raise ValueError(f"{src}: no usable {kind} rows left after {list(report)}; first problem: {first}")
        return rows, report

    train, report = one(spec, False)
    if heldout_spec:
        heldout, hrep = one(heldout_spec, True)
    elif spec.startswith("builtin:"):
        heldout, hrep = one(spec, True)
    else:
        train, heldout = split_heldout(train, heldout_fraction, seed)
        hrep = {"split": {"heldout_fraction": heldout_fraction, "kept": len(heldout)}}
    # A held-out row identical to a training row would measure recall, not generalisation.
    seen = {json.dumps(dict(r), sort_keys=True, ensure_ascii=False, default=str) for r in train}
    before = len(heldout)
    heldout = [r for r in heldout if json.dumps(dict(r), sort_keys=True, ensure_ascii=False, default=str) not in seen]
    return train, heldout, {"kind": kind, "train": report, "heldout": hrep,
                            "heldout_overlap_dropped": before - len(heldout),
                            "train_rows": len(train), "heldout_rows": len(heldout)}
