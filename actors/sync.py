"""Verified weight sync: after every adapter load each engine must hold, and compute with, the learner's weights.

Sync failures in today's systems are silent (rollout keeps sampling the old weights while training looks fine).
Every sync here is checked two ways, and a failure stops the run naming what differed:

- identity: the engine hashes the LoRA tensors in the slot its kernels use (actors/vllm_ext.py, read inside the
  engine process) and every module's hash must equal that of the adapter the learner exported. This holds at any
  learning rate, also where one update moves logprobs less than the engine's rounding does.
- effect: on a fixed probe the engine's prompt logprobs must match the learner's within a tolerance that is not a
  constant but calibrated at start-up from the gap measured on identical weights (the noise floor: another
  kernel, dtype or machine gives another floor), and when an update moved the learner's probe logprobs by more
  than that tolerance the engine must be closer to the new version than to the previous one. An update too small
  for the probe to resolve is reported as such (``sync/probe_resolvable`` = 0); the identity check still holds.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import ray
import torch

from actors.vllm_ext import canonical_lora, tensor_digest

CALIBRATION_VERSION = -2  # the version label of the calibration adapter (-1 is the bare base)


class SyncError(RuntimeError):
    """The rollout engine does not serve the learner's weights."""


def probe_gap(a_lp: list[list[float]], b_lp: list[list[float]]) -> tuple[float, float]:
    """(mean, max) of |log p_a - log p_b| over every probe token."""
    diffs = [abs(a - b) for e, l in zip(a_lp, b_lp) for a, b in zip(e, l)]
    if not diffs:
        raise SyncError("the sync probe has no tokens")
    return sum(diffs) / len(diffs), max(diffs)


def probe_tolerance(floor_mean: float, mean_abs_logp: float, factor: float, eps: float) -> float:
    """Tolerance on the mean probe gap: tol = factor * max(floor, eps * (1 + mean |log p|)).

    ``floor`` is the gap measured on identical weights in this run; a true sync reproduces it up to how the
    weights' values change the rounding, which ``factor`` (rollout.sync_tolerance_factor) allows for. The floor is
    taken at least one unit of rounding ``eps`` of the numbers compared (fp32 log-probs on both sides) at the
    probe's log-prob magnitude, so that a measured floor of exactly 0 (engine and learner on the same kernels) does
    not make the tolerance 0."""
    return factor * max(floor_mean, eps * (1.0 + mean_abs_logp))


def exported_lora_digest(adapter_dir: str | Path, dtype: str) -> dict[str, str]:
    """Per-module digests of a saved PEFT adapter in the canonical form an engine of ``dtype`` holds it
    (actors/vllm_ext.canonical_lora): {module name as vLLM's worker reports it: digest}."""
    from safetensors.torch import load_file

    cfg = json.loads(Path(adapter_dir, "adapter_config.json").read_text())
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scaling = alpha / r ** 0.5 if cfg.get("use_rslora") else alpha / r
    tensors = load_file(str(Path(adapter_dir, "adapter_model.safetensors")))
    mods: dict[str, dict] = {}
    for key, t in tensors.items():
        for part in ("lora_A", "lora_B"):
            tag = f".{part}."
            if tag in key:
                name = key.split(tag)[0].removeprefix("base_model.model.")
                mods.setdefault(name, {})[part] = t
    dt = getattr(torch, dtype)
    return {name: tensor_digest(*canonical_lora(ab["lora_A"], ab["lora_B"], scaling, dt)) for name, ab in sorted(mods.items())}


def _identity(which: str, version: int, eng: dict, expected: dict[str, str]) -> None:
    d = eng.get("digest")
    if d is None:
        return  # the engine serves no LoRA slot it can read back (tensor-parallel shards): the probe still checks
    if "error" in d:
        raise SyncError(f"weights v{version}: {which} cannot show the weights it serves: {d['error']}")
    got = d["modules"]
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    differ = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if missing or extra or differ:
        parts = [f"{len(differ)} of {len(expected)} modules hold other tensors ({', '.join(differ[:3])}...)" if differ else "",
                 f"missing {missing[:3]}" if missing else "", f"unexpected {extra[:3]}" if extra else ""]
        raise SyncError(f"adapter v{version}: {which} holds other weights than the learner exported: "
                        + "; ".join(p for p in parts if p) + " -- the engine is not serving the learner's adapter")


