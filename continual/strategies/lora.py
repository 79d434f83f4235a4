"""Parameter isolation with one LoRA adapter per task (peft), and a mixture of those adapters with a router.

Works on any peft model: the LLM learner's QLoRA model (``learners.models.load_policy``) or a small classifier
wrapped with ``peft.get_peft_model``. Training task t touches only adapter ``task_t``, so what earlier tasks
learnt cannot change (zero forgetting); the price is that someone must pick the adapter at test time:
the task identity (:class:`TaskLoRA`) or a router over base-model features (:class:`AdapterMixture`).
"""
from __future__ import annotations

import contextlib
import copy

import torch

from continual.hooks import Strategy
from continual.learner import batches, head_logits
from continual.routing import fit_keys, router_weights, task_distances


def adapter_name(task_id: int) -> str:
    return f"task_{task_id}"


@contextlib.contextmanager
def active_adapter(model, name: str):
    """Run with adapter ``name`` active (frozen), then give the previous one back (trainable again)."""
    prev = model.active_adapter
    model.set_adapter(name, inference_mode=True)
    try:
        yield
    finally:
        model.set_adapter(prev)


class TaskLoRA(Strategy):
    """A fresh adapter per task (named ``task_<id>``), chosen by the task identity at test time.

    ``lora_config``: a ``peft.LoraConfig`` for the new adapters; None copies the model's current adapter's."""

    name = "task-lora"
    uses_task_id = True

    def __init__(self, lora_config=None):
        self.lora_config = lora_config

    def before_task(self, learner, task):
        model = learner.model
        if not hasattr(model, "peft_config"):
            raise ValueError("per-task LoRA needs a peft model: load it with learners.models.load_policy "
                             "(finetune=qlora or lora) or wrap it with peft.get_peft_model")
        name = adapter_name(task.id)
        if name not in model.peft_config:
            cfg = copy.deepcopy(self.lora_config or model.peft_config[model.active_adapter])
            model.add_adapter(name, cfg)
        model.set_adapter(name)  # only this adapter trains; the others are frozen

    def task_logits(self, learner, batch, task_id: int):
        name = adapter_name(task_id)
        if name in learner.model.peft_config:
            with active_adapter(learner.model, name):
                return learner.forward(learner.model, batch)
        with learner.model.disable_adapter():  # a task not trained yet: the base model
            return learner.forward(learner.model, batch)

    def predict(self, learner, batch, task):
        logits, targets = self.task_logits(learner, batch, task.id)
        return head_logits(logits, task.head), targets


class AdapterMixture(TaskLoRA):
    """Per-task adapters mixed by a router (MoE-style), no task identity needed at test time.

    After each task, ``keys_per_task`` k-means keys of its inputs' base-model features (``learner.embed``
    with adapters off). At test time each input's router weights w (:func:`continual.routing.router_weights`
    over the distances to each task's keys) mix the adapters' predictive distributions:
    p(y | x) = sum_k w_k(x) p_k(y | x). ``route_accuracy`` counts how often the top route was the input's
    true task (a diagnostic; the task is never used to predict)."""

    name = "adapter-mixture"
    uses_task_id = False

    def __init__(self, lora_config=None, keys_per_task: int = 4, top_k: int = 1, temperature: float = 1.0,
                 seed: int = 0):
        super().__init__(lora_config)
        self.keys_per_task, self.top_k, self.temperature, self.seed = keys_per_task, top_k, temperature, seed
        self.keys: dict[int, torch.Tensor] = {}
        self.routes = {"hits": 0, "count": 0}

    @torch.no_grad()
    def base_features(self, learner, batch) -> torch.Tensor:
        if learner.embed is None:
            raise ValueError("the adapter router needs learner.embed (one feature vector per example)")
        with learner.model.disable_adapter():
            return learner.embed(learner.model, batch).float()

    def after_task(self, learner, task):
        was_training = learner.model.training
        learner.model.eval()
        feats = torch.cat([self.base_features(learner, learner.collate(ch))
                           for ch in batches(task.train, learner.eval_batch_size)])
        self.keys[task.id] = fit_keys(feats, self.keys_per_task, self.seed)
        learner.model.train(was_training)

    def route_accuracy(self) -> float:
        return self.routes["hits"] / max(1, self.routes["count"])

    def predict(self, learner, batch, task):
        if not self.keys:
            return super().predict(learner, batch, task)
        ids = sorted(self.keys)
        w = router_weights(task_distances(self.base_features(learner, batch), [self.keys[i] for i in ids]),
                           self.top_k, self.temperature)
        self.routes["hits"] += int((w.argmax(1) == ids.index(task.id)).sum()) if task.id in ids else 0
        self.routes["count"] += len(w) if task.id in ids else 0
        probs, targets = None, None
        for k, task_id in enumerate(ids):
            if not bool((w[:, k] > 0).any()):
                continue
            logits, targets = self.task_logits(learner, batch, task_id)
            units = len(logits) // len(w)  # example b owns rows b*units .. (b+1)*units - 1
            p = torch.softmax(head_logits(logits, task.head).float(), -1) * w[:, k].repeat_interleave(units)[:, None]
            probs = p if probs is None else probs + p
        return torch.log(probs.clamp_min(1e-30)), targets
