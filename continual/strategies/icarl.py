"""iCaRL (Rebuffi et al. 2017): herding exemplars, a distillation loss, nearest-mean-of-exemplars classifier.

For classifiers (one target per example) with ``learner.embed`` giving the feature map phi(x).
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from continual.exemplars import herding, nearest_mean_scores, normalize
from continual.hooks import Strategy
from continual.learner import batches, head_logits
from continual.params import snapshot, swapped


class ICaRL(Strategy):
    """Training set = new data + exemplars; loss = binary cross-entropy over every seen class, with targets
    one-hot for the current task's classes and the old model's sigmoid outputs for the other, older ones
    (iCaRL, algorithm 3). After each task herding picks ``memory_size / #sets`` exemplars per (task, class)
    set -- one set per class in a class-incremental stream; a domain-incremental stream, where a class recurs
    in every task, keeps one per task and class -- and older sets keep their first ones (algorithm 5).
    Prediction is the nearest mean of the exemplars of each class in feature space."""

    name = "icarl"

    def __init__(self, memory_size: int = 200, seed: int = 0):
        self.memory_size = memory_size
        self.rng = random.Random(seed)
        self.memory: dict[tuple[int, int], list] = {}
        """(task id, class) -> ``(task_id, example)`` items in herding order."""
        self.teacher = None
        self.old: list[int] = []
        self.new: list[int] = []
        self.means: torch.Tensor | None = None

    def before_task(self, learner, task):
        if learner.embed is None:
            raise ValueError("iCaRL needs learner.embed (the feature map phi(x)); a classifier learner has one")
        if not task.classes:
            raise ValueError(f"iCaRL needs tasks with classes; task {task.id} has none")
        self.teacher = snapshot(learner.trainable()) if self.memory else None
        self.new = sorted(task.classes)
        self.old = sorted({c for _, c in self.memory} - set(self.new))

    def _targets(self, learner, batch, logits, targets) -> torch.Tensor:
        y = torch.zeros_like(logits, dtype=torch.float32)
        valid = targets >= 0
        y[valid] = F.one_hot(targets[valid], logits.shape[-1]).float()
        if self.teacher is not None and self.old:
            with swapped(learner.trainable(), self.teacher):
                old_logits, _ = learner.forward(learner.model, batch)
            y[:, self.old] = torch.sigmoid(old_logits[:, self.old].float())
        return y

    def before_backward(self, learner, task, step):
        cols = self.old + self.new
        parts = [(step.logits, self._targets(learner, step.batch, step.logits, step.targets))]
        stored = [it for items in self.memory.values() for it in items]
        items = self.rng.sample(stored, min(learner.batch_size, len(stored)))
        if items:
            batch = learner.collate([ex for _, ex in items])
            logits, targets = learner.forward(learner.model, batch)
            parts.append((logits, self._targets(learner, batch, logits, targets)))
        logits = torch.cat([p[0] for p in parts])[:, cols]
        y = torch.cat([p[1] for p in parts])[:, cols]
        return F.binary_cross_entropy_with_logits(logits.float(), y, reduction="sum") / len(logits)

    @torch.no_grad()
    def _features(self, learner, examples) -> tuple[torch.Tensor, torch.Tensor]:
        feats, labels = [], []
        for chunk in batches(examples, learner.eval_batch_size):
            batch = learner.collate(chunk)
            _, targets = learner.forward(learner.model, batch)
            phi = learner.embed(learner.model, batch)
            if len(targets) != len(phi):
                raise ValueError("iCaRL needs one target per example (a classifier), not per token")
            feats.append(normalize(phi.float()))
            labels.append(targets)
        return torch.cat(feats), torch.cat(labels)

    def after_task(self, learner, task):
        was_training = learner.model.training
        learner.model.eval()
        sets = list(self.memory) + [(task.id, c) for c in self.new if (task.id, c) not in self.memory]
        m = max(1, self.memory_size // len(sets))
        for key in self.memory:  # any prefix of a herding order is a herding selection
            self.memory[key] = self.memory[key][:m]
        feats, labels = self._features(learner, task.train)
        for c in self.new:
            idx = (labels == c).nonzero().flatten().tolist()
            if idx:
                self.memory[(task.id, c)] = [(task.id, task.train[idx[j]]) for j in herding(feats[idx], m)]
        n_out = learner.forward(learner.model, learner.collate([task.train[0]]))[0].shape[-1]
        by_class: dict[int, list] = {}
        for (_, c), items in self.memory.items():
            by_class.setdefault(c, []).extend(ex for _, ex in items)
        means = None
        for c, exs in by_class.items():
            phi, _ = self._features(learner, exs)
            if means is None:
                means = torch.full((n_out, phi.shape[1]), float("nan"))
            means[c] = normalize(phi.mean(0))
        self.means = means
        learner.model.train(was_training)

    def predict(self, learner, batch, task):
        logits, targets = learner.forward(learner.model, batch)
        cols = list(task.head) if task.head is not None else list(range(logits.shape[-1]))
        if self.means is None or bool(torch.isnan(self.means[cols]).all()):
            # No exemplars of these classes yet (a task not learnt): the network's own outputs, not -inf everywhere.
            return head_logits(logits, task.head), targets
        phi = normalize(learner.embed(learner.model, batch).float())
        return head_logits(nearest_mean_scores(phi, self.means), task.head), targets
