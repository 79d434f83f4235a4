"""The preference-stage learners: a DPO policy learner and a reward-model learner.

Both are plain classes (usable in-process, e.g. by tests) and Ray actors (``DPOActor``, ``RewardModelActor``)
used by pipelines/dpo.py and pipelines/rm.py. They take raw rows, tokenise them with their own tokenizer,
and call the math in ``learners.dpo`` / ``learners.reward_model``; they hold no loss formula themselves.
"""
from __future__ import annotations

import os
from pathlib import Path

import ray
import torch

from config.schema import Config


def _quiet() -> None:
    """Model loads and saves draw progress bars; in an actor they only interleave with the driver's own."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def _optimizer(params, cfg: Config, lr: float, total_steps: int):
    """AdamW with the train section's warm-up and decay: the RL learner's schedule (``learners.step.make_scheduler``),
    one optimizer step per train_step."""
    from learners.step import make_scheduler

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.train.weight_decay)
    return opt, make_scheduler(opt, cfg.train, max(1, total_steps))


def _chunks(rows: list, size: int):
    for i in range(0, len(rows), size):
        yield rows[i:i + size]


class DPOWorker:
    """Policy (4-bit/bf16 base + LoRA, or full) trained with a DPO-family loss against a reference policy.

    The reference is the same base with the adapter switched off (``learners.models.reference_mode``); when the
    run starts from an SFT adapter, a frozen copy of that adapter named ``ref`` is the reference instead, so the
    SFT model -- not the bare base -- anchors the KL (as TRL does when it re-trains an existing adapter).
    """

    def __init__(self, model_path: str, cfg: Config, total_steps: int):
        from learners.models import add_reference_adapter, load_policy, trainable_parameters

        if cfg.model.finetune == "full":
            raise ValueError("model.finetune=full keeps no reference copy in the DPO learner; use qlora or lora "
                             "(the reference is then the base with the adapter switched off)")
        _quiet()
        torch.manual_seed(cfg.seed)
        self.cfg, self.d = cfg, cfg.dpo
        self.model, self.tok = load_policy(model_path, cfg.model.finetune, cfg.model.lora, cfg.model.dtype,
                                           adapter_path=self.d.sft_adapter or None,
                                           gradient_checkpointing=cfg.model.gradient_checkpointing,
                                           fused_4bit_cpu=cfg.model.bnb_fused_cpu_kernel)
        self.device = next(self.model.parameters()).device
        if self.d.sft_adapter:
            add_reference_adapter(self.model)  # a frozen copy of the SFT adapter anchors the KL
        self.opt, self.sched = _optimizer(trainable_parameters(self.model), cfg, self.d.lr or cfg.train.lr, total_steps)

    def _logps(self, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence log-probs ([2B]: chosen then rejected) and completion lengths under the current weights."""
        from datapipe.preference import collate_policy_pairs, encode_policy_pair
        from learners.dpo import completion_logps
        from learners.logprobs import sequence_logprobs

        enc = [encode_policy_pair(self.tok, r, self.d.max_len) for r in rows]
        ids, attn, comp = collate_policy_pairs(enc, self.tok.pad_token_id)
        ids, attn, comp = ids.to(self.device), attn.to(self.device), comp.to(self.device)
        token_lp = sequence_logprobs(self.model, ids, attn)
        return completion_logps(token_lp, comp), comp.sum(-1)

    @torch.no_grad()
    def reference_logps(self, rows: list[dict]) -> list[list[float]]:
        """[[log pi_ref(chosen|x), log pi_ref(rejected|x)], ...] summed over completion tokens."""
        from learners.models import reference_mode

        self.model.eval()
        out = []
        with reference_mode(self.model):
            for chunk in _chunks(rows, self.cfg.train.micro_batch_size):
                lp, _ = self._logps(chunk)
                B = len(chunk)
                out += [[c, r] for c, r in zip(lp[:B].tolist(), lp[B:].tolist())]
        return out

    def _pass(self, rows: list[dict], refs: list | None, train: bool) -> dict:
        from learners.dpo import pair_losses, preference_metrics

        if refs is None:
            refs = self.reference_logps(rows)
        self.model.train(train)
        keep: list[torch.Tensor] = []
        total = 0.0
        for start in range(0, len(rows), self.cfg.train.micro_batch_size):
            chunk = rows[start:start + self.cfg.train.micro_batch_size]
            ref = torch.tensor(refs[start:start + len(chunk)], dtype=torch.float32, device=self.device)
            B = len(chunk)
            with torch.set_grad_enabled(train):
                lp, n = self._logps(chunk)
                pc, pr, rc, rr = lp[:B], lp[B:], ref[:, 0], ref[:, 1]
                # Summed over the micro-batch, divided by the whole batch: the accumulated gradient is the batch mean's.
                loss = pair_losses(self.d.loss, pc, pr, rc, rr, self.d.beta, self.d.label_smoothing,
                                   n[:B], n[B:]).sum() / len(rows)
            if train:
                loss.backward()
            total += loss.item()
            keep.append(torch.stack([pc.detach(), pr.detach(), rc, rr]))
        allv = torch.cat(keep, dim=1)
        metrics = preference_metrics(allv[0], allv[1], allv[2], allv[3], self.d.beta)
        metrics["loss"] = total
        return metrics

    def train_step(self, rows: list[dict], refs: list | None = None) -> dict:
        """One optimizer step on a batch of pairs (``refs``: precomputed reference log-probs, else computed now)."""
        from learners.models import trainable_parameters

        self.opt.zero_grad(set_to_none=True)
        m = self._pass(rows, refs, train=True)
        params = trainable_parameters(self.model)
        m["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, self.cfg.train.max_grad_norm).item()
        self.opt.step()
        self.sched.step()
        m["lr"] = self.sched.get_last_lr()[0]
        return m

    @torch.no_grad()
    def evaluate(self, rows: list[dict], refs: list | None = None) -> dict:
        return self._pass(rows, refs, train=False)

    def save_adapter(self, out_dir: str) -> str:
        """The trained adapter alone, in PEFT format (what vLLM's LoRARequest and the RL stage load)."""
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(out_dir), selected_adapters=["default"], safe_serialization=True)
        return str(out_dir)

    def save_state(self, out_dir: str) -> None:
        self.save_adapter(os.path.join(out_dir, "adapter"))
        torch.save({"opt": self.opt.state_dict(), "sched": self.sched.state_dict(), "rng": torch.get_rng_state()},
                   os.path.join(out_dir, "optimizer.pt"))

    def load_state(self, ckpt_dir: str) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = load_file(os.path.join(ckpt_dir, "adapter", "adapter_model.safetensors"))
        set_peft_model_state_dict(self.model, weights, adapter_name="default")
        state = torch.load(os.path.join(ckpt_dir, "optimizer.pt"), weights_only=False)
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        torch.set_rng_state(state["rng"])


