"""The continual learner: one policy (QLoRA, LoRA or full) that learns a stream's tasks one after another.

``ContinualWorker`` is a plain class (tests use it in-process); ``ContinualActor`` is the same class as a Ray
actor, placed by pipelines/continual.py in the learner bundle of the run's placement group. Training is
:func:`continual.loop.train_task` over token examples with the method's hooks (:mod:`llm_continual.methods`);
this class turns rows into examples, adds what a method needs before a task (reference log-probs, the model's
own answers), and writes the weights the evaluation panel scores.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import ray
import torch

from config.continual import ContinualConfig
from config.schema import ModelConfig


class ContinualWorker:
    def __init__(self, model_path: str, model_cfg: ModelConfig, cc: ContinualConfig, method: str, phase: str,
                 seed: int = 0, num_threads: int = 1):
        from functools import partial

        from continual.causal_lm import causal_lm_learner, lm_forward
        from continual.loop import Learner
        from learners.models import load_policy
        from llm_continual.encoding import collate_groups
        from llm_continual.methods import METHODS, build_strategy

        # One thread: on a shared 2-core machine two threads per process run 10-20x slower, not faster.
        torch.set_num_threads(num_threads)
        torch.manual_seed(seed)
        from transformers.utils import logging

        logging.disable_progress_bar()
        self.cc, self.method, self.phase, self.seed = cc, method, phase, seed
        self.model_path = str(model_path)
        self.finetune = METHODS[method].finetune or model_cfg.finetune
        self.model, self.tok = load_policy(model_path, self.finetune, model_cfg.lora, model_cfg.dtype,
                                           fused_4bit_cpu=model_cfg.bnb_fused_cpu_kernel)
        pad = self.tok.pad_token_id
        if phase == "align":
            self.learner = Learner(model=self.model, forward=lambda m, b: lm_forward(m, b["best"]),
                                   collate=partial(collate_groups, pad_id=pad), lr=cc.lr, batch_size=cc.batch_size,
                                   epochs=cc.epochs, seed=seed, eval_batch_size=cc.batch_size)
        else:
            self.learner = causal_lm_learner(self.model, self.tok, lr=cc.lr, batch_size=cc.batch_size,
                                             epochs=cc.epochs, seed=seed)
        self.learner.extra.update(pad_id=pad, tokenizer=self.tok)
        self.strategy = build_strategy(method, cc, phase, seed)
        self.ref_logps: dict[str, tuple[list[float], list[float]]] = {}  # uid -> (sums, token counts)
        self.trained: list[int] = []

    def describe(self) -> dict:
        return {"method": self.method, "finetune": self.finetune, "phase": self.phase,
                "trainable_params": sum(p.numel() for p in self.learner.trainable()),
                "params": sum(p.numel() for p in self.model.parameters()), "torch_threads": torch.get_num_threads()}

    # -- before the stream -------------------------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, rows: list[dict]) -> int:
        """Alignment: log pi_0(y|x) of every response of ``rows`` under the starting model (the DPO/COPR
        reference), computed once before any training. Returns how many responses were scored."""
        from llm_continual.encoding import collate_tokens, group_example, token_logps

        if self.phase != "align":
            return 0
        self.model.eval()
        n = 0
        for r in rows:
            if r["uid"] in self.ref_logps:
                continue
            g = group_example(self.tok, r, self.cc.max_len)
            lp, mask = token_logps(self.model, collate_tokens(g["responses"], self.tok.pad_token_id))
            self.ref_logps[r["uid"]] = ((lp * mask).sum(-1).tolist(), mask.sum(-1).tolist())
            n += len(g["responses"])
        return n

    # -- one stage ------------------------------------------------------------------------------------------
    def train_task(self, task_id: int, name: str, rows: list[dict], replay_rows: list[dict]) -> dict:
        """Learn task ``task_id`` from ``rows`` plus the ``replay_rows`` the method chose from earlier tasks."""
        from continual.loop import train_task
        from continual.streams import Task
        from llm_continual.encoding import group_example, lm_example

        t0 = time.time()
        info: dict = {}
        if self.phase == "align":
            examples = []
            for r, is_replay in [(r, False) for r in rows] + [(r, True) for r in replay_rows]:
                g = group_example(self.tok, r, self.cc.max_len)
                if r["uid"] not in self.ref_logps:
                    raise KeyError(f"row {r['uid']} has no reference log-probs: pass every task's rows to prepare()")
                ref, ntok = self.ref_logps[r["uid"]]
                g.update(ref_logps=ref, ref_ntok=ntok, replay=is_replay)
                examples.append(g)
        else:
            if self.method == "multistage":
                replay_rows, info = self._multistage(rows, replay_rows)
            examples = [lm_example(self.tok, r, self.phase, self.cc.max_len) for r in rows + replay_rows]
        task = Task(task_id, train=examples, test=[], name=name)
        loss = train_task(self.learner, task, self.strategy)
        self.trained.append(task_id)
        return {"loss": loss, "rows": len(rows), "replay_rows": len(replay_rows), "seconds": time.time() - t0,
                **info, **self._strategy_metrics()}

    def _strategy_metrics(self) -> dict:
        from llm_continual.methods import parts_of

        out = {}
        for s in parts_of(self.strategy):
            for k, v in (getattr(s, "last", None) or {}).items():
                out[k] = v
            if getattr(s, "counts", None):
                out.update({f"cppo/n_{k}": v for k, v in s.counts.items()})
        return out

    def _multistage(self, rows: list[dict], replay_rows: list[dict]) -> tuple[list[dict], dict]:
        """Conflict pairs (target vs the model's own answer) for the preference bias, and the model's own answers
        to the replayed prompts as the self-distillation rows."""
        from llm_continual.encoding import collate_tokens, response_example, token_logps
        from llm_continual.methods import parts_of
        from llm_continual.multistage import conflicts, self_distilled_rows
        from llm_continual.objectives import PreferenceBias
        from llm_continual.streams import prompt_messages

        prompts = [prompt_messages(r) for r in rows]
        targets = [r["messages"][-1]["content"] for r in rows]
        own = self.generate(prompts)
        clash = conflicts(targets, own)
        pairs = [{"chosen": response_example(self.tok, p, t, self.cc.max_len),
                  "rejected": response_example(self.tok, p, a, self.cc.max_len)}
                 for p, t, a, c in zip(prompts, targets, own, clash) if c]
        with torch.no_grad():
            self.model.eval()
            for i in range(0, len(pairs), self.cc.batch_size):
                chunk = pairs[i:i + self.cc.batch_size]
                lp, mask = token_logps(self.model, collate_tokens([p["chosen"] for p in chunk] + [p["rejected"] for p in chunk],
                                                                  self.tok.pad_token_id))
                seq = (lp * mask).sum(-1).tolist()
                for j, p in enumerate(chunk):
                    p["ref"] = (seq[j], seq[len(chunk) + j])
        for s in parts_of(self.strategy):
            if isinstance(s, PreferenceBias):
                s.pairs = pairs
        rp = [prompt_messages(r) for r in replay_rows]
        distilled = self_distilled_rows(rp, self.generate(rp), [r["uid"] for r in replay_rows]) if rp else []
        return distilled, {"ms/conflicts": len(pairs), "ms/self_distilled": len(distilled)}

    @torch.no_grad()
    def generate(self, prompts: list[list[dict]], max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers of the current model (transformers' generate: the learner's own weights, in-process)."""
        self.model.eval()
        tok = self.tok
        side, tok.padding_side = tok.padding_side, "left"
        out = []
        try:
            for i in range(0, len(prompts), 16):
                texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts[i:i + 16]]
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
                gen = self.model.generate(**enc, max_new_tokens=max_new_tokens or self.cc.ms_max_new_tokens,
                                          do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
                out += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        finally:
            tok.padding_side = side
        return [o.strip() for o in out]

    # -- weights out ------------------------------------------------------------------------------------------
    def export_base(self, out_dir: str) -> str:
        """The base weights the evaluation should load: the dequantised 4-bit base for QLoRA (what the learner
        computes with), the original folder otherwise. Written once per base: later workers of the run reuse it,
        a rerun on another base (same run_name) does not."""
        from learners.models import derived_is_current, export_engine_base, mark_derived, source_stamp

        if self.finetune != "qlora":
            return self.model_path
        stamp = source_stamp(self.model_path)
        if derived_is_current(out_dir, stamp):
            return out_dir
        out = export_engine_base(self.model_path, self.model, out_dir)
        if out == Path(out_dir):  # never stamp the source folder itself
            mark_derived(out, stamp)
        return str(out)

    def export(self, out_dir: str) -> dict:
        """Write the current weights: ``{"model": full-model folder or None, "adapters": {task_id or "all": path}}``.
        Per-task LoRA writes each trained task's adapter; other LoRA methods their one adapter."""
        from learners.models import save_adapter

        out = Path(out_dir)
        if self.finetune == "full":
            self.model.save_pretrained(str(out / "model"), safe_serialization=True)
            self.tok.save_pretrained(str(out / "model"))
            return {"model": str(out / "model"), "adapters": {}}
        if self.method == "task_lora":
            paths = {}
            for tid in self.trained:
                name = f"task_{tid}"
                self.model.save_pretrained(str(out / name), selected_adapters=[name], safe_serialization=True)
                cfgs = sorted((out / name).rglob("adapter_config.json"))
                paths[tid] = str(cfgs[0].parent)
            return {"model": None, "adapters": paths}
        return {"model": None, "adapters": {"all": str(save_adapter(self.model, out / "adapter"))}}

    def pid(self) -> int:
        return os.getpid()


ContinualActor = ray.remote(ContinualWorker)
