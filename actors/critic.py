"""The critic role (PPO): a value model, its optimizer, values for GAE and the clipped value update.

By config (``algo.critic_model``) the value head sits on the policy's own base, loaded the same way (4-bit
NF4 under qlora) with its own LoRA adapter, or on a separate model folder (a trained reward model, a smaller
model of the same tokenizer). Math comes from learners/value.py; this class holds state and moves data.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import ray
import torch

from learners.models import load_tokenizer, save_adapter
from learners.step import build_sequences, gather_response, scatter_response
from learners.value import ValueBatch, critic_update, load_critic, token_values


class CriticWorker:
    def __init__(self, critic_path: str, policy_path: str, finetune: str, lora, dtype: str, algo_cfg, train_cfg,
                 seed: int = 0, num_threads: int | None = None):
        if num_threads is not None:  # 0: every core this actor may run on (cluster.plan.torch_threads)
            from cluster import all_cores

            torch.set_num_threads(num_threads or all_cores())
        torch.manual_seed(seed + 1)
        self.model, tok = load_critic(critic_path, finetune, lora, dtype)
        # The critic scores the policy's token ids, so both must read them the same way.
        if str(critic_path) != str(policy_path) and tok.get_vocab() != load_tokenizer(policy_path).get_vocab():
            raise ValueError(f"algo.critic_model={critic_path} has a different tokenizer from the policy {policy_path}; "
                             "a critic must share the policy's vocabulary (use a model of the same family, or leave "
                             "algo.critic_model empty for a value head on the policy's own base)")
        self.pad_id = tok.pad_token_id
        self.algo, self.train_cfg = algo_cfg, train_cfg
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=algo_cfg.critic_lr, weight_decay=train_cfg.weight_decay)

    @torch.no_grad()
    def values(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[list[float]]:
        """V(s_t) for every completion token t of every sample (the state before the token was chosen)."""
        ids, att, _ = build_sequences(prompt_ids, completion_ids, self.pad_id)
        self.model.eval()
        mb = self.train_cfg.micro_batch_size
        v = torch.cat([token_values(self.model, ids[i:i + mb], att[i:i + mb]) for i in range(0, len(ids), mb)], 0)
        return gather_response(v, prompt_ids, completion_ids)

    def update(self, prompt_ids: list[list[int]], completion_ids: list[list[int]], returns: list[list[float]],
               old_values: list[list[float]], loss_masks: list[list[int]] | None = None) -> dict:
        """Fit V to the GAE returns with the clipped value loss; returns metrics (value_loss, vf_clipfrac,
        explained_var, grad_norm). ``loss_masks`` (multi-turn): fit only where the model chose a token, not at the
        tool results between its turns."""
        ids, att, resp = build_sequences(prompt_ids, completion_ids, self.pad_id)
        if loss_masks is not None:
            resp = resp * scatter_response(prompt_ids, loss_masks, resp)
        batch = ValueBatch(ids, att, resp, scatter_response(prompt_ids, returns, resp),
                           scatter_response(prompt_ids, old_values, resp))
        return critic_update(self.model, self.optimizer, batch, self.algo.value_clip, self.train_cfg, self.params)

    # -- checkpoints ----------------------------------------------------------------------------------
    def save_state(self, out_dir: str) -> None:
        out = Path(out_dir)
        if hasattr(self.model, "peft_config"):
            save_adapter(self.model, out / "critic_adapter")
        trainable = {n: p.detach().cpu() for n, p in self.model.named_parameters() if p.requires_grad}
        torch.save({"trainable": trainable, "optimizer": self.optimizer.state_dict(),
                    "torch_rng": torch.get_rng_state(), "py_rng": random.getstate(), "np_rng": np.random.get_state()},
                   out / "critic_state.pt")

    def load_state(self, ckpt_dir: str) -> None:
        st = torch.load(Path(ckpt_dir) / "critic_state.pt", weights_only=False)
        params = dict(self.model.named_parameters())
        missing = [n for n in st["trainable"] if n not in params]
        if missing:
            raise RuntimeError(f"checkpoint critic has parameters this critic lacks: {missing[:3]}")
        with torch.no_grad():
            for n, t in st["trainable"].items():
                params[n].copy_(t)
        self.optimizer.load_state_dict(st["optimizer"])
        torch.set_rng_state(st["torch_rng"])
        random.setstate(st["py_rng"])
        np.random.set_state(st["np_rng"])

    def pid(self) -> int:
        return os.getpid()


CriticActor = ray.remote(CriticWorker)