class RewardModelWorker:
    """A value-head reward model (outcome or process) trained on pairs, labelled completions or step labels."""

    def __init__(self, model_path: str, cfg: Config, total_steps: int):
        from learners.reward_model import RewardModel

        _quiet()
        torch.manual_seed(cfg.seed)
        self.cfg, self.r = cfg, cfg.rm
        self.rm = RewardModel.load(model_path, cfg.rm.finetune, cfg.model.lora, cfg.model.dtype)
        self.tok = self.rm.tokenizer
        self.device = next(self.rm.parameters()).device
        self.params = [p for p in self.rm.parameters() if p.requires_grad]
        self.opt, self.sched = _optimizer(self.params, cfg, self.r.lr or cfg.train.lr, total_steps)

    # -- scoring --------------------------------------------------------------------------------------------
    def _scores(self, prompts: list, responses: list[str]) -> torch.Tensor:
        from datapipe.preference import encode_rm

        ids, mask = encode_rm(self.tok, prompts, responses, self.r.max_len)
        return self.rm(ids.to(self.device), mask.to(self.device))

    def _step_logits(self, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Flat step logits and labels of ``rows``, and how many steps each row kept."""
        from datapipe.preference import encode_steps

        ids, mask, pos, labels = encode_steps(self.tok, rows, self.r.max_len, self.rm.bidirectional,
                                              self.r.step_separator)
        ids, mask = ids.to(self.device), mask.to(self.device)
        if self.rm.bidirectional:
            logits = self.rm(ids, mask)
        else:
            values = self.rm.token_values(ids, mask)
            idx = torch.tensor(pos, device=self.device)
            logits = values[idx[:, 0], idx[:, 1]]
        per_row = [sum(1 for i, _ in pos if i == k) for k in range(len(rows))] if not self.rm.bidirectional else [
            len(r["completions"]) for r in rows]
        return logits, labels.to(self.device), per_row

    def _micro(self, rows: list[dict]) -> tuple[torch.Tensor, dict]:
        """Loss (mean over this micro-batch) and the raw tensors the metrics need."""
        from learners.reward_model import bradley_terry_loss, outcome_loss, process_loss

        kind = self.data_kind(rows[0])
        if kind == "pairs":
            B = len(rows)
            s = self._scores([r["prompt"] for r in rows] * 2,
                             [r["chosen"] for r in rows] + [r["rejected"] for r in rows])
            rc, rr = s[:B], s[B:]
            margin = None
            if self.r.margin_scale:
                gaps = [float(r.get("margin", 0.0)) for r in rows]
                margin = self.r.margin_scale * torch.tensor(gaps, device=self.device)
            return bradley_terry_loss(rc, rr, margin, self.r.center_coef), {"chosen": rc, "rejected": rr}
        if kind == "labels":
            s = self._scores([r["prompt"] for r in rows], [r["completion"] for r in rows])
            z = torch.tensor([r["label"] for r in rows], device=self.device)
            return outcome_loss(s, z), {"scores": s, "labels": z}
        logits, z, per_row = self._step_logits(rows)
        return process_loss(logits, z), {"steps": logits, "step_labels": z, "per_row": per_row}

    @staticmethod
    def data_kind(row: dict) -> str:
        if "chosen" in row:
            return "pairs"
        if "completions" in row:
            return "steps"
        return "labels"

    def _pass(self, rows: list[dict], train: bool) -> dict:
        from learners.reward_model import outcome_metrics, pairwise_metrics, process_metrics

        self.rm.train(train)
        mb = self.cfg.train.micro_batch_size
        total, keep = 0.0, []
        for start in range(0, len(rows), mb):
            chunk = rows[start:start + mb]
            with torch.set_grad_enabled(train):
                loss, t = self._micro(chunk)
                loss = loss * len(chunk) / len(rows)
            if train:
                loss.backward()
            total += loss.item()
            keep.append({k: (v.detach() if torch.is_tensor(v) else v) for k, v in t.items()})
        cat = lambda k: torch.cat([t[k] for t in keep])  # noqa: E731
        if "chosen" in keep[0]:
            m = pairwise_metrics(cat("chosen"), cat("rejected"))
        elif "scores" in keep[0]:
            m = outcome_metrics(cat("scores"), cat("labels"))
        else:
            m = process_metrics(cat("steps"), cat("step_labels"), [n for t in keep for n in t["per_row"]],
                                self.r.process_reduce)
        return {"loss": total, **m}

    def train_step(self, rows: list[dict]) -> dict:
        self.opt.zero_grad(set_to_none=True)
        m = self._pass(rows, train=True)
        m["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.max_grad_norm).item()
        self.opt.step()
        self.sched.step()
        m["lr"] = self.sched.get_last_lr()[0]
        return m

    @torch.no_grad()
    def evaluate(self, rows: list[dict]) -> dict:
        return self._pass(rows, train=False)

    @torch.no_grad()
    def score(self, prompts: list, responses: list[str]) -> list[float]:
        self.rm.eval()
        return self._scores(prompts, responses).tolist()

    def save(self, out_dir: str, meta: dict | None = None) -> str:
        """A transformers sequence-classification folder (num_labels=1) + tokenizer + reward_model.json."""
        info = {"kind": self.r.kind, "backbone": self.r.backbone, "input": "tokenizer(prompt, completion)",
                "step_separator": self.r.step_separator, "process_reduce": self.r.process_reduce, **(meta or {})}
        return str(self.rm.save_pretrained(out_dir, info))

    def save_state(self, out_dir: str) -> None:
        self.save(os.path.join(out_dir, "model"))
        torch.save({"model": {k: v for k, v in self.rm.state_dict().items()}, "opt": self.opt.state_dict(),
                    "sched": self.sched.state_dict(), "rng": torch.get_rng_state()}, os.path.join(out_dir, "state.pt"))

    def load_state(self, ckpt_dir: str) -> None:
        state = torch.load(os.path.join(ckpt_dir, "state.pt"), weights_only=False)
        self.rm.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        torch.set_rng_state(state["rng"])


DPOActor = ray.remote(DPOWorker)
RewardModelActor = ray.remote(RewardModelWorker)
