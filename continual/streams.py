"""Task streams: a task is a training set, a test set and (for classifiers) the classes it holds.

The digits streams use scikit-learn's ``load_digits`` (1,797 8x8 images, shipped with the package):

- ``permuted_digits``: every task is all ten digits under its own fixed pixel permutation (domain-incremental,
  Goodfellow et al. 2013 / Kirkpatrick et al. 2017's permuted MNIST, smaller);
- ``split_digits``: the ten digits in five two-class tasks (van de Ven & Tolias 2019, "Three scenarios for
  continual learning"), either ``task``-incremental (the task identity picks a two-way head at train and
  test time) or ``class``-incremental (one ten-way head, no task identity at test time).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch


@dataclass
class Task:
    id: int
    """Position in the stream (0, 1, ...)."""
    train: Sequence
    """Training examples; ``learner.collate`` turns a list of them into a batch."""
    test: Sequence
    """Held-out examples the accuracy matrix is measured on."""
    classes: tuple[int, ...] = ()
    """Labels that occur in this task (empty for a language-model task)."""
    head: tuple[int, ...] | None = None
    """Output columns this task may use when its identity is known (task-incremental); None: all of them."""
    name: str = field(default="")


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 digits as float pixels in [0, 1] ([N, 64]) and labels ([N])."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor(d.target, dtype=torch.long)


def _split(X: torch.Tensor, y: torch.Tensor, test_fraction: float, seed: int):
    from sklearn.model_selection import train_test_split

    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed,
                                      stratify=y.numpy())
    return idx_tr, idx_te


def _examples(X: torch.Tensor, y: torch.Tensor, idx) -> list[tuple[torch.Tensor, int]]:
    return [(X[i], int(y[i])) for i in idx]


def permuted_digits(n_tasks: int = 5, seed: int = 0, test_fraction: float = 0.3) -> list[Task]:
    """Domain-incremental stream: task 0 is the plain digits, task k > 0 a fixed random pixel permutation."""
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
    X, y = load_digits_tensors()
    idx_tr, idx_te = _split(X, y, test_fraction, seed)
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for k in range(n_tasks):
        perm = torch.arange(X.shape[1]) if k == 0 else torch.randperm(X.shape[1], generator=g)
        Xk = X[:, perm]
        tasks.append(Task(k, _examples(Xk, y, idx_tr), _examples(Xk, y, idx_te), tuple(range(10)), None,
                          name=f"permuted-{k}"))
    return tasks


def split_digits(n_tasks: int = 5, seed: int = 0, scenario: Literal["task", "class"] = "class",
                 test_fraction: float = 0.3, class_order: Sequence[int] | None = None) -> list[Task]:
    """The ten digits cut into ``n_tasks`` disjoint class groups (default 0-1, 2-3, ..., 8-9).

    ``scenario="task"`` gives each task its classes as its head (the task identity is known);
    ``"class"`` leaves every head at all ten outputs.
    """
    if scenario not in ("task", "class"):
        raise ValueError(f"scenario must be 'task' or 'class', got {scenario!r}")
    order = list(class_order) if class_order is not None else list(range(10))
    if sorted(order) != list(range(10)):
        raise ValueError(f"class_order must be a permutation of 0..9, got {order}")
    if n_tasks < 1 or 10 % n_tasks:
        raise ValueError(f"n_tasks must divide the 10 classes evenly (1, 2, 5, 10), got {n_tasks}")
    X, y = load_digits_tensors()
    idx_tr, idx_te = _split(X, y, test_fraction, seed)
    per = 10 // n_tasks
    tasks = []
    for k in range(n_tasks):
        cls = tuple(order[k * per:(k + 1) * per])
        keep = set(cls)
        tr = [i for i in idx_tr if int(y[i]) in keep]
        te = [i for i in idx_te if int(y[i]) in keep]
        tasks.append(Task(k, _examples(X, y, tr), _examples(X, y, te), cls, cls if scenario == "task" else None,
                          name=f"split-{'-'.join(map(str, cls))}"))
    return tasks
