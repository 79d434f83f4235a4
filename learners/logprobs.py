"""Token log-probabilities of given sequences under a causal LM.

Two ways to the same numbers. The plain one runs the whole model and takes log softmax of the [B, L, V] logits.
The lean one (``positions`` given: the RL learner, which needs only the completion tokens) runs the backbone to its
hidden states and applies the LM head only at the wanted positions, in chunks of positions, with
log p(y) = z_y - logsumexp(z): neither the [B, L, V] logits nor their fp32 copy exist, and under autograd a
chunk's logits are not kept for the backward pass either (each token's log p depends on its own hidden state
only, so d log p / d h is formed in the forward pass, as Liger-Kernel's fused linear cross-entropy does). Rows that
share a prompt (a GRPO group's n samples, a DPO pair) run that prompt through the backbone once
(:func:`_shared_prompt_states`).
"""
from __future__ import annotations

import torch

# fp32 elements of one chunk's [positions, V] logits: 2^25 x 4 bytes = 128 MiB (~220 positions at V = 151k)
CHUNK_ELEMENTS = 2 ** 25


def gather_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[labels] without materialising the full [B, T, V] log-softmax twice:
    log p(y) = logit_y - logsumexp(logits)."""
    logits = logits.to(_acc(logits.dtype))
    return torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      return_entropy: bool = False, temperature: float = 1.0, positions: torch.Tensor | None = None,
                      entropy_grad: bool = True):
    """Per-token log pi_T(x_t | x_<t) for t = 1..L-1, aligned so that out[:, t-1] scores input_ids[:, t], where
    pi_T = softmax(logits / T) is the distribution a sampler at temperature T draws from (T = 1: the model's own).

    Returns [B, L-1] (and the per-position entropy of pi_T [B, L-1] when asked).

    ``positions`` ([B, L-1], nonzero where wanted, e.g. the response mask): compute only there, by the lean path
    (module docstring); the other entries are 0. Same numbers as the plain path up to float rounding
    (tests/test_policy_math.py bounds it). ``entropy_grad=False``: the entropy is a logged number only, without
    an autograd graph (algo.entropy_coef = 0).
    """
    if positions is not None and positions.any():  # (none wanted: the plain path keeps the graph connected)
        head = _plain_head(model)
        if head is not None:
            return _lean_logprobs(model, head, input_ids, attention_mask, positions.bool(), return_entropy,
                                  temperature, entropy_grad)
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    logits = out.logits[:, :-1]
    if temperature != 1.0:
        logits = logits / temperature
    lp = gather_logprobs(logits, input_ids[:, 1:])
    if return_entropy:
        from learners.policy_loss import entropy_from_logits

        if not entropy_grad:
            with torch.no_grad():
                return lp, entropy_from_logits(logits)
        return lp, entropy_from_logits(logits)
    return lp


def _plain_head(model):
    """The model's LM head when logits are exactly head(final hidden state) -- a Linear without bias, and no
    soft-capping or logit scaling in the config (Gemma 2, Cohere, Granite have those) -- else None: such models
    take the plain path."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    if cfg is None or not hasattr(base, "get_decoder") or not hasattr(base, "get_output_embeddings"):
        return None
    if any(getattr(cfg, k, None) not in (None, 1.0) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")):
        return None
    head = base.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return None
    return head


def _lean_logprobs(model, head, input_ids, attention_mask, want, return_entropy, temperature, entropy_grad):
    B, L = input_ids.shape
    # Trailing columns that are padding in every row change nothing before them (causal): cut them off.
    n = int(attention_mask.any(0).nonzero().max()) + 1 if attention_mask is not None else L
    n = max(n, int(want.any(0).nonzero().max()) + 2)  # column t-1 of ``want`` needs input column t
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    sel = want[:, : n - 1]
    shared = _shared_prompt_states(base.get_decoder(), input_ids[:, :n], attention_mask, sel)
    if shared is not None:
        h, y = shared
    else:
        # [B, n, H]: the decoder stack and its final norm, LoRA layers acting inside (peft injects them in place)
        hidden = base.get_decoder()(input_ids=input_ids[:, :n], use_cache=False,
                                    attention_mask=None if attention_mask is None else attention_mask[:, :n]).last_hidden_state
        h = hidden[:, :-1][sel]          # [N, H] the states that predict the wanted tokens
        y = input_ids[:, 1:n][sel]       # [N]
    W = head.weight
    if torch.is_grad_enabled() and W.requires_grad:  # a trained head (full fine-tune): plain autograd, in chunks
        lp, ent = _chunked_autograd(h, W, y, temperature)
    elif torch.is_grad_enabled() and h.requires_grad:
        lp, ent = _HeadLogprob.apply(h, W, y, float(temperature), return_entropy and entropy_grad)
    else:
        with torch.no_grad():
            lp, ent, _, _ = _head_logprob_chunks(h, W, y, float(temperature), False, False)
    where = torch.zeros(B, L - 1, dtype=torch.bool, device=want.device)
    where[:, : n - 1] = sel
    out = lp.new_zeros(B, L - 1).masked_scatter(where, lp)  # row-major, the order boolean indexing took them in
    if not return_entropy:
        return out
    return out, ent.new_zeros(B, L - 1).masked_scatter(where, ent if entropy_grad else ent.detach())


def _shared_prompt_states(decoder, input_ids, attention_mask, sel):
    """The hidden states that predict the wanted tokens, and those tokens ([N, H], [N], row-major as ``sel``), with
    each distinct prompt run through the decoder once: a group's n samples share their prompt (GRPO's groups), so
    its keys and values are computed for one copy and indexed out to every row (autograd sums their gradients
    back). Row i's prompt is input_ids[i, :p_i], p_i - 1 its first wanted column; prompts are left-padded for their
    pass (positions from the mask), completions continue at p_i. None where no two rows share a prompt, a row
    wants nothing, or the rows are not right-padded [prompt | completion | pad]: the caller runs every row whole.
    Same numbers as the whole-row pass up to float rounding (tests/test_policy_math.py bounds it in float64).

    Cost: the prompt's tokens once per group instead of n times -- the demo's 32 x 8 rows of ~30 prompt + 16
    completion tokens shrink from 11.8k to 5k tokens a pass (learner step 0.45 -> 0.19 s), the heavy bench's 8 x 4
    rows of ~32 + 128 from 5.1k to 4.4k (bench/grpo.md)."""
    if attention_mask is None:
        return None
    if any(getattr(m, "gradient_checkpointing", False) and m.training for m in decoder.modules()):
        return None  # checkpointed layers drop past_key_values (transformers' GradientCheckpointingLayer)
    B, n = input_ids.shape
    att = attention_mask[:, :n].bool()
    if not bool(sel.any(1).all()):
        return None
    lengths = att.sum(1)
    if not bool((att == (torch.arange(n, device=att.device)[None] < lengths[:, None])).all()):
        return None
    starts = sel.float().argmax(1) + 1                      # p_i: the prompt's length
    keys, row2u, first = {}, [], []
    for i in range(B):
        k = tuple(input_ids[i, : int(starts[i])].tolist())
        if k not in keys:
            keys[k] = len(keys)
            first.append(i)
        row2u.append(keys[k])
    U = len(keys)
    if U == B:
        return None
    dev = input_ids.device
    row2u = torch.tensor(row2u, device=dev)
    p_len = starts[first]                                   # [U]
    Lp = int(p_len.max())
    cols = torch.arange(Lp, device=dev)
    p_att = cols[None] >= (Lp - p_len)[:, None]             # left-padded prompts
    src = (cols[None] - (Lp - p_len)[:, None]).clamp(min=0)
    p_ids = torch.where(p_att, input_ids[first].gather(1, src), torch.zeros_like(src))
    p_out = _prompt_pass(decoder, p_ids, p_att)
    if p_out is None:
        return None
    c_len = lengths - starts                                # completion tokens per row (>= 1: every row wants one)
    Lc = int(c_len.max())
    ccols = torch.arange(Lc, device=dev)
    c_att = ccols[None] < c_len[:, None]
    c_src = (starts[:, None] + ccols[None]).clamp(max=n - 1)
    c_ids = torch.where(c_att, input_ids.gather(1, c_src), torch.zeros_like(c_src))
    rows = _rows_cache(p_out.past_key_values, row2u)
    full_att = torch.cat([p_att[row2u], c_att], 1).long()
    c_out = decoder(input_ids=c_ids, attention_mask=full_att, position_ids=starts[:, None] + ccols[None],
                    past_key_values=rows, use_cache=True)
    # column j of a row's states predicts its token p_i + j: the prompt's last state, then the completion's
    states = torch.cat([p_out.last_hidden_state[:, -1:][row2u], c_out.last_hidden_state[:, :-1]], 1)   # [B, Lc, H]
    want_c = sel.gather(1, (starts[:, None] - 1 + ccols[None]).clamp(max=n - 2)) & c_att
    return states[want_c], c_ids[want_c]


def _prompt_pass(decoder, ids: torch.Tensor, att: torch.Tensor):
    """The decoder over left-padded prompts ([U, Lp]; positions from the mask), keeping their keys and values; None
    where the cache is not a plain full-attention copy of every prompt column (sliding-window or other layer caches:
    not [rows, heads, Lp, d] tensors to index out to rows), which the callers cannot continue on."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    out = decoder(input_ids=ids, attention_mask=att.long(), position_ids=(att.long().cumsum(1) - 1).clamp(min=0),
                  use_cache=True)
    cache = out.past_key_values
    if type(cache) is not DynamicCache or any(type(layer) is not DynamicLayer or layer.keys.shape[-2] != ids.shape[1]
                                              for layer in cache.layers):
        return None
    return out


def _rows_cache(cache, rows: torch.Tensor):
    """A prompt pass's cache indexed out to rows (row r continues on prompt ``rows[r]``'s keys and values)."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=[(layer.keys.index_select(0, rows), layer.values.index_select(0, rows))
                                        for layer in cache.layers])


