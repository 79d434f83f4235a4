"""Mix several sources into one training stream by weights or by temperature sampling, deterministic by seed.

Temperature sampling (Arivazhagan et al. 2019, "Massively Multilingual Neural Machine Translation in the
Wild"): source i with n_i rows gets probability p_i = n_i^(1/T) / sum_j n_j^(1/T); T = 1 is proportional
to size, larger T flattens towards uniform so small sources are seen more often.

Quotas are exact (c_i = round(total * p_i) by largest remainder) rather than drawn per row, so the mixture
holds its ratios with no sampling noise; a random shuffle then spreads every source over the stream, so
any long enough prefix holds them too. A source asked for more rows than it has is repeated in whole
reshuffled passes (the report shows how many). Written here rather than with ``datasets.interleave_datasets``
because that draws sources per row (noisy ratios) and drops each row's origin.
"""
from __future__ import annotations

import math
import random


def mixture_weights(sizes: dict[str, int], weights: dict[str, float] | None = None,
                    temperature: float | None = None) -> dict[str, float]:
    """Normalised source probabilities from explicit ``weights`` or from ``temperature`` over the sizes."""
    if (weights is None) == (temperature is None):
        raise ValueError("give exactly one of weights (explicit ratios) or temperature (n_i^(1/T) sampling)")
    if weights is not None:
        missing = set(sizes) - set(weights)
        if missing:
            raise ValueError(f"no mixing weight for sources {sorted(missing)}")
        bad = {k: w for k, w in weights.items() if k in sizes and (w < 0 or not math.isfinite(w))}
        if bad:
            raise ValueError(f"mixing weights must be finite and >= 0, got {bad}")
        raw = {k: float(weights[k]) for k in sizes}
    else:
        if temperature <= 0:
            raise ValueError(f"mixing temperature must be > 0, got {temperature}")
        raw = {k: n ** (1.0 / temperature) if n else 0.0 for k, n in sizes.items()}
    total = sum(raw.values())
    if total <= 0:
        raise ValueError(f"all mixing weights are zero (sizes {sizes}); give at least one source a positive weight")
    return {k: v / total for k, v in raw.items()}


def quotas(probs: dict[str, float], total: int) -> dict[str, int]:
    """Integer counts summing to ``total`` closest to ``total * p_i`` (largest-remainder rounding)."""
    exact = {k: total * p for k, p in probs.items()}
    out = {k: math.floor(v) for k, v in exact.items()}
    rest = total - sum(out.values())
    for k in sorted(exact, key=lambda k: (out[k] - exact[k], k))[:rest]:
        out[k] += 1
    return out


def mix_sources(sources: dict[str, list], weights: dict[str, float] | None = None, temperature: float | None = None,
                total: int | None = None, seed: int = 0) -> tuple[list, dict]:
    """Return ``(mixed_rows, report)``; ``total`` defaults to the number of rows in all sources together."""
    sizes = {k: len(v) for k, v in sources.items()}
    probs = mixture_weights(sizes, weights, temperature)
    total = sum(sizes.values()) if total is None else total
    counts = quotas(probs, total)
    rng = random.Random(seed)
    mixed, per_source = [], {}
    for name in sorted(sources):  # sorted: the result must not depend on dict order
        rows, want = sources[name], counts[name]
        if want and not rows:
            raise ValueError(f"source {name!r} is empty but its weight asks for {want} rows")
        taken, passes = [], 0
        while len(taken) < want:
            order = list(range(len(rows)))
            rng.shuffle(order)
            taken.extend(rows[i] for i in order[:want - len(taken)])
            passes += 1
        mixed.extend(taken)
        per_source[name] = {"available": sizes[name], "taken": want, "target_fraction": round(probs[name], 4),
                            "fraction": round(want / total, 4) if total else 0.0, "passes": passes}
    rng.shuffle(mixed)
    return mixed, {"in": sum(sizes.values()), "kept": len(mixed), "dropped": {}, "sources": per_source,
                   "mode": "weights" if weights is not None else f"temperature={temperature}"}
