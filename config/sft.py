"""SFT stage options (owned by the SFT stage; see pipelines/sft.py and docs/sft.md).

The optimisation numbers live here rather than in ``train.*``: the shared ``train`` section is tuned for
RL steps (prompts per step, PPO epochs), and an SFT step means something else (packed rows per update).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from config.loader import check


@dataclass
class SFTConfig:
    sources: dict[str, float] = field(default_factory=lambda: {
        "samples:arithmetic_chat.jsonl": 0.6, "samples:wordplay_sharegpt.jsonl": 0.25, "samples:tasks_alpaca.json": 0.15})
    """Dataset -> mixing weight. A dataset is a .jsonl/.json/.parquet file, a folder of them, a folder written by
    datasets' save_to_disk, or samples:NAME (datapipe/samples). Rows may be OpenAI `messages`, ShareGPT
    `conversations`, Alpaca `instruction`/`input`/`output` or `prompt`/`completion`."""
    mix: Literal["weights", "temperature"] = "weights"
    """weights: sources in the ratios given above; temperature: p_i ~ n_i^(1/T) over source sizes (weights ignored)."""
    mix_temperature: float = 2.0
    """T of temperature mixing (1 = proportional to size, larger = flatter)."""
    mix_total: int = 0
    """Training samples in the mixture (0 = as many as the training sources hold together); small sources repeat."""
    max_seq_len: int = 256
    """Packed row length in tokens; longer chats are dropped (and counted), never truncated."""
    max_chars: int = 20000
    """Chats with more characters of content are dropped before tokenising (0 = no limit)."""
    dedup: bool = True
    """Remove exact and near duplicates (across all sources) before the held-out split."""
    near_dup_threshold: float = 0.8
    """Estimated Jaccard similarity (word 3-grams, MinHash) at or above which a later row is a near duplicate."""
    num_perm: int = 128
    """MinHash permutations (more: a finer similarity estimate, slower)."""
    heldout_fraction: float = 0.05
    """Share of each source's unique samples held out for held-out loss (split before mixing, so never trained on)."""
    heldout_max: int = 256
    """At most this many held-out samples in all."""
    steps: int = 60
    """Optimizer steps."""
    micro_batch_rows: int = 4
    """Packed rows per forward/backward."""
    grad_accum: int = 2
    """Micro-batches per optimizer step (the loss is normalised by the step's labelled-token count)."""
    lr: float = 1e-3
    """Peak learning rate (AdamW)."""
    lr_schedule: Literal["constant", "cosine", "linear"] = "cosine"
    """Decay after warm-up (learners.step.make_scheduler, the schedule every stage uses)."""
    warmup_steps: int = 5
    """Linear warm-up steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm (0 = off)."""
    eval_every: int = 20
    """Held-out loss every N steps (0 = only at the start and the end)."""

    def __post_init__(self):
        check(bool(self.sources), "sft.sources", "give at least one dataset, e.g. {samples:arithmetic_chat.jsonl: 1.0}")
        check(all(w >= 0 for w in self.sources.values()), "sft.sources", f"weights must be >= 0, got {self.sources}")
        check(self.mix_temperature > 0, "sft.mix_temperature", "must be > 0")
        check(self.mix_total >= 0, "sft.mix_total", "must be >= 0 (0 = sum of the sources)")
        check(self.max_seq_len >= 16, "sft.max_seq_len", f"must be >= 16, got {self.max_seq_len}")
        check(0.0 < self.near_dup_threshold <= 1.0, "sft.near_dup_threshold", "must be in (0, 1]")
        check(0.0 <= self.heldout_fraction < 1.0, "sft.heldout_fraction", "must be in [0, 1)")
        check(self.steps >= 0, "sft.steps", "must be >= 0")
        check(self.micro_batch_rows >= 1, "sft.micro_batch_rows", "must be >= 1")
        check(self.grad_accum >= 1, "sft.grad_accum", "must be >= 1")
        check(self.lr > 0, "sft.lr", "must be > 0")
        check(self.warmup_steps >= 0, "sft.warmup_steps", "must be >= 0")
