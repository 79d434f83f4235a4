"""The training loop of a task stream, in the order the hooks fire.

``run_stream(learner, tasks, strategy)`` trains the tasks one after another and fills the accuracy
matrix ``R[t][i]`` (score on task i after training task t) from which :mod:`continual.metrics` derives
every metric. The loop is plain: for each task ``before_task``, epochs of
``forward -> before_backward -> backward -> after_backward -> optimizer step``, then ``after_task``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from continual.hooks import Step, Strategy
from continual.metrics import summarize
from continual.streams import Task


def adam(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    # No weight decay: PackNet and per-task adapters rely on a zero gradient leaving a weight unchanged.
    return torch.optim.Adam(params, lr=lr)


@dataclass
class Learner:
    """What strategies need of a model: how to batch examples and how to score a batch."""

    model: torch.nn.Module
    forward: Callable[[torch.nn.Module, Any], tuple[torch.Tensor, torch.Tensor]]
    """``(model, batch) -> (logits [N, C], targets [N])``; targets of -100 are not scored. N is a multiple
    of the batch's example count B, example b owning rows b*N/B .. (b+1)*N/B - 1 (a classifier: N = B;
    a causal LM: its [B, L-1] positions flattened)."""
    collate: Callable[[list], Any]
    """A list of examples -> a batch."""
    embed: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None
    """``(model, batch) -> [B, D]``, one feature vector per example (iCaRL's feature space, the adapter router)."""
    lr: float = 1e-3
    batch_size: int = 32
    epochs: int = 1
    seed: int = 0
    optimizer: Callable[[list[torch.nn.Parameter], float], torch.optim.Optimizer] = adam
    eval_batch_size: int = 256
    extra: dict = field(default_factory=dict)
    """Free room for pipeline-specific state (the tokenizer, a run directory)."""

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def named_trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}


def head_logits(logits: torch.Tensor, head: Sequence[int] | None) -> torch.Tensor:
    """Keep only a task's output columns (task-incremental heads): the others get the lowest logit."""
    if head is None:
        return logits
    keep = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    keep[list(head)] = True
    return logits.masked_fill(~keep, torch.finfo(logits.dtype).min)


def task_loss(learner: Learner, batch: Any, task: Task) -> Step:
    """Forward ``batch`` and take the cross-entropy over ``task``'s head."""
    logits, targets = learner.forward(learner.model, batch)
    loss = F.cross_entropy(head_logits(logits, task.head), targets, ignore_index=-100)
    return Step(batch=batch, logits=logits, targets=targets, loss=loss)


def batches(examples: Sequence, size: int, generator: torch.Generator | None = None):
    """Lists of ``size`` examples, shuffled when a generator is given."""
    order = torch.randperm(len(examples), generator=generator).tolist() if generator else range(len(examples))
    order = list(order)
    for start in range(0, len(order), size):
        yield [examples[i] for i in order[start:start + size]]


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
