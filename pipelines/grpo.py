"""GRPO on Ray, read top to bottom: plan -> actors -> (generate -> score -> update -> sync) x steps -> report.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python pipelines/grpo.py run_name=demo
    python pipelines/grpo.py config=tiny-cpu train.steps=10          # local mode, same code
    python pipelines/grpo.py algo.name=dapo                          # (or algo=dapo) the critic-free family:
                                                                     # grpo dr_grpo dapo gspo rloo reinforce_pp reinforce_pp_baseline

Config: config/tiny-cpu.yaml (default), any key overridable as key.sub=value (see config/schema.py).
Output: runs/<run_name>/ with metrics.jsonl, TensorBoard events (tb/), reward_curve.png, summary.json,
checkpoints/ (resume=true continues from the last complete one).
"""
from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402
import torch  # noqa: E402

from actors.learner import LearnerGroup  # noqa: E402
from actors.reward import RewardPool  # noqa: E402
from actors.rollout import EnginePool  # noqa: E402
from actors.sync import SyncVerifier  # noqa: E402
from cluster import connect, make_placement_group, plan_resources  # noqa: E402
from config import Config, ConfigError, load, run_cli, to_dict  # noqa: E402
from learners.advantages import zero_variance_groups  # noqa: E402
from learners.algorithms import NEEDS_CRITIC, resolve  # noqa: E402
from learners.models import load_tokenizer, lora_rank  # noqa: E402
from pipelines.preflight import check_rl_inputs, fit_rl_prompts  # noqa: E402
from runlog import RunLog, latest_checkpoint, save_checkpoint  # noqa: E402
from runlog.checkpoints import read_meta  # noqa: E402
from tasks.prompts import load_prompts  # noqa: E402


def prepare_model(cfg: Config) -> str:
    """The base to train: a given path, or a tiny model built here (plus the built-in task's warm start).

    The warm start is part of the model, like a pretrained checkpoint: it follows ``model.model_seed``, not the
    run's ``seed``, so runs that differ only in ``seed`` start RL from the same model (a seed sweep then measures
    RL's robustness, not the warm start's)."""
    if cfg.model.path:
        return cfg.model.path
    from tinymodels import ensure_tiny_model

    path = ensure_tiny_model(cfg.cache_dir, cfg.model.preset, cfg.model.model_seed)
    if cfg.data.warm_start_steps and cfg.data.train == "builtin:arithmetic":
        from tasks.arithmetic import make_rows, solution
        from tasks.warm_start import warm_start

        path = warm_start(path, make_rows(cfg.data.builtin_size, seed=cfg.model.model_seed + 1000), solution,
                          cfg.data.warm_start_steps, Path(cfg.cache_dir) / "warm", seed=cfg.model.model_seed)
    return str(path)


