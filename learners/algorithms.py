"""Named algorithms = a choice of advantage estimator, policy loss, loss aggregation and a few switches (the
veRL way): GRPO vs Dr.GRPO vs DAPO vs GSPO is a row of this table and a config key, not a new trainer.

``resolve(algo_cfg)`` fills every field of an AlgoConfig left at None (the one spelling of "the default") from its
algorithm's row (then from BASE), and checks every name and ``algo.params`` key against the registries, so a typo
fails at start-up with the choices listed.

These tables are the one source of the names: ``ALGORITHMS`` here, ``ADV_ESTIMATORS`` (learners/advantages.py),
``POLICY_LOSSES`` and ``AGGREGATIONS`` (learners/policy_loss.py). The config's validation, the errors' lists of
choices and bench/algorithm_runs.py read them; tests/test_registry_names.py fails when docs/algorithms/index.md,
the pipelines' docstrings or this module's table disagree with them.

Hyperparameters reach an estimator or a loss by its signature (:func:`hyperparameters`): each keyword-only
parameter takes ``algo.params[name]``, else the AlgoConfig field of that name, else its own default. So a new
estimator with a new knob is a function (``*, my_knob: float = 1.0``), perhaps a row here (``"params":
{"my_knob": 2.0}``) and a test -- set from the command line as ``algo.params.my_knob=3``.

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

import inspect
from dataclasses import fields, replace

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

# What the learner hands an estimator or a loss besides the config: never a hyperparameter a user sets.
RUNTIME = {"reduce"}


def needs_critic(name: str) -> bool:
    """Whether algorithm ``name`` trains a critic (pipelines/ppo.py runs it; pipelines/grpo.py runs the others)."""
    return ALGORITHMS[name]["adv_estimator"] in NEEDS_CRITIC


def script_for(name: str) -> str:
    """The pipeline script that runs algorithm ``name``."""
    return "pipelines/ppo.py" if needs_critic(name) else "pipelines/grpo.py"


def declared_hyperparameters(fn) -> dict[str, inspect.Parameter]:
    """The keyword-only parameters of a registered estimator or loss (its hyperparameters), less the runtime ones."""
    return {n: p for n, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in RUNTIME}


def hyperparameters(fn, algo, **runtime) -> dict:
    """The keyword arguments of ``fn`` (a registered estimator or loss) for the resolved ``algo``: each keyword-only
    parameter takes ``algo.params[name]``, else the AlgoConfig field ``name`` when it is set, else ``runtime[name]``
    (what the learner passes: ``reduce``); a parameter none of them has keeps its own default."""
    fieldnames = {f.name for f in fields(algo)}
    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if name in algo.params:
            out[name] = algo.params[name]
        elif name in fieldnames and getattr(algo, name) is not None:
            out[name] = getattr(algo, name)
        elif name in runtime:
            out[name] = runtime[name]
    return out


def _check_params(algo, estimator, loss) -> None:
    """Every ``algo.params`` key is a hyperparameter the chosen estimator or loss declares (and not a config field,
    which has its own key); every declared hyperparameter without a default gets a value."""
    fieldnames = {f.name for f in fields(algo)}
    takes = {**declared_hyperparameters(estimator), **declared_hyperparameters(loss)}
    for key in algo.params:
        if key in fieldnames:
            raise ConfigError(f"algo.params.{key}: {key} is a key of algo itself; set algo.{key}={algo.params[key]!r}")
        if key not in takes:
            raise ConfigError(f"algo.params.{key}: neither adv_estimator {algo.adv_estimator!r} nor policy_loss "
                              f"{algo.policy_loss!r} takes it; they take {sorted(takes)}")
    for key, p in takes.items():
        if p.default is inspect.Parameter.empty and key not in algo.params and \
                (key not in fieldnames or getattr(algo, key) is None):
            raise ConfigError(f"algo.params.{key}: required by adv_estimator {algo.adv_estimator!r} or policy_loss "
                              f"{algo.policy_loss!r}; set algo.params.{key}=VALUE")


def resolve(algo, max_new_tokens: int | None = None):
    """Return a copy of ``algo`` (config.AlgoConfig) with every field left at None filled from its algorithm's row,
    then from BASE; ``max_new_tokens`` (the rollout budget) becomes Dr.GRPO's constant L when ``algo.norm_len`` is
    None. ``algo.params`` is the row's ``params`` updated by the user's. Raises ConfigError naming the key for an
    unknown algorithm, estimator, loss, aggregation or hyperparameter."""
    from learners.advantages import ADV_ESTIMATORS
    from learners.policy_loss import AGGREGATIONS, POLICY_LOSSES

    if algo.name not in ALGORITHMS:
        raise ConfigError(f"algo.name={algo.name!r} is not known; choose one of {sorted(ALGORITHMS)}")
    d = {**BASE, **ALGORITHMS[algo.name]}
    filled = {k: d[k] for k in d if k != "params" and getattr(algo, k) is None}
    filled["params"] = {**d.get("params", {}), **algo.params}
    if algo.kl_estimator is None:
        filled["kl_estimator"] = "k1" if (algo.kl_mode or d["kl_mode"]) == "reward" else "k3"
    if algo.norm_len is None and max_new_tokens:
        filled["norm_len"] = int(max_new_tokens)
    out = replace(algo, **filled)
    for key, known in (("adv_estimator", ADV_ESTIMATORS), ("policy_loss", POLICY_LOSSES), ("loss_agg", AGGREGATIONS)):
        if getattr(out, key) not in known:
            raise ConfigError(f"algo.{key}={getattr(out, key)!r} is not known; choose one of {sorted(known)}")
    _check_params(out, ADV_ESTIMATORS[out.adv_estimator], POLICY_LOSSES[out.policy_loss])
    return out
