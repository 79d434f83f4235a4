"""The training loop of a task stream, in the order the hooks fire.

``run_stream(learner, tasks, strategy)`` trains the tasks one after another and fills the accuracy
matrix ``R[t][i]`` (score on task i after training task t) from which :mod:`continual.metrics` derives
every metric. The loop is plain: for each task ``before_task``, epochs of
``forward -> before_backward -> backward -> after_backward -> optimizer step``, then ``after_task``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from continual.hooks import Step, Strategy
from continual.learner import Learner, batches, head_logits
from continual.metrics import summarize
from continual.streams import Task


def task_loss(learner: Learner, batch: Any, task: Task) -> Step:
    """Forward ``batch`` and take the cross-entropy over ``task``'s head."""
    logits, targets = learner.forward(learner.model, batch)
    loss = F.cross_entropy(head_logits(logits, task.head), targets, ignore_index=-100)
    return Step(batch=batch, logits=logits, targets=targets, loss=loss)


def run_epochs(learner: Learner, task: Task, strategy: Strategy, epochs: int) -> float:
    """Train ``epochs`` passes over ``task.train`` with a fresh optimizer; returns the mean task loss.

    A fresh optimizer per call: moments from an earlier task would keep moving weights that a strategy
    froze, and strategies that add parameters (adapters) need them in the optimizer."""
    model = learner.model
    model.train()
    opt = learner.optimizer(learner.trainable(), learner.lr)
    gen = torch.Generator().manual_seed(1_000_003 * learner.seed + task.id)
    total, count = 0.0, 0
    for _ in range(epochs):
        for examples in batches(task.train, learner.batch_size, gen):
            batch = learner.collate(examples)
            opt.zero_grad(set_to_none=True)
            step = task_loss(learner, batch, task)
            loss = strategy.before_backward(learner, task, step)
            loss.backward()
            strategy.after_backward(learner, task, step)
            opt.step()
            total += float(step.loss.detach())
            count += 1
    return total / max(count, 1)


def train_task(learner: Learner, task: Task, strategy: Strategy, epochs: int | None = None) -> float:
    """``before_task``, the epochs, ``after_task``. Returns the mean task loss."""
    strategy.before_task(learner, task)
    loss = run_epochs(learner, task, strategy, learner.epochs if epochs is None else epochs)
    strategy.after_task(learner, task)
    return loss


@torch.no_grad()
def evaluate(learner: Learner, task: Task, strategy: Strategy | None = None) -> float:
    """Accuracy on ``task.test``: argmax of the strategy's scores against the targets (-100 skipped)."""
    strategy = strategy or Strategy()
    was_training = learner.model.training
    learner.model.eval()
    correct, count = 0, 0
    for examples in batches(task.test, learner.eval_batch_size):
        scores, targets = strategy.predict(learner, learner.collate(examples), task)
        valid = targets != -100
        correct += int((scores.argmax(-1)[valid] == targets[valid]).sum())
        count += int(valid.sum())
    learner.model.train(was_training)
    return correct / max(count, 1)


@dataclass
class StreamResult:
    R: list[list[float]]
    """R[t][i]: accuracy on task i after training task t (every task, seen or not, so FWT is defined)."""
    b: list[float]
    """Accuracy of the untrained model on each task."""
    metrics: dict[str, float]
    """``cl/acc``, ``cl/bwt``, ``cl/fwt``, ``cl/forgetting``."""
    losses: list[float]
    """Mean training loss per task."""


def run_stream(learner: Learner, tasks: Sequence[Task], strategy: Strategy, log=None,
               progress: bool = False) -> StreamResult:
    """Train ``tasks`` in order with ``strategy``; evaluate every task after each one.

    ``log`` (a :class:`runlog.RunLog`) gets one row per task: ``train/loss``, ``cl/acc_seen`` (mean over the
    tasks seen so far) and ``cl/R/<i>``; its summary gets the final metrics and the matrix."""
    b = [evaluate(learner, t, Strategy()) for t in tasks]
    R, losses = [], []
    it = tasks
    if progress:
        from tqdm import tqdm

        it = tqdm(tasks, desc=strategy.name, leave=False)
    for t, task in enumerate(it):
        losses.append(train_task(learner, task, strategy))
        R.append([evaluate(learner, other, strategy) for other in tasks])
        if log is not None:
            log.log(t, {"train/loss": losses[-1], "cl/acc_seen": sum(R[t][: t + 1]) / (t + 1),
                        **{f"cl/R/{i}": r for i, r in enumerate(R[t])}})
    result = StreamResult(R=R, b=b, metrics=summarize(R, b), losses=losses)
    if log is not None:
        log.summary({**result.metrics, "R": R, "b": b, "strategy": strategy.name})
    return result
