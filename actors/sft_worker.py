"""The SFT learner: a 4-bit/bf16 base + LoRA (or a full model) trained on packed rows with the masked SFT loss.

``SFTWorker`` is a plain class (tests use it in-process); ``SFTWorkerActor`` is the same class as a Ray actor,
placed by pipelines/sft.py in the learner bundle of the placement group. The math lives in ``learners.sft``.
Checkpoints are written by the worker itself (adapter + optimizer + schedule + RNG), through
``runlog.save_checkpoint`` so a kill at any instant leaves a complete checkpoint or none; on a multi-node
cluster the run folder must be on storage the learner's node shares with the driver.
"""
from __future__ import annotations

import os
from pathlib import Path

import ray
import torch

from config.schema import ModelConfig
from config.sft import SFTConfig


class SFTWorker:
    def __init__(self, model_path: str | os.PathLike, model_cfg: ModelConfig, sft: SFTConfig, seed: int = 0):
        from learners.models import load_policy, trainable_parameters
        from learners.step import make_scheduler

        torch.manual_seed(seed)
        self.sft = sft
        self.model, self.tokenizer = load_policy(model_path, model_cfg.finetune, model_cfg.lora, model_cfg.dtype,
                                                 gradient_checkpointing=model_cfg.gradient_checkpointing,
                                                 fused_4bit_cpu=model_cfg.bnb_fused_cpu_kernel)
        self.device = self.model.get_input_embeddings().weight.device
        self.params = trainable_parameters(self.model)
        self.opt = torch.optim.AdamW(self.params, lr=sft.lr, weight_decay=sft.weight_decay)
        # The project's one schedule (learners/step.py): linear warm-up from lr / warmup, then sft.lr_schedule.
        self.sched = make_scheduler(self.opt, sft, max(1, sft.steps))
        self.finetune = model_cfg.finetune

    def describe(self) -> dict:
        total = sum(p.numel() for p in self.model.parameters())
        return {"trainable_params": sum(p.numel() for p in self.params), "params": total, "finetune": self.finetune,
                "device": str(self.device), "torch_threads": torch.get_num_threads()}

    def _tensors(self, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = lambda k: torch.tensor([r[k] for r in rows], dtype=torch.long, device=self.device)  # noqa: E731
        return t("input_ids"), t("labels"), t("position_ids")

    def train_step(self, micro_batches: list[list[dict]]) -> dict:
        """One optimizer step over ``micro_batches`` of packed rows; the loss is normalised by the step's label count."""
        from learners.sft import packed_forward, shift_labels, token_nll

        self.model.train()
        batches = [self._tensors(mb) for mb in micro_batches]
        n_labels = sum(int((shift_labels(lab, pos) != -100).sum()) for _, lab, pos in batches)
        self.opt.zero_grad(set_to_none=True)
        total_nll = 0.0
        for ids, lab, pos in batches:
            nll, _ = token_nll(packed_forward(self.model, ids, pos), lab, pos)
            (nll / max(n_labels, 1)).backward()
            total_nll += nll.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.sft.max_grad_norm or float("inf"))
        lr = self.sched.get_last_lr()[0]
        self.opt.step()
        self.sched.step()
        return {"loss": total_nll / max(n_labels, 1), "grad_norm": float(grad_norm), "lr": lr,
                "label_tokens": n_labels, "tokens": sum(int(ids.numel()) for ids, _, _ in batches)}

    @torch.no_grad()
    def evaluate(self, rows: list[dict]) -> dict:
        """Mean NLL per labelled token over ``rows`` and its perplexity."""
        from learners.sft import packed_forward, perplexity, token_nll

        self.model.eval()
        total, n = 0.0, 0
        for i in range(0, len(rows), self.sft.micro_batch_rows):
            ids, lab, pos = self._tensors(rows[i:i + self.sft.micro_batch_rows])
            nll, k = token_nll(packed_forward(self.model, ids, pos), lab, pos)
            total, n = total + float(nll), n + k
        loss = total / max(n, 1)
        return {"loss": loss, "ppl": perplexity(loss), "label_tokens": n}

    def save_adapter(self, out_dir: str) -> str:
        """PEFT adapter (or full model) + tokenizer: loadable by peft, transformers and vLLM's LoRARequest."""
        from learners.models import save_adapter

        out = save_adapter(self.model, out_dir)
        self.tokenizer.save_pretrained(str(out))
        return str(out)

    def save_checkpoint(self, root: str, step: int, meta: dict, keep: int = 2) -> str:
        from runlog import save_checkpoint

        def write(tmp: Path) -> None:
            self.save_adapter(str(tmp / "adapter"))
            torch.save({"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                        "torch_rng": torch.get_rng_state()}, tmp / "trainer_state.pt")

        return str(save_checkpoint(root, step, write, meta, keep=keep))

    def load_checkpoint(self, path: str) -> dict:
        """Restore adapter weights, optimizer, schedule and RNG from a checkpoint; returns its meta."""
        from runlog.checkpoints import read_meta

        ckpt = Path(path)
        if self.finetune == "full":
            from safetensors.torch import load_file

            state = {}
            for f in sorted((ckpt / "adapter").glob("*.safetensors")):
                state.update(load_file(str(f)))
            self.model.load_state_dict(state, strict=False)
        else:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(self.model, load_file(str(ckpt / "adapter" / "adapter_model.safetensors")))
        st = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        torch.set_rng_state(st["torch_rng"])
        return read_meta(ckpt)


SFTWorkerActor = ray.remote(SFTWorker)
