"""Named algorithms = a choice of advantage estimator, policy loss and loss aggregation (the veRL way).

``resolve(algo_cfg)`` fills the empty fields of an AlgoConfig from the algorithm's defaults, so that
GRPO vs Dr.GRPO vs DAPO is a config key and a few visible lines, not a new trainer.
"""
from __future__ import annotations

from dataclasses import replace

ALGORITHMS: dict[str, dict] = {
    # Shao et al. 2024: group-normalised advantages, clipped ratio, per-sequence mean of token means, KL k3.
    "grpo": {"adv_estimator": "grpo", "policy_loss": "ppo_clip", "loss_agg": "seq-mean-token-mean",
             "norm_adv_by_std": True},
}


def resolve(algo):
    """Return a copy of ``algo`` (config.AlgoConfig) with the algorithm's defaults filled in."""
    if algo.name not in ALGORITHMS:
        raise ValueError(f"algo.name={algo.name!r} is not known; choose one of {sorted(ALGORITHMS)}")
    d = ALGORITHMS[algo.name]
    return replace(algo, adv_estimator=algo.adv_estimator or d["adv_estimator"],
                   policy_loss=algo.policy_loss or d["policy_loss"], loss_agg=algo.loss_agg or d["loss_agg"],
                   norm_adv_by_std=d.get("norm_adv_by_std", True) if algo.norm_adv_by_std is None else algo.norm_adv_by_std)
