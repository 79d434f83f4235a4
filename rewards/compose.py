"""Weighted composition of scorers: r = sum_k w_k * s_k, one failing component never kills the batch."""
from __future__ import annotations

import threading

from rewards.base import ERROR, OK, Item, Result
from rewards.deadline import run_scorer
from rewards.registry import make_scorer


class WeightedScorer:
    """Score each item with every component and combine: ``score = sum_k w_k * s_k``.

    ``weights`` maps a component name to its weight; ``options[name]`` are the component's options
    (an entry ``"scorer": base`` lets two components share a scorer with different options, e.g.
    ``{"strict_json": {"scorer": "json_valid", "fenced": False}}``). Components run concurrently, each
    under ``timeout_s``. A component that fails on an item (score ``None``: error, timeout, infra_error)
    counts 0 there and its status shows in ``details["statuses"]``; the item's status is ``"ok"`` unless
    every component failed on it (then ``"error"``, or the shared status if all failed the same way).
    ``components`` supplies ready scorers by name instead of building them, e.g.
    ``{n: ServiceScorer(client, n)}`` to compose scorers served by the REST service.
    """

    name = "weighted"

    def __init__(self, weights: dict[str, float], options: dict[str, dict] | None = None, timeout_s: float = 30.0,
                 components: dict | None = None):
        if not weights:
            raise ValueError("reward.scorers is empty: name at least one scorer with its weight, e.g. {json_valid: 1.0}")
        options = dict(options or {})
        unknown = sorted(set(options) - set(weights))
        if unknown:
            raise ValueError(f"options given for {unknown}, which are not among the weighted scorers {sorted(weights)}")
        self.weights = {}
        for k, w in weights.items():
            try:
                self.weights[k] = float(w)
            except (TypeError, ValueError):
                raise ValueError(f"weight of scorer {k!r} must be a number, got {w!r}") from None
        self.timeout_s = float(timeout_s)
        self.components = {}
        for k in weights:
            if components and k in components:
                self.components[k] = components[k]
                continue
            opts = dict(options.get(k) or {})
            base = opts.pop("scorer", k)
            self.components[k] = make_scorer(base, **opts)

    def score(self, items: list[Item]) -> list[Result]:
        per: dict[str, list[Result]] = {}

        def run(k):
            per[k] = run_scorer(self.components[k], items, self.timeout_s)

        threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in self.components]
        for t in threads:
            t.start()
        for t in threads:
            t.join()  # run_scorer itself returns by the deadline
        out = []
        for i in range(len(items)):
            scores, statuses, details, total, failed = {}, {}, {}, 0.0, []
            for k, w in self.weights.items():
                r = per[k][i]
                scores[k], statuses[k] = r.score, r.status
                if r.details:
                    details[k] = r.details
                if r.score is None:
                    failed.append(r.status)
                else:
                    total += w * r.score
            if len(failed) == len(self.weights):
                status = failed[0] if len(set(failed)) == 1 else ERROR
            else:
                status = OK
            out.append(Result(total, status, {"scores": scores, "statuses": statuses, "weights": dict(self.weights),
                                              "details": details}))
        return out
