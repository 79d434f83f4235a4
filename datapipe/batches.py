"""Which packed rows each optimizer step trains on: seeded epochs, so a resumed run sees what it would have seen."""
from __future__ import annotations

import random


def step_rows(n_rows: int, rows_per_step: int, step: int, seed: int = 0) -> list[int]:
    """Indices of the rows for ``step`` (0-based): epoch e is a permutation seeded by (seed, e), read in order."""
    if n_rows <= 0:
        raise ValueError("no packed rows to train on")
    out = []
    for k in range(step * rows_per_step, (step + 1) * rows_per_step):
        epoch, i = divmod(k, n_rows)
        order = list(range(n_rows))
        random.Random(f"{seed}/{epoch}").shuffle(order)
        out.append(order[i])
    return out


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]
