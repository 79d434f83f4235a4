"""Preference-stage options: DPO family and reward-model training (see pipelines/dpo.py, pipelines/rm.py)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DPOConfig:
    beta: float = 0.1
    """Strength of the implicit KL to the reference policy."""


@dataclass
class RMConfig:
    backbone: str = "qwen"
    """qwen: the tiny/base Qwen3 with a value head; minilm: the pretrained MiniLM encoder."""