def _acc(dtype: torch.dtype) -> torch.dtype:
    """The log-softmax's dtype: fp32 for fp32/bf16/fp16 logits (as TRL and veRL compute it), fp64 for fp64."""
    return torch.promote_types(dtype, torch.float32)


def _chunk(V: int) -> int:
    return max(1, CHUNK_ELEMENTS // V)


def _head_logprob_chunks(h, W, y, T, grad_lp: bool, grad_ent: bool):
    """Per chunk of positions: z = (h W^T) / T in fp32, log p(y) = z_y - logsumexp(z), H = logsumexp(z) - sum_v p_v z_v,
    and when asked the per-token input gradients (for z = h W^T / T, with p = softmax(z)):

        d log p(y) / d h = (onehot(y) - p) W / T
        d H / d h        = -(p * (log p + H)) W / T
    """
    N, V = h.shape[0], W.shape[0]
    lp = torch.empty(N, dtype=_acc(h.dtype), device=h.device)
    ent = torch.empty(N, dtype=_acc(h.dtype), device=h.device)
    d_lp = torch.empty_like(h) if grad_lp else None
    d_ent = torch.empty_like(h) if grad_ent else None
    for s in range(0, N, _chunk(V)):
        e = min(N, s + _chunk(V))
        z = torch.nn.functional.linear(h[s:e], W).to(_acc(W.dtype))
        if T != 1.0:
            z = z / T
        lse = torch.logsumexp(z, dim=-1)
        logp = z - lse[:, None]
        p = logp.exp()
        lp[s:e] = logp.gather(1, y[s:e, None]).squeeze(1)
        ent[s:e] = -(p * logp).sum(-1)
        if grad_ent:
            g = -(p * (logp + ent[s:e, None]))
            d_ent[s:e] = (g / T).to(W.dtype) @ W
        if grad_lp:
            g = p.neg_()
            g.scatter_add_(1, y[s:e, None], torch.ones_like(lp[s:e, None]))
            d_lp[s:e] = (g / T).to(W.dtype) @ W
    return lp, ent, d_lp, d_ent


class _HeadLogprob(torch.autograd.Function):
    """(log p(y_n), H_n) per position from hidden states h [N, H] and a frozen head W [V, H]; the backward pass is
    grad_h = g_lp * d log p / d h + g_H * d H / d h with the per-token derivatives formed in forward."""

    @staticmethod
    def forward(ctx, h, W, y, T, grad_ent):
        lp, ent, d_lp, d_ent = _head_logprob_chunks(h, W, y, T, True, grad_ent)
        ctx.save_for_backward(d_lp, d_ent if grad_ent else None)
        if not grad_ent:
            ctx.mark_non_differentiable(ent)
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        d_lp, d_ent = ctx.saved_tensors
        grad = g_lp[:, None].to(d_lp.dtype) * d_lp if g_lp is not None else torch.zeros_like(d_lp)
        if d_ent is not None and g_ent is not None:
            grad = grad + g_ent[:, None].to(d_ent.dtype) * d_ent
        return grad, None, None, None, None


def _chunked_autograd(h, W, y, T):
    lps, ents = [], []
    for s in range(0, h.shape[0], _chunk(W.shape[0])):
        z = torch.nn.functional.linear(h[s:s + _chunk(W.shape[0])], W).to(_acc(W.dtype))
        if T != 1.0:
            z = z / T
        logp = torch.log_softmax(z, dim=-1)
        lps.append(logp.gather(1, y[s:s + z.shape[0], None]).squeeze(1))
        ents.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(lps), torch.cat(ents)


class StreamingLogprobs:
    """Token logprobs of sequences that grow while they are scored: the reference policy's log pi_T(y_t | x, y_<t)
    of completions as an engine samples them, a chunk of tokens at a time, on a KV cache. Same numbers as
    :func:`sequence_logprobs` over the finished rows up to float rounding (tests/test_policy_math.py bounds it in
    float64); the cost is the same 2 N T FLOP, moved into generation (actors/reference.py).

    :meth:`begin` runs each of P prompts once (left-padded, positions from the mask) and gives its keys and values to
    its n rows (row i * n + j: sample j of prompt i, the engine's order). :meth:`extend` takes each row's new tokens
    (any number, none for a row that ended or is waiting); a chunk is right-padded across rows and its padding is
    masked out of every later chunk's attention, so rows that end early leave holes that nothing reads. Row r's next
    token is scored by the state of its last real token (the prompt's last at first):
    log p(y) = z_y - logsumexp(z), z = W h / T (:func:`_head_logprob_chunks`). :meth:`result` gives every row's
    logprobs and the tokens they score."""

    def __init__(self, model, temperature: float = 1.0, pad_id: int = 0):
        head = _plain_head(model)
        if head is None:
            raise ValueError("streamed logprobs need a plain LM head (a Linear without bias or logit scaling)")
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.decoder, self.W, self.T, self.pad_id = base.get_decoder(), head.weight, float(temperature), pad_id

    @torch.no_grad()
    def begin(self, prompts: list[list[int]], n: int) -> None:
        dev = self.W.device
        p_len = torch.tensor([len(p) for p in prompts], device=dev)
        if not prompts or int(p_len.min()) < 1:
            raise ValueError("every prompt needs a token at least")
        Lp = int(p_len.max())
        att = torch.arange(Lp, device=dev)[None] >= (Lp - p_len)[:, None]
        ids = torch.full((len(prompts), Lp), self.pad_id, dtype=torch.long, device=dev)
        for i, p in enumerate(prompts):
            ids[i, Lp - len(p):] = torch.tensor(p, device=dev)
        out = _prompt_pass(self.decoder, ids, att)
        if out is None:
            raise ValueError("streamed logprobs need a plain full-attention KV cache (no sliding-window layers): "
                             "use train.reference_logprobs=learner")
        rows = torch.arange(len(prompts), device=dev).repeat_interleave(n)
        self.cache = _rows_cache(out.past_key_values, rows)
        self.att = att[rows].long()                       # [R, columns so far]: 1 where a real token is
        self.pos = p_len[rows].clone()                    # the next token's position in its row
        self.last = out.last_hidden_state[:, -1][rows]    # [R, H]: the state that predicts each row's next token
        self.lp = [[] for _ in range(len(rows))]
        self.tokens = [[] for _ in range(len(rows))]

    @torch.no_grad()
    def extend(self, new: list[list[int]]) -> None:
        """Score ``new[r]``, the tokens row r gained since the last call (lists may be empty)."""
        R, dev = len(self.lp), self.W.device
        if len(new) != R:
            raise ValueError(f"extend got {len(new)} rows, begin made {R}")
        m = torch.tensor([len(t) for t in new], device=dev)
        C = int(m.max()) if R else 0
        if C == 0:
            return
        cols = torch.arange(C, device=dev)
        c_att = cols[None] < m[:, None]                   # [R, C]
        ids = torch.full((R, C), self.pad_id, dtype=torch.long, device=dev)
        for r, t in enumerate(new):
            if t:
                ids[r, : len(t)] = torch.tensor(t, device=dev)
        self.att = torch.cat([self.att, c_att.long()], 1)
        h = self.decoder(input_ids=ids, attention_mask=self.att, position_ids=self.pos[:, None] + cols[None],
                         past_key_values=self.cache, use_cache=True).last_hidden_state            # [R, C, H]
        states = torch.cat([self.last[:, None], h[:, :-1]], 1)                                  # column j predicts y_j
        lp, _, _, _ = _head_logprob_chunks(states[c_att], self.W, ids[c_att], self.T, False, False)
        lp = lp.tolist()
        k = 0
        for r, t in enumerate(new):
            self.lp[r].extend(lp[k:k + len(t)])
            self.tokens[r].extend(t)
            k += len(t)
        has = m > 0
        self.last[has] = h[has, (m[has] - 1)]
        self.pos += m

    def result(self) -> dict:
        """``{"logprobs": per row, "token_ids": per row}`` (what was scored, in the engine's row order)."""
        return {"logprobs": self.lp, "token_ids": self.tokens}
