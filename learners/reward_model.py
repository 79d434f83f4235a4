"""Reward-model losses (pairwise Bradley-Terry, outcome, process) and the value-head model they train.

Notation: r_theta(x, y) is the scalar score of response y to prompt x; for a pair, r_w scores the chosen
response and r_l the rejected one. A process reward model scores every reasoning step s_k of y with a
logit v_k, read as P(step k is correct | x, s_1..s_k) = sigma(v_k).

The model is a transformers ``AutoModelForSequenceClassification`` with ``num_labels=1``: the backbone
plus a linear value head, saved as an ordinary transformers folder so that anything that loads a
sequence classifier (the ``reward_model`` scorer, vLLM's reward models, TRL) can load it.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

META_FILE = "reward_model.json"


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | float | None = None,
                       center_coef: float = 0.0) -> torch.Tensor:
    """L = -log sigma(r_w - r_l - m) + c * (r_w + r_l)^2, averaged over pairs.

    The Bradley-Terry (1952) likelihood of the observed preference, as trained in InstructGPT (Ouyang et al.
    2022, eq. 1). m is Llama 2's margin (Touvron et al. 2023, eq. 2: pairs rated far apart must be scored
    far apart); c is the reward-centering penalty (Eisenstein et al. 2023) that pins the scores' mean near 0,
    since BT only sees differences and RL uses the raw scores.
    """
    m = 0.0 if margin is None else margin
    loss = -F.logsigmoid(r_chosen - r_rejected - m).mean()
    if center_coef:
        loss = loss + center_coef * ((r_chosen + r_rejected) ** 2).mean()
    return loss


def outcome_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Pointwise outcome RM: L = -[z log sigma(r) + (1 - z) log(1 - sigma(r))] with z in {0, 1} whether the
    final answer is correct (the verifier of Cobbe et al. 2021, "Training Verifiers to Solve Math Word
    Problems", trained on solution-level labels)."""
    return F.binary_cross_entropy_with_logits(scores, labels.to(scores.dtype))


def process_loss(step_logits: torch.Tensor, step_labels: torch.Tensor) -> torch.Tensor:
    """Process RM: L = mean_k BCE(v_k, z_k) over every labelled step k of every solution (Lightman et al. 2023,
    "Let's Verify Step by Step"; Wang et al. 2024, "Math-Shepherd"). Inputs are flat [N_steps]."""
    return F.binary_cross_entropy_with_logits(step_logits, step_labels.to(step_logits.dtype))


def process_score(step_logits: torch.Tensor, reduce: str = "min") -> torch.Tensor:
    """One solution score from its step logits [K]: ``min`` (the weakest step, Wang et al. 2024), ``prod``
    (P(every step correct) = prod_k sigma(v_k), Lightman et al. 2023, as a log) or ``last``."""
    if reduce == "min":
        return step_logits.min()
    if reduce == "prod":
        return F.logsigmoid(step_logits).sum()
    if reduce == "last":
        return step_logits[-1]
    raise ValueError(f"unknown process-score reduction {reduce!r}; choose min, prod or last")


@torch.no_grad()
def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """Share of pairs with r_w > r_l (ties count as wrong, so an untrained constant scorer gets 0, not 0.5)."""
    return (r_chosen > r_rejected).float().mean().item()


