"""Continual-learning strategies, each a :class:`continual.hooks.Strategy`."""
from continual.hooks import Compose, Strategy  # noqa: F401
from continual.strategies.ewc import EWC, fisher_diagonal  # noqa: F401
from continual.strategies.gem import AGEM, GEM  # noqa: F401
from continual.strategies.icarl import ICaRL  # noqa: F401
from continual.strategies.lora import AdapterMixture, TaskLoRA  # noqa: F401
from continual.strategies.lwf import LwF  # noqa: F401
from continual.strategies.packnet import PackNet  # noqa: F401
from continual.strategies.replay import Replay, class_balanced  # noqa: F401
