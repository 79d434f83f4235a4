"""The arithmetic task (:mod:`tasks.arithmetic`) as preference data: rated samples for DPO and the outcome
reward model, step-labelled running sums for the process reward model. Deterministic by seed; ``heldout``
draws from the held-out phrasings and seeds.
"""
from __future__ import annotations

import json
import random

from datapipe.preference_rows import prompt_key
from datapipe.rows import Row
from tasks.arithmetic import make_rows


def arithmetic_rated_samples(n_prompts: int, seed: int = 0, heldout: bool = False) -> list[Row]:
    """Rated samples on the built-in arithmetic prompts (``tasks.arithmetic``): per distinct prompt among the first
    ``n_prompts``, two responses with
    ratings 2 (right answer as JSON), 1 (a wrong number as JSON) or 0 (the right number, not as JSON). The pair
    kinds come in equal shares, so a third of the pairs can only be told apart by doing the sum."""
    rng = random.Random(seed * 7 + 3 + int(heldout))
    out, seen = [], set()
    for i, task in enumerate(make_rows(n_prompts, seed=seed, heldout=heldout)):
        # The task repeats prompts (few single-digit sums); one rated pair per distinct prompt.
        if prompt_key(task["prompt"]) in seen:
            continue
        seen.add(prompt_key(task["prompt"]))
        ans = task["answer"]
        wrong = ans + rng.choice([d for d in range(-3, 4) if d and ans + d >= 0])
        cands = {2: json.dumps({"answer": ans}), 1: json.dumps({"answer": wrong}),
                 0: rng.choice([f"The answer is {ans}.", f"answer: {ans}", f'{{"answer": {ans}', str(ans)])}
        for rating in rng.choice([(2, 1), (2, 0), (1, 0)]):
            out.append(Row({"prompt": task["prompt"], "completion": cands[rating], "rating": rating,
                            "answer": ans}, f"builtin:arithmetic{'-heldout' if heldout else ''}", i))
    return out


def arithmetic_steps(n: int, seed: int = 0, heldout: bool = False, n_terms: int = 4,
                     errors: tuple[str, ...] = ("carry",)) -> list[Row]:
    """Step-labelled solutions of running sums for a process RM: ``a+b+c+d`` solved as ``a+b=s1``, ``s1+c=s2``, ...

    In half of them one step is wrong and the solution stops there, as PRM800K's labels stop at the first error
    (Lightman et al. 2023); the steps before it are labelled true. A wrong step either carries a wrong running
    total into its left operand (``carry``: its own sum is right, but it does not continue the previous step, so
    a step score must look back along the solution) or gets its sum wrong (``sum``: judging it takes arithmetic,
    which the tiny built-in models do not learn in a short run, so the default asks for ``carry`` only)."""
    rng = random.Random(seed * 11 + 5 + int(heldout))
    rows = []
    for i in range(n):
        terms = [rng.randint(0, 9) for _ in range(n_terms)]
        bad = rng.randrange(n_terms - 1) if rng.random() < 0.5 else None
        kind = rng.choice(errors)
        total, steps, labels = terms[0], [], []
        for k, t in enumerate(terms[1:]):
            left = total
            if k == bad and kind == "carry":
                left = total + rng.choice([d for d in (-3, -2, -1, 1, 2, 3) if total + d >= 0])
            result = left + t
            if k == bad and kind == "sum":
                result += rng.choice([d for d in (-3, -2, -1, 1, 2, 3) if result + d >= 0])
            steps.append(f"{left}+{t}={result}")
            labels.append(k != bad)
            if k == bad:
                break
            total = result
        prompt = ("Add up " if heldout else "Compute ") + "+".join(map(str, terms)) + " step by step."
        rows.append(Row({"prompt": prompt, "completions": steps, "labels": labels},
                        f"builtin:arithmetic_steps{'-heldout' if heldout else ''}", i))
    return rows
