"""Run one scorer on a batch under a deadline, so that nothing it does can take the batch down.

Whatever happens -- the scorer raises, returns the wrong number of results, returns NaN, or runs past
the deadline -- every item gets a :class:`Result`. Scorers that can stop early on their own (the
sandbox, the reward model) say so with ``supports_deadline = True`` and receive the absolute deadline
(``time.monotonic()`` seconds) so that the items they finished keep their verdicts.
"""
from __future__ import annotations

import math
import threading
import time

from rewards.base import ERROR, STATUSES, TIMEOUT, Item, Result, Scorer

# How long past the deadline a deadline-aware scorer may take to hand back what it has.
GRACE_S = 2.0


def _clean(result, name: str) -> Result:
    if not isinstance(result, Result):
        return Result(None, ERROR, {"reason": f"scorer {name!r} returned {type(result).__name__}, not Result"})
    score = result.score
    if score is not None:
        try:
            score = float(score)
        except (TypeError, ValueError):
            return Result(None, ERROR, {"reason": f"scorer {name!r} returned a non-numeric score"})
        if not math.isfinite(score):
            return Result(None, ERROR, {"reason": f"scorer {name!r} returned a non-finite score {score}"})
    status = result.status if result.status in STATUSES else ERROR
    details = result.details if isinstance(result.details, dict) else {"details": str(result.details)[:500]}
    return Result(score, status, details)


def run_scorer(scorer: Scorer, items: list[Item], timeout_s: float) -> list[Result]:
    """``scorer.score(items)`` with a deadline ``timeout_s`` from now; never raises."""
    name = getattr(scorer, "name", type(scorer).__name__)
    if not items:
        return []
    deadline = time.monotonic() + timeout_s
    box: dict = {}

    def work():
        try:
            if getattr(scorer, "supports_deadline", False):
                box["out"] = scorer.score(items, deadline=deadline)
            else:
                box["out"] = scorer.score(items)
        except BaseException as e:  # noqa: BLE001 -- a plugin's failure must not escape into the batch
            box["err"] = f"{type(e).__name__}: {e}"[:500]

    # A daemon thread: a scorer stuck past its deadline is abandoned, not waited for at exit.
    t = threading.Thread(target=work, name=f"score-{name}", daemon=True)
    t.start()
    t.join(timeout_s + (GRACE_S if getattr(scorer, "supports_deadline", False) else 0.0))
    if t.is_alive():
        return [Result(None, TIMEOUT, {"reason": f"scorer {name!r} did not finish within {timeout_s:g} s"})
                for _ in items]
    if "err" in box:
        return [Result(None, ERROR, {"reason": f"scorer {name!r} raised {box['err']}"}) for _ in items]
    out = box.get("out")
    if not isinstance(out, list) or len(out) != len(items):
        n = len(out) if isinstance(out, list) else type(out).__name__
        return [Result(None, ERROR, {"reason": f"scorer {name!r} returned {n} results for {len(items)} items"})
                for _ in items]
    return [_clean(r, name) for r in out]
