"""Verified weight sync: after every adapter load the engine must reproduce the learner's logprobs.

Sync failures in today's systems are silent (rollout keeps sampling the old weights while training
looks fine). Here the engine reports the adapter version it serves, and on a fixed probe its prompt
logprobs must match the learner's within a tolerance, or the step fails loudly.
"""
from __future__ import annotations

import ray


class SyncError(RuntimeError):
    """The rollout engine does not serve the learner's weights."""


def probe_gap(engine_lp: list[list[float]], learner_lp: list[list[float]]) -> tuple[float, float]:
    """(mean, max) of |log p_engine - log p_learner| over every probe token."""
    diffs = [abs(a - b) for e, l in zip(engine_lp, learner_lp) for a, b in zip(e, l)]
    if not diffs:
        raise SyncError("the sync probe has no tokens")
    return sum(diffs) / len(diffs), max(diffs)


def verify_sync(rollout, learner, probe_ids: list[list[int]], expected_version: int, tolerance: float) -> dict:
    """Compare the engine (or each of a list of engines) with the learner on ``probe_ids``; raise SyncError if a
    version or the logprobs disagree. Returns the worst engine's gaps."""
    engines = rollout if isinstance(rollout, (list, tuple)) else [rollout]
    *engs, lrn = ray.get([e.prompt_logprobs.remote(probe_ids) for e in engines] + [learner.probe_logprobs.remote(probe_ids)])
    if lrn["version"] != expected_version:
        raise SyncError(f"learner is at version {lrn['version']}, expected {expected_version}")
    worst = (0.0, 0.0)
    for i, eng in enumerate(engs):
        which = f"rollout engine {i}" if len(engs) > 1 else "rollout engine"
        if eng["adapter_version"] != expected_version:
            raise SyncError(f"{which} serves adapter version {eng['adapter_version']}, expected {expected_version}")
        mean, mx = probe_gap(eng["logprobs"], lrn["logprobs"])
        if mean > tolerance:
            raise SyncError(f"adapter v{expected_version}: {which} and learner logprobs differ by {mean:.4g} on average "
                            f"(max {mx:.4g}) on the probe, above rollout.sync_probe_tolerance={tolerance:g}: the engine "
                            "is not serving the learner's weights")
        worst = max(worst, (mean, mx))
    return {"sync_gap_mean": worst[0], "sync_gap_max": worst[1]}
