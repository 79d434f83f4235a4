"""Each strategy's mechanism, on a small real classifier and real digits streams (short runs)."""
from __future__ import annotations

import pytest
import torch

from continual import Strategy, evaluate, run_stream, split_digits, train_task
from continual.buffers import BalancedBuffer, ReservoirBuffer
from continual.classifier import MLP, classifier_learner
from continual.hooks import Compose
from continual.loop import task_loss
from continual.params import flat_grad, grad_of
from continual.strategies import (
    AGEM, EWC, GEM, AdapterMixture, ICaRL, LwF, PackNet, Replay, TaskLoRA, class_balanced, fisher_diagonal,
)
from continual.strategies.replay import memory_loss


@pytest.fixture(autouse=True)
def one_thread():
    # A model this small runs fastest on one thread, and the CI machine is shared.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def class_split():
    return split_digits(5, seed=0, scenario="class")


@pytest.fixture(scope="module")
def task_split():
    return split_digits(5, seed=0, scenario="task")


def learner(seed=0, epochs=2, hidden=64, peft=False):
    torch.manual_seed(seed)
    model = MLP(64, hidden, 10)
    if peft:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["fc1", "fc2"],
                                                 modules_to_save=["head"]))
    # Adapters on a frozen random base learn slower than a whole network: a larger step for them.
    return classifier_learner(model, lr=1e-2 if peft else 3e-3, batch_size=32, epochs=epochs, seed=seed)


class Recorder(Strategy):
    name = "recorder"

    def __init__(self):
        self.calls = []

    def before_task(self, learner, task):
        self.calls.append(("before_task", task.id))

    def before_backward(self, learner, task, step):
        assert step.loss.requires_grad and all(p.grad is None for p in learner.trainable())
        self.calls.append("before_backward")
        return step.loss

    def after_backward(self, learner, task, step):
        assert all(p.grad is not None for p in learner.trainable())
        self.calls.append("after_backward")

    def after_task(self, learner, task):
        self.calls.append(("after_task", task.id))


