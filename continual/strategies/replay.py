"""Experience replay: rehearse a bounded memory of earlier tasks' examples next to each new batch.

Robins 1995 ("Catastrophic forgetting, rehearsal and pseudorehearsal"); with a tiny episodic memory as in
Chaudhry et al. 2019, "On Tiny Episodic Memories in Continual Learning": loss = L(batch) + w * L(memory batch).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch
import torch.nn.functional as F

from continual.buffers import BalancedBuffer, ReservoirBuffer
from continual.hooks import Strategy
from continual.learner import head_logits


def memory_loss(learner, items: Sequence[tuple[int, object]], tasks: dict) -> torch.Tensor:
    """Mean cross-entropy over ``(task_id, example)`` items, each scored under its own task's head."""
    by_task: dict[int, list] = defaultdict(list)
    for task_id, ex in items:
        by_task[task_id].append(ex)
    total, count = None, 0
    for task_id, exs in by_task.items():
        logits, targets = learner.forward(learner.model, learner.collate(exs))
        n = int((targets != -100).sum())
        loss = F.cross_entropy(head_logits(logits, tasks[task_id].head), targets, ignore_index=-100,
                               reduction="sum")
        total = loss if total is None else total + loss
        count += n
    return total / max(count, 1)


class Replay(Strategy):
    """Rehearsal from ``buffer`` (a :class:`ReservoirBuffer` or a class-balanced :class:`BalancedBuffer`).

    After each task its training examples stream through the buffer once (so a reservoir holds a uniform
    sample of everything seen); while training later tasks, every step adds ``weight`` times the loss on
    ``batch_size`` remembered examples (default: the learner's batch size)."""

    name = "replay"

    def __init__(self, buffer: ReservoirBuffer | BalancedBuffer, batch_size: int | None = None, weight: float = 1.0):
        self.buffer = buffer
        self.batch_size = batch_size
        self.weight = weight
        self.tasks: dict = {}

    def after_task(self, learner, task):
        self.tasks[task.id] = task
        for ex in task.train:
            self.buffer.add((task.id, ex))

    def before_backward(self, learner, task, step):
        if not len(self.buffer):
            return step.loss
        items = self.buffer.sample(self.batch_size or learner.batch_size)
        return step.loss + self.weight * memory_loss(learner, items, self.tasks)


def class_balanced(capacity: int, label=lambda item: int(item[1][1]), seed: int = 0) -> BalancedBuffer:
    """A buffer with equal room per class; ``label`` reads the class from a ``(task_id, example)`` item
    (default: an ``(x, y)`` classifier example)."""
    return BalancedBuffer(capacity, key=label, seed=seed)
