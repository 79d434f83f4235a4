"""Preference rows: the formats people have become canonical rows; pairs come from ratings and scored groups;
bad rows are named and dropped; pairs are cleaned, deduplicated and split by prompt.

Row formats accepted (the Hugging Face / TRL ones):
- pairs: ``prompt``/``chosen``/``rejected``, each a string or a list of chat messages, or ``chosen``/``rejected``
  full conversations that share their prompt turns (TRL's implicit prompt); an optional ``margin`` (how far
  apart the two were rated) feeds the reward model's margin loss;
- rated samples: ``prompt``/``completion``/``rating``, several per prompt, turned into pairs;
- labelled completions (outcome RM): ``prompt``/``completion``/``label`` (true = good);
- step-labelled solutions (process RM): ``prompt``/``completions`` (the steps)/``labels`` (one bool each).

Canonical pair row: ``{"prompt": str | [messages], "chosen": str, "rejected": str}`` where chosen/rejected are
the responses' text. Every step returns ``(rows, report)`` like the rest of datapipe; unusable rows are
dropped, counted and named (file and row), never silently.
"""
from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from typing import Any, Callable, Sequence

from datapipe.rows import Row, RowError, origin_of

PAIR_FORMATS = ("prompt/chosen/rejected (strings or chat messages), chosen/rejected conversations sharing their "
                "prompt, or prompt/completion/rating rated samples")


# --------------------------------------------------------------------------------------------- normalising
def _row(data: dict, like) -> Row:
    return like.derive(data) if isinstance(like, Row) else Row(data)


def _messages(value: Any, field: str, where: str) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        raise RowError(where, f"'{field}' must be a string or a list of {{role, content}} messages")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _prompt(value: Any, where: str) -> str | list[dict]:
    if isinstance(value, str):
        return value
    return _messages(value, "prompt", where)


def _response(value: Any, field: str, where: str) -> str:
    """A response as text: a string, or the single assistant message of a conversational side."""
    if isinstance(value, str):
        return value
    msgs = _messages(value, field, where)
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise RowError(where, f"'{field}' must hold exactly one assistant message when the prompt is given apart "
                              f"(got roles {[m['role'] for m in msgs]})")
    return msgs[0]["content"]


def normalize_pair(row: dict) -> Row:
    """Any accepted pair format -> the canonical pair row (origin kept). Raises RowError naming the row."""
    where = origin_of(row)
    if not isinstance(row, dict):
        raise RowError(where, f"expected an object with {PAIR_FORMATS}, got {type(row).__name__}")
    if "chosen" not in row or "rejected" not in row:
        raise RowError(where, f"no 'chosen'/'rejected' fields (found {sorted(row)}); expected {PAIR_FORMATS}")
    chosen, rejected = row["chosen"], row["rejected"]
    if "prompt" in row:
        prompt = _prompt(row["prompt"], where)
        out = {"prompt": prompt, "chosen": _response(chosen, "chosen", where),
               "rejected": _response(rejected, "rejected", where)}
    else:  # implicit prompt: the shared leading turns of two full conversations
        c, r = _messages(chosen, "chosen", where), _messages(rejected, "rejected", where)
        n = 0
        while n < min(len(c), len(r)) - 1 and c[n] == r[n]:
            n += 1
        if n == 0 or c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant" or len(c) != n + 1 or len(r) != n + 1:
            raise RowError(where, "'chosen' and 'rejected' conversations must share every turn but a final assistant "
                                  "message (or give 'prompt' apart)")
        out = {"prompt": c[:n], "chosen": c[-1]["content"], "rejected": r[-1]["content"]}
    for k in ("chosen", "rejected"):
        if not isinstance(out[k], str):
            raise RowError(where, f"'{k}' content must be text, got {type(out[k]).__name__}")
    if "margin" in row and row["margin"] is not None:
        if not isinstance(row["margin"], (int, float)) or isinstance(row["margin"], bool):
            raise RowError(where, f"'margin' must be a number, got {row['margin']!r}")
        out["margin"] = float(row["margin"])
    return _row(out, row)


