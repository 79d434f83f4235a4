"""KL coefficient controllers: a fixed beta, or the adaptive one of Ziegler et al. 2019.

Adaptive control (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", sec. 2.2,
the proportional controller that InstructGPT, TRL's PPO and OpenRLHF inherit):

    e_t       = clip( KL_t / KL_target - 1, -0.2, 0.2 )
    beta_{t+1} = beta_t * (1 + K_beta * e_t),     K_beta = n_t / horizon

where KL_t is the measured KL(pi || pi_ref) of the batch (summed over a response's tokens, averaged over
responses) and n_t the number of responses in it: beta grows when the policy drifts past the target and
shrinks when it stays close, by at most 20% of n_t / horizon per step.
"""
from __future__ import annotations

from dataclasses import dataclass


def adaptive_kl_update(beta: float, kl: float, target: float, horizon: float, n_steps: int) -> float:
    """One step of the proportional controller above; returns beta_{t+1}."""
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return beta * (1.0 + error * n_steps / horizon)


@dataclass
class FixedKLController:
    """beta stays at its initial value."""

    value: float

    def update(self, kl: float, n_steps: int) -> float:
        return self.value


@dataclass
class AdaptiveKLController:
    """beta follows :func:`adaptive_kl_update` toward a target KL."""

    value: float
    target: float
    horizon: float

    def update(self, kl: float, n_steps: int) -> float:
        self.value = adaptive_kl_update(self.value, kl, self.target, self.horizon, n_steps)
        return self.value


def make_kl_controller(kind: str, init: float, target: float = 6.0, horizon: float = 10000.0):
    """``kind``: ``fixed`` or ``adaptive`` (``algo.kl_ctrl``)."""
    if kind == "fixed":
        return FixedKLController(init)
    if kind == "adaptive":
        if target <= 0 or horizon <= 0:
            raise ValueError(f"algo.kl_target and algo.kl_horizon must be > 0 for the adaptive controller, "
                             f"got {target} and {horizon}")
        return AdaptiveKLController(init, target, horizon)
    raise ValueError(f"algo.kl_ctrl={kind!r}: choose fixed or adaptive")
