"""The hook API that continual-learning strategies plug into.

A strategy is an object with (any of) five methods; the loop in :mod:`continual.loop` calls them:

- ``before_task(learner, task)``: before training on ``task`` (snapshot the old model, add an adapter).
- ``before_backward(learner, task, step) -> loss``: return the loss to backpropagate (add a penalty,
  a replay term, a distillation term, or replace it).
- ``after_backward(learner, task, step)``: the gradients are in ``p.grad``; change them in place
  (project them, mask them) before the optimizer steps.
- ``after_task(learner, task)``: after training on ``task`` (estimate Fisher, fill a memory, prune).
- ``predict(learner, batch, task) -> (scores, targets)``: how the strategy classifies at test time
  (nearest mean of exemplars, routing between adapters, a task's weight mask).

``Strategy`` is the do-nothing base (naive fine-tuning); subclasses override what they need.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Sequence

import torch

from continual.learner import Learner, head_logits

if TYPE_CHECKING:
    from continual.streams import Task


@dataclass
class Step:
    """One optimisation step as the hooks see it."""

    batch: Any
    """The collated batch (whatever ``learner.collate`` returns)."""
    logits: torch.Tensor
    """[N, C] raw outputs of the current model on ``batch`` (before any task-head mask), in the graph."""
    targets: torch.Tensor
    """[N] class / next-token ids; -100 marks units that are not scored."""
    loss: torch.Tensor
    """The task's own loss on ``batch`` (cross-entropy over the task's head)."""


class Strategy:
    """Naive fine-tuning: every hook does nothing. Subclass and override."""

    name = "naive"
    uses_task_id = False
    """True when ``predict`` needs to know which task an input comes from (task-incremental only)."""

    def before_task(self, learner: "Learner", task: "Task") -> None:
        pass

    def after_task(self, learner: "Learner", task: "Task") -> None:
        pass

    def before_backward(self, learner: "Learner", task: "Task", step: Step) -> torch.Tensor:
        return step.loss

    def after_backward(self, learner: "Learner", task: "Task", step: Step) -> None:
        pass

    def predict(self, learner: "Learner", batch: Any, task: "Task") -> tuple[torch.Tensor, torch.Tensor]:
        logits, targets = learner.forward(learner.model, batch)
        return head_logits(logits, task.head), targets


class Compose(Strategy):
    """Run several strategies' hooks in order (e.g. replay + EWC). ``before_backward`` chains the loss;
    ``predict`` is the last strategy's that overrides it (at most one may)."""

    def __init__(self, strategies: Sequence[Strategy]):
        self.strategies = list(strategies)
        own = [s for s in self.strategies if type(s).predict is not Strategy.predict]
        if len(own) > 1:
            raise ValueError(f"at most one composed strategy may override predict, got {[s.name for s in own]}")
        self._predictor = own[0] if own else Strategy()
        self.name = "+".join(s.name for s in self.strategies)
        self.uses_task_id = any(s.uses_task_id for s in self.strategies)

    def before_task(self, learner, task):
        for s in self.strategies:
            s.before_task(learner, task)

    def after_task(self, learner, task):
        for s in self.strategies:
            s.after_task(learner, task)

    def before_backward(self, learner, task, step):
        loss = step.loss
        for s in self.strategies:  # each sees the loss so far; the caller's step keeps the task's own loss
            loss = s.before_backward(learner, task, replace(step, loss=loss))
        return loss

    def after_backward(self, learner, task, step):
        for s in self.strategies:
            s.after_backward(learner, task, step)

    def predict(self, learner, batch, task):
        return self._predictor.predict(learner, batch, task)
