"""The panel's pure metrics on crafted cases: pass@k against its closed form and its definition, win-rate
with and without swapping positions, perplexity against a direct cross-entropy, rates and lengths."""
import itertools
import math

import pytest
import torch

from evalpanel.metrics import (
    length_stats, pass_at_k, perplexity, position_consistency, preference_from_scores, rate, win_rate,
)


@pytest.mark.parametrize("n, c, k", [(10, 3, 1), (10, 3, 5), (20, 0, 4), (5, 5, 2), (7, 2, 6), (200, 13, 10), (1, 1, 1)])
def test_pass_at_k_matches_closed_form(n, c, k):
    expected = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k).item() == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_the_subset_probability():
    # The definition: the fraction of k-subsets of the n samples that hold at least one correct sample.
    samples = [1, 0, 0, 1, 0, 0, 0]
    for k in range(1, len(samples) + 1):
        subsets = list(itertools.combinations(samples, k))
        by_definition = sum(any(s) for s in subsets) / len(subsets)
        assert pass_at_k(len(samples), sum(samples), k).item() == pytest.approx(by_definition, abs=1e-12)


def test_pass_at_k_vectorised_and_differs_from_biased_estimate():
    n, c = torch.tensor([10, 10, 10]), torch.tensor([0, 1, 10])
    got = pass_at_k(n, c, 5)
    assert got.tolist() == pytest.approx([0.0, 0.5, 1.0], abs=1e-12)
    # The with-replacement estimate 1 - (1 - c/n)^k is biased: 1 - 0.9^5 = 0.41, not 0.5.
    assert abs(got[1].item() - (1 - 0.9 ** 5)) > 0.05
    # Large n stays finite (log-space evaluation).
    assert 0 < pass_at_k(10_000, 3, 100).item() < 1


@pytest.mark.parametrize("n, c, k, fragment", [(3, 1, 5, "at least k=5"), (5, 6, 1, "0 <= c <= n"), (5, 1, 0, "k >= 1")])
def test_pass_at_k_rejects_impossible_input(n, c, k, fragment):
    with pytest.raises(ValueError, match=fragment):
        pass_at_k(n, c, k)


def test_win_rate_swapping_cancels_position_bias():
    # A judge that always prefers whatever it reads first: without swapping A wins everything.
    always_first = torch.ones(8)
    assert win_rate(always_first).item() == 1.0
    assert win_rate(always_first, always_first).item() == 0.5
    assert position_consistency(always_first, always_first).item() == 0.0


def test_win_rate_with_a_consistent_judge():
    # A fair judge who prefers A on 3 of 4 items regardless of order: pref_ba is the mirror of pref_ab.
    pref_ab = torch.tensor([1.0, 1.0, 1.0, 0.0])
    pref_ba = 1 - pref_ab
    assert win_rate(pref_ab).item() == 0.75
    assert win_rate(pref_ab, pref_ba).item() == 0.75
    assert position_consistency(pref_ab, pref_ba).item() == 1.0
    # Mixed: item 0 consistent A, item 1 flips with the order (counts half), item 2 tie in both orders.
    pref_ab = torch.tensor([1.0, 1.0, 0.5])
    pref_ba = torch.tensor([0.0, 1.0, 0.5])
    assert win_rate(pref_ab, pref_ba).item() == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    assert win_rate(pref_ab).item() == pytest.approx(2.5 / 3)
    with pytest.raises(ValueError, match="one verdict per item"):
        win_rate(torch.ones(3), torch.ones(2))


def test_preference_from_scores_counts_ties_half():
    got = preference_from_scores(torch.tensor([2.0, 1.0, 0.5]), torch.tensor([1.0, 3.0, 0.5]))
    assert got.tolist() == [1.0, 0.0, 0.5]


def test_perplexity_matches_direct_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.randint(0, 11, (3, 6))
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]])
    lp = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    direct = torch.exp(torch.nn.functional.cross_entropy(logits[mask.bool()], labels[mask.bool()]))
    assert perplexity(lp, mask).item() == pytest.approx(direct.item(), rel=1e-6)
    # A uniform model over V tokens has perplexity V.
    uniform = torch.full((2, 4), -math.log(11))
    assert perplexity(uniform, torch.ones(2, 4)).item() == pytest.approx(11.0)
    with pytest.raises(ValueError, match="at least one scored token"):
        perplexity(lp, torch.zeros_like(mask))


def test_rate_and_length_stats():
    r = rate(torch.tensor([1.0, 0.0, 1.0, 1.0]))
    assert r["mean"] == 0.75 and r["n"] == 4
    assert r["stderr"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    s = length_stats(torch.tensor([1, 2, 3, 4, 10]), torch.tensor([0, 0, 0, 0, 1]))
    assert s["mean"] == 4.0 and s["median"] == 3.0 and s["max"] == 10.0 and s["truncated"] == 0.2
    assert 4.0 < s["p90"] <= 10.0
