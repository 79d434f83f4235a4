"""Supervised fine-tuning math: the masked next-token loss and the packing-aware forward pass.

The SFT objective (Ouyang et al. 2022, "Training language models to follow instructions with human
feedback", step 1) is the negative log-likelihood of the labelled (assistant) tokens only:

    L(theta) = -(1 / N) * sum_{t : y_t != -100} log pi_theta(y_t | y_<t),   N = #{t : y_t != -100}

with N counted over the whole optimizer batch (every accumulated micro-batch), so that gradient
accumulation gives the gradient of one big batch rather than a mean of per-micro-batch means.

Packing: several samples share one row; ``position_ids`` restart at 0 at each sample. The attention mask
is block-diagonal causal, A[i, j] = 1 iff seg(i) = seg(j) and j <= i, with seg = cumsum(position_ids == 0),
so no token attends across samples, and the label at a sample's first token (which would be predicted
from the previous sample) is dropped.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """seg[b, t] = number of sample starts (position 0) at or before t: equal ids = same sample."""
    return torch.cumsum((position_ids == 0).long(), dim=-1)


def packed_attention_mask(position_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive [B, 1, L, L] mask: 0 where query i may attend key j (same sample, j <= i), else the dtype's min."""
    seg = segment_ids(position_ids)
    L = position_ids.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (seg.unsqueeze(-1) == seg.unsqueeze(-2)) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=position_ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def shift_labels(labels: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Targets for logits[:, :-1]: labels[:, 1:], with -100 where a new sample starts (nothing before it to condition on)."""
    target = labels[:, 1:].clone()
    if position_ids is not None:
        target[position_ids[:, 1:] == 0] = IGNORE_INDEX
    return target


def token_nll(logits: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, int]:
    """(sum over labelled tokens of -log pi(y_t | y_<t), number of labelled tokens) for one micro-batch."""
    target = shift_labels(labels, position_ids)
    nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                          ignore_index=IGNORE_INDEX, reduction="sum")
    return nll, int((target != IGNORE_INDEX).sum())


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None = None,
             num_label_tokens: int | None = None) -> torch.Tensor:
    """L = sum NLL / N; pass N = the optimizer batch's labelled-token count when accumulating micro-batches."""
    nll, n = token_nll(logits, labels, position_ids)
    return nll / max(num_label_tokens if num_label_tokens is not None else n, 1)


def perplexity(mean_nll: float) -> float:
    """PPL = exp(mean token NLL)."""
    return math.exp(min(mean_nll, 700.0))  # exp overflows a float past ~709


def packed_forward(model, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Logits of packed rows with no attention across samples.

    Flash-attention models take the restarting position ids alone (varlen attention); others get the
    explicit block-diagonal mask, which every attention implementation in transformers accepts.
    """
    impl = getattr(model.config, "_attn_implementation", "") or ""
    if impl.startswith("flash_attention"):
        return model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
    dtype = model.get_input_embeddings().weight.dtype
    mask = packed_attention_mask(position_ids, dtype)
    return model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False).logits
