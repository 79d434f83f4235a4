"""The PPO critic: the clipped value loss, and the value model it trains (a value head on a causal backbone).

Notation as in learners/step.py: token tensors are [B, L-1]; column t-1 holds V(s_t), the value of the
prefix that predicts completion token t (the state in which the policy chose that token), so values line up
with the policy's logprobs and with GAE's per-token rewards.

The model is transformers' ``AutoModelForTokenClassification`` with ``num_labels=1``: the backbone plus a
linear head at every position, a maintained class that loads any causal checkpoint, including a reward
model trained by pipelines/rm.py (InstructGPT initialises the critic from the reward model). Under
``qlora`` the backbone is 4-bit NF4 and frozen; a LoRA adapter and the head train.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from learners.policy_loss import aggregate, masked_mean


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2, loss_agg: str = "token-mean") -> tuple[torch.Tensor, dict]:
    """Clipped value loss (PPO as implemented in OpenAI baselines, used by InstructGPT, veRL, OpenRLHF):

        V_clip = V_old + clip(V - V_old, -eps_v, +eps_v)
        l_t    = 1/2 * max( (V_t - R_t)^2, (V_clip_t - R_t)^2 )

    ``clip`` = 0 gives the plain 1/2 (V - R)^2. Returns (loss, metrics) with the share of tokens where the
    clipped term is the larger one (``vf_clipfrac``).
    """
    err = (values - returns) ** 2
    if clip and clip > 0:
        v_clip = old_values + torch.clamp(values - old_values, -clip, clip)
        err_clip = (v_clip - returns) ** 2
        loss_mat = 0.5 * torch.maximum(err, err_clip)
        with torch.no_grad():
            clipfrac = masked_mean((err_clip > err).float(), mask).item()
    else:
        loss_mat, clipfrac = 0.5 * err, 0.0
    loss = aggregate(loss_mat, mask, loss_agg)
    return loss, {"value_loss": loss.item(), "vf_clipfrac": clipfrac}


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[R - V] / Var[R] over the masked tokens: 1 = the critic predicts the returns, 0 = no better than
    their mean, < 0 = worse."""
    m = mask.to(torch.float64)
    n = m.sum().clamp(min=1)
    r, v = returns.to(torch.float64), values.to(torch.float64)

    def var(x):
        mu = (x * m).sum() / n
        return (((x - mu) ** 2) * m).sum() / n

    vr = var(r)
    return float("nan") if vr <= 0 else float(1 - var(r - v) / vr)


def load_critic(model_path: str | os.PathLike, finetune: str = "qlora", lora=None, dtype: str = "float32",
                device: str | None = None, fused_4bit_cpu: bool = False):
    """A value model on ``model_path``: (model, tokenizer). ``finetune``: ``qlora`` (NF4 4-bit frozen backbone +
    LoRA + head), ``lora`` (frozen backbone in ``dtype`` + LoRA + head) or ``full``. A head that the checkpoint
    lacks starts at zero, so the first values are 0 and the first advantages are the plain returns."""
    from transformers import AutoConfig, AutoModelForTokenClassification, BitsAndBytesConfig

    from learners.models import DTYPES, load_tokenizer, select_4bit_kernel

    if finetune not in ("qlora", "lora", "full"):
        raise ValueError(f"algo.critic_finetune must be qlora, lora or full, got {finetune!r}")
    if not Path(model_path, "config.json").exists():
        raise FileNotFoundError(f"no critic model at {model_path} (algo.critic_model: a transformers folder, "
                                "preset:NAME, or empty for the policy's base)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # No dropout on the head: old values (eval mode) and trained values (train mode) must be the same function.
    config = AutoConfig.from_pretrained(str(model_path), num_labels=1, classifier_dropout=0.0)
    kwargs: dict = {"config": config, "dtype": DTYPES[dtype], "output_loading_info": True}
    if finetune == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=DTYPES[dtype], bnb_4bit_quant_storage=torch.uint8, llm_int8_skip_modules=["score"])
        kwargs["device_map"] = {"": device}
    model, info = AutoModelForTokenClassification.from_pretrained(str(model_path), **kwargs)
    select_4bit_kernel(model, fused_4bit_cpu)  # old values (no grad) and trained values: one kernel
    if finetune != "qlora":
        model.to(device)
    if any(k.startswith("score.") for k in info.get("missing_keys", [])):
        torch.nn.init.zeros_(model.score.weight)
        if model.score.bias is not None:
            torch.nn.init.zeros_(model.score.bias)
    model.score.to(torch.float32)
    # A bf16 backbone hands bf16 hidden states to the fp32 head: the head computes in fp32 (cast on the way in).
    model.score.register_forward_pre_hook(lambda m, args: tuple(a.to(m.weight.dtype) for a in args))
    model.config.use_cache = False
    if finetune in ("qlora", "lora"):
        from peft import LoraConfig as PeftLoraConfig, get_peft_model

        if lora is None:
            from config import LoraConfig

            lora = LoraConfig()
        for p in model.parameters():
            p.requires_grad_(False)
        model = get_peft_model(model, PeftLoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
            modules_to_save=["score"], bias="none", task_type="TOKEN_CLS"))
    return model, load_tokenizer(model_path)


def token_values(critic, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L-1]: V at positions 0..L-2, aligned with ``sequence_logprobs`` (column t-1 = the state before token t)."""
    out = critic(input_ids=input_ids, attention_mask=attention_mask)
    return out.logits[:, :-1, 0].float()


@dataclass
class ValueBatch:
    input_ids: torch.Tensor       # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    mask: torch.Tensor            # [B, L-1] response tokens
    returns: torch.Tensor         # [B, L-1] GAE returns (targets)
    old_values: torch.Tensor      # [B, L-1] values when the batch was sampled (the clip's centre)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, idx: torch.Tensor) -> "ValueBatch":
        return ValueBatch(self.input_ids[idx], self.attention_mask[idx], self.mask[idx], self.returns[idx],
                          self.old_values[idx])


def critic_update(critic, optimizer, batch: ValueBatch, value_clip: float, train, params=None) -> dict:
    """``train.epochs`` passes over ``train.mini_batches`` minibatches of the value loss (token-mean), gradients
    accumulated over micro-batches weighted by their token share, one clipped optimizer step per minibatch."""
    params = params if params is not None else [p for p in critic.parameters() if p.requires_grad]
    sums: dict[str, float] = {}
    n_updates = 0
    critic.train()
    for _ in range(train.epochs):
        # tensor_split, not chunk: exactly train.mini_batches updates, as the policy's learner makes
        # (learners/step.py); chunk gives fewer when the batch is small (6 rows in 4 -> 3 chunks of 2)
        for mb_idx in torch.tensor_split(torch.randperm(len(batch)), train.mini_batches):
            mb = batch.select(mb_idx)
            optimizer.zero_grad(set_to_none=True)
            tokens = mb.mask.sum().clamp(min=1.0)
            for i in range(0, len(mb), train.micro_batch_size):
                micro = mb.select(torch.arange(i, min(i + train.micro_batch_size, len(mb))))
                w = micro.mask.sum() / tokens
                v = token_values(critic, micro.input_ids, micro.attention_mask)
                loss, m = value_loss(v, micro.old_values, micro.returns, micro.mask, value_clip)
                (loss * w).backward()
                for k, x in m.items():
                    sums[k] = sums.get(k, 0.0) + float(x) * float(w)
            sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm))
            optimizer.step()
            n_updates += 1
    out = {k: x / max(1, n_updates) for k, x in sums.items()}
    out["explained_var"] = explained_variance(batch.old_values, batch.returns, batch.mask)
    return out
