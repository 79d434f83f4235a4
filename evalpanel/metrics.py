"""The panel's numbers, as small pure torch functions: pass@k, win-rate with position swapping,
perplexity, rates with their standard error, length statistics.

Nothing here generates, loads a model or reads a file: callers hand in tensors of per-item results.
"""
from __future__ import annotations

import torch


def pass_at_k(n: torch.Tensor | int, c: torch.Tensor | int, k: int) -> torch.Tensor:
    """Unbiased pass@k per problem (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1).

    With ``n`` samples of which ``c`` pass the unit tests:

        pass@k = 1 - C(n - c, k) / C(n, k)

    i.e. the probability that a random k-subset of the n samples holds at least one correct one -- unbiased,
    where ``1 - (1 - c/n)^k`` is not. Evaluated in log space (lgamma, float64) so that large n does not
    overflow; it is exactly 1 when ``n - c < k`` (every k-subset then holds a correct sample).
    Average the result over problems for the suite's pass@k.
    """
    n = torch.as_tensor(n, dtype=torch.float64)
    c = torch.as_tensor(c, dtype=torch.float64)
    if k < 1:
        raise ValueError(f"pass@k needs k >= 1, got {k}")
    if bool((n < k).any()):
        raise ValueError(f"pass@{k} needs at least k={k} samples per problem, got n={n.min().item():.0f}")
    if bool(((c < 0) | (c > n)).any()):
        raise ValueError("pass@k needs 0 <= c <= n for every problem")
    fail = n - c
    # log C(n-c, k) - log C(n, k); clamp keeps lgamma's argument positive where the answer is 1 anyway.
    log_ratio = (torch.lgamma(fail + 1) - torch.lgamma((fail - k).clamp(min=0) + 1)
                 - torch.lgamma(n + 1) + torch.lgamma(n - k + 1))
    return torch.where(fail < k, torch.ones_like(n), 1.0 - torch.exp(log_ratio))


def preference_from_scores(score_first: torch.Tensor, score_second: torch.Tensor) -> torch.Tensor:
    """A verdict from two scalar scores (reward-model scores, or a judge's log-probabilities of "1" and "2"):
    1 if the first-shown response wins, 0 if the second does, 0.5 on a tie (ties count half, as in
    AlpacaEval and Chatbot Arena)."""
    return 0.5 * (1.0 + torch.sign(score_first.double() - score_second.double()))


def wins(pref_ab: torch.Tensor, pref_ba: torch.Tensor | None = None) -> torch.Tensor:
    """Per-item wins of model A against model B, with positions swapped to cancel the judge's order bias
    (Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena", sec. 3.4).

    ``pref_ab[i]`` is the judge's preference for the response shown *first* when A's answer comes first;
    ``pref_ba[i]`` the same with B's answer first. A's win on item i is the mean over both orders,

        w_i = (pref_ab[i] + (1 - pref_ba[i])) / 2,

    or w_i = pref_ab[i] without ``pref_ba`` -- which carries the judge's position bias in full.
    """
    pref_ab = pref_ab.double()
    if pref_ba is None:
        return pref_ab
    if pref_ba.shape != pref_ab.shape:
        raise ValueError(f"both orders need one verdict per item, got {tuple(pref_ab.shape)} and {tuple(pref_ba.shape)}")
    return 0.5 * (pref_ab + 1.0 - pref_ba.double())


def win_rate(pref_ab: torch.Tensor, pref_ba: torch.Tensor | None = None) -> torch.Tensor:
    """Win-rate of A against B: mean_i w_i of :func:`wins`. A judge that always picks the first answer gives
    1.0 without the swap and exactly 0.5 with it."""
    return wins(pref_ab, pref_ba).mean()


def position_consistency(pref_ab: torch.Tensor, pref_ba: torch.Tensor) -> torch.Tensor:
    """Fraction of items on which the judge names the same winner in both orders (MT-Bench's "consistency"):
    A preferred when first and B not preferred when first, or the reverse. Ties count as inconsistent."""
    a_first = pref_ab.double() - 0.5
    b_first = pref_ba.double() - 0.5
    return ((a_first * b_first) < 0).double().mean()


def perplexity(token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-weighted perplexity over a corpus:

        PPL = exp( - sum_{i,t} m_it log p(x_it | x_i,<t) / sum_{i,t} m_it )

    ``token_logprobs`` [B, T] holds log p of each token given its prefix (learners.logprobs.sequence_logprobs),
    ``mask`` [B, T] picks the tokens that count (the answer, not the prompt or the padding). One long
    document weighs by its length, as in the usual corpus perplexity, not as one row.
    """
    m = mask.to(torch.float64)
    total = m.sum()
    if total == 0:
        raise ValueError("perplexity needs at least one scored token (is every row's mask empty?)")
    return torch.exp(-(token_logprobs.double() * m).sum() / total)


def rate(scores: torch.Tensor) -> dict[str, float]:
    """Mean of per-item scores with its standard error sigma/sqrt(n) (population sigma, which for 0/1 scores
    is the binomial sqrt(p(1-p)/n)), so a table reader can tell a difference from noise."""
    s = scores.double()
    if s.numel() == 0:
        return {"mean": float("nan"), "stderr": float("nan"), "n": 0}
    return {"mean": s.mean().item(), "stderr": (s.std(correction=0) / s.numel() ** 0.5).item(), "n": s.numel()}


def length_stats(lengths: torch.Tensor, truncated: torch.Tensor | None = None) -> dict[str, float]:
    """Completion-length statistics in tokens: mean, median, 90th percentile, max, and the fraction cut
    off at the token limit (a model that rambles to the limit looks different from one that stops)."""
    x = lengths.double()
    if x.numel() == 0:
        return {}
    out = {"mean": x.mean().item(), "median": torch.quantile(x, 0.5).item(),
           "p90": torch.quantile(x, 0.9).item(), "max": x.max().item()}
    if truncated is not None:
        out["truncated"] = truncated.double().mean().item()
    return out
