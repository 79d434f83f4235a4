"""One RL optimisation step over a batch of rollouts: batch building, advantages, losses, minibatch updates.

Pure torch (no Ray): the learner actor calls these; tests call them directly. Token tensors are [B, L-1],
aligned with ``sequence_logprobs``: column t-1 scores token t of prompt + completion.

The KL to the reference policy is measured under three names, one per quantity (none is logged as plain ``kl``):

- ``kl_loss`` (:func:`rl_objective`, kl_mode loss): agg_t KL_est(pi_theta || pi_ref), the term beta multiplies in
  the loss, with KL_est = ``algo.kl_estimator`` (k3 by default) on the policy being trained, averaged over the
  update's micro-batches;
- ``kl_reward`` (:func:`prepare_batch`, kl_mode reward): agg_t KL_est(pi_old || pi_ref), the per-token penalty
  subtracted from the rewards, with KL_est = ``algo.kl_estimator`` (k1 by default) on the sampling policy, before
  the update;
- ``kl_seq`` (:func:`prepare_batch`, either mode when pi_old is computed): sum_t k1(pi_old || pi_ref) per response,
  averaged over responses -- what the adaptive controller tracks.

agg is ``algo.loss_agg``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from learners.advantages import get_adv_estimator, outcome_token_rewards
from learners.algorithms import hyperparameters
from learners.logprobs import sequence_logprobs
from learners.policy_loss import aggregate, get_policy_loss, kl_penalty, masked_mean
from learners.rollout_correction import correction_weights, mismatch_metrics


class LocalReducer:
    """How the step's normalisers see the batch: here, one learner holds all of it.

    Data-parallel learners (actors/learner.py: ``GroupReducer``, over cluster/distributed.py) each hold a shard of
    whole groups and pass a reducer whose ``sum`` adds a tensor over the learners, ``grads`` sums the gradients
    and ``merge`` combines the ranks' metrics, so that every mean below -- batch whitening, the token or sequence
    count of a minibatch, the KL the controller tracks -- is the global batch's, and the update equals one
    learner's on the whole batch."""

    world = 1

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def grads(self, params) -> None:
        pass

    def merge(self, metrics: dict, additive: set[str]) -> dict:
        return metrics

    def mean(self, total: torch.Tensor, count: torch.Tensor | float) -> float:
        """sum_r total_r / sum_r count_r (one reduction for both)."""
        t = self.sum(torch.stack([total.detach().double(), torch.as_tensor(count, dtype=torch.float64)]))
        return (t[0] / t[1].clamp(min=1)).item()


LOCAL = LocalReducer()


@dataclass
class RLBatch:
    input_ids: torch.Tensor       # [B, L] prompt + completion, right-padded
    attention_mask: torch.Tensor  # [B, L]
    response_mask: torch.Tensor   # [B, L-1]: 1 where position t-1 predicts a completion token t (the loss mask)
    advantages: torch.Tensor      # [B, L-1] token-level (sequence-level estimators broadcast over the response)
    old_logp: torch.Tensor | None = None  # [B, L-1] under pi_old (the learner's own, before the update)
    ref_logp: torch.Tensor | None = None  # [B, L-1] under the reference policy
    engine_logp: torch.Tensor | None = None  # [B, L-1] the engine's sampling logprobs (mu), NaN where it gave none

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, idx: torch.Tensor) -> "RLBatch":
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return RLBatch(self.input_ids[idx], self.attention_mask[idx], self.response_mask[idx], self.advantages[idx],
                       pick(self.old_logp), pick(self.ref_logp), pick(self.engine_logp))


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


def scatter_response(prompt_ids: list[list[int]], per_token: list[list[float]], like: torch.Tensor) -> torch.Tensor:
    """Per-completion-token numbers (engine logprobs, critic values) placed at their [B, L-1] positions."""
    out = torch.zeros_like(like, dtype=torch.float32)
    for i, (p, xs) in enumerate(zip(prompt_ids, per_token)):
        out[i, len(p) - 1: len(p) - 1 + len(xs)] = torch.tensor(xs, dtype=torch.float32)
    return out


