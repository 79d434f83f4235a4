"""Continual-learning options for the LLM (see pipelines/continual.py, pipelines/course.py, docs/continual_llm.md).

A stream is a sequence of tasks of one phase -- continual pre-training (text), continual instruction tuning
(chats), continual alignment (preferences) -- learnt one after another by each method in ``methods``.
Optimisation numbers live here rather than in ``train.*``: a continual stage trains epochs over a task's rows,
where an RL step means something else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from config.loader import check

BUILTIN_STREAMS = ("cpt", "instruct", "instruct-domain", "align")
METHODS = ("seq_ft", "seq_lora", "replay", "inscl", "ewc", "lwf", "task_lora", "multistage", "cppo", "copr")


@dataclass
class ContinualConfig:
    stream: str = "instruct"
    """cpt: new-domain text, scored by perplexity; instruct: task-incremental instruction tasks; instruct-domain:
    one task in new domains (domain-incremental); align: preferences that change from task to task; files: the
    datasets named in `tasks`."""
    tasks: list[str] = field(default_factory=list)
    """stream=files: NAME=TRAIN or NAME=TRAIN,TEST per task, in stream order. TRAIN/TEST: .jsonl/.json/.parquet, a
    folder, a saved `datasets` folder or samples:NAME. Rows: `text` (pre-training); messages / conversations /
    instruction+output / prompt+completion (instruction); prompt+chosen+rejected or prompt+responses+scores
    (alignment). Every task of a stream must be of one phase. A built-in stream: the names of its tasks to
    learn, in order (empty: its first n_tasks)."""
    n_tasks: int = 3
    """Tasks taken from a built-in stream (its first n) when `tasks` names none."""
    train_size: int = 96
    """Training rows per built-in task."""
    test_size: int = 24
    """Held-out rows per built-in task (what the accuracy matrix is measured on)."""
    heldout_fraction: float = 0.2
    """stream=files: share of a task's rows held out when it names no TEST file."""
    memory: list[str] = field(default_factory=list)
    """Datasets of earlier stages (e.g. the SFT data) that count as past tasks for the replay-based methods,
    without a column in the accuracy matrix (the course's continual stage replays the SFT data this way)."""
    methods: list[str] = field(default_factory=lambda: ["seq_lora", "replay", "inscl"])
    """Methods to run on the stream, each from the same starting model: seq_ft (full fine-tuning, in order),
    seq_lora (one LoRA adapter, in order), replay, inscl, ewc, lwf, task_lora, multistage (instruction streams),
    cppo and copr (alignment streams). See llm_continual/methods.py."""
    epochs: int = 3
    """Passes over each task's training rows (plus its replayed rows)."""
    batch_size: int = 8
    """Rows per optimizer step."""
    lr: float = 3e-3
    """Learning rate (Adam, fresh for every task)."""
    max_len: int = 96
    """Tokens per sequence (longer ones keep their start)."""
    replay_ratio: float = 0.3
    """replay, inscl, copr, multistage: replayed past rows per new training row (the replay budget)."""
    inscl_embed_rows: int = 64
    """InsCL: rows per task whose instructions are embedded (MiniLM) for the Wasserstein distance."""
    ewc_lambda: float = 1000.0
    """EWC: penalty weight lambda."""
    ewc_samples: int = 32
    """EWC: rows per task for the diagonal Fisher."""
    lwf_alpha: float = 1.0
    """LwF: weight of the distillation term."""
    lwf_temperature: float = 2.0
    """LwF: softmax temperature of the distillation."""
    pref_beta: float = 0.1
    """Alignment streams: beta of the DPO loss the baselines (seq_*, replay, inscl, ewc, lwf, task_lora) train with."""
    cppo_k: float = 0.5
    """CPPO: a sample is extreme in reward or likelihood beyond mean +- k std."""
    cppo_low: float = 0.5
    """CPPO: the lowered weight of a category."""
    cppo_high: float = 1.5
    """CPPO: the raised weight of a category."""
    cppo_kr_coef: float = 1.0
    """CPPO: weight of the knowledge-retention term."""
    copr_beta: float = 0.5
    """COPR: temperature of the optimal policy pi* ~ pi_ref exp(r / beta)."""
    copr_epsilon: float = 0.02
    """COPR: bound on the old tasks' fitting loss (the constraint's slack)."""
    copr_dual_lr: float = 1.0
    """COPR: step size of the Lagrange multiplier's dual ascent."""
    ms_bias_coef: float = 0.5
    """multistage: weight of the preference bias term."""
    ms_beta: float = 0.1
    """multistage: beta of the preference bias term."""
    ms_max_new_tokens: int = 24
    """multistage: longest answer the model writes for itself (conflict detection and self-distillation)."""
    score: Literal["likelihood", "generate"] = "likelihood"
    """The accuracy matrix's score: likelihood (every phase: -log perplexity of held-out text / answers; for
    alignment the log-perplexity margin rejected - chosen) or generate (instruction: exact match of greedy
    answers; alignment: the task's preference scorer on greedy answers; needs the vLLM engine)."""
    general_suites: list[str] = field(default_factory=lambda: ["heldout"])
    """Evaluation-panel suites for the general-ability delta (start model vs each method's final model)."""

    def __post_init__(self):
        check(self.stream in BUILTIN_STREAMS + ("files",), "continual.stream",
              f"{self.stream!r} is not one of {list(BUILTIN_STREAMS) + ['files']}")
        check(self.stream != "files" or bool(self.tasks), "continual.tasks",
              "stream=files needs at least one task, e.g. continual.tasks=[a=data/a.jsonl,b=data/b.jsonl]")
        check(bool(self.methods), "continual.methods", f"name at least one of {list(METHODS)}")
        unknown = [m for m in self.methods if m not in METHODS]
        check(not unknown, "continual.methods", f"unknown method(s) {unknown}; choose from {list(METHODS)}")
        check(len(set(self.methods)) == len(self.methods), "continual.methods", f"a method is named twice: {self.methods}")
        check(self.n_tasks >= 1, "continual.n_tasks", "must be >= 1")
        check(self.train_size >= 2, "continual.train_size", "must be >= 2")
        check(self.test_size >= 1, "continual.test_size", "must be >= 1")
        check(0 < self.heldout_fraction < 1, "continual.heldout_fraction", "must be in (0, 1)")
        check(self.epochs >= 1, "continual.epochs", "must be >= 1")
        check(self.batch_size >= 1, "continual.batch_size", "must be >= 1")
        check(self.lr > 0, "continual.lr", "must be > 0")
        check(self.max_len >= 8, "continual.max_len", "must be >= 8")
        check(self.replay_ratio >= 0, "continual.replay_ratio", "must be >= 0")
        check(self.inscl_embed_rows >= 2, "continual.inscl_embed_rows", "must be >= 2")
        check(self.ewc_lambda >= 0 and self.ewc_samples >= 1, "continual.ewc_lambda",
              "ewc_lambda must be >= 0 and ewc_samples >= 1")
        check(self.pref_beta > 0 and self.ms_beta > 0 and self.copr_beta > 0, "continual.pref_beta",
              "pref_beta, ms_beta and copr_beta must be > 0")
        check(0 < self.cppo_low <= 1 <= self.cppo_high, "continual.cppo_low",
              f"need 0 < cppo_low <= 1 <= cppo_high, got {self.cppo_low}, {self.cppo_high}")
        check(self.cppo_k >= 0 and self.cppo_kr_coef >= 0, "continual.cppo_k", "cppo_k and cppo_kr_coef must be >= 0")
        check(self.copr_epsilon >= 0 and self.copr_dual_lr >= 0, "continual.copr_epsilon",
              "copr_epsilon and copr_dual_lr must be >= 0")
        check(self.ms_max_new_tokens >= 1, "continual.ms_max_new_tokens", "must be >= 1")
