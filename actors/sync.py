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
    """Compare engine and learner on ``probe_ids``; raise SyncError if the version or logprobs disagree."""
    eng, lrn = ray.get([rollout.prompt_logprobs.remote(probe_ids), learner.probe_logprobs.remote(probe_ids)])
    if eng["adapter_version"] != expected_version:
        raise SyncError(f"rollout engine serves adapter version {eng['adapter_version']}, expected {expected_version}")
    if lrn["version"] != expected_version:
        raise SyncError(f"learner is at version {lrn['version']}, expected {expected_version}")
    mean, mx = probe_gap(eng["logprobs"], lrn["logprobs"])
    if mean > tolerance:
        raise SyncError(f"adapter v{expected_version}: engine and learner logprobs differ by {mean:.4g} on average "
                        f"(max {mx:.4g}) on the probe, above rollout.sync_probe_tolerance={tolerance:g}: the engine "
                        "is not serving the learner's weights")
    return {"sync_gap_mean": mean, "sync_gap_max": mx}
