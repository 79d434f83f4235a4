"""Learning without Forgetting: keep the old model's outputs on the new task's inputs (Li & Hoiem 2016)."""
from __future__ import annotations

from continual.hooks import Strategy
from continual.params import snapshot, swapped
from continual.regularizers import distillation_loss


class LwF(Strategy):
    """loss + alpha * T^2 KL(old || new) on the current batch, over the output columns of earlier tasks
    (every column when tasks carry no classes, e.g. a language model's vocabulary).

    The teacher is the model as it was before the current task: a copy of the trainable parameters, swapped
    in for one no-grad forward per step."""

    name = "lwf"

    def __init__(self, alpha: float = 1.0, temperature: float = 2.0):
        self.alpha, self.temperature = alpha, temperature
        self.teacher = None
        self.tasks_done = 0
        self.seen_classes: set[int] = set()
        self.columns: list[int] | None = None

    def before_task(self, learner, task):
        # Snapshot here rather than after the last task: what is trainable may have changed in between.
        self.teacher = snapshot(learner.trainable()) if self.tasks_done else None
        self.columns = sorted(self.seen_classes) or None

    def after_task(self, learner, task):
        self.tasks_done += 1
        self.seen_classes |= set(task.classes)

    def distill(self, learner, step):
        params = learner.trainable()
        with swapped(params, self.teacher):
            old_logits, _ = learner.forward(learner.model, step.batch)
        new = step.logits
        if self.columns is not None:
            old_logits, new = old_logits[:, self.columns], new[:, self.columns]
        valid = step.targets != -100
        return distillation_loss(new[valid], old_logits[valid].detach(), self.temperature)

    def before_backward(self, learner, task, step):
        if self.teacher is None:
            return step.loss
        return step.loss + self.alpha * self.distill(learner, step)
