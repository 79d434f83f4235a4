"""The learner role: a 4-bit NF4 base + LoRA (QLoRA), LoRA or full model, its optimizer, and the RL step.

The reference policy is the same base with the adapter switched off (no second model), or a frozen
adapter on that base (``model.reference_adapter``: the SFT adapter when RL starts from a DPO adapter). Math comes from
learners/; this class holds state and moves data.

``cluster.learner.count`` > 1: :class:`LearnerGroup` (driver side) starts that many actors, joins them in a
torch.distributed group (cluster/distributed.py) and gives each a shard of whole groups per step; the actors'
:class:`GroupReducer` makes every normaliser and the gradient the global batch's, so the replicas stay identical
and rank 0 speaks for them (adapter export, sync probe, checkpoints).
"""
from __future__ import annotations

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import ray
import torch

from actors.sync import exported_lora_digest
from cluster import actor_options, all_cores, shares, torch_threads
from cluster.distributed import (all_gather_objects, all_sum_tensor, allreduce_grads, broadcast_params, init_group,
                                 rendezvous)
from learners.algorithms import resolve
from learners.kl_control import make_kl_controller
from learners.models import add_reference_adapter, export_engine_base, is_lora, load_policy, reference_mode, save_adapter
from learners.step import (LOCAL, LocalReducer, batched_logprobs, build_sequences, make_scheduler, pad_supervised,
                           policy_update, prepare_batch)


class GroupReducer(LocalReducer):
    """learners.step's reducer over the learners' process group: sums go through all-reduce, gradients are summed
    (each micro-batch is already weighted by its share of the global minibatch), and a step's metrics are
    combined -- shares summed, the rest (identical on every rank) taken from rank 0."""

    def __init__(self, world: int):
        self.world = world

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return all_sum_tensor(x)

    def grads(self, params) -> None:
        allreduce_grads(params, average=False)

    def merge(self, metrics: dict, additive: set[str]) -> dict:
        ranks = all_gather_objects((metrics, sorted(additive)))
        keys = set().union(*(set(a) for _, a in ranks))
        return {**ranks[0][0], **{k: sum(m.get(k, 0.0) for m, _ in ranks) for k in keys}}


