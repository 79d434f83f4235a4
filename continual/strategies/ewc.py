"""Elastic weight consolidation: a quadratic pull towards the weights earlier tasks needed.

Kirkpatrick et al. 2017 (one Fisher and one anchor per task) and online EWC (Schwarz et al. 2018: one
running Fisher, the latest anchor). The math is in :mod:`continual.regularizers`.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from continual.hooks import Strategy
from continual.learner import batches, head_logits
from continual.params import grad_of, snapshot
from continual.regularizers import ewc_penalty, fisher_update, online_fisher


def fisher_diagonal(learner, task, n_samples: int = 200, mode: Literal["empirical", "sampled"] = "empirical",
                    seed: int = 0) -> list[torch.Tensor]:
    """Diagonal Fisher of the trainable parameters over (up to) ``n_samples`` of ``task.train``.

    One gradient per example of its log-likelihood sum_u log p(y_u | x) (u: the example's scored units, one
    for a classifier, every target token of a sequence), squared and averaged. ``empirical``: y = the data;
    ``sampled``: y ~ p_theta(. | x) per unit, the Monte-Carlo estimate of the true Fisher."""
    if mode not in ("empirical", "sampled"):
        raise ValueError(f"fisher mode must be 'empirical' or 'sampled', got {mode!r}")
    params = learner.trainable()
    fisher = [torch.zeros_like(p) for p in params]
    gen = torch.Generator().manual_seed(seed)
    examples = [task.train[i] for i in torch.randperm(len(task.train), generator=gen)[:n_samples].tolist()]
    was_training = learner.model.training
    learner.model.eval()  # no dropout: the Fisher of the model that is deployed
    for n, (ex,) in enumerate(batches(examples, 1), start=1):
        logits, targets = learner.forward(learner.model, learner.collate([ex]))
        logits = head_logits(logits, task.head)
        valid = targets != -100
        if mode == "sampled":
            drawn = torch.multinomial(F.softmax(logits.detach().float(), -1), 1, generator=gen).squeeze(-1)
            targets = torch.where(valid, drawn, targets)
        loglik = -F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
        fisher_update(fisher, grad_of(loglik, params), n)
    learner.model.train(was_training)
    return fisher


class EWC(Strategy):
    """loss + lam/2 * sum_tasks sum_k F_k (theta_k - theta*_k)^2.

    ``fisher``: ``empirical`` or ``sampled`` (see :func:`fisher_diagonal`). ``online=True``: online EWC, one
    running Fisher F* = gamma F* + F_t anchored at the weights after the latest task."""

    def __init__(self, lam: float = 100.0, fisher: Literal["empirical", "sampled"] = "empirical",
                 online: bool = False, gamma: float = 1.0, n_samples: int = 200, seed: int = 0):
        self.lam, self.mode, self.online, self.gamma = lam, fisher, online, gamma
        self.n_samples, self.seed = n_samples, seed
        self.anchors: list[list[torch.Tensor]] = []
        self.fishers: list[list[torch.Tensor]] = []
        self.name = ("online-ewc" if online else "ewc") + ("" if fisher == "empirical" else f"-{fisher}")

    def after_task(self, learner, task):
        f = fisher_diagonal(learner, task, self.n_samples, self.mode, self.seed + task.id)
        anchor = snapshot(learner.trainable())
        if self.online:
            self.fishers = [online_fisher(self.fishers[0] if self.fishers else None, f, self.gamma)]
            self.anchors = [anchor]
        else:
            self.fishers.append(f)
            self.anchors.append(anchor)

    def penalty(self, learner) -> torch.Tensor:
        """sum over remembered tasks of sum_k F_k (theta_k - theta*_k)^2 (without lam/2)."""
        params = learner.trainable()
        if not self.anchors:
            return params[0].new_zeros(())
        return sum(ewc_penalty(params, a, f) for a, f in zip(self.anchors, self.fishers))

    def before_backward(self, learner, task, step):
        if not self.anchors:
            return step.loss
        return step.loss + 0.5 * self.lam * self.penalty(learner)