class SyncVerifier:
    """Driver-side state of the sync check for one learner (rank 0 of a group) and its engines.

    :meth:`calibrate` once at start-up, then :meth:`sync` after every update. Metrics: ``sync/floor_mean`` and
    ``sync/tolerance`` (from the calibration), ``sync/gap_mean`` / ``sync/gap_max`` (the worst engine now),
    ``sync/probe_move`` (how far this update moved the learner's probe logprobs), ``sync/probe_resolvable``."""

    def __init__(self, engines: list, learner, probe_ids: list[list[int]], engine_dtype: str = "float32",
                 factor: float = 4.0, mode: str = "lora", get=None):
        """``mode``: how weights reach the engines (rollout.weight_sync resolved): 'lora' hot-loads the adapter into
        the engine's LoRA slot, 'merged' loads W_0 + s B A into its linear layers in place. Both are checked the
        same two ways; the identity hashes are of the LoRA slot or of the merged matrices. ``get(refs, role, what)``
        waits for remote calls (default ``ray.get``); a pipeline passes one with deadlines that names the role."""
        if mode not in ("lora", "merged"):
            raise ValueError(f"weight sync mode {mode!r}: expected 'lora' or 'merged'")
        self.engines = list(engines)
        self.learner, self.probe_ids, self.dtype, self.factor, self.mode = learner, probe_ids, engine_dtype, factor, mode
        self.get = get or (lambda refs, role, what: ray.get(refs))
        self.floor_mean = self.floor_max = self.tolerance = None
        self.prev_lp: list[list[float]] | None = None

    def _which(self, i: int) -> str:
        return f"rollout engine {i}" if len(self.engines) > 1 else "rollout engine"

    def _probe_engines(self, exp: dict) -> list[dict]:
        self.get([e.load_weights.remote(exp) for e in self.engines], "rollout", "load calibration weights")
        return self.get([e.prompt_logprobs.remote(self.probe_ids) for e in self.engines], "rollout", "sync probe")

    def calibrate(self, adapters_dir: str | Path) -> dict:
        """Measure the engine-vs-learner gap on identical weights: a calibration adapter (the learner's adapter with
        a seeded random B, so the LoRA path computes something, which the untrained B = 0 would not) exported,
        loaded and probed on both sides. The floor is the worst engine's gap; the tolerance follows from it."""
        cal = self.get(self.learner.calibration_adapter.remote(str(Path(adapters_dir) / "calibration"), self.probe_ids,
                                                               self.dtype, self.mode), "learner", "calibration export")
        gaps = []
        for i, eng in enumerate(self._probe_engines({**cal, "version": CALIBRATION_VERSION})):
            _identity(self._which(i), CALIBRATION_VERSION, eng, cal["digest"])
            gaps.append(probe_gap(eng["logprobs"], cal["logprobs"]))
        self.floor_mean = max(g[0] for g in gaps)
        self.floor_max = max(g[1] for g in gaps)
        lps = [abs(x) for seq in cal["logprobs"] for x in seq]
        eps = torch.finfo(torch.float32).eps  # both sides report fp32 log-probs, whatever dtype computed them
        self.tolerance = probe_tolerance(self.floor_mean, sum(lps) / len(lps), self.factor, eps)
        return {"sync/floor_mean": self.floor_mean, "sync/floor_max": self.floor_max, "sync/tolerance": self.tolerance}

    def sync(self, adapters_dir: str | Path) -> dict:
        """Export the learner's weights, load them into every engine and verify identity and effect (:meth:`check`)."""
        t0 = time.time()
        exp = self.get(self.learner.export_adapter.remote(str(adapters_dir), self.dtype, self.mode, self.probe_ids),
                       "learner", "weight export")
        t1 = time.time()
        self.get([e.load_weights.remote(exp) for e in self.engines], "rollout", f"weight load v{exp['version']}")
        t2 = time.time()
        checked = self.check(exp)
        t3 = time.time()
        return {**checked, "time/sync": t3 - t0, "time/sync_export": t1 - t0, "time/sync_load": t2 - t1,
                "time/sync_verify": t3 - t2}

    def check(self, exp: dict) -> dict:
        """Verify that every engine serves ``exp`` (what ``export_adapter`` returned: path, version, digest)."""
        if self.tolerance is None:
            raise RuntimeError("SyncVerifier.check before calibrate()")
        version = exp["version"]
        # the learner's side: measured by the export itself where it was asked to (sync), else asked for now
        lrn_ref = None if "probe" in exp else self.learner.probe_logprobs.remote(self.probe_ids)
        engs = self.get([e.prompt_logprobs.remote(self.probe_ids) for e in self.engines], "rollout", "sync probe")
        lrn = exp["probe"] if lrn_ref is None else self.get(lrn_ref, "learner", "sync probe")
        if lrn["version"] != version:
            raise SyncError(f"learner is at version {lrn['version']}, expected {version}")
        move = probe_gap(lrn["logprobs"], self.prev_lp)[0] if self.prev_lp is not None else 0.0
        resolvable = self.prev_lp is not None and move > self.tolerance
        worst = (0.0, 0.0)
        for i, eng in enumerate(engs):
            which = self._which(i)
            if eng["adapter_version"] != version:
                raise SyncError(f"{which} serves adapter version {eng['adapter_version']}, expected {version}")
            _identity(which, version, eng, exp["digest"])
            mean, mx = probe_gap(eng["logprobs"], lrn["logprobs"])
            if mean > self.tolerance:
                raise SyncError(f"adapter v{version}: {which} and learner logprobs differ by {mean:.4g} on average "
                                f"(max {mx:.4g}) on the probe, above the calibrated tolerance {self.tolerance:.4g} "
                                f"(noise floor {self.floor_mean:.3g} x rollout.sync_tolerance_factor={self.factor:g}): "
                                "the engine does not compute with the learner's weights")
            if resolvable:
                to_prev = probe_gap(eng["logprobs"], self.prev_lp)[0]
                if not mean < to_prev:
                    raise SyncError(f"adapter v{version}: {which} is closer to the previous version (gap {to_prev:.4g}) "
                                    f"than to v{version} (gap {mean:.4g}): the update did not reach the engine")
            worst = max(worst, (mean, mx))
        self.prev_lp = lrn["logprobs"]
        return {"sync/gap_mean": worst[0], "sync/gap_max": worst[1], "sync/probe_move": move,
                "sync/probe_resolvable": float(resolvable), "sync/tolerance": self.tolerance,
                "sync/floor_mean": self.floor_mean, "adapter_version": version}