class LearnerWorker:
    def __init__(self, model_path: str, model_cfg, algo_cfg, train_cfg, seed: int = 0, total_steps: int | None = None,
                 num_threads: int | None = None, temperature: float = 1.0):
        """``temperature``: the engine's sampling temperature (rollout.temperature); the policy, old and reference
        logprobs of the RL step are those of softmax(logits / T), the distribution the samples came from."""
        if num_threads is not None:  # 0: every core this actor may run on (cluster.plan.torch_threads)
            torch.set_num_threads(num_threads or all_cores())
        torch.manual_seed(seed)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="adapter-writer")  # merged sync's adapter folders
        self._writes = None  # the pending write's future (wait_writes)
        self.model_path = model_path
        self.algo = resolve(algo_cfg)
        self.train_cfg = train_cfg
        self.model, self.tokenizer = load_policy(model_path, model_cfg.finetune, model_cfg.lora, model_cfg.dtype,
                                                 adapter_path=model_cfg.adapter or None,
                                                 gradient_checkpointing=model_cfg.gradient_checkpointing,
                                                 fused_4bit_cpu=model_cfg.bnb_fused_cpu_kernel)
        if model_cfg.adapter or model_cfg.reference_adapter:
            # The anchor is the model the stage starts from (or the one named), not the bare base.
            add_reference_adapter(self.model, model_cfg.reference_adapter or None)
        if not is_lora(self.model) and self.algo.kl_coef > 0:
            raise ValueError("model.finetune=full with algo.kl_coef > 0 needs a separate reference model; "
                             "use qlora/lora (reference = adapter off) or set algo.kl_coef=0")
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
        steps = total_steps if total_steps is not None else train_cfg.steps
        self.scheduler = make_scheduler(self.optimizer, train_cfg, steps * train_cfg.mini_batches * train_cfg.epochs)
        self.kl_ctl = make_kl_controller(self.algo.kl_ctrl, self.algo.kl_coef, self.algo.kl_target, self.algo.kl_horizon)
        self.version = 0  # adapter version of the current weights; the untrained adapter is version 0
        self.pad_id = self.tokenizer.pad_token_id
        self.reducer: LocalReducer = LOCAL
        self.temperature = temperature if temperature > 0 else 1.0  # greedy engines (T = 0) score at T = 1

    # -- data parallel ---------------------------------------------------------------------------------
    def rendezvous(self) -> tuple[str, int]:
        """(address, free port) on this actor's node, for rank 0 to host the group."""
        return rendezvous()

    def join_group(self, rank: int, world: int, addr: str, port: int, backend: str = "auto") -> str:
        """Become ``rank`` of ``world`` data-parallel learners and take rank 0's adapter (the seeds' LoRA
        initialisations differ otherwise); returns the backend (gloo on CPU, NCCL on GPU)."""
        backend = init_group(rank, world, addr, port, backend)
        broadcast_params(self.params, src=0)
        self.reducer = GroupReducer(world)
        return backend

    # -- rollouts in, update out ----------------------------------------------------------------------
    def step(self, prompt_ids: list[list[int]], completion_ids: list[list[int]], rewards: list[float],
             group_ids: list[int], behaviour_logprobs: list[list[float]] | None = None,
             values: list[list[float]] | None = None, truncated: list[bool] | None = None,
             ptx: dict | None = None, loss_masks: list[list[int]] | None = None,
             ref_logprobs: list[list[float | None]] | None = None) -> dict:
        """Advantages, old/reference logprobs, then the minibatch updates. Returns metrics.

        ``behaviour_logprobs`` are the engine's sampling logprobs: the rollout/learner mismatch is measured
        against them and corrected by importance weights (``train.rollout_correction``). ``values`` (the critic's,
        per completion token) feed GAE and the returned ``returns`` are the critic's targets; ``truncated`` marks
        completions cut by the length limit (DAPO's overlong filter); ``ptx`` = {input_ids, labels} supervised rows
        for the PPO-ptx loss; ``loss_masks`` (multi-turn) mark the completion tokens the model sampled (1) apart from
        the tool results between its turns (0): only the former are trained on. ``ref_logprobs``: the reference
        policy's logprobs per completion token where the reference scorer streamed them (actors/reference.py), None
        for a row it did not score; then this learner runs its own reference pass (all rows, the same numbers up to
        float rounding: tests/test_grpo.py).
        """
        self.wait_writes()  # the last export's adapter folder reads these weights
        t0 = time.time()
        kl_coef = self.kl_ctl.value
        batch, info = prepare_batch(self.model, prompt_ids, completion_ids, rewards, group_ids, self.algo,
                                    self.train_cfg, self.pad_id, kl_coef, self._ref_logprobs, behaviour_logprobs,
                                    values, truncated, self.reducer, self.temperature, loss_masks,
                                    None if ref_logprobs is None or any(r is None for r in ref_logprobs) else ref_logprobs)
        t_logp = time.time() - t0
        ptx_batch = pad_supervised(ptx["input_ids"], ptx["labels"], self.pad_id) if ptx else None
        metrics = policy_update(self.model, self.optimizer, self.scheduler, batch, self.algo, self.train_cfg,
                                self.params, kl_coef=kl_coef, ptx=ptx_batch, reducer=self.reducer,
                                temperature=self.temperature)
        if "kl_seq" in info:  # the global batch's KL and size, so every rank's controller moves alike
            self.kl_ctl.update(info["kl_seq"], int(self.reducer.sum(torch.tensor(float(len(batch)))).item()))
        metrics.update(info, kl_coef=kl_coef)
        self.version += 1
        metrics.update(time_logprobs=t_logp, time_update=time.time() - t0 - t_logp, version=self.version)
        if torch.cuda.is_available():
            # Colocated, vLLM wakes next on this GPU: hand back the allocator's cached activation blocks, which
            # this process would otherwise keep reserved (the planner budgets the learner's peak, not its cache).
            metrics["learner_gpu_reserved_gb"] = torch.cuda.memory_reserved() / 2**30
            torch.cuda.empty_cache()
        return metrics

    def _ref_logprobs(self, ids, att, positions=None):
        """The reference policy's logprobs (no grad, adapter off or the frozen ``ref`` adapter), at ``positions``
        only when given (the response tokens: the lean path of learners/logprobs.py)."""
        with reference_mode(self.model):
            return batched_logprobs(self.model, ids, att, self.train_cfg.micro_batch_size, self.temperature, positions)

    def probe_logprobs(self, token_ids: list[list[int]]) -> dict:
        """Token logprobs of fixed sequences under the current weights (the learner side of the sync check), at
        T = 1 like the engine's prompt logprobs."""
        ids, att, _ = build_sequences(token_ids, [[] for _ in token_ids], self.pad_id)
        self.model.eval()
        # the lean path, as the training forward computes them (every real token is wanted)
        lp = batched_logprobs(self.model, ids, att, self.train_cfg.micro_batch_size, positions=att[:, 1:])
        return {"version": self.version, "logprobs": [lp[i, : len(t) - 1].tolist() for i, t in enumerate(token_ids)]}

    # -- weights out ----------------------------------------------------------------------------------
    def export_adapter(self, out_dir: str, engine_dtype: str = "float32", mode: str = "lora",
                       probe_ids: list[list[int]] | None = None) -> dict:
        """Save the adapter as ``out_dir/vNNNNNN`` and, with ``mode`` 'merged', the merged weights the engine loads
        in place (:meth:`_export_merged`). ``digest`` hashes what the engine must then hold, in the form an engine of
        ``engine_dtype`` holds it (actors/sync.py), for the identity check. The adapter folder is written atomically
        (a temporary sibling renamed over), so a crash never leaves a half-written version. With ``probe_ids``,
        ``probe`` is :meth:`probe_logprobs` under the exported weights, in the same call: the learner's side of the
        sync probe then runs before the engines' instead of beside them, on the same cores."""
        self.wait_writes()
        probe = self.probe_logprobs(probe_ids) if probe_ids is not None else None
        final = Path(out_dir) / f"v{self.version:06d}"
        if mode == "merged":
            # The engine loads the merged file; the adapter folder is the run's record (final_adapter, the next
            # stage's input), so it is written in the background while the engines load, probe and generate
            # (PEFT's save with its model card, fsync and rename: 0.03-0.05 s of every sync). Whatever changes
            # the weights next waits for it first (wait_writes).
            exp = self._export_merged(Path(out_dir), self.version, engine_dtype, adapter=final)
            self._writes = self._writer.submit(_atomic_save_adapter, self.model, final)
        else:
            path = _atomic_save_adapter(self.model, final)
            exp = {"path": str(path), "version": self.version, "digest": exported_lora_digest(path, engine_dtype),
                   "mode": "lora"}
        return exp if probe is None else {**exp, "probe": probe}

    def wait_writes(self) -> None:
        """Block until the adapter folder of the last export is written (and raise what its write raised): called
        before anything that changes or saves the weights -- so the run's final checkpoint (save_state) also leaves
        every ``adapters/vNNNNNN`` folder complete."""
        pending, self._writes = self._writes, None
        if pending is not None:
            pending.result()

    def _export_merged(self, out_dir: Path, version: int, engine_dtype: str, adapter: Path | None = None) -> dict:
        """W' = W_0 + s B A for every adapted layer (learners/merge.py), cast to the engine's dtype and written to one
        safetensors file the engine's worker loads by path; only the newest file is kept (the engine holds the
        weights once loaded). Returns the path, the version, the per-weight digests of the cast tensors."""
        from safetensors.torch import save_file

        from actors.vllm_ext import tensor_digest
        from learners.merge import merged_weights

        if not hasattr(self, "_merge_cache"):
            self._merge_cache = {}
        dt = getattr(torch, engine_dtype)
        with torch.no_grad():
            tensors = {k: v.to(dt).contiguous() for k, v in merged_weights(self.model, self._merge_cache).items()}
        root = out_dir / "merged"
        root.mkdir(parents=True, exist_ok=True)
        tag = "calibration" if version < 0 else f"v{version:06d}"
        path = root / f"{tag}.safetensors"
        tmp = root / f".tmp-{tag}.safetensors"
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
        for old in root.glob("*.safetensors"):
            if old != path:
                old.unlink(missing_ok=True)
        return {"path": str(path), "version": version, "mode": "merged",
                "digest": {k: tensor_digest(v) for k, v in sorted(tensors.items())},
                "adapter": str(adapter) if adapter is not None else None}

    def calibration_adapter(self, out_dir: str, probe_ids: list[list[int]], engine_dtype: str = "float32",
                            mode: str = "lora") -> dict:
        """The sync check's calibration weights: the current adapter with its B matrices replaced by seeded noise
        (so that the engine's LoRA path computes something, unlike the untrained B = 0), saved to ``out_dir`` (and,
        with ``mode`` 'merged', merged into the base for the engine), with the learner's probe logprobs under them;
        the trained weights are restored exactly before returning. The noise has A's own per-module scale, divided
        by the rank: a LoRA delta of the order a trained one has."""
        from actors.sync import CALIBRATION_VERSION

        self.wait_writes()  # B is overwritten below
        names = [n for n, p in self.model.named_parameters() if ".lora_B.default." in n]
        saved = {n: self.model.get_parameter(n).detach().clone() for n in names}
        gen = torch.Generator().manual_seed(1234)
        try:
            with torch.no_grad():
                for n in names:
                    p = self.model.get_parameter(n)
                    a = self.model.get_parameter(n.replace(".lora_B.", ".lora_A."))
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p) * a.std() / a.shape[0])
            path = _atomic_save_adapter(self.model, Path(out_dir))
            lp = self.probe_logprobs(probe_ids)["logprobs"]
            if mode == "merged":
                exp = self._export_merged(Path(out_dir).parent, CALIBRATION_VERSION, engine_dtype)
            else:
                exp = {"path": str(path), "digest": exported_lora_digest(path, engine_dtype), "mode": "lora"}
        finally:
            with torch.no_grad():
                for n in names:
                    self.model.get_parameter(n).copy_(saved[n])
        return {**exp, "logprobs": lp}

    def export_engine_base(self, out_dir: str) -> str:
        return str(export_engine_base(self.model_path, self.model, out_dir))

    # -- checkpoints ----------------------------------------------------------------------------------
    def save_state(self, out_dir: str) -> None:
        self.wait_writes()  # a checkpoint holds every version's folder written before it
        out = Path(out_dir)
        save_adapter(self.model, out / "adapter")
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "version": self.version, "kl_coef": self.kl_ctl.value, "torch_rng": torch.get_rng_state(), "py_rng": random.getstate(),
                    "np_rng": np.random.get_state()}, out / "learner_state.pt")

    def load_state(self, ckpt_dir: str) -> int:
        from safetensors.torch import load_file

        self.wait_writes()
        ckpt = Path(ckpt_dir)
        saved = load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))
        from peft import set_peft_model_state_dict

        res = set_peft_model_state_dict(self.model, saved)
        if getattr(res, "unexpected_keys", None):
            raise RuntimeError(f"checkpoint adapter has keys this model lacks: {res.unexpected_keys[:3]}")
        st = torch.load(ckpt / "learner_state.pt", weights_only=False)
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.version = st["version"]
        self.kl_ctl.value = st.get("kl_coef", self.kl_ctl.value)
        torch.set_rng_state(st["torch_rng"])
        random.setstate(st["py_rng"])
        np.random.set_state(st["np_rng"])
        return self.version

    def pid(self) -> int:
        return os.getpid()


