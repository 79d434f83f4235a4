"""Replay, EWC, LwF and per-task LoRA on the LLM learner's model: a QLoRA (4-bit NF4 base + LoRA) tiny Qwen3
from learners.models.load_policy, trained on two small next-token tasks."""
from __future__ import annotations

import pytest
import torch

from continual import Compose, Task, run_stream, train_task
from continual.buffers import ReservoirBuffer
from continual.causal_lm import causal_lm_learner, encode_texts
from continual.loop import task_loss
from continual.strategies import EWC, LwF, Replay, TaskLoRA


@pytest.fixture(autouse=True)
def one_thread():
    # Models this small run fastest on one thread, and the CI machine is shared.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def qlora(tiny_model_dir):
    from learners.models import load_policy

    torch.manual_seed(0)
    model, tok = load_policy(tiny_model_dir, finetune="qlora")
    return model, tok


@pytest.fixture(scope="module")
def token_tasks(qlora):
    _, tok = qlora
    sums = [f"{a}+{b}={a + b}" for a, b in [(1, 2), (3, 4), (2, 5), (6, 1), (4, 4), (7, 2), (5, 3), (8, 1)]]
    pets = [f"the {a} is {c}" for a in ("cat", "dog") for c in ("red", "blue", "green", "small")]
    return [Task(0, encode_texts(tok, sums), encode_texts(tok, sums[:4]), name="sums"),
            Task(1, encode_texts(tok, pets), encode_texts(tok, pets[:4]), name="pets")]


def test_replay_ewc_and_lwf_work_on_the_qlora_learner(qlora, token_tasks):
    model, tok = qlora
    model.set_adapter("default")
    learner = causal_lm_learner(model, tok, lr=5e-3, batch_size=4, epochs=2)
    params = learner.trainable()
    assert params and all("lora_" in n for n in learner.named_trainable())  # only the adapter trains
    base = next(p for n, p in model.named_parameters() if "q_proj.base_layer.weight" in n)
    base_before = base.detach().clone()
    replay, ewc, lwf = Replay(ReservoirBuffer(4)), EWC(lam=10.0, n_samples=4), LwF(alpha=1.0)
    strategy = Compose([replay, ewc, lwf])
    sums, pets = token_tasks

    train_task(learner, sums, strategy)
    assert len(replay.buffer) == 4 and all(tid == 0 for tid, _ in replay.buffer.items)
    fisher = ewc.fishers[0]
    assert len(fisher) == len(params) and all(bool((f >= 0).all()) for f in fisher)
    assert sum(float(f.sum()) for f in fisher) > 0
    assert ewc.penalty(learner).item() == 0.0  # at its anchor

    lwf.before_task(learner, pets)
    step = task_loss(learner, learner.collate(pets.train[:4]), pets)
    assert lwf.distill(learner, step).item() == pytest.approx(0.0, abs=1e-6)  # teacher = student so far
    with_terms = strategy.before_backward(learner, pets, step)
    assert with_terms.item() > step.loss.item()  # the replay term is there from the first step

    train_task(learner, pets, strategy)
    assert ewc.penalty(learner).item() > 0.0  # moved away from the anchor, and EWC sees it
    step = task_loss(learner, learner.collate(pets.train[:4]), pets)
    assert lwf.distill(learner, step).item() > 0.0
    assert any(tid == 1 for tid, _ in replay.buffer.items)
    assert torch.equal(base.detach(), base_before)  # the 4-bit base never moves


def test_per_task_lora_keeps_each_task_in_its_own_adapter(qlora, token_tasks):
    model, tok = qlora
    learner = causal_lm_learner(model, tok, lr=1e-2, batch_size=4, epochs=3)
    strategy = TaskLoRA()
    probe = learner.collate(token_tasks[0].test)
    res = run_stream(learner, token_tasks, strategy)
    assert {"task_0", "task_1"} <= set(model.peft_config)
    assert res.R[1][0] == res.R[0][0]  # token accuracy on task 0 is exactly what it was
    assert res.R[1][1] > res.R[0][1]  # task 1 was learnt in its own adapter (before it: the base model)
    with torch.no_grad():
        model.eval()
        logits0, _ = strategy.task_logits(learner, probe, 0)
        logits1, _ = strategy.task_logits(learner, probe, 1)
    assert not torch.allclose(logits0, logits1)
    assert [n for n in learner.named_trainable() if "lora_" in n] and all(
        ".task_1." in n for n in learner.named_trainable())  # the last task's adapter is the one training
