"""Continual learning: learn new tasks without forgetting old ones.

- :mod:`continual.hooks`: the hook API (``Strategy``: before/after a task, before/after backward, predict).
- :mod:`continual.learner`: ``Learner`` (what a strategy needs of a model), ``head_logits``.
- :mod:`continual.loop`: ``run_stream`` -> the accuracy matrix R[t][i].
- :mod:`continual.metrics`: ACC, BWT, FWT, forgetting from R.
- :mod:`continual.streams`: ``Task``; permuted and split digits.
- :mod:`continual.strategies`: naive, replay, EWC/online EWC, LwF, GEM/A-GEM, iCaRL, PackNet,
  per-task LoRA, adapter mixture.
- :mod:`continual.classifier`, :mod:`continual.causal_lm`: learners for a small classifier and for the LLM.

See docs/continual.md.
"""
from continual.hooks import Compose, Step, Strategy  # noqa: F401
from continual.learner import Learner  # noqa: F401
from continual.loop import StreamResult, evaluate, run_epochs, run_stream, train_task  # noqa: F401
from continual.metrics import (  # noqa: F401
    accuracy_curve, average_accuracy, backward_transfer, forgetting, forward_transfer, summarize,
)
from continual.streams import Task, permuted_digits, split_digits  # noqa: F401