def test_hooks_fire_in_order_and_the_stream_fills_the_accuracy_matrix(class_split):
    rec = Recorder()
    res = run_stream(learner(epochs=1), class_split[:2], Compose([rec, Strategy()]))
    steps = -(-len(class_split[0].train) // 32)
    assert rec.calls[0] == ("before_task", 0)
    assert rec.calls[1:1 + 2 * steps] == ["before_backward", "after_backward"] * steps
    assert rec.calls[1 + 2 * steps] == ("after_task", 0)
    assert rec.calls[2 + 2 * steps] == ("before_task", 1)
    assert len(res.R) == 2 and all(len(row) == 2 for row in res.R)
    assert res.R[0][0] > 0.9 and res.R[0][1] == 0.0  # class-incremental: task 1's classes never predicted yet
    assert set(res.metrics) == {"cl/acc", "cl/bwt", "cl/fwt", "cl/forgetting"}


def test_naive_fine_tuning_forgets_in_a_class_incremental_stream_and_replay_and_icarl_do_not(class_split):
    tasks = class_split[:3]
    naive = run_stream(learner(), tasks, Strategy())
    replay = run_stream(learner(), tasks, Replay(ReservoirBuffer(60)))
    icarl = run_stream(learner(), tasks, ICaRL(memory_size=60))
    assert naive.R[2][0] < 0.2  # only the last task's classes are ever predicted
    assert replay.R[2][0] > naive.R[2][0] + 0.3
    assert icarl.R[2][0] > naive.R[2][0] + 0.3
    assert naive.metrics["cl/acc"] < 0.35  # about the last task's third
    assert replay.metrics["cl/acc"] > 0.45 and icarl.metrics["cl/acc"] > 0.6
    assert replay.metrics["cl/bwt"] > naive.metrics["cl/bwt"]


def test_buffers_keep_a_uniform_sample_and_equal_shares():
    counts = torch.zeros(100)
    for seed in range(200):
        buf = ReservoirBuffer(10, seed=seed)
        for i in range(100):
            buf.add(i)
        assert len(buf) == 10 and buf.seen == 100
        counts[buf.items] += 1
    assert float(counts[:50].sum()) == pytest.approx(float(counts[50:].sum()), rel=0.15)  # early items as likely as late
    bal = BalancedBuffer(30, key=lambda item: item % 3)
    for i in range(300):
        bal.add(i)
    assert sorted(len(s) for s in bal.shares.values()) == [10, 10, 10]
    bal6 = BalancedBuffer(30, key=lambda item: item % 6)
    for i in range(60):
        bal6.add(i)
    assert sorted(len(s) for s in bal6.shares.values()) == [5] * 6


def test_class_balanced_replay_remembers_every_class(class_split):
    strat = Replay(class_balanced(40))
    run_stream(learner(epochs=1), class_split[:2], strat)
    labels = [ex[1] for _, ex in strat.buffer.items]
    assert sorted(set(labels)) == [0, 1, 2, 3] and all(labels.count(c) == 10 for c in range(4))


def test_ewc_penalty_is_zero_at_its_anchor_and_grows_while_training_the_next_task(task_split):
    for mode in ("empirical", "sampled"):
        ln = learner(epochs=1)
        ewc = EWC(lam=10.0, fisher=mode, n_samples=50)
        train_task(ln, task_split[0], ewc)
        f = ewc.fishers[0]
        assert all(bool((x >= 0).all()) for x in f) and sum(float(x.sum()) for x in f) > 0
        assert ewc.penalty(ln).item() == 0.0
        before = ewc.penalty(ln).item()
        train_task(ln, task_split[1], ewc, epochs=1)
        after_one = ewc.penalty(ln).item()
        assert after_one > before
    # Online EWC keeps one running Fisher and the latest anchor.
    ln = learner(epochs=1)
    online = EWC(lam=10.0, online=True, gamma=0.5, n_samples=30)
    for t in task_split[:3]:
        train_task(ln, t, online)
    assert len(online.fishers) == 1 and len(online.anchors) == 1
    assert online.penalty(ln).item() == 0.0


def test_sampled_and_empirical_fisher_differ_only_in_the_labels(task_split):
    ln = learner(epochs=1)
    train_task(ln, task_split[0], Strategy())
    emp = fisher_diagonal(ln, task_split[0], n_samples=40, mode="empirical")
    emp2 = fisher_diagonal(ln, task_split[0], n_samples=40, mode="empirical")
    smp = fisher_diagonal(ln, task_split[0], n_samples=40, mode="sampled")
    assert all(torch.equal(a, b) for a, b in zip(emp, emp2))
    assert not all(torch.allclose(a, b) for a, b in zip(emp, smp))
    with pytest.raises(ValueError, match="empirical"):
        fisher_diagonal(ln, task_split[0], mode="exact")


def test_lwf_distillation_is_zero_on_the_first_step_of_a_task_and_pulls_afterwards(class_split):
    ln = learner(epochs=1)
    lwf = LwF(alpha=1.0, temperature=2.0)
    train_task(ln, class_split[0], lwf)
    lwf.before_task(ln, class_split[1])
    assert lwf.columns == [0, 1]  # distils the old task's outputs only
    step = task_loss(ln, ln.collate(class_split[1].train[:32]), class_split[1])
    assert lwf.distill(ln, step).item() == pytest.approx(0.0, abs=1e-6)
    train_task(ln, class_split[1], lwf, epochs=1)  # the teacher stays the model from before task 1
    step = task_loss(ln, ln.collate(class_split[1].train[:32]), class_split[1])
    assert lwf.distill(ln, step).item() > 1e-4


def test_gem_and_agem_steps_never_oppose_the_memory_gradients(task_split):
    for strat in (GEM(per_task=20), AGEM(per_task=20, sample_size=40)):
        ln = learner(epochs=1)
        train_task(ln, task_split[0], strat)
        train_task(ln, task_split[1], strat)
        task = task_split[2]
        strat.before_task(ln, task)
        params = ln.trainable()
        checked = 0
        for i in range(0, 160, 32):
            step = task_loss(ln, ln.collate(task.train[i:i + 32]), task)
            for p in params:
                p.grad = None
            step.loss.backward()
            strat.after_backward(ln, task, step)
            g = flat_grad(params)
            # GEM: one constraint per old task; A-GEM: one on its sample, here the whole memory (40 of 40).
            groups = ([[(tid, ex) for ex in exs] for tid, exs in strat.memory.items()] if isinstance(strat, GEM)
                      else [strat.memory])
            for items in groups:
                gk = torch.cat([x.reshape(-1) for x in grad_of(memory_loss(ln, items, strat.tasks), params)])
                assert torch.dot(g, gk).item() >= -1e-5 * float(g.norm() * gk.norm())
                checked += 1
        assert checked >= 5 and strat.projected > 0  # some steps did conflict and were projected
    # With the full stream GEM keeps the old tasks better than naive fine-tuning in the same setting.
    gem = run_stream(learner(), task_split[:3], GEM(per_task=20))
    naive = run_stream(learner(), task_split[:3], Strategy())
    assert gem.metrics["cl/bwt"] >= naive.metrics["cl/bwt"] - 0.02


def test_packnet_never_changes_a_frozen_weight_and_keeps_old_tasks_exactly(task_split):
    ln = learner(epochs=1)
    pack = PackNet(prune=0.6, retrain_epochs=1)
    tasks = task_split[:3]
    R = []
    frozen = {}
    for t in tasks:
        train_task(ln, t, pack)
        named = ln.named_trainable()
        for n, owner in pack.owner.items():
            for old_id, saved in frozen.get(n, []):
                mask = owner == old_id
                assert mask.sum() > 0
                assert torch.equal(named[n].detach()[mask], saved[mask])  # bit-identical
        for n, owner in pack.owner.items():
            frozen.setdefault(n, []).append((t.id, named[n].detach().clone()))
        if t.id == 0:
            biases = {n: p.detach().clone() for n, p in named.items() if n not in pack.owner}
        R.append([evaluate(ln, u, pack) for u in tasks])
    assert all(torch.equal(ln.named_trainable()[n].detach(), b) for n, b in biases.items())
    assert R[0][0] == R[1][0] == R[2][0] and R[1][1] == R[2][1]  # zero forgetting, exactly
    free_share = [float((o == -1).float().mean()) for o in pack.owner.values()]
    assert all(0.0 < s < 0.25 for s in free_share)  # 0.4^3 of each matrix left for later tasks


def test_per_task_lora_isolates_tasks_and_the_router_finds_the_task(class_split, task_split):
    ln = learner(epochs=2, peft=True)
    res = run_stream(ln, task_split[:3], TaskLoRA())
    assert {"task_0", "task_1", "task_2"} <= set(ln.model.peft_config)
    assert res.R[0][0] == res.R[1][0] == res.R[2][0] > 0.9  # adapter 0 untouched by later tasks
    mix = AdapterMixture(keys_per_task=8)
    res = run_stream(learner(epochs=4, peft=True), class_split[:3], mix)
    assert mix.route_accuracy() > 0.8
    assert res.metrics["cl/acc"] > 0.7  # class-incremental without replay: only routing can get here
    with pytest.raises(ValueError, match="peft model"):
        TaskLoRA().before_task(learner(), task_split[0])


def test_compose_runs_every_strategy_and_refuses_two_predictors():
    with pytest.raises(ValueError, match="predict"):
        Compose([PackNet(), ICaRL()])
    both = Compose([Replay(ReservoirBuffer(10)), EWC()])
    assert both.name == "replay+ewc" and not both.uses_task_id
