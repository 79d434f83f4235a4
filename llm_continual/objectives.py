"""The LLM-specific objectives as hooks of :class:`continual.hooks.Strategy`, so that they compose with the
continual-learning strategies (EWC, LwF, per-task LoRA) and run in :func:`continual.loop.train_task`.

On an alignment stream the loop's own loss (cross-entropy of each prompt's best response) is replaced by
the method's preference objective (``before_backward`` returns a new loss); EWC and LwF composed after it
add their penalty to that. The math is in ``learners.dpo``, :mod:`llm_continual.cppo`,
:mod:`llm_continual.copr`; these classes fetch log-probabilities and hand tensors over.
"""
from __future__ import annotations

import random

import torch

from continual.hooks import Strategy
from llm_continual.encoding import collate_tokens, token_logps


def _sequence_logps(model, batch: dict, mean: bool = False) -> torch.Tensor:
    """log pi(y|x) of each response: the sum over its tokens, or the per-token mean."""
    lp, mask = token_logps(model, batch)
    total = (lp * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1.0) if mean else total


def _flat(batch: dict, key: str) -> torch.Tensor:
    return torch.tensor([v for e in batch["examples"] for v in e[key]], dtype=torch.float32)


def best_worst(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of each group's best and worst response."""
    best, worst, off = [], [], 0
    for e in batch["examples"]:
        s = e["scores"]
        best.append(off + max(range(len(s)), key=s.__getitem__))
        worst.append(off + min(range(len(s)), key=s.__getitem__))
        off += len(s)
    return torch.tensor(best), torch.tensor(worst)


class DPOObjective(Strategy):
    """The alignment baselines' loss: DPO (Rafailov et al. 2023) on each prompt's best vs worst response, against
    the starting model's log-probs (``ref_logps``, computed once before the stream)."""

    name = "dpo"

    def __init__(self, beta: float):
        self.beta = beta

    def before_backward(self, learner, task, step):
        from learners.dpo import logratio_difference, sigmoid_loss

        seq = _sequence_logps(learner.model, step.batch["all"])
        ref = _flat(step.batch, "ref_logps")
        b, w = best_worst(step.batch)
        return sigmoid_loss(logratio_difference(seq[b], seq[w], ref[b], ref[w]), self.beta).mean()


class CPPOObjective(Strategy):
    """CPPO's weighted policy learning + knowledge retention (:mod:`llm_continual.cppo`).

    ``before_task``: the policy as it is now is P_{t-1}; its token log-probs of every response of the task are
    kept (for L^KR), and each response's category and weights (alpha, beta) follow from its reward and its
    mean token log-prob, against the task's mean and spread."""

    name = "cppo"

    def __init__(self, k: float, low: float, high: float, kr_coef: float):
        self.k, self.low, self.high, self.kr_coef = k, low, high, kr_coef
        self.counts: dict[str, int] = {}

    @torch.no_grad()
    def before_task(self, learner, task):
        from llm_continual.cppo import CATEGORIES, categorize, weights

        model, was = learner.model, learner.model.training
        model.eval()
        means = []
        for e in task.train:
            batch = collate_tokens(e["responses"], learner.extra["pad_id"])
            lp, mask = token_logps(model, batch)
            e["prev_tok"] = [row[: len(r["input_ids"]) - 1].tolist() for row, r in zip(lp, e["responses"])]
            means += ((lp * mask).sum(-1) / mask.sum(-1).clamp(min=1)).tolist()
        model.train(was)
        rewards = torch.tensor([s for e in task.train for s in e["scores"]])
        cat = categorize(rewards, torch.tensor(means), self.k)
        alpha, beta = weights(cat, self.low, self.high)
        i = 0
        for e in task.train:
            n = len(e["scores"])
            e["alpha"], e["beta"] = alpha[i:i + n].tolist(), beta[i:i + n].tolist()
            i += n
        self.counts = {c: int((cat == j).sum()) for j, c in enumerate(CATEGORIES)}

    def before_backward(self, learner, task, step):
        from llm_continual.cppo import cppo_loss

        batch = step.batch
        lp, mask = token_logps(learner.model, batch["all"])
        prev = torch.zeros_like(lp)
        rows = [r for e in batch["examples"] for r in e["prev_tok"]]
        for i, r in enumerate(rows):
            n = min(len(r), prev.shape[1])
            prev[i, :n] = torch.tensor(r[:n])
        loss, self.last = cppo_loss(lp, prev, mask, batch["scores"], batch["group_ids"], _flat(batch, "alpha"),
                                    _flat(batch, "beta"), self.kr_coef)
        return loss


class COPRObjective(Strategy):
    """COPR's fit to the optimal policy's sampling distribution with a Lagrangian constraint on replayed old
    prompts (:mod:`llm_continual.copr`); lambda is carried from task to task."""

    name = "copr"

    def __init__(self, beta: float, epsilon: float, dual_lr: float):
        self.beta, self.epsilon, self.dual_lr = beta, epsilon, dual_lr
        self.lam = 0.0
        self.last: dict = {}

    def before_task(self, learner, task):
        from llm_continual.copr import optimal_target

        for e in task.train:
            n = len(e["scores"])
            ref = torch.tensor(e["ref_logps"]) / torch.tensor(e["ref_ntok"]).clamp(min=1)  # per-token means
            e["target"] = optimal_target(ref, torch.tensor(e["scores"]), torch.zeros(n, dtype=torch.long), self.beta).tolist()

    def before_backward(self, learner, task, step):
        from llm_continual.copr import copr_loss, dual_update

        batch = step.batch
        seq = _sequence_logps(learner.model, batch["all"], mean=True)
        is_old = torch.tensor([bool(e.get("replay")) for e in batch["examples"] for _ in e["scores"]])
        loss, l_old, self.last = copr_loss(seq, _flat(batch, "target"), batch["group_ids"], is_old, self.lam, self.epsilon)
        if l_old is not None:
            self.lam = dual_update(self.lam, l_old, self.epsilon, self.dual_lr)
        return loss


class PreferenceBias(Strategy):
    """Multi-stage fine-tuning's preference bias (:mod:`llm_continual.multistage`): each step adds
    c * L_bias on a batch of the stage's conflict pairs (new target preferred to the model's old answer)."""

    name = "pref-bias"

    def __init__(self, coef: float, beta: float, batch_size: int, seed: int = 0):
        self.coef, self.beta, self.batch_size = coef, beta, batch_size
        self.pairs: list[dict] = []
        self.rng = random.Random(seed)

    def before_backward(self, learner, task, step):
        from learners.dpo import logratio_difference, sigmoid_loss

        if not self.pairs:
            return step.loss
        pairs = self.rng.sample(self.pairs, min(self.batch_size, len(self.pairs)))
        pad = learner.extra["pad_id"]
        seq = _sequence_logps(learner.model, collate_tokens([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], pad))
        B = len(pairs)
        ref = torch.tensor([p["ref"] for p in pairs], dtype=torch.float32)
        h = logratio_difference(seq[:B], seq[B:], ref[:, 0], ref[:, 1])
        return step.loss + self.coef * sigmoid_loss(h, self.beta).mean()
