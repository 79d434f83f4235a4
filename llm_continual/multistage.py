"""Multi-stage fine-tuning (Guan et al. 2025, "Multi-Stage LLM Fine-Tuning with a Continual Learning Setting",
Findings of NAACL 2025): a preference-based learning bias against conflicting old knowledge, plus
self-distillation-based data augmentation. Our CPU-sized reading, for instruction streams:

1. Preference bias. Before stage t, the model answers the stage's prompts itself (greedy): y_hat = what it
   currently believes. Where y_hat disagrees with the new target y, the old answer is a knowledge conflict, and
   the stage's loss gets a preference term that moves probability from y_hat to y:

       L = L_SFT(y | x) + c * L_bias,   L_bias = -log sigma( beta [ (log pi_theta(y|x) - log pi_0(y|x))
                                                                  - (log pi_theta(y_hat|x) - log pi_0(y_hat|x)) ] )

   with pi_0 the model before the stage (the DPO form, ``learners.dpo.sigmoid_loss``; c =
   ``continual.ms_bias_coef``, beta = ``continual.ms_beta``). Prompts the model already answers right carry no
   conflict and only the SFT term.
2. Self-distillation. Earlier stages' prompts (the replay budget) are answered by the model before stage t, and
   those answers -- in the model's own words, not the stored references -- join the training data, so the
   stage also rehearses what the model already does (the augmentation keeps knowledge-compatible
   behaviour; no old reference answer needs to be kept).
"""
from __future__ import annotations

from typing import Sequence


def _norm(text: str) -> str:
    return " ".join(str(text).split()).lower()


def conflicts(targets: Sequence[str], own_answers: Sequence[str]) -> list[bool]:
    """True where the model's own answer differs from the new target (whitespace and case ignored)."""
    if len(targets) != len(own_answers):
        raise ValueError(f"{len(targets)} targets but {len(own_answers)} answers")
    return [_norm(t) != _norm(a) for t, a in zip(targets, own_answers)]


def self_distilled_rows(prompts: Sequence[list[dict]], own_answers: Sequence[str], uids: Sequence[str]) -> list[dict]:
    """Chat rows (prompt + the model's own answer) for the self-distillation share of a stage's data."""
    return [{"uid": f"{uid}:self", "messages": list(p) + [{"role": "assistant", "content": a}]}
            for p, a, uid in zip(prompts, own_answers, uids) if a.strip()]
