"""The machinery every RL pipeline shares (pipelines/grpo.py, pipelines/ppo.py): data, model, cluster, verified
weight sync, rollouts with bounded staleness, scoring that leaves failed items out, deadlines, logging,
checkpoints, the summary. A pipeline script keeps what is its algorithm's own (GRPO's groups and dynamic sampling,
PPO's critic) and reads top to bottom:

    run = RLRun.start(cfg, algo, "grpo", make_learners)
    for step in run.steps():
        batch = run.rollouts.take(step)          # generated t-k .. t, version-tagged
        sc = run.score(batch)                      # failed items masked, too many stop the run
        stats = <the algorithm's update>
        sync = run.sync()                          # export, load, verify identity and effect
        run.log_step(step, batch, sc, stats, sync, extra)
    return run.finish(extra_summary)
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import ray

from actors.multiturn import tool_metrics
from actors.reference import ReferenceActor, ReferenceStream
from actors.reward import RewardPool
from actors.rollout import EnginePool
from actors.sync import SyncVerifier
from cluster import actor_options, connect, make_placement_group, plan_resources, torch_threads
from config import Config, ConfigError, RunStopped, to_dict
from learners.models import load_tokenizer, lora_rank
from pipelines.preflight import check_rl_inputs, fit_rl_prompts
from pipelines.stage import prepare_model
from runlog import RunLog, prepare_run_dir, save_checkpoint
from runlog.checkpoints import read_meta
from tasks.prompts import load_prompts


class RunError(RunStopped):
    """A fault the run cannot go on from: the message names the role, what happened and what to do."""


# -- data and model ------------------------------------------------------------------------------------------
def encode_prompts(tok, rows: list[dict], tools: list[dict] | None = None) -> list[list[int]]:
    """Token ids of the rows' prompts (chat messages through the template, with ``tools`` offered if given)."""
    texts = [r["prompt"] if isinstance(r["prompt"], str) else
             tok.apply_chat_template(r["prompt"], tools=tools or None, tokenize=False, add_generation_prompt=True)
             for r in rows]
    return [tok(t, add_special_tokens=False).input_ids for t in texts]


@dataclass
class RLData:
    """Training prompts in a seeded order, held-out prompts and the sync probe, tokenised for ``model_path``."""

    model_path: str
    tok: object
    train_rows: list[dict]
    order: list[int]
    heldout_rows: list[dict]
    heldout_ids: list[list[int]]
    probe_ids: list[list[int]]

    @classmethod
    def load(cls, cfg: Config, extra_checks: Callable[[], None] | None = None) -> "RLData":
        train_rows = load_prompts(cfg.data.train, cfg.data.prompt_field, cfg.data.answer_field, cfg.data.builtin_size,
                                  cfg.seed)
        heldout_rows = load_prompts(cfg.data.heldout or cfg.data.train, cfg.data.prompt_field, cfg.data.answer_field,
                                    cfg.data.builtin_size, cfg.seed, heldout=True)[: cfg.train.heldout_prompts]
        check_rl_inputs(cfg, train_rows + heldout_rows)
        if extra_checks is not None:
            extra_checks()
        tools = None
        if cfg.env.name:  # an unknown environment or tool is named here, before the model or the cluster
            from envs.registry import make_env

            tools = make_env(cfg.env).tools
        model_path = prepare_model(cfg)
        tok = load_tokenizer(model_path)
        train_rows, heldout_rows = fit_rl_prompts(cfg, lambda rows: encode_prompts(tok, rows, tools), train_rows,
                                                  heldout_rows)
        order = list(range(len(train_rows)))
        random.Random(cfg.seed).shuffle(order)
        heldout_ids = encode_prompts(tok, heldout_rows)
        probe_ids = [p + tok(f' {{"answer": {r["answer"]}}}', add_special_tokens=False).input_ids
                     for p, r in zip(heldout_ids[:4], heldout_rows[:4])]
        return cls(model_path, tok, train_rows, order, heldout_rows, heldout_ids, probe_ids)