@torch.no_grad()
def pairwise_metrics(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> dict[str, float]:
    """A pairwise RM on [B] pairs: ``accuracy`` = share with r_w > r_l (see :func:`pairwise_accuracy`),
    ``margin`` = mean(r_w - r_l), and the mean scores ``rewards/chosen``, ``rewards/rejected``."""
    return {"accuracy": pairwise_accuracy(r_chosen, r_rejected), "margin": (r_chosen - r_rejected).mean().item(),
            "rewards/chosen": r_chosen.mean().item(), "rewards/rejected": r_rejected.mean().item()}


@torch.no_grad()
def outcome_metrics(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """An outcome RM on [B] labelled completions: ``accuracy`` = share with [sigma(r) > 1/2] = z (i.e. r > 0 for a
    correct answer, r <= 0 for a wrong one) and ``score_mean`` = mean(r)."""
    return {"accuracy": ((scores > 0) == labels).float().mean().item(), "score_mean": scores.mean().item()}


@torch.no_grad()
def process_metrics(step_logits: torch.Tensor, step_labels: torch.Tensor, steps_per_solution: list[int],
                    reduce: str = "min") -> dict[str, float]:
    """A process RM on flat [N_steps] step logits v_k and labels z_k, solution by solution (``steps_per_solution``
    counts each solution's steps, in order).

    ``step_accuracy`` (also ``accuracy``) = share of steps with [v_k > 0] = z_k. ``solution_accuracy`` = share of
    solutions judged right exactly when all their steps are labelled right, a solution being judged right when its
    :func:`process_score` says so: a logit > 0, or for ``prod`` a probability prod_k sigma(v_k) > 1/2. A solution
    with no steps (all cut by the length limit) has nothing to judge and is left out."""
    step_accuracy = ((step_logits > 0) == step_labels).float().mean().item()
    threshold = math.log(0.5) if reduce == "prod" else 0.0
    judged, truth, k = [], [], 0
    for n in steps_per_solution:
        if n:
            judged.append(process_score(step_logits[k:k + n], reduce).item() > threshold)
            truth.append(bool(step_labels[k:k + n].all()))
        k += n
    solution_accuracy = sum(a == b for a, b in zip(judged, truth)) / max(1, len(judged))
    return {"step_accuracy": step_accuracy, "solution_accuracy": solution_accuracy, "accuracy": step_accuracy}


def is_bidirectional(config) -> bool:
    """Encoders (BERT, MiniLM) attend both ways, so a token's hidden state sees the steps after it; decoders
    (Qwen3) are causal, so the value at a step's last token scores exactly the prefix up to that step."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES


class RewardModel(torch.nn.Module):
    """A value head on a backbone: ``AutoModelForSequenceClassification(num_labels=1)``, optionally with LoRA.

    ``rm(input_ids, attention_mask)`` -> [B] scores, read where the classifier reads them (the last non-pad
    token of a decoder, the [CLS] pooler of an encoder). ``token_values`` gives a decoder's value at every
    position, i.e. the score of every prefix in one forward pass (what a process RM needs).
    """

    def __init__(self, model, tokenizer):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.bidirectional = is_bidirectional(model.config)

    @classmethod
    def load(cls, path: str | os.PathLike, finetune: str = "full", lora=None, dtype: str = "float32",
             device: str | None = None) -> "RewardModel":
        """Load a backbone (or a saved reward model) with a one-output value head.

        ``finetune``: ``full`` trains every weight; ``lora`` trains LoRA adapters plus the value head (merged
        into the weights on save). A backbone without a head gets a freshly initialised one.
        """
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from learners.models import DTYPES

        if finetune not in ("full", "lora"):
            raise ValueError(f"rm.finetune must be full or lora, got {finetune!r} (a 4-bit reward model cannot be "
                             "saved as a plain transformers folder)")
        if not Path(path, "config.json").exists():
            raise FileNotFoundError(f"no model at {path} (expected a transformers folder with config.json)")
        tok = AutoTokenizer.from_pretrained(str(path))
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1, dtype=DTYPES[dtype])
        # The classifier finds a decoder's last token by the pad id; without one it cannot batch.
        model.config.pad_token_id = tok.pad_token_id
        model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if finetune == "lora":
            from peft import LoraConfig as PeftLoraConfig, get_peft_model

            if lora is None:
                from config import LoraConfig

                lora = LoraConfig()
            names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
            targets = [t for t in lora.target_modules if t in names] or ["query", "key", "value", "dense"]
            head = "score" if hasattr(model, "score") else "classifier"
            model = get_peft_model(model, PeftLoraConfig(
                r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                modules_to_save=[head], task_type="SEQ_CLS"))
        return cls(model, tok)

    def _hf(self):
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()

    def token_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T]: the value head applied at every position of a causal backbone (= the score of each prefix)."""
        if self.bidirectional:
            raise ValueError("token_values needs a causal backbone; an encoder scores prefixes one sequence each")
        hf = self._hf()
        hidden = getattr(hf, hf.base_model_prefix)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hf.score(hidden)[..., 0].float()

    def save_pretrained(self, out_dir: str | os.PathLike, meta: dict | None = None) -> Path:
        """Write a plain transformers folder (LoRA merged) + tokenizer + ``reward_model.json`` describing how
        inputs were formatted, so that ``AutoModelForSequenceClassification.from_pretrained(out_dir)`` gives
        the very scores seen in training."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model = self.model
        if hasattr(model, "merge_and_unload"):
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(str(out), safe_serialization=True)
        self.tokenizer.save_pretrained(str(out))
        (out / META_FILE).write_text(json.dumps({"num_labels": 1, "bidirectional": self.bidirectional, **(meta or {})},
                                                indent=2))
        return out
