"""GEM and A-GEM: project each step's gradient so that the loss on remembered examples does not rise.

The projections are in :mod:`continual.projection`; here: the episodic memory and the gradient plumbing.
"""
from __future__ import annotations

import random

import torch

from continual.hooks import Strategy
from continual.params import flat_grad, grad_of, set_flat_grad
from continual.projection import agem_project, gem_project
from continual.strategies.replay import memory_loss


class GEM(Strategy):
    """Gradient Episodic Memory (Lopez-Paz & Ranzato 2017): ``per_task`` random examples of every finished
    task; at each step one memory gradient g_k per earlier task, and the step's gradient replaced by the
    closest g~ with <g~, g_k> >= 0 for all k (a QP solved with quadprog)."""

    name = "gem"

    def __init__(self, per_task: int = 64, margin: float = 0.5, seed: int = 0):
        self.per_task, self.margin = per_task, margin
        self.rng = random.Random(seed)
        self.memory: dict[int, list] = {}
        self.tasks: dict = {}
        self.projected = 0
        """Steps whose gradient violated a constraint and was projected (a diagnostic)."""

    def after_task(self, learner, task):
        self.tasks[task.id] = task
        self.memory[task.id] = self.rng.sample(list(task.train), min(self.per_task, len(task.train)))

    def memory_gradients(self, learner, params) -> torch.Tensor:
        rows = []
        for task_id, exs in self.memory.items():
            loss = memory_loss(learner, [(task_id, ex) for ex in exs], self.tasks)
            rows.append(torch.cat([g.reshape(-1) for g in grad_of(loss, params)]))
        return torch.stack(rows)

    def after_backward(self, learner, task, step):
        if not self.memory:
            return
        params = learner.trainable()
        g = flat_grad(params)
        G = self.memory_gradients(learner, params)
        if bool((G @ g < 0).any()):
            self.projected += 1
            set_flat_grad(params, gem_project(g, G, self.margin))


class AGEM(Strategy):
    """Averaged GEM (Chaudhry et al. 2019): one reference gradient on ``sample_size`` examples drawn from the
    whole memory; if the step's gradient opposes it, remove that component (closed form, no QP)."""

    name = "a-gem"

    def __init__(self, per_task: int = 64, sample_size: int = 64, seed: int = 0):
        self.per_task, self.sample_size = per_task, sample_size
        self.rng = random.Random(seed)
        self.memory: list[tuple[int, object]] = []
        self.tasks: dict = {}
        self.projected = 0

    def after_task(self, learner, task):
        self.tasks[task.id] = task
        chosen = self.rng.sample(list(task.train), min(self.per_task, len(task.train)))
        self.memory.extend((task.id, ex) for ex in chosen)

    def after_backward(self, learner, task, step):
        if not self.memory:
            return
        params = learner.trainable()
        g = flat_grad(params)
        items = self.rng.sample(self.memory, min(self.sample_size, len(self.memory)))
        g_ref = torch.cat([x.reshape(-1) for x in grad_of(memory_loss(learner, items, self.tasks), params)])
        if torch.dot(g, g_ref) < 0:
            self.projected += 1
            set_flat_grad(params, agem_project(g, g_ref))