def _report(n_in: int, kept: list, dropped: Counter, examples: dict) -> dict:
    return {"in": n_in, "kept": len(kept), "dropped": dict(dropped), "examples": examples}


def _drop(dropped: Counter, examples: dict, reason: str, detail: str, max_examples: int = 3) -> None:
    dropped[reason] += 1
    ex = examples.setdefault(reason, [])
    if len(ex) < max_examples:
        ex.append(detail)


def normalize_pairs(rows) -> tuple[list[Row], dict]:
    """Normalise every row; unusable ones are counted and named in the report, the rest are kept."""
    kept, dropped, examples = [], Counter(), {}
    rows = list(rows)
    for row in rows:
        try:
            kept.append(normalize_pair(row))
        except RowError as e:
            _drop(dropped, examples, "unusable_row", str(e))
    return kept, _report(len(rows), kept, dropped, examples)


def prompt_key(prompt: str | list[dict]) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


# ------------------------------------------------------------------------------------------ building pairs
def pairs_from_groups(prompts: Sequence, completions: Sequence[Sequence[str]], scores: Sequence[Sequence[float | None]],
                      min_gap: float = 0.0, mode: str = "best_worst",
                      origins: Sequence | None = None) -> tuple[list[Row], dict]:
    """Pairs from groups of scored responses to the same prompt (scored rollouts, rated samples).

    ``best_worst``: one pair per group, the highest-scored response against the lowest (as in iterative /
    online DPO and RLAIF pipelines); ``all``: every pair whose scores differ by more than ``min_gap``.
    A group whose scores are all equal carries no preference and is dropped (``no_preference``); responses
    whose score is None (the scorer could not judge them) are left out (``unscored``). The score gap rides
    along as ``margin``.
    """
    if mode not in ("best_worst", "all"):
        raise ValueError(f"pair mode must be best_worst or all, got {mode!r}")
    out, dropped, examples = [], Counter(), {}
    for g, (prompt, comps, scs) in enumerate(zip(prompts, completions, scores, strict=True)):
        where = str(origins[g]) if origins is not None else f"group {g}"
        items = [(s, c) for c, s in zip(comps, scs, strict=True) if s is not None]
        if len(items) < len(comps):
            _drop(dropped, examples, "unscored", f"{where}: {len(comps) - len(items)} responses without a score")
        # Stable order: among equal scores the earlier response is taken, so pairs are reproducible.
        ranked = sorted(range(len(items)), key=lambda i: -items[i][0])
        cands = [(items[ranked[0]], items[ranked[-1]])] if mode == "best_worst" and items else [
            (items[i], items[j]) for a, i in enumerate(ranked) for j in ranked[a + 1:]]
        made = 0
        for (s_hi, c_hi), (s_lo, c_lo) in cands:
            if s_hi - s_lo > min_gap and c_hi != c_lo:
                data = {"prompt": prompt, "chosen": c_hi, "rejected": c_lo, "margin": float(s_hi - s_lo)}
                like = origins[g] if origins is not None else None
                out.append(like.derive(data) if isinstance(like, Row) else Row(data, "<groups>", g))
                made += 1
        if not made:
            _drop(dropped, examples, "no_preference", f"{where}: no two responses scored more than {min_gap} apart")
    return out, _report(len(prompts), out, dropped, examples)