def weight_sync_mode(cfg: Config) -> str:
    """rollout.weight_sync resolved: 'auto' is merged weights on CPU, adapters on GPU (bench/grpo.md)."""
    mode = cfg.rollout.weight_sync
    if mode == "auto":
        mode = "merged" if cfg.cluster.device == "cpu" and cfg.rollout.tensor_parallel_size == 1 else "lora"
    if mode == "merged" and cfg.rollout.tensor_parallel_size > 1:
        raise ConfigError(f"rollout.weight_sync=merged loads whole matrices into one engine; with "
                          f"rollout.tensor_parallel_size={cfg.rollout.tensor_parallel_size} use rollout.weight_sync=lora")
    if mode == "merged" and cfg.model.finetune == "full":
        raise ConfigError("rollout.weight_sync=merged merges a LoRA adapter; model.finetune=full has none: "
                          "use rollout.weight_sync=lora")
    return mode


def reference_logprobs_mode(cfg: Config, algo) -> str:
    """train.reference_logprobs resolved: 'stream' (actors/reference.py) where it applies -- a reference to compute
    (algo.kl_coef > 0, a LoRA model), a CPU plan that colocates the roles, synchronous steps, single-turn rollouts --
    else 'learner'. 'auto' is learner: on the 2-core machines measured so far streaming does not pay (bench/grpo.md:
    the engine's decode and the scorer need the same cores); 'stream' where it does not apply is a config error
    that says why."""
    why = [w for bad, w in [
        (algo.kl_coef <= 0, "algo.kl_coef=0 (no reference to compute)"),
        (cfg.model.finetune == "full", "model.finetune=full (no frozen base to copy)"),
        (cfg.cluster.device != "cpu", f"cluster.device={cfg.cluster.device} (the scorer takes idle CPU cycles)"),
        (cfg.cluster.mode != "colocate", f"cluster.mode={cfg.cluster.mode} (the learner has its own devices)"),
        (cfg.train.max_staleness > 0, f"train.max_staleness={cfg.train.max_staleness} (the learner is busy while "
                                      "the engines generate)"),
        (bool(cfg.env.name), f"env.name={cfg.env.name} (multi-turn rollouts)")] if bad]
    mode = cfg.train.reference_logprobs
    if mode == "stream" and why:
        raise ConfigError(f"train.reference_logprobs=stream does not apply with {'; '.join(why)}: use "
                          "train.reference_logprobs=learner or auto")
    return "stream" if mode == "stream" else "learner"


def engine_dtype(cfg: Config) -> str:
    """The engines' dtype: model.dtype as resolved for this device (bfloat16 where the hardware has it)."""
    from learners.models import resolve_dtype

    return resolve_dtype(cfg.model.dtype, cfg.cluster.device)


