"""PackNet (Mallya & Lazebnik 2018, "PackNet: Adding Multiple Tasks to a Single Network by Iterative Pruning").

Each task trains the weights no earlier task owns, keeps the largest ``1 - prune`` fraction of them (by
magnitude), zeroes the rest, retrains the kept ones briefly, and freezes them as its own. At test time task i
runs with the weights of tasks 0..i only. Weight matrices are packed; biases and norms are trained on the
first task and frozen after it, as in the paper.
"""
from __future__ import annotations

import torch

from continual.hooks import Strategy
from continual.learner import head_logits
from continual.loop import run_epochs
from continual.params import swapped

FREE = -1


class PackNet(Strategy):
    name = "packnet"
    uses_task_id = True

    def __init__(self, prune: float = 0.75, retrain_epochs: int = 2):
        if not 0.0 < prune < 1.0:
            raise ValueError(f"prune must be in (0, 1), got {prune}")
        self.prune, self.retrain_epochs = prune, retrain_epochs
        self.owner: dict[str, torch.Tensor] = {}
        """For each weight matrix: the task owning each entry, or FREE (-1)."""
        self.retraining = False
        self.tasks_done = 0

    def before_task(self, learner, task):
        if not self.owner:
            self.owner = {n: torch.full(p.shape, FREE, dtype=torch.long)
                          for n, p in learner.named_trainable().items() if p.ndim >= 2}

    def after_backward(self, learner, task, step):
        for n, p in learner.named_trainable().items():
            if p.grad is None:
                continue
            if n in self.owner:
                allowed = self.owner[n] == (task.id if self.retraining else FREE)
                p.grad.mul_(allowed.to(p.grad.dtype))
            elif self.tasks_done:
                p.grad = None  # biases and norms belong to the first task

    @torch.no_grad()
    def prune_free(self, learner, task) -> None:
        """Give ``task`` the largest-magnitude ``1 - prune`` of the free entries of each matrix; zero the rest."""
        for n, p in learner.named_trainable().items():
            if n not in self.owner:
                continue
            free = self.owner[n] == FREE
            n_keep = int(round((1.0 - self.prune) * int(free.sum())))
            if n_keep == 0:
                continue
            mags = p.detach().abs().masked_fill(~free, -1.0).flatten()
            keep = torch.zeros_like(free.flatten())
            keep[mags.topk(n_keep).indices] = True
            keep = keep.view_as(free)
            self.owner[n][keep] = task.id
            p.data[free & ~keep] = 0.0

    def after_task(self, learner, task):
        self.prune_free(learner, task)
        self.retraining = True
        try:
            run_epochs(learner, task, self, self.retrain_epochs)
        finally:
            self.retraining = False
        self.tasks_done += 1

    def predict(self, learner, batch, task):
        named = learner.named_trainable()
        params = [named[n] for n in self.owner]
        masked = [p.detach() * ((o >= 0) & (o <= task.id)).to(p.dtype) for p, o in zip(params, self.owner.values())]
        with swapped(params, masked):
            logits, targets = learner.forward(learner.model, batch)
        return head_logits(logits, task.head), targets