def pairs_from_ratings(rows, min_gap: float = 0.0, mode: str = "best_worst", rating_field: str = "rating",
                       completion_field: str = "completion") -> tuple[list[Row], dict]:
    """Rated samples (``prompt``/``completion``/``rating``, several rows per prompt) -> pairs, grouped by prompt
    (UltraFeedback-style binarisation). Rows without a numeric rating are dropped and named."""
    groups: dict[str, list] = defaultdict(list)
    first: dict[str, Any] = {}
    dropped, examples = Counter(), {}
    rows = list(rows)
    for row in rows:
        where = origin_of(row)
        try:
            if not isinstance(row.get(completion_field), str):
                raise RowError(where, f"'{completion_field}' must be a string")
            rating = row.get(rating_field)
            if not isinstance(rating, (int, float)) or isinstance(rating, bool):
                raise RowError(where, f"'{rating_field}' must be a number, got {rating!r}")
            prompt = _prompt(row.get("prompt"), where) if "prompt" in row else None
            if prompt is None:
                raise RowError(where, "no 'prompt' field")
        except RowError as e:
            _drop(dropped, examples, "unusable_row", str(e))
            continue
        key = prompt_key(prompt)
        first.setdefault(key, row)
        groups[key].append((row[completion_field], float(rating), prompt))
    keys = list(groups)
    pairs, rep = pairs_from_groups([groups[k][0][2] for k in keys], [[c for c, _, _ in groups[k]] for k in keys],
                                   [[s for _, s, _ in groups[k]] for k in keys], min_gap, mode,
                                   origins=[first[k] for k in keys])
    dropped.update(rep["dropped"])
    for k, v in rep["examples"].items():
        examples.setdefault(k, []).extend(v[:3])
    return pairs, _report(len(rows), pairs, dropped, examples)


def to_pairs(rows, min_gap: float = 0.0, mode: str = "best_worst") -> tuple[list[Row], dict]:
    """Whatever the file holds -- pairs or rated samples -- as canonical pairs."""
    rows = list(rows)
    if rows and all(isinstance(r, dict) and "rating" in r and "chosen" not in r for r in rows[:50]):
        return pairs_from_ratings(rows, min_gap, mode)
    return normalize_pairs(rows)


# ---------------------------------------------------------------------------------------- clean and dedup
def _as_chat(prompt, response: str) -> list[dict]:
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return msgs + [{"role": "assistant", "content": response}]


def clean_pairs(rows, max_chars: int | None = None) -> tuple[list[Row], dict]:
    """Run both sides of every pair through the SFT cleaner (``datapipe.clean.clean_rows``: empty turns, unknown
    roles, bad encodings, turn order, length) and keep a pair only when both sides survive; a pair whose two
    responses are the same text says nothing and is dropped as ``identical_pair``."""
    from datapipe.clean import clean_rows

    rows = list(rows)
    dropped, examples = Counter(), {}
    kept = []
    for row in rows:
        if row["chosen"].strip() == row["rejected"].strip():
            _drop(dropped, examples, "identical_pair", f"{origin_of(row)}: chosen and rejected are the same text")
            continue
        sides = [_row({"messages": _as_chat(row["prompt"], row[k])}, row) for k in ("chosen", "rejected")]
        ok, rep = clean_rows(sides, max_chars=max_chars)
        if len(ok) < 2:
            for reason, exs in rep["examples"].items():
                _drop(dropped, examples, reason, exs[0])
            continue
        c, r = ok[0]["messages"], ok[1]["messages"]
        prompt = c[0]["content"] if isinstance(row["prompt"], str) else c[:-1]
        kept.append(_row({**row, "prompt": prompt, "chosen": c[-1]["content"], "rejected": r[-1]["content"]}, row))
    return kept, _report(len(rows), kept, dropped, examples)


def pair_text(row: dict) -> str:
    p = row["prompt"]
    if not isinstance(p, str):
        p = "\n".join(f"{m['role']}: {m['content']}" for m in p)
    return f"{p}\nchosen: {row['chosen']}\nrejected: {row['rejected']}"


def dedup_pairs(rows, near_threshold: float = 0.0) -> tuple[list[Row], dict]:
    """Exact dedup of whole pairs (``datapipe.dedup.dedup_exact``), then, if ``near_threshold`` > 0, MinHash
    near-dedup (``dedup_near``) at that Jaccard threshold. Keyed on prompt + both responses, so the same prompt
    with a different pair is kept."""
    from datapipe.dedup import canonical_text, dedup_exact, dedup_near

    kept, rep = dedup_exact(rows, key_fn=lambda r: canonical_text(pair_text(r)))
    if near_threshold > 0:
        kept, rep2 = dedup_near(kept, text_fn=pair_text, threshold=near_threshold)
        rep = {"in": rep["in"], "kept": len(kept), "dropped": {**rep["dropped"], **rep2["dropped"]},
               "examples": {**rep["examples"], **rep2["examples"]}}
    return kept, rep