LearnerActor = ray.remote(LearnerWorker)


def _atomic_save_adapter(model, final: Path) -> Path:
    """save_adapter into a temporary sibling folder renamed over ``final`` (runlog.atomic_dir): readers see the old
    version or the new one, never a mix."""
    from runlog import atomic_dir

    with atomic_dir(final) as tmp:
        save_adapter(model, tmp)
    return Path(final)


def shard_by_group(group_ids: list[int], world: int) -> list[list[int]]:
    """Sample indices for ``world`` learners: whole groups (group-relative advantages need all of a group),
    consecutive groups per rank, group counts differing by at most one. Needs at least ``world`` groups."""
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids):
        groups.setdefault(g, []).append(i)
    if len(groups) < world:
        raise ValueError(f"{len(groups)} groups cannot feed {world} data-parallel learners (each needs one at least)")
    order = list(groups.values())
    return [[i for grp in order[lo:hi] for i in grp] for lo, hi in shares(len(order), world)]


class LearnerGroup:
    """``cluster.learner.count`` learner actors used as one learner by a pipeline (one code path from one learner
    to many). ``rank0`` is an actor handle like any LearnerActor: adapter export, the sync probe and checkpoints
    go to it. :meth:`step` shards the batch by group; :meth:`load_state` reaches every rank."""

    def __init__(self, plan, pg, model_path: str, model_cfg, algo_cfg, train_cfg, seed: int = 0,
                 total_steps: int | None = None, temperature: float = 1.0):
        places = plan.of("learner")
        self.actors = [LearnerActor.options(**actor_options(plan, pg, "learner", p.index)).remote(
            model_path, model_cfg, algo_cfg, train_cfg, seed, total_steps, num_threads=torch_threads(
                plan, "learner", p.index, concurrent=train_cfg.max_staleness > 0),
            temperature=temperature)
            for p in places]
        self.rank0 = self.actors[0]
        self.world = len(self.actors)
        self.backend = None
        if self.world > 1:
            addr, port = ray.get(self.rank0.rendezvous.remote())
            self.backend = ray.get([a.join_group.remote(r, self.world, addr, port)
                                    for r, a in enumerate(self.actors)])[0]

    def step(self, prompt_ids: list, completion_ids: list, rewards: list, group_ids: list, **per_sample) -> dict:
        """LearnerWorker.step on every rank with its shard (per-sample lists in ``per_sample`` are sharded too;
        None stays None); returns the metrics, which the ranks have already combined."""
        return ray.get(self.step_refs(prompt_ids, completion_ids, rewards, group_ids, **per_sample))[0]

    def step_refs(self, prompt_ids: list, completion_ids: list, rewards: list, group_ids: list, **per_sample) -> list:
        """:meth:`step` without waiting: one ObjectRef per rank (rank 0's first), for a caller with a deadline."""
        if self.world == 1:
            return [self.rank0.step.remote(prompt_ids, completion_ids, rewards, group_ids, **per_sample)]
        refs = []
        for actor, idx in zip(self.actors, shard_by_group(group_ids, self.world)):
            pick = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
            refs.append(actor.step.remote(pick(prompt_ids), pick(completion_ids), pick(rewards), pick(group_ids),
                                          **{k: pick(v) for k, v in per_sample.items()}))
        return refs

    def load_state(self, ckpt_dir: str) -> int:
        return ray.get([a.load_state.remote(ckpt_dir) for a in self.actors])[0]
