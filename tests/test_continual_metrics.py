"""Continual-learning metrics on hand-made accuracy matrices, and the pure math of the strategies."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from continual.exemplars import herding, nearest_mean_scores, normalize
from continual.metrics import (
    accuracy_curve, average_accuracy, backward_transfer, forgetting, forward_transfer, summarize,
)
from continual.params import swapped
from continual.projection import agem_project, gem_project
from continual.regularizers import distillation_loss, ewc_penalty, fisher_update, online_fisher
from continual.routing import router_weights, task_distances

# Row t = after training task t; column i = evaluated task. Task 0's best score (0.95) comes after task 1,
# so forgetting (from the best) and -BWT (from the diagonal) differ.
R = [[0.90, 0.10, 0.20],
     [0.95, 0.80, 0.30],
     [0.40, 0.60, 0.70]]
B = [0.10, 0.10, 0.20]


def test_metrics_on_a_hand_made_matrix():
    assert average_accuracy(R) == pytest.approx((0.40 + 0.60 + 0.70) / 3)
    assert backward_transfer(R) == pytest.approx(((0.40 - 0.90) + (0.60 - 0.80)) / 2)
    assert forward_transfer(R, B) == pytest.approx(((0.10 - 0.10) + (0.30 - 0.20)) / 2)
    assert forgetting(R) == pytest.approx(((0.95 - 0.40) + (0.80 - 0.60)) / 2)
    assert accuracy_curve(R) == pytest.approx([0.90, (0.95 + 0.80) / 2, (0.40 + 0.60 + 0.70) / 3])
    s = summarize(R, B)
    assert set(s) == {"cl/acc", "cl/bwt", "cl/fwt", "cl/forgetting"}


def test_metrics_of_a_learner_that_never_forgets_and_of_one_task():
    perfect = np.tril(np.ones((4, 4)))  # every task perfect from when it is learnt, never forgotten
    assert backward_transfer(perfect) == 0.0
    assert forgetting(perfect) == 0.0
    assert average_accuracy(perfect) == 1.0
    assert summarize([[0.7]], [0.1]) == {"cl/acc": 0.7, "cl/bwt": 0.0, "cl/forgetting": 0.0, "cl/fwt": 0.0}


def test_metrics_reject_a_matrix_that_is_not_square():
    with pytest.raises(ValueError, match="square"):
        average_accuracy([[0.1, 0.2]])
    with pytest.raises(ValueError, match="one untrained score per task"):
        forward_transfer(R, [0.1])


def test_ewc_penalty_is_zero_at_the_anchor_and_grows_away_from_it():
    torch.manual_seed(0)
    anchor = [torch.randn(5, 3), torch.randn(4)]
    fisher = [torch.rand(5, 3) + 0.1, torch.rand(4) + 0.1]
    params = [a.clone().requires_grad_(True) for a in anchor]
    at = ewc_penalty(params, anchor, fisher)
    assert at.item() == 0.0
    at.backward()
    assert all(float(p.grad.abs().max()) == 0.0 for p in params)  # a minimum: no pull at the anchor
    direction = [torch.randn_like(a) for a in anchor]
    values = [ewc_penalty([a + s * d for a, d in zip(anchor, direction)], anchor, fisher).item()
              for s in (0.1, 0.2, 0.4, 0.8)]
    assert all(v2 > v1 > 0 for v1, v2 in zip(values, values[1:]))
    assert values[1] == pytest.approx(4 * values[0], rel=1e-5)  # quadratic
    # The same step costs more along an important (high-Fisher) coordinate.
    f = [torch.tensor([10.0, 0.1])]
    a = [torch.zeros(2)]
    assert ewc_penalty([torch.tensor([0.5, 0.0])], a, f) > ewc_penalty([torch.tensor([0.0, 0.5])], a, f)


def test_fisher_update_is_the_mean_of_squared_gradients_and_online_fisher_decays():
    grads = [torch.randn(6) for _ in range(7)]
    fisher = [torch.zeros(6)]
    for n, g in enumerate(grads, start=1):
        fisher_update(fisher, [g], n)
    assert torch.allclose(fisher[0], torch.stack(grads).pow(2).mean(0), atol=1e-6)
    merged = online_fisher([torch.ones(3)], [torch.full((3,), 2.0)], gamma=0.5)
    assert torch.allclose(merged[0], torch.full((3,), 2.5))


def test_distillation_is_zero_when_student_matches_teacher_and_positive_otherwise():
    z = torch.randn(8, 10)
    assert distillation_loss(z, z).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(z + torch.randn(8, 10), z).item() > 0.01


def _primal_projection(g: np.ndarray, G: np.ndarray) -> np.ndarray:
    """min_z 1/2 ||z - g||^2 s.t. G z >= 0, solved by scipy (an independent check of GEM's dual)."""
    from scipy.optimize import minimize

    res = minimize(lambda z: 0.5 * np.sum((z - g) ** 2), g, jac=lambda z: z - g, method="SLSQP",
                   constraints=[{"type": "ineq", "fun": lambda z: G @ z, "jac": lambda z: G}],
                   options={"ftol": 1e-12, "maxiter": 500})
    return res.x


def test_gem_projection_has_a_non_negative_dot_product_with_every_memory_gradient():
    rng = np.random.default_rng(0)
    for trial in range(20):
        G = torch.tensor(rng.normal(size=(4, 12)))
        g = torch.tensor(rng.normal(size=12)) - 1.5 * G[trial % 4]  # make at least one constraint bite
        assert bool((G @ g < 0).any())
        proj = gem_project(g, G)
        assert (G @ proj).min().item() >= -1e-6 * float(G.norm() * g.norm())
        assert np.allclose(proj.numpy(), _primal_projection(g.numpy(), G.numpy()), atol=1e-4)
        with_margin = gem_project(g, G, margin=0.5)
        assert (G @ with_margin).min().item() >= -1e-6 * float(G.norm() * g.norm())
    # Collinear memories (two tasks with the same gradient) still solve, and nothing to fix leaves g as it is.
    G2 = torch.stack([G[0], G[0], G[1]])
    proj = gem_project(-G[0], G2)
    assert (G2 @ proj).min().item() >= -1e-6 * float(G2.norm() * G[0].norm())
    g_ok = torch.tensor([1.0, 2.0])
    assert gem_project(g_ok, torch.eye(2)) is g_ok


def test_agem_projection_removes_only_the_conflicting_component():
    torch.manual_seed(1)
    g_ref = torch.randn(10)
    g = torch.randn(10) - 2 * g_ref
    assert torch.dot(g, g_ref) < 0
    p = agem_project(g, g_ref)
    assert torch.dot(p, g_ref).item() == pytest.approx(0.0, abs=1e-5)
    assert torch.allclose(g - p, (g - p).dot(g_ref) / g_ref.dot(g_ref) * g_ref, atol=1e-5)  # moved along g_ref only
    g2 = g_ref + 0.1 * torch.randn(10)
    assert agem_project(g2, g_ref) is g2


def test_herding_exemplar_means_approach_the_class_mean_faster_than_random_picks():
    torch.manual_seed(0)
    feats = normalize(torch.randn(200, 16) + torch.tensor([2.0] + [0.0] * 15))
    mu = feats.mean(0)
    order = herding(feats, 40)
    assert len(set(order)) == 40
    herd = [float((feats[order[:k]].mean(0) - mu).norm()) for k in range(1, 41)]
    gen = torch.Generator().manual_seed(0)
    rand = [np.mean([float((feats[torch.randperm(200, generator=gen)[:k]].mean(0) - mu).norm()) for _ in range(50)])
            for k in range(1, 41)]
    assert herd[-1] < herd[0] / 5
    assert all(h < r for h, r in zip(herd[4:], rand[4:]))
    assert herd[-1] < 0.3 * rand[-1]


def test_nearest_mean_scores_pick_the_closest_mean_and_skip_classes_without_exemplars():
    means = torch.tensor([[1.0, 0.0], [float("nan"), float("nan")], [0.0, 1.0]])
    x = normalize(torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    s = nearest_mean_scores(x, means)
    assert s.argmax(1).tolist() == [0, 2]
    assert torch.isinf(s[:, 1]).all()


def test_router_sends_an_input_to_its_nearest_task_and_mixes_top_k():
    keys = [torch.tensor([[0.0, 0.0]]), torch.tensor([[5.0, 5.0], [9.0, 9.0]])]
    x = torch.tensor([[0.2, 0.1], [8.5, 9.2]])
    d = task_distances(x, keys)
    w1 = router_weights(d, top_k=1)
    assert w1.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    w2 = router_weights(d, top_k=2, temperature=100.0)
    assert torch.allclose(w2.sum(1), torch.ones(2)) and bool((w2 > 0).all())


def test_swapped_runs_the_teacher_without_autograd_and_restores_the_student_exactly():
    w = torch.nn.Parameter(torch.randn(3, 3))
    student = w.detach().clone()
    x = torch.randn(2, 3)
    loss = (x @ w).pow(2).sum()  # the step's graph, built before the swap
    teacher = torch.zeros(3, 3)
    with swapped([w], [teacher]):
        out = x @ w
        assert torch.equal(w.detach(), teacher)
        assert not out.requires_grad  # a teacher's output never carries gradient into the student
    assert torch.equal(w.detach(), student)
    loss.backward()
    assert torch.allclose(w.grad, 2 * x.T @ (x @ student))  # backward sees the student's values
