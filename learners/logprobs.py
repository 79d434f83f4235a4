"""Token log-probabilities of given sequences under a causal LM."""
from __future__ import annotations

import torch


def gather_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[labels] without materialising the full [B, T, V] log-softmax twice:
    log p(y) = logit_y - logsumexp(logits)."""
    logits = logits.float()
    return torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      return_entropy: bool = False, temperature: float = 1.0):
    """Per-token log pi_T(x_t | x_<t) for t = 1..L-1, aligned so that out[:, t-1] scores input_ids[:, t], where
    pi_T = softmax(logits / T) is the distribution a sampler at temperature T draws from (T = 1: the model's own).

    Returns [B, L-1] (and the per-position entropy of pi_T [B, L-1] when asked).
    """
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    logits = out.logits[:, :-1]
    if temperature != 1.0:
        logits = logits / temperature
    lp = gather_logprobs(logits, input_ids[:, 1:])
    if return_entropy:
        from learners.policy_loss import entropy_from_logits

        return lp, entropy_from_logits(logits)
    return lp