def gather_response(x: torch.Tensor, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[list[float]]:
    """The inverse of :func:`scatter_response`: one list per completion."""
    return [x[i, len(p) - 1: len(p) - 1 + len(c)].tolist() for i, (p, c) in enumerate(zip(prompt_ids, completion_ids))]


def overlong_filter(response_mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """DAPO's overlong filtering (Yu et al. 2025, sec. 3.4): a completion cut off by the length limit gets no
    loss, since its reward judges an unfinished answer. Its reward still counts in its group's statistics."""
    return response_mask * (1.0 - truncated.to(response_mask.dtype))[:, None]


def compute_advantages(scores: torch.Tensor, response_mask: torch.Tensor, group_ids: torch.Tensor, algo,
                       kl: torch.Tensor | None = None, kl_coef: float = 0.0, values: torch.Tensor | None = None,
                       reducer: LocalReducer = LOCAL):
    """(advantages [B, L-1], returns [B, L-1] or None) by ``algo.adv_estimator`` (learners/advantages.py).

    With ``algo.kl_mode == 'reward'`` the per-token ``kl`` estimate enters the rewards as -kl_coef * KL_t
    before the estimator sees them (Ziegler et al. 2019); otherwise the KL is a loss term (see :func:`rl_loss`).
    The estimator takes the hyperparameters its signature declares from ``algo`` (learners/algorithms.py
    ``hyperparameters``) and, if it declares ``reduce``, the reducer's sum.
    """
    penalty = kl if algo.kl_mode == "reward" else None
    token_rewards = outcome_token_rewards(scores.float(), response_mask, penalty, kl_coef)
    fn = get_adv_estimator(algo.adv_estimator)
    return fn(token_rewards, response_mask, group_ids, values, **hyperparameters(fn, algo, reduce=reducer.sum))


@torch.no_grad()
def batched_logprobs(model, ids: torch.Tensor, att: torch.Tensor, micro_batch_size: int,
                     temperature: float = 1.0, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Token logprobs [B, L-1] (of pi_T, see :func:`sequence_logprobs`) micro-batch by micro-batch without gradients;
    with ``positions`` ([B, L-1]) only there (0 elsewhere), by the lean path."""
    out = [sequence_logprobs(model, ids[i:i + micro_batch_size], att[i:i + micro_batch_size], temperature=temperature,
                             positions=None if positions is None else positions[i:i + micro_batch_size])
           for i in range(0, ids.shape[0], micro_batch_size)]
    return torch.cat(out, 0)


def needs_old_logprobs(algo, train, kl_coef: float) -> bool:
    """pi_old must be fixed before the first update when there are several updates per batch (PPO epochs,
    minibatches), when the KL is a reward penalty (it scores the sampling policy) or is being controlled."""
    return (train.mini_batches > 1 or train.epochs > 1 or (kl_coef > 0 and algo.kl_mode == "reward")
            or (kl_coef > 0 and algo.kl_ctrl == "adaptive"))


def prepare_batch(model, prompt_ids: list[list[int]], completion_ids: list[list[int]], scores: list[float],
                  group_ids: list[int], algo, train, pad_id: int, kl_coef: float, ref_logprobs_fn=None,
                  behaviour_logprobs: list[list[float]] | None = None, values: list[list[float]] | None = None,
                  truncated: list[bool] | None = None, reducer: LocalReducer = LOCAL,
                  temperature: float = 1.0, loss_masks: list[list[int]] | None = None,
                  ref_logprobs: list[list[float]] | None = None) -> tuple[RLBatch, dict]:
    """Everything before the first gradient: sequences, reference and old logprobs, rewards with the KL
    penalty, advantages (and the critic's returns), the overlong filter. Returns (batch, info) where info
    holds ``returns`` (lists, for the critic) and the measured KL of the batch (``kl_seq``; ``kl_reward`` in
    reward mode: see the module docstring).

    ``ref_logprobs_fn(ids, att, positions)`` gives the reference policy's logprobs at the response positions (the
    learner runs the model with its adapter off; at ``temperature``, like every logprob here); ``ref_logprobs``, per
    completion token, are those already computed (the reference scorer streamed them: actors/reference.py) and
    replace the call. Reference and old
    logprobs are computed at response positions only: nothing reads the others. ``behaviour_logprobs`` are the engine's sampling
    logprobs (mu, of the distribution it sampled from): the mismatch between them and
    the learner's pi_old is measured and corrected by importance weights in :func:`rl_objective`
    (learners/rollout_correction.py) -- the engine's kernels differ, and under asynchronous rollout so does its
    adapter version; pi_old stays the learner's own policy before the update. ``group_ids`` index groups within this batch; a data-parallel
    shard holds whole groups (``reducer``: see :class:`LocalReducer`).

    ``loss_masks`` (multi-turn trajectories, actors/multiturn.py): per completion token 1 where the model sampled it,
    0 where a tool result or chat markup was appended; the response mask -- the loss, the KL, the advantages, the
    logprob positions -- then covers the model's own tokens only.
    """
    ids, att, resp = build_sequences(prompt_ids, completion_ids, pad_id)
    if loss_masks is not None:
        resp = resp * scatter_response(prompt_ids, loss_masks, resp)
    batch = RLBatch(ids, att, resp, torch.zeros_like(resp))
    if behaviour_logprobs is not None:
        batch.engine_logp = scatter_response(prompt_ids, behaviour_logprobs, resp)
    model.eval()
    if kl_coef > 0:
        batch.ref_logp = (scatter_response(prompt_ids, ref_logprobs, resp) if ref_logprobs is not None
                          else ref_logprobs_fn(ids, att, resp))
    if batch.old_logp is None and needs_old_logprobs(algo, train, kl_coef):
        batch.old_logp = batched_logprobs(model, ids, att, train.micro_batch_size, temperature, positions=resp)
    info: dict = {}
    kl = None
    if batch.ref_logp is not None and batch.old_logp is not None:
        kl = kl_penalty(batch.old_logp, batch.ref_logp, algo.kl_estimator) * resp
        # What the adaptive controller tracks: KL(pi_old || pi_ref) per response, summed over its tokens.
        kl_resp = kl_penalty(batch.old_logp, batch.ref_logp, "k1").mul(resp).sum(-1)
        info["kl_seq"] = reducer.mean(kl_resp.sum(), len(kl_resp))
        if algo.kl_mode == "reward":  # the penalty the rewards carry: KL_est(pi_old || pi_ref), before the update
            info["kl_reward"] = aggregate(kl, resp, algo.loss_agg, algo.norm_len).item()
    v = scatter_response(prompt_ids, values, resp) if values is not None else None
    adv, returns = compute_advantages(torch.tensor(scores, dtype=torch.float32), resp, torch.tensor(group_ids),
                                      algo, kl, kl_coef, v, reducer)
    batch.advantages = adv
    if returns is not None:
        info["returns"] = gather_response(returns, prompt_ids, completion_ids)
    if truncated is not None and algo.overlong_filter:
        tr = torch.tensor(truncated, dtype=torch.float32)
        batch.response_mask = overlong_filter(resp, tr)
        info["overlong_filtered"] = int(tr.sum().item())
    return batch, info


def rl_objective(logp: torch.Tensor, entropy: torch.Tensor | None, old_logp: torch.Tensor | None,
                 ref_logp: torch.Tensor | None, adv: torch.Tensor, mask: torch.Tensor, algo,
                 kl_coef: float | None = None, engine_logp: torch.Tensor | None = None,
                 correction: str = "none", is_cap: float = 2.0) -> tuple[torch.Tensor, dict]:
    """J(theta) of the configured (resolved) algorithm on token tensors, as a loss to minimise:

        loss = policy_loss(rho, w * A) + beta * agg(KL_est(pi_theta || pi_ref)) - c_H * agg(H(pi_theta))

    (the KL term only when ``algo.kl_mode == 'loss'``, logged as ``kl_loss``; the aggregation is ``algo.loss_agg``).
    Without ``old_logp`` (one on-policy pass) rho = exp(logp - logp.detach()) = 1 with the right gradient. The
    policy loss takes the hyperparameters its signature declares from ``algo`` (learners/algorithms.py
    ``hyperparameters``).

    ``engine_logp`` (log mu, the engine's sampling logprobs): the rollout/learner mismatch is measured against
    pi_old and, with ``correction`` tis or mis, corrected by per-token weights w_t >= 0
    (learners/rollout_correction.py). Scaling A_t by w_t scales the token's clipped surrogate by w_t, since
    -min(rho w A, clip(rho) w A) = w * -min(rho A, clip(rho) A) for w >= 0.
    """
    kl_coef = algo.kl_coef if kl_coef is None else kl_coef
    old = old_logp if old_logp is not None else logp.detach()
    norm_len = algo.norm_len
    metrics = {}
    if engine_logp is not None:
        engine_logp = torch.where(torch.isnan(engine_logp), old.detach(), engine_logp)  # no logprob: no mismatch
        metrics.update(mismatch_metrics(old, engine_logp, mask, is_cap))
        w = correction_weights(correction, old, engine_logp, is_cap)
        if w is not None:
            adv = adv * w
            metrics["rollout_corr/is_weight_mean"] = masked_mean(w, mask).item()
            metrics["rollout_corr/dropped_frac"] = masked_mean((w == 0).float(), mask).item()
    policy_loss = get_policy_loss(algo.policy_loss)
    pg, pg_metrics = policy_loss(logp, old, adv.to(logp.dtype), mask, **hyperparameters(policy_loss, algo))
    metrics.update(pg_metrics)
    loss = pg
    metrics["pg_loss"] = pg.item()
    if kl_coef > 0 and ref_logp is not None and algo.kl_mode == "loss":
        kl_term = aggregate(kl_penalty(logp, ref_logp, algo.kl_estimator), mask, algo.loss_agg, norm_len)
        loss = loss + kl_coef * kl_term
        metrics["kl_loss"] = kl_term.item()  # KL_est(pi_theta || pi_ref): see the module docstring
    if entropy is not None:
        ent = aggregate(entropy, mask, algo.loss_agg, norm_len)
        if algo.entropy_coef:
            loss = loss - algo.entropy_coef * ent
        metrics["entropy"] = ent.item()
    metrics["loss"] = loss.item()
    return loss, metrics


def rl_loss(model, mb: RLBatch, algo, kl_coef: float | None = None, correction: str = "none",
            is_cap: float = 2.0, temperature: float = 1.0) -> tuple[torch.Tensor, dict]:
    """:func:`rl_objective` on one micro-batch, with the policy's logprobs and entropies computed here (of pi_T, the
    distribution the engine sampled from at ``temperature``, as TRL and veRL do) at the response positions only;
    the entropy has an autograd graph only when it is in the loss (``algo.entropy_coef`` != 0)."""
    logp, entropy = sequence_logprobs(model, mb.input_ids, mb.attention_mask, return_entropy=True, temperature=temperature,
                                      positions=mb.response_mask, entropy_grad=bool(algo.entropy_coef))
    return rl_objective(logp, entropy, mb.old_logp, mb.ref_logp, mb.advantages, mb.response_mask, algo, kl_coef,
                        mb.engine_logp, correction, is_cap)


def pad_supervised(input_ids: list[list[int]], labels: list[list[int]], pad_id: int) -> dict:
    """Right-pad tokenised supervised rows (labels -100 off the answer) into the tensors :func:`ptx_loss` takes."""
    from learners.sft import IGNORE_INDEX

    L = max(len(x) for x in input_ids)
    ids = torch.full((len(input_ids), L), pad_id, dtype=torch.long)
    lab = torch.full((len(input_ids), L), IGNORE_INDEX, dtype=torch.long)
    att = torch.zeros((len(input_ids), L), dtype=torch.long)
    for i, (x, y) in enumerate(zip(input_ids, labels)):
        ids[i, : len(x)], lab[i, : len(y)], att[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids, "attention_mask": att, "labels": lab}


def ptx_loss(model, ptx: dict) -> torch.Tensor:
    """InstructGPT's PPO-ptx term (Ouyang et al. 2022, eq. 2): the mean token NLL of supervised data,
    -(1/N) sum_t log pi_theta(y_t | y_<t) over its labelled tokens, added to the RL loss with ``algo.ptx_coef``."""
    from learners.sft import sft_loss

    logits = model(input_ids=ptx["input_ids"], attention_mask=ptx["attention_mask"], use_cache=False).logits
    return sft_loss(logits, ptx["labels"])


def policy_update(model, optimizer, scheduler, batch: RLBatch, algo, train, params=None, kl_coef: float | None = None,
                  ptx: dict | None = None, reducer: LocalReducer = LOCAL, temperature: float = 1.0) -> dict:
    """``train.epochs`` passes over ``train.mini_batches`` shuffled minibatches; gradients accumulate over
    micro-batches of ``train.micro_batch_size``; one optimizer step per minibatch with clipping.

    Micro-batch losses are weighted by their share of the minibatch (tokens for token-mean, sequences
    otherwise), so accumulation gives the same gradient as one big minibatch. With ``ptx`` (a supervised
    batch: input_ids, attention_mask, labels) every optimizer step adds ``algo.ptx_coef`` times its NLL.

    Data-parallel (``reducer``, see :class:`LocalReducer`): every rank cuts its shard into the same number of
    minibatches; a micro-batch's weight is its share of the *global* minibatch (the sum over ranks of its tokens
    or sequences) and the gradients are summed over ranks before clipping, so each optimizer step is the one a
    single learner would take on the union of the ranks' minibatches.
    """
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    B = len(batch)
    sums: dict[str, float] = {}
    additive: set[str] = set()  # metrics weighted by this rank's share: the global value is their sum over ranks
    maxima: dict[str, float] = {}
    n_updates = 0
    model.train()
    for _ in range(train.epochs):
        perm = torch.randperm(B)
        # tensor_split, not chunk: exactly train.mini_batches updates (chunk gives fewer when B is small), the
        # same count on every data-parallel rank
        for mb_idx in torch.tensor_split(perm, train.mini_batches):
            mb = batch.select(mb_idx)
            optimizer.zero_grad(set_to_none=True)
            by_tokens = algo.loss_agg == "token-mean"
            mb_size = reducer.sum(mb.response_mask.sum().float() if by_tokens else torch.tensor(float(len(mb)))).clamp(min=1.0)
            for i in range(0, len(mb), train.micro_batch_size):
                sl = torch.arange(i, min(i + train.micro_batch_size, len(mb)))
                micro = mb.select(sl)
                w = (micro.response_mask.sum() if by_tokens else len(micro)) / mb_size
                loss, m = rl_loss(model, micro, algo, kl_coef, train.rollout_correction, train.rollout_is_cap, temperature)
                (loss * w).backward()
                for k, v in m.items():
                    if k.endswith("max_abs_diff"):  # a maximum, not a share-weighted mean
                        maxima[k] = max(maxima.get(k, 0.0), float(v))
                        continue
                    sums[k] = sums.get(k, 0.0) + float(v) * float(w)
                    additive.add(k)
            if ptx is not None and algo.ptx_coef > 0:
                lp = ptx_loss(model, ptx)
                (algo.ptx_coef * lp / reducer.world).backward()  # each rank's supervised batch: their mean
                sums["ptx_loss"] = sums.get("ptx_loss", 0.0) + lp.item() / reducer.world
                additive.add("ptx_loss")
            reducer.grads(params)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm)
            n_updates += 1
    out = {k: v / n_updates for k, v in sums.items()} | maxima
    out["updates"] = n_updates
    out["lr"] = optimizer.param_groups[0]["lr"]
    with torch.no_grad():
        m = batch.response_mask.float()
        out["adv_abs_mean"] = reducer.mean((batch.advantages.abs() * m).sum(), m.sum())
    return reducer.merge(out, additive)


def make_scheduler(optimizer, train, total_updates: int):
    """Linear warm-up then constant, cosine or linear decay (per optimizer step)."""

    def f(step: int) -> float:
        if step < train.warmup_steps:
            return (step + 1) / max(1, train.warmup_steps)
        if train.lr_schedule == "constant":
            return 1.0
        frac = min(1.0, (step - train.warmup_steps) / max(1, total_updates - train.warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * frac)) if train.lr_schedule == "cosine" else 1.0 - frac

    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)
