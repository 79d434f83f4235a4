"""One RL optimisation step over a batch of rollouts: batch building, losses, minibatch updates.

Pure torch (no Ray): the learner actor calls these; tests call them directly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from learners.advantages import get_adv_estimator
from learners.logprobs import sequence_logprobs
from learners.policy_loss import aggregate, get_policy_loss, kl_penalty, masked_mean


@dataclass
class RLBatch:
    input_ids: torch.Tensor       # [B, L] prompt + completion, right-padded
    attention_mask: torch.Tensor  # [B, L]
    response_mask: torch.Tensor   # [B, L-1]: 1 where position t-1 predicts a completion token t
    advantages: torch.Tensor      # [B] sequence-level (broadcast over tokens)
    old_logp: torch.Tensor | None = None  # [B, L-1] under pi_old (the learner's own, before the update)
    ref_logp: torch.Tensor | None = None  # [B, L-1] under the reference policy

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, idx: torch.Tensor) -> "RLBatch":
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return RLBatch(self.input_ids[idx], self.attention_mask[idx], self.response_mask[idx], self.advantages[idx],
                       pick(self.old_logp), pick(self.ref_logp))


def build_sequences(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int):
    """Right-pad prompt+completion pairs: (input_ids [B, L], attention_mask [B, L], response_mask [B, L-1])."""
    seqs = [p + c for p, c in zip(prompt_ids, completion_ids)]
    L = max(len(s) for s in seqs)
    B = len(seqs)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    att = torch.zeros((B, L), dtype=torch.long)
    resp = torch.zeros((B, L - 1), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c)
        att[i, :n] = 1
        resp[i, len(p) - 1: n - 1] = 1.0
    return ids, att, resp


def compute_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, algo) -> torch.Tensor:
    """Sequence-level advantages by the estimator ``algo.adv_estimator`` (see learners/advantages.py)."""
    fn = get_adv_estimator(algo.adv_estimator)
    return fn(rewards.float(), group_ids, norm_by_std=bool(algo.norm_adv_by_std))


@torch.no_grad()
def batched_logprobs(model, ids: torch.Tensor, att: torch.Tensor, micro_batch_size: int) -> torch.Tensor:
    """Token logprobs [B, L-1] computed micro-batch by micro-batch without gradients."""
    out = [sequence_logprobs(model, ids[i:i + micro_batch_size], att[i:i + micro_batch_size])
           for i in range(0, ids.shape[0], micro_batch_size)]
    return torch.cat(out, 0)


def rl_loss(model, mb: RLBatch, algo) -> tuple[torch.Tensor, dict]:
    """J(theta) of the configured algorithm on one micro-batch, as a loss to minimise:

        loss = policy_loss(rho, A) + beta * agg(KL_est(pi_theta || pi_ref)) - c_H * agg(H(pi_theta))

    Without ``old_logp`` (one on-policy pass) rho = exp(logp - logp.detach()) = 1 with the right gradient.
    """
    logp, entropy = sequence_logprobs(model, mb.input_ids, mb.attention_mask, return_entropy=True)
    mask = mb.response_mask
    old = mb.old_logp if mb.old_logp is not None else logp.detach()
    adv = mb.advantages[:, None].to(logp.dtype).expand_as(logp)
    pg, metrics = get_policy_loss(algo.policy_loss)(
        logp, old, adv, mask, clip_low=algo.clip_low, clip_high=algo.clip_high, dual_clip=algo.dual_clip,
        loss_agg=algo.loss_agg)
    loss = pg
    metrics["pg_loss"] = pg.item()
    if algo.kl_coef > 0 and mb.ref_logp is not None:
        kl = kl_penalty(logp, mb.ref_logp, algo.kl_estimator)
        kl_term = aggregate(kl, mask, algo.loss_agg)
        loss = loss + algo.kl_coef * kl_term
        metrics["kl"] = kl_term.item()
    ent = aggregate(entropy, mask, algo.loss_agg)
    if algo.entropy_coef:
        loss = loss - algo.entropy_coef * ent
    metrics["entropy"] = ent.item()
    metrics["loss"] = loss.item()
    return loss, metrics


def policy_update(model, optimizer, scheduler, batch: RLBatch, algo, train, params=None) -> dict:
    """``train.epochs`` passes over ``train.mini_batches`` shuffled minibatches; gradients accumulate over
    micro-batches of ``train.micro_batch_size``; one optimizer step per minibatch with clipping.

    Micro-batch losses are weighted by their share of the minibatch (tokens for token-mean, sequences
    otherwise), so accumulation gives the same gradient as one big minibatch.
    """
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    B = len(batch)
    sums: dict[str, float] = {}
    n_updates = 0
    model.train()
    for _ in range(train.epochs):
        perm = torch.randperm(B)
        for mb_idx in perm.chunk(train.mini_batches):
            mb = batch.select(mb_idx)
            optimizer.zero_grad(set_to_none=True)
            mb_tokens = mb.response_mask.sum().clamp(min=1.0)
            for i in range(0, len(mb), train.micro_batch_size):
                sl = torch.arange(i, min(i + train.micro_batch_size, len(mb)))
                micro = mb.select(sl)
                w = (micro.response_mask.sum() / mb_tokens) if algo.loss_agg == "token-mean" else len(micro) / len(mb)
                loss, m = rl_loss(model, micro, algo)
                (loss * w).backward()
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * float(w)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm)
            n_updates += 1
    out = {k: v / n_updates for k, v in sums.items()}
    out["updates"] = n_updates
    out["lr"] = optimizer.param_groups[0]["lr"]
    with torch.no_grad():
        out["adv_abs_mean"] = masked_mean(batch.advantages.abs()[:, None].expand_as(batch.response_mask),
                                          batch.response_mask).item()
    return out


def make_scheduler(optimizer, train, total_updates: int):
    """Linear warm-up then constant, cosine or linear decay (per optimizer step)."""
    import math

    def f(step: int) -> float:
        if step < train.warmup_steps:
            return (step + 1) / max(1, train.warmup_steps)
        if train.lr_schedule == "constant":
            return 1.0
        frac = min(1.0, (step - train.warmup_steps) / max(1, total_updates - train.warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * frac)) if train.lr_schedule == "cosine" else 1.0 - frac

    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)