# -- deadlines ---------------------------------------------------------------------------------------------------
def get(refs, role: str, cfg: Config, what: str, checkpoint: Path | None = None):
    """``ray.get`` with the role's deadline (cluster.<role>.timeout_s): a stopped or hung actor ends the run with an
    error that names the role and the key, a dead one with what died and the checkpoint to resume from."""
    timeout = getattr(cfg.cluster, role).timeout_s
    resume = (f"; the last complete checkpoint is {checkpoint} (rerun with resume=true)" if checkpoint is not None
              else "; no checkpoint was written yet")
    try:
        return ray.get(refs, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise RunError(f"the {role} did not answer {what} within cluster.{role}.timeout_s={timeout:g} s (a stopped, "
                       f"hung or overloaded actor){resume}") from None
    except ray.exceptions.RayActorError as e:
        raise RunError(f"the {role} actor died during {what} ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
                       f"{resume}") from None


# -- rollouts with bounded staleness -----------------------------------------------------------------------------
@dataclass
class Batch:
    """One step's prompts and samples; every sample carries ``version``, the policy version that produced it."""

    step: int
    rows: list[dict]
    gen: dict

    @property
    def samples(self) -> list[dict]:
        return [s for group in self.gen["samples"] for s in group]


class Rollouts:
    """Batches by step number, generated ahead by at most ``k`` = train.max_staleness policy versions.

    Batch s is launched once the engines serve version s - k (for k = 0: after the sync that ends step s - 1), so
    when step s trains (learner at version s) every sample's version v satisfies s - v <= k; :meth:`take` checks it.
    The engines run their calls in order, so a batch launched before a weight load samples the older version and
    says so. Prompts and seeds of batch s depend only on (seed, s): a resumed run regenerates the batches that were
    in flight, deterministically, under the resumed weights."""

    def __init__(self, engines: EnginePool, data: RLData, cfg: Config, draws_per_step: int = 1, reference=None):
        """``reference``: an actors/reference.py ReferenceStream the engines stream their samples to (samples come
        back with ``ref_logprobs``), or None."""
        self.engines, self.data, self.cfg, self.reference = engines, data, cfg, reference
        self.k, self.R = cfg.train.max_staleness, draws_per_step
        self.P, self.n = cfg.train.prompts_per_step, cfg.rollout.n_samples
        self.inflight: dict[tuple[int, int], tuple[list[dict], object]] = {}
        self.staleness: list[int] = []

    def rows(self, step: int, k: int = 0) -> list[dict]:
        d = self.data
        return [d.train_rows[d.order[((step * self.R + k) * self.P + i) % len(d.order)]] for i in range(self.P)]

    def launch(self, step: int, k: int = 0) -> None:
        if (step, k) in self.inflight or step >= self.cfg.train.steps:
            return
        rows = self.rows(step, k)
        seed = (self.cfg.seed * 100003 + step * self.R + k) << 20  # the engine adds prompt, sample (and turn) offsets
        if self.cfg.env.name:  # multi-turn: the engines run the environment's turns (actors/multiturn.py)
            ref = self.engines.generate_episodes(rows, self.cfg.env, n=self.n, seed=seed)
        else:
            kw = {"reference": self.reference} if self.reference is not None else {}
            ref = self.engines.generate(encode_prompts(self.data.tok, rows), n=self.n, seed=seed, **kw)
        self.inflight[(step, k)] = (rows, ref)

    def refill(self, version: int) -> None:
        """The engines now serve ``version``: launch every batch that may use it (up to step version + k)."""
        for s in range(version, version + self.k + 1):
            self.launch(s)

    def take(self, step: int, version: int, k: int = 0) -> Batch:
        """Batch ``step`` (draw ``k``, DAPO's extra rounds), waiting for it; the learner is at ``version``."""
        self.launch(step, k)
        rows, ref = self.inflight.pop((step, k))
        gen = get(ref, "rollout", self.cfg, f"generate (step {step})")
        lags = [version - s["version"] for g in gen["samples"] for s in g]
        if max(lags) > self.k or min(lags) < 0:
            raise RunError(f"step {step}: samples of policy versions {sorted({version - x for x in lags})} with the "
                           f"learner at {version}: outside train.max_staleness={self.k} (a bug, not a setting)")
        self.staleness.extend(lags)
        if "reference" in gen:
            self._attach_reference(gen, step)
        return Batch(step, rows, gen)

    def _attach_reference(self, gen: dict, step: int) -> None:
        """The streamed reference logprobs onto their samples (``ref_logprobs``), where the scorer saw the sample's
        tokens; the wait for its last chunk is ``gen["reference_wait"]``. A scorer that failed is named once and
        left out: the learner scores every later batch itself."""
        t0 = time.time()
        try:
            parts = get(gen.pop("reference"), "learner", self.cfg, f"streamed reference logprobs (step {step})")
        except RunError as e:
            print(f"[rl] the reference scorer failed ({e}); the learner computes the reference logprobs from now on",
                  flush=True)
            self.reference = None
            return
        lps = [x for p in parts for x in p["logprobs"]]
        toks = [x for p in parts for x in p["token_ids"]]
        samples = [s for g in gen["samples"] for s in g]
        if len(samples) == len(lps):
            for s, lp, t in zip(samples, lps, toks):
                if t == s["token_ids"]:
                    s["ref_logprobs"] = lp
        gen["reference_wait"] = time.time() - t0


def mask_failed(sc: dict, n: int, cfg: Config, step: int, min_group: int = 1) -> tuple[list[int], dict]:
    """Indices of the items to train on: those every scorer judged (``valid``), in groups of ``n`` samples per prompt
    with at least ``min_group`` judged ones (a group baseline needs 2). Raises :class:`RunError` when more than
    reward.max_failed_frac of the items failed, naming the scorer and status that failed most."""
    valid = sc["valid"]
    failed = len(valid) - sum(valid)
    if valid and failed / len(valid) > cfg.reward.max_failed_frac:
        worst = sorted(sc["failures"].items(), key=lambda kv: -kv[1])
        named = ", ".join(f"{k.split(':')[0]} gave status {k.split(':', 1)[1]!r} on {v}" for k, v in worst[:3])
        raise RunError(f"step {step}: {failed} of {len(valid)} reward items could not be judged ({named}), more than "
                       f"reward.max_failed_frac={cfg.reward.max_failed_frac:g}: fix the scorer (a missing sandbox, a "
                       "remote service down) or raise the fraction")
    keep = []
    for g in range(len(valid) // n):
        idx = [g * n + j for j in range(n) if valid[g * n + j]]
        if len(idx) >= min_group:
            keep.extend(idx)
    return keep, {"reward/failed_items": failed, "reward/masked_items": len(valid) - len(keep)}


# -- one run ---------------------------------------------------------------------------------------------------------
@dataclass
class RLRun:
    cfg: Config
    algo: object
    name: str
    run_dir: Path
    data: RLData
    plan: object
    pg: object
    learner: object  # the actor that exports and is probed (rank 0)
    engines: EnginePool
    reward: RewardPool
    verifier: SyncVerifier
    rollouts: Rollouts
    log: RunLog
    start_step: int
    held_start: float
    save_state: Callable[[Path], None]
    ckpt: Path | None = None
    last_sync: dict = field(default_factory=dict)
    sync_mode: str = "lora"
    held_start_no_tools: float | None = None

    @classmethod
    def start(cls, cfg: Config, algo, name: str, make_learners: Callable, load_state: Callable[[str], None],
              save_state: Callable[[Path], None] | None = None, draws_per_step: int = 1,
              extra_checks: Callable[[], None] | None = None, data: RLData | None = None) -> "RLRun":
        """Data and model, the cluster, the learner(s) (``make_learners(plan, pg, model_path)`` returns the actor
        that exports, rank 0), engines on the learner's dequantised base, resume, the run log, calibrated sync and
        the held-out score at the start. ``load_state(ckpt)`` / ``save_state(folder)`` restore / write the
        learner side of a checkpoint (PPO adds its critic)."""
        run_dir = Path(cfg.runs_dir).resolve() / cfg.run_name
        max_lora_rank = lora_rank(cfg.model)  # a model.adapter that is not there is named before anything starts
        mode = weight_sync_mode(cfg)
        streamed = reference_logprobs_mode(cfg, algo) == "stream"  # the engines and the scorer run at once
        if cfg.train.max_staleness and cfg.cluster.mode == "colocate" and cfg.cluster.device == "gpu" \
                and cfg.rollout.sleep_between_phases:
            raise ConfigError(f"train.max_staleness={cfg.train.max_staleness} generates while the learner trains, but in "
                              "cluster.mode=colocate the engine sleeps then (rollout.sleep_between_phases=true): use "
                              "cluster.mode=split, rollout.sleep_between_phases=false, or train.max_staleness=0")
        data = data or RLData.load(cfg, extra_checks)  # the user's input is checked before the run folder is touched
        ckpt = prepare_run_dir(run_dir, cfg.resume, cfg.overwrite)  # a used run folder needs resume or overwrite
        run_dir.mkdir(parents=True, exist_ok=True)
        dtype = engine_dtype(cfg)

        connect(cfg.cluster)
        plan = plan_resources(cfg.cluster)
        pg = make_placement_group(plan, cfg.cluster.placement_timeout_s)
        learner = make_learners(plan, pg, data.model_path)
        reward = RewardPool(plan, pg, cfg.reward)
        engine_base = get(learner.export_engine_base.remote(str(run_dir / "engine_base")), "learner", cfg,
                          "export_engine_base")
        engines = EnginePool(plan, pg, engine_base, cfg.rollout, concurrent=cfg.train.max_staleness > 0 or streamed,
                             max_lora_rank=max_lora_rank, dtype=dtype, device=cfg.cluster.device,
                             enable_lora=(mode == "lora"))
        reference = None
        if streamed:
            # Beside the learner, on the learner's share of the cores (the engines keep theirs) and at nice 19: the
            # learner waits while the engines generate, so the share is free; nothing else is reserved for it.
            actor = ReferenceActor.options(**{**actor_options(plan, pg, "learner", 0), "num_cpus": 0}).remote(
                data.model_path, cfg.model, cfg.rollout.temperature,
                num_threads=torch_threads(plan, "learner", 0, concurrent=True))
            reference = ReferenceStream(actor, cfg.train.reference_stream_every)

        start = 0
        if ckpt is not None:
            load_state(str(ckpt))
            start = read_meta(ckpt)["step"]
            print(f"[{name}] resumed from {ckpt} at step {start}", flush=True)
        # config.json records the algorithm as resolved (its defaults filled in), so a run says what it ran.
        log = RunLog(run_dir, cfg.tensorboard, start_step=start,
                     config={**to_dict(cfg), "algo": to_dict(algo), "resolved": {
                         "weight_sync": mode, "engine_dtype": dtype,
                         "reference_logprobs": "stream" if streamed else "learner"}})

        # Verified sync: calibrate the probe's tolerance on identical weights, then check every load.
        holder: dict = {}  # the run's last checkpoint, for the deadline errors of the sync
        verifier = SyncVerifier(engines.actors, learner, data.probe_ids, dtype, cfg.rollout.sync_tolerance_factor, mode,
                                get=lambda refs, role, what: get(refs, role, cfg, what, holder["run"].ckpt
                                                                 if "run" in holder else ckpt))
        calibration = verifier.calibrate(run_dir / "adapters")
        run = cls(cfg, algo, name, run_dir, data, plan, pg, learner, engines, reward, verifier,
                  Rollouts(engines, data, cfg, draws_per_step, reference), log, start, 0.0,
                  save_state or (lambda d: get(learner.save_state.remote(str(d)), "learner", cfg, "save_state")), ckpt,
                  sync_mode=mode)
        holder["run"] = run
        run.sync()
        # The run's starting scores: a resumed run's are in its checkpoint (measured under the first weights);
        # a new run measures them now.
        meta = read_meta(ckpt) if ckpt is not None else {}
        run.held_start = meta.get("heldout_reward_start")
        if run.held_start is None:
            run.held_start = run.heldout_reward()
        if cfg.env.name:
            run.held_start_no_tools = meta.get("heldout_reward_start_without_tools")
            if run.held_start_no_tools is None:
                run.held_start_no_tools = run.heldout_reward(without_tools=True)
        print(f"[{name}] {plan.describe()}; weights to the engines: {mode} ({dtype}); sync noise floor "
              f"{calibration['sync/floor_mean']:.3g} (tolerance {calibration['sync/tolerance']:.3g}); "
              f"max staleness {cfg.train.max_staleness}; held-out reward at start {run.held_start:.3f}", flush=True)
        run.rollouts.refill(start)
        return run

    # -- the loop's parts ---------------------------------------------------------------------------------------------
    def steps(self):
        from tqdm import tqdm

        cfg = self.cfg
        bar = tqdm(total=cfg.train.steps, initial=self.start_step, desc=self.name, disable=not cfg.progress,
                   mininterval=1.0)
        self._bar = bar
        try:
            for step in range(self.start_step, cfg.train.steps):
                self._t_step = time.time()
                yield step
                bar.update(1)
        finally:
            bar.close()

    def score(self, batch_rows: list[dict], samples: list[dict], n: int) -> dict:
        """Rewards of the samples (None where no scorer could judge one); a multi-turn sample's per-turn shaping
        (env.shaping: valid calls, tool errors) is added to its outcome reward."""
        sc = get(self._score_ref(batch_rows, samples, n), "reward", self.cfg, "score", self.ckpt)
        if any("shaping" in s for s in samples):
            sc["rewards"] = [r if r is None else r + s.get("shaping", 0.0) for r, s in zip(sc["rewards"], samples)]
        return sc

    @staticmethod
    def ref_logprobs(samples: list[dict]) -> list | None:
        """The streamed reference logprobs of the samples (None for one the scorer did not see), or None if none
        was streamed: the learner runs its own reference pass (actors/reference.py)."""
        if not any("ref_logprobs" in s for s in samples):
            return None
        return [s.get("ref_logprobs") for s in samples]

    @staticmethod
    def loss_masks(samples: list[dict]) -> list[list[int]] | None:
        """The model-sampled tokens of multi-turn samples (tool results 0), or None for single-turn ones."""
        return [s["loss_mask"] for s in samples] if samples and "loss_mask" in samples[0] else None

    def _score_ref(self, rows, samples, n):
        prompts = [str(r["prompt"]) for r in rows for _ in range(n)]
        refs = [r["answer"] for r in rows for _ in range(n)]
        return self.reward.score_ref(prompts, [s["text"] for s in samples], refs)

    def sync(self) -> dict:
        """Export the learner's weights, load them into every engine and verify them (deadlines as :func:`get`)."""
        self.last_sync = self.verifier.sync(self.run_dir / "adapters")
        return self.last_sync

    def after_update(self) -> dict:
        """Sync the new version, then launch the batches it may serve (bounded staleness)."""
        sync = self.sync()
        self.rollouts.refill(sync["adapter_version"])
        return sync

    def heldout_reward(self, without_tools: bool = False) -> float:
        """Mean reward of greedy answers to the held-out prompts under the engines' current weights (items that
        could not be judged left out). Multi-turn (env.name set): whole greedy trajectories, outcome reward only;
        ``without_tools``: the same task with no tool offered (env.tools=[none])."""
        d, cfg = self.data, self.cfg
        if cfg.env.name:
            env = cfg.env.without_tools() if without_tools else cfg.env
            ref = self.engines.generate_episodes(d.heldout_rows, env, n=1, temperature=0.0)
        else:
            ref = self.engines.generate(d.heldout_ids, n=1, max_tokens=cfg.rollout.max_new_tokens, temperature=0.0)
        gen = get(ref, "rollout", cfg, "held-out generate", self.ckpt)
        texts = [g[0]["text"] for g in gen["samples"]]
        sc = get(self.reward.score_ref([str(r["prompt"]) for r in d.heldout_rows], texts,
                                       [r["answer"] for r in d.heldout_rows]), "reward", self.cfg, "held-out score")
        judged = [r for r in sc["rewards"] if r is not None]
        return sum(judged) / max(1, len(judged))

    def common_row(self, batch: Batch, sc: dict, stats: dict, sync: dict) -> dict:
        """The metrics every algorithm logs (rewards over judged items, lengths, timing, sync, staleness)."""
        samples = batch.samples
        rewards = [r for r in sc["rewards"] if r is not None]
        mean_r = sum(rewards) / max(1, len(rewards))
        lengths = [len(s["token_ids"]) for s in samples]
        lags = [batch.step - s["version"] for s in samples]  # the learner trained this step at version = step
        return {
            "reward/mean": mean_r,
            "reward/std": (sum((r - mean_r) ** 2 for r in rewards) / max(1, len(rewards))) ** 0.5,
            **{f"reward/{k}": v for k, v in sc["per_scorer"].items()},
            "reward/failed_items": sc["failed"],
            **{f"reward/failed/{k}": v for k, v in sc.get("failures", {}).items()},
            "response/length_mean": sum(lengths) / len(lengths),
            "response/clipped_frac": sum(s["finish_reason"] == "length" for s in samples) / len(samples),
            "perf/tokens_per_s": batch.gen["tokens"] / max(batch.gen["seconds"], 1e-9),
            "time/logprobs": stats.get("time_logprobs", 0.0), "time/update": stats.get("time_update", 0.0),
            "time/reference_wait": batch.gen.get("reference_wait", 0.0),
            "reference/streamed_frac": sum("ref_logprobs" in s for s in samples) / len(samples),
            **{k: v for k, v in sync.items() if k.startswith("time/sync")}, "time/step": time.time() - self._t_step,
            **{k: v for k, v in sync.items() if k.startswith("sync/")}, "adapter_version": sync["adapter_version"],
            "rollout/adapter_version": batch.gen["adapter_version"],
            "rollout/staleness_mean": sum(lags) / len(lags), "rollout/staleness_max": max(lags),
            **{k: v for k, v in stats.items() if k.startswith("rollout_corr/")},
            **tool_metrics(samples, sc["rewards"]),
        }

    def log_step(self, step: int, row: dict, postfix: dict | None = None) -> None:
        self.log.log(step, row)
        if postfix:
            self._bar.set_postfix(**postfix)
        if self.cfg.checkpoint.every and (step + 1) % self.cfg.checkpoint.every == 0 and step + 1 < self.cfg.train.steps:
            self.checkpoint(step + 1)

    def checkpoint(self, step: int) -> Path:
        self.ckpt = save_checkpoint(self.run_dir / "checkpoints", step, self.save_state,
                                    {"data_pos": step * self.cfg.train.prompts_per_step,
                                     "heldout_reward_start": self.held_start,
                                     "heldout_reward_start_without_tools": self.held_start_no_tools},
                                    self.cfg.checkpoint.keep)
        return self.ckpt

    def finish(self, extra: dict, plot_keys: list[str], title: str) -> dict:
        """Held-out score at the end, the last checkpoint, summary.json (with the staleness distribution), plot.
        Nothing is in flight here: no batch past train.steps is ever launched."""
        held_end = self.heldout_reward()
        if self.cfg.env.name:  # what the tools are worth: the same model on the same task, no tool offered
            extra = {"heldout_reward_end_without_tools": self.heldout_reward(without_tools=True),
                     "heldout_reward_start_without_tools": self.held_start_no_tools, **extra}
        self.checkpoint(self.cfg.train.steps)
        rows = self.log.read()
        lags = self.rollouts.staleness
        summary = {"run_name": self.cfg.run_name, "algo": self.cfg.algo.name, "steps": self.cfg.train.steps,
                   "model": self.data.model_path, "heldout_reward_start": self.held_start, "heldout_reward_end": held_end,
                   "train_reward_first": rows[0]["reward/mean"] if rows else None,
                   "train_reward_last": rows[-1]["reward/mean"] if rows else None,
                   "mean_step_s": sum(r["time/step"] for r in rows) / max(1, len(rows)),
                   "weight_sync": self.sync_mode, "max_staleness": self.cfg.train.max_staleness,
                   "staleness_histogram": {str(v): lags.count(v) for v in sorted(set(lags))},
                   "final_adapter": str(self.run_dir / "adapters" / f"v{self.last_sync['adapter_version']:06d}"),
                   **extra}
        self.log.summary(summary)
        self.log.plot(plot_keys, "reward_curve.png", title)
        self.log.close()
        print(f"[{self.name}] {self.cfg.algo.name}: held-out reward {self.held_start:.3f} -> {held_end:.3f}; "
              f"results in {self.run_dir}", flush=True)
        return summary