def split_heldout(rows: list, fraction: float, seed: int = 0) -> tuple[list, list]:
    """Hold out ``fraction`` of the prompts (all pairs of a prompt go to the same side, so held-out accuracy is
    measured on prompts never trained on)."""
    keys = sorted({prompt_key(r["prompt"]) for r in rows})
    random.Random(seed).shuffle(keys)
    held = set(keys[:max(1, round(fraction * len(keys)))]) if fraction > 0 and len(keys) > 1 else set()
    train = [r for r in rows if prompt_key(r["prompt"]) not in held]
    return train, [r for r in rows if prompt_key(r["prompt"]) in held]


# ------------------------------------------------------------------------------ reward-model rows
def normalize_steps(rows) -> tuple[list[Row], dict]:
    """Step-labelled rows (``prompt``/``completions``/``labels``, TRL's stepwise-supervision format): checked and
    kept, unusable ones counted and named."""
    kept, dropped, examples = [], Counter(), {}
    rows = list(rows)
    for row in rows:
        where = origin_of(row)
        steps, labels = row.get("completions"), row.get("labels")
        if "prompt" not in row or not isinstance(steps, list) or not isinstance(labels, list):
            _drop(dropped, examples, "unusable_row", f"{where}: needs 'prompt', 'completions' (list of steps) and "
                                                     f"'labels' (list of bools); found {sorted(row)}")
        elif not steps or len(steps) != len(labels):
            _drop(dropped, examples, "unusable_row", f"{where}: {len(steps)} steps but {len(labels)} labels")
        elif not all(isinstance(s, str) and s.strip() for s in steps) or not all(isinstance(b, bool) for b in labels):
            _drop(dropped, examples, "unusable_row", f"{where}: steps must be non-empty strings and labels true/false")
        else:
            try:
                data = {"prompt": _prompt(row["prompt"], where), "completions": steps, "labels": labels}
                kept.append(_row(data, row))
            except RowError as e:
                _drop(dropped, examples, "unusable_row", str(e))
    return kept, _report(len(rows), kept, dropped, examples)


def normalize_labelled(rows) -> tuple[list[Row], dict]:
    """Labelled completions (``prompt``/``completion``/``label``, TRL's unpaired format) for a pointwise outcome RM."""
    kept, dropped, examples = [], Counter(), {}
    rows = list(rows)
    for row in rows:
        where = origin_of(row)
        if not isinstance(row.get("completion"), str) or not isinstance(row.get("label"), bool) or "prompt" not in row:
            _drop(dropped, examples, "unusable_row", f"{where}: needs 'prompt', 'completion' (text) and 'label' "
                                                     f"(true/false); found {sorted(row)}")
            continue
        try:
            kept.append(_row({"prompt": _prompt(row["prompt"], where), "completion": row["completion"],
                              "label": row["label"]}, row))
        except RowError as e:
            _drop(dropped, examples, "unusable_row", str(e))
    return kept, _report(len(rows), kept, dropped, examples)



# ------------------------------------------------------------------------------ scored groups
def score_groups(score_fn: Callable[[list, list[str], list], list[float | None]], groups: list[dict]) -> list[list]:
    """Scores for groups ``{"prompt", "completions", "reference"}`` through one batched ``score_fn(prompts,
    completions, references)`` call (a verifier or a reward model), regrouped per prompt."""
    flat_p = [g["prompt"] for g in groups for _ in g["completions"]]
    flat_c = [c for g in groups for c in g["completions"]]
    flat_r = [g.get("reference") for g in groups for _ in g["completions"]]
    flat = list(score_fn(flat_p, flat_c, flat_r))
    out, k = [], 0
    for g in groups:
        out.append(flat[k:k + len(g["completions"])])
        k += len(g["completions"])
    return out
