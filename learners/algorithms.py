"""Named algorithms = a choice of advantage estimator, policy loss, loss aggregation and a few switches (the
veRL way): GRPO vs Dr.GRPO vs DAPO vs GSPO is a row of this table and a config key, not a new trainer.

``resolve(algo_cfg)`` fills every empty field of an AlgoConfig from its algorithm's row (then from BASE), and
checks every name, so a typo fails at start-up with the choices listed.

| name                  | advantages                          | ratio / clip               | aggregation             | KL        |
|-----------------------|-------------------------------------|----------------------------|-------------------------|-----------|
| grpo                  | (R - mean_g) / std_g                | token, 0.2 / 0.2           | seq-mean-token-mean     | k3 loss   |
| dr_grpo               | R - mean_g                          | token, 0.2 / 0.2           | seq-mean-token-sum-norm | k3 loss   |
| dapo                  | (R - mean_g) / std_g                | token, 0.2 / 0.28          | token-mean              | k3 loss   |
| gspo                  | (R - mean_g) / std_g                | sequence, 3e-4 / 4e-4      | seq-mean-token-mean     | k3 loss   |
| rloo                  | R - mean of the others              | token, 0.2 / 0.2           | token-mean              | k1 reward |
| reinforce_pp          | whiten_batch(return-to-go)          | token, 0.2 / 0.2           | token-mean              | k1 reward |
| reinforce_pp_baseline | whiten_batch(R - mean_g)            | token, 0.2 / 0.2           | token-mean              | k1 reward |
| ppo                   | whiten_batch(GAE(gamma, lambda, V)) | token, 0.2 / 0.2           | token-mean              | k1 reward |

dapo also switches on dynamic sampling and overlong filtering; ppo needs a critic (pipelines/ppo.py).
"""
from __future__ import annotations

from dataclasses import replace

from config import ConfigError

BASE = {"policy_loss": "ppo_clip", "loss_agg": "token-mean", "clip_low": 0.2, "clip_high": 0.2, "kl_mode": "loss",
        "norm_adv_by_std": True, "dynamic_sampling": False, "overlong_filter": False}

ALGORITHMS: dict[str, dict] = {
    # Shao et al. 2024 (DeepSeekMath): group-normalised advantages, clipped token ratio, mean of per-sequence means.
    "grpo": {"adv_estimator": "grpo", "loss_agg": "seq-mean-token-mean"},
    # Liu et al. 2025: no std division (question bias), a constant length normaliser (length bias).
    "dr_grpo": {"adv_estimator": "dr_grpo", "loss_agg": "seq-mean-token-sum-norm", "norm_adv_by_std": False},
    # Yu et al. 2025: clip-higher, token-level loss, dynamic sampling, overlong filtering.
    "dapo": {"adv_estimator": "grpo", "clip_high": 0.28, "dynamic_sampling": True, "overlong_filter": True},
    # Zheng et al. 2025: sequence-level ratio and clipping.
    "gspo": {"adv_estimator": "grpo", "policy_loss": "gspo", "loss_agg": "seq-mean-token-mean",
             "clip_low": 3e-4, "clip_high": 4e-4},
    # Ahmadian et al. 2024: leave-one-out baseline, KL as a reward penalty (as TRL's and OpenRLHF's RLOO).
    "rloo": {"adv_estimator": "rloo", "kl_mode": "reward"},
    # Hu 2025: PPO's tricks without a critic; return-to-go normalised over the batch.
    "reinforce_pp": {"adv_estimator": "reinforce_pp", "kl_mode": "reward"},
    "reinforce_pp_baseline": {"adv_estimator": "reinforce_pp_baseline", "kl_mode": "reward"},
    # Ouyang et al. 2022 / Ziegler et al. 2019: critic + GAE, per-token KL penalty in the reward.
    "ppo": {"adv_estimator": "gae", "kl_mode": "reward"},
}

NEEDS_CRITIC = {"gae"}


def resolve(algo, max_new_tokens: int | None = None):
    """Return a copy of ``algo`` (config.AlgoConfig) with its algorithm's defaults filled in; ``max_new_tokens``
    (the rollout budget) becomes Dr.GRPO's constant L when ``algo.norm_len`` is 0."""
    from learners.advantages import ADV_ESTIMATORS
    from learners.policy_loss import AGGREGATIONS, POLICY_LOSSES

    if algo.name not in ALGORITHMS:
        raise ConfigError(f"algo.name={algo.name!r} is not known; choose one of {sorted(ALGORITHMS)}")
    d = {**BASE, **ALGORITHMS[algo.name]}
    filled = {k: d[k] for k in d if getattr(algo, k) in (None, "")}
    if algo.kl_estimator is None:
        filled["kl_estimator"] = "k1" if (algo.kl_mode or d["kl_mode"]) == "reward" else "k3"
    if not algo.norm_len and max_new_tokens:
        filled["norm_len"] = int(max_new_tokens)
    out = replace(algo, **filled)
    for key, known in (("adv_estimator", ADV_ESTIMATORS), ("policy_loss", POLICY_LOSSES), ("loss_agg", AGGREGATIONS)):
        if getattr(out, key) not in known:
            raise ConfigError(f"algo.{key}={getattr(out, key)!r} is not known; choose one of {sorted(known)}")
    return out