def encode_prompts(tok, rows: list[dict]) -> list[list[int]]:
    texts = [r["prompt"] if isinstance(r["prompt"], str) else
             tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
    return [tok(t, add_special_tokens=False).input_ids for t in texts]


def heldout_reward(engines: EnginePool, reward: RewardPool, prompt_ids, rows, max_tokens) -> float:
    """Mean reward of greedy answers to the held-out prompts under the engines' current adapter."""
    gen = ray.get(engines.generate(prompt_ids, n=1, max_tokens=max_tokens, temperature=0.0))
    texts = [g[0]["text"] for g in gen["samples"]]
    sc = reward.score([str(r["prompt"]) for r in rows], texts, [r["answer"] for r in rows])
    return sum(sc["rewards"]) / len(sc["rewards"])


def dynamic_sampling(groups: list[dict], draw, want: int, max_rounds: int, at_least: int = 1) -> tuple[list[dict], dict]:
    """DAPO's dynamic sampling (Yu et al. 2025, sec. 3.2): keep the groups whose rewards differ (an all-equal
    group has zero advantage, so no gradient) and ``draw(round)`` more until ``want`` are kept or ``max_rounds``
    extra rounds are spent. With none kept at all it returns the first round as it was; with fewer than
    ``at_least`` (one per data-parallel learner) it tops up with dropped ones, in the order drawn. Only the KL
    and entropy terms move on such groups."""
    kept, dropped, rounds, spare, first = [], 0, 0, [], groups
    while True:
        n = len(groups[0]["rewards"])
        same = zero_variance_groups(torch.tensor([r for g in groups for r in g["rewards"]]),
                                    torch.arange(len(groups)).repeat_interleave(n))
        for i, g in enumerate(groups):
            if same[i * n]:
                dropped += 1
                spare.append(g)
            else:
                kept.append(g)
        if len(kept) >= want or rounds >= max_rounds:
            break
        rounds += 1
        groups = draw(rounds)
    stats = {"sampling/groups_dropped": dropped, "sampling/extra_rounds": rounds, "sampling/groups_kept": min(len(kept), want)}
    return (kept[:want] + spare[: max(0, at_least - len(kept))] if kept else first), stats


def main(argv: list[str]) -> dict:
    argv = ["algo.name=" + a[len("algo="):] if a.startswith("algo=") else a for a in argv]  # short alias
    cfg = load(Config, "tiny-cpu", argv)
    algo = resolve(cfg.algo, cfg.rollout.max_new_tokens)  # a wrong algorithm name fails here, before the cluster
    if algo.adv_estimator in NEEDS_CRITIC:
        raise ConfigError(f"algo.name={cfg.algo.name} (advantages {algo.adv_estimator!r}) needs a critic: run pipelines/ppo.py")
    if cfg.train.prompts_per_step < cfg.cluster.learner.count:
        raise ConfigError(f"train.prompts_per_step={cfg.train.prompts_per_step} < cluster.learner.count="
                          f"{cfg.cluster.learner.count}: every data-parallel learner needs one prompt's group at least")
    run_dir = Path(cfg.runs_dir).resolve() / cfg.run_name
    max_lora_rank = lora_rank(cfg.model)  # before anything starts: a model.adapter that is not there is named here
    run_dir.mkdir(parents=True, exist_ok=True)

    # Data: training prompts in a seeded order; held-out prompts for the before/after score.
    train_rows = load_prompts(cfg.data.train, cfg.data.prompt_field, cfg.data.answer_field, cfg.data.builtin_size, cfg.seed)
    held_spec = cfg.data.heldout or cfg.data.train
    heldout_rows = load_prompts(held_spec, cfg.data.prompt_field, cfg.data.answer_field, cfg.data.builtin_size,
                                cfg.seed, heldout=True)[: cfg.train.heldout_prompts]
    check_rl_inputs(cfg, train_rows + heldout_rows)
    model_path = prepare_model(cfg)
    tok = load_tokenizer(model_path)
    train_rows, heldout_rows = fit_rl_prompts(cfg, lambda rows: encode_prompts(tok, rows), train_rows, heldout_rows)
    order = list(range(len(train_rows)))
    random.Random(cfg.seed).shuffle(order)
    heldout_ids = encode_prompts(tok, heldout_rows)
    probe_ids = [p + tok(f' {{"answer": {r["answer"]}}}', add_special_tokens=False).input_ids
                 for p, r in zip(heldout_ids[:4], heldout_rows[:4])]

    # Cluster: one plan for CPU, one GPU or many; the actors land in the placement group's bundles.
    connect(cfg.cluster)
    plan = plan_resources(cfg.cluster)
    pg = make_placement_group(plan, cfg.cluster.placement_timeout_s)
    # cluster.learner.count learners form one data-parallel group (rank 0 exports and checkpoints);
    # cluster.rollout.count engines share every batch of prompts.
    learners = LearnerGroup(plan, pg, model_path, cfg.model, algo, cfg.train, cfg.seed,
                            temperature=cfg.rollout.temperature)
    learner = learners.rank0
    reward = RewardPool(plan, pg, cfg.reward)
    engine_base = ray.get(learner.export_engine_base.remote(str(run_dir / "engine_base")))
    engines = EnginePool(plan, pg, engine_base, cfg.rollout, max_lora_rank=max_lora_rank, dtype=cfg.model.dtype,
                         device=cfg.cluster.device)

    # Resume from the last complete checkpoint, if asked and present.
    start = 0
    ckpt = latest_checkpoint(run_dir / "checkpoints") if cfg.resume else None
    if ckpt is not None:
        learners.load_state(str(ckpt))
        start = read_meta(ckpt)["step"]
        print(f"[grpo] resumed from {ckpt} at step {start}", flush=True)
    # config.json records the algorithm as resolved (its defaults filled in), so a run says what it ran.
    log = RunLog(run_dir, cfg.tensorboard, start_step=start, config={**to_dict(cfg), "algo": to_dict(algo)})

    # Verified sync: calibrate the probe's tolerance on identical weights, then check every adapter load.
    verifier = SyncVerifier(engines.actors, learner, probe_ids, cfg.model.dtype, cfg.rollout.sync_tolerance_factor)
    calibration = verifier.calibrate(run_dir / "adapters")
    sync = verifier.sync(run_dir / "adapters")
    held_start = heldout_reward(engines, reward, heldout_ids, heldout_rows, cfg.rollout.max_new_tokens)
    if ckpt is not None:
        held_start = read_meta(ckpt).get("heldout_reward_start", held_start)
    print(f"[grpo] {plan.describe()}; sync noise floor {calibration['sync/floor_mean']:.3g} (tolerance "
          f"{calibration['sync/tolerance']:.3g}); held-out reward at start {held_start:.3f}", flush=True)

    P, n = cfg.train.prompts_per_step, cfg.rollout.n_samples
    colocate_sleep = cfg.cluster.mode == "colocate" and cfg.rollout.sleep_between_phases
    R = 1 + (algo.dynamic_sampling_max_rounds if algo.dynamic_sampling else 0)  # prompt draws per step at most

    def batch_rows(step: int, k: int = 0) -> list[dict]:
        return [train_rows[order[((step * R + k) * P + i) % len(order)]] for i in range(P)]

    def launch_generate(step: int, k: int = 0):
        rows = batch_rows(step, k)
        return rows, engines.generate(encode_prompts(tok, rows), n=n, seed=(cfg.seed * 100003 + step * R + k) << 20)  # the engine adds prompt and sample offsets

    def score(rows, samples) -> dict:
        return reward.score([str(r["prompt"]) for r in rows for _ in range(n)], [s["text"] for s in samples],
                            [r["answer"] for r in rows for _ in range(n)])

    def as_groups(rows, gen, sc) -> list[dict]:
        return [{"row": r, "prompt_ids": p, "samples": g, "rewards": sc["rewards"][i * n:(i + 1) * n]}
                for i, (r, p, g) in enumerate(zip(rows, gen["prompt_token_ids"], gen["samples"]))]

    def draw(step: int, k: int) -> list[dict]:
        rows, ref = launch_generate(step, k)
        gen = ray.get(ref)
        return as_groups(rows, gen, score(rows, [s for g in gen["samples"] for s in g]))

    bar = _progress(cfg, start)
    pending = launch_generate(start) if start < cfg.train.steps else None
    for step in range(start, cfg.train.steps):
        t_step = time.time()
        # 1. generate: n samples per prompt (in overlap mode, already launched during the last update)
        rows, gen_ref = pending
        gen = ray.get(gen_ref)
        t_gen = time.time() - t_step
        samples = [s for group in gen["samples"] for s in group]
        overlap = cfg.train.one_step_overlap and step + 1 < cfg.train.steps
        if overlap:  # generate batch t+1 with adapter t while the learner updates on batch t
            pending = launch_generate(step + 1)
        elif colocate_sleep:
            engines.sleep()

        # 2. score: per item a reward and a status; failures cost their items, not the step
        t0 = time.time()
        sc = score(rows, samples)
        t_score = time.time() - t0

        # 2b. DAPO: drop groups with all-equal rewards and draw more prompts until the batch is full (capped)
        groups, ds = as_groups(rows, gen, sc), {}
        if algo.dynamic_sampling:
            groups, ds = dynamic_sampling(groups, lambda k: draw(step, k), P, algo.dynamic_sampling_max_rounds,
                                          at_least=learners.world)
        train_samples = [s for g in groups for s in g["samples"]]

        # 3. update: reference/old logprobs, advantages of the configured algorithm, clipped objective + KL
        stats = learners.step(
            [g["prompt_ids"] for g in groups for _ in range(n)], [s["token_ids"] for s in train_samples],
            [r for g in groups for r in g["rewards"]], [i // n for i in range(len(train_samples))],
            behaviour_logprobs=[s["logprobs"] for s in train_samples],
            truncated=[s["finish_reason"] == "length" for s in train_samples] if algo.overlong_filter else None)

        # 4. sync: move only the adapter, and check that the engine now serves it
        sync = verifier.sync(run_dir / "adapters")
        if not overlap and step + 1 < cfg.train.steps:
            pending = launch_generate(step + 1)

        rewards = sc["rewards"]
        mean_r = sum(rewards) / len(rewards)
        lengths = [len(s["token_ids"]) for s in samples]
        row = {
            "reward/mean": mean_r,
            "reward/std": (sum((r - mean_r) ** 2 for r in rewards) / len(rewards)) ** 0.5,
            **{f"reward/{k}": v for k, v in sc["per_scorer"].items()},
            "reward/failed_items": sc["failed"],
            "actor/kl": stats.get("kl", 0.0), "actor/clipfrac": stats.get("clipfrac", 0.0),
            "actor/entropy": stats.get("entropy", 0.0), "actor/pg_loss": stats.get("pg_loss", 0.0),
            "actor/approx_kl": stats.get("approx_kl", 0.0), "actor/grad_norm": stats.get("grad_norm", 0.0),
            "actor/lr": stats.get("lr", 0.0),
            "response/length_mean": sum(lengths) / len(lengths),
            "response/clipped_frac": sum(s["finish_reason"] == "length" for s in samples) / len(samples),
            "perf/tokens_per_s": gen["tokens"] / max(gen["seconds"], 1e-9),
            "time/generate": t_gen, "time/score": t_score, "time/logprobs": stats["time_logprobs"],
            "time/update": stats["time_update"], "time/sync": sync["time/sync"], "time/step": time.time() - t_step,
            **{k: v for k, v in sync.items() if k.startswith("sync/")}, "adapter_version": sync["adapter_version"],
            "rollout/adapter_version": gen["adapter_version"],
            "actor/kl_coef": stats["kl_coef"], "actor/adv_abs_mean": stats["adv_abs_mean"], **ds,
            **{k: v for k, v in stats.items() if k.startswith("rollout_corr/")},
        }
        log.log(step, row)
        bar.update(1)
        bar.set_postfix(reward=f"{mean_r:.3f}", kl=f"{row['actor/kl']:.4f}")

        if cfg.checkpoint.every and (step + 1) % cfg.checkpoint.every == 0 and step + 1 < cfg.train.steps:
            save_checkpoint(run_dir / "checkpoints", step + 1, lambda d: ray.get(learner.save_state.remote(str(d))),
                            {"data_pos": (step + 1) * P, "heldout_reward_start": held_start}, cfg.checkpoint.keep)
    bar.close()

    held_end = heldout_reward(engines, reward, heldout_ids, heldout_rows, cfg.rollout.max_new_tokens)
    save_checkpoint(run_dir / "checkpoints", cfg.train.steps, lambda d: ray.get(learner.save_state.remote(str(d))),
                    {"data_pos": cfg.train.steps * P, "heldout_reward_start": held_start}, cfg.checkpoint.keep)
    rows_logged = log.read()
    summary = {"run_name": cfg.run_name, "algo": cfg.algo.name, "steps": cfg.train.steps, "model": model_path,
               "heldout_reward_start": held_start, "heldout_reward_end": held_end,
               "train_reward_first": rows_logged[0]["reward/mean"] if rows_logged else None,
               "train_reward_last": rows_logged[-1]["reward/mean"] if rows_logged else None,
               "mean_step_s": sum(r["time/step"] for r in rows_logged) / max(1, len(rows_logged)),
               "final_adapter": str(run_dir / "adapters" / f"v{sync['adapter_version']:06d}")}
    log.summary(summary)
    log.plot(["reward/mean", "actor/kl", "response/length_mean"], "reward_curve.png", f"{cfg.algo.name} {cfg.run_name}")
    log.close()
    print(f"[grpo] {cfg.algo.name}: held-out reward {held_start:.3f} -> {held_end:.3f}; results in {run_dir}", flush=True)
    return summary


def _progress(cfg: Config, start: int):
    from tqdm import tqdm

    return tqdm(total=cfg.train.steps, initial=start, desc="grpo", disable=not cfg.progress, mininterval=1.0)


if __name__ == "__main__":
    run_cli(main)
