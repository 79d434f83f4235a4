"""A synthetic verifiable task: single-digit sums answered as JSON, e.g. ``{"answer": 7}``.

Training and held-out prompts use disjoint phrasings, so held-out reward measures more than recall of
the training strings.
"""
from __future__ import annotations

import json
import random

TRAIN_TEMPLATES = ["What is {a}+{b}?", "Compute {a} + {b}.", "{a}+{b}=?", "Add {a} and {b}."]
HELDOUT_TEMPLATES = ["What is the sum of {a} and {b}?", "Calculate {a} plus {b}."]
INSTRUCTION = ' Reply with JSON: {{"answer": N}}'


def make_rows(n: int, seed: int = 0, heldout: bool = False, max_operand: int = 9) -> list[dict]:
    """``n`` rows ``{"prompt": [chat messages], "answer": int}``, deterministic by seed."""
    rng = random.Random(seed * 2 + int(heldout))
    templates = HELDOUT_TEMPLATES if heldout else TRAIN_TEMPLATES
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        text = rng.choice(templates).format(a=a, b=b) + INSTRUCTION.format()
        rows.append({"prompt": [{"role": "user", "content": text}], "answer": a + b})
    return rows


def solution(row: dict) -> str:
    """The reference completion for supervised warm starts."""
    return json.dumps({"answer": row["answer"]})
