"""SFT stage options (owned by the SFT stage; see pipelines/sft.py)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SFTConfig:
    max_seq_len: int = 256
    """Packed row length in tokens."""
