"""PPO-RLHF on Ray, read top to bottom: plan -> actors (rollout, reward, learner, critic) ->
(generate -> score -> values -> policy update -> critic update -> sync) x steps -> report.

    python pipelines/ppo.py                                   # tiny-cpu preset: QLoRA policy, QLoRA critic on the same base
    python pipelines/ppo.py algo.kl_ctrl=adaptive algo.kl_target=0.5 algo.ptx_coef=0.1
    python pipelines/ppo.py algo.critic_model=preset:mini algo.critic_finetune=full   # a separate small critic
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python pipelines/ppo.py run_name=ppo-demo

The algorithm (Ouyang et al. 2022, InstructGPT; Ziegler et al. 2019): the per-token reward is the KL penalty
-beta * KL_t with the score on the last token; a critic gives V(s_t); GAE(gamma, lambda) gives advantages
(whitened) and returns; the policy takes ``train.epochs`` passes of clipped PPO over ``train.mini_batches``
minibatches (plus the ptx loss on supervised data); the critic fits the returns with the clipped value loss;
beta is fixed or follows the adaptive controller. docs/algorithms/ppo.md has the formulas and keys.
Output as pipelines/grpo.py: runs/<run_name>/ with metrics.jsonl, summary.json, reward_curve.png, checkpoints/.
"""
from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402

from actors.critic import CriticActor  # noqa: E402
from actors.learner import LearnerActor  # noqa: E402
from actors.reward import RewardPool  # noqa: E402
from actors.rollout import EnginePool  # noqa: E402
from cluster import actor_options, connect, make_placement_group, plan_resources, require_single  # noqa: E402
from config import Config, ConfigError, load, run_cli, to_dict  # noqa: E402
from learners.algorithms import NEEDS_CRITIC, resolve  # noqa: E402
from learners.models import load_tokenizer, lora_rank  # noqa: E402
from actors.sync import SyncVerifier  # noqa: E402
from pipelines.grpo import encode_prompts, heldout_reward, prepare_model  # noqa: E402
from pipelines.preflight import check_model_dir, check_rl_inputs, fit_rl_prompts  # noqa: E402
from runlog import RunLog, latest_checkpoint, save_checkpoint  # noqa: E402
from runlog.checkpoints import read_meta  # noqa: E402
from tasks.prompts import load_prompts  # noqa: E402


def critic_source(cfg: Config, policy_path: str) -> tuple[str, str]:
    """(model folder, finetune mode) of the critic: the policy's own base by default, else algo.critic_model."""
    spec, finetune = cfg.algo.critic_model, cfg.algo.critic_finetune or cfg.model.finetune
    if not spec:
        return policy_path, finetune
    if spec.startswith("preset:"):
        from tinymodels import ensure_tiny_model

        return str(ensure_tiny_model(cfg.cache_dir, spec.removeprefix("preset:"), cfg.model.model_seed)), finetune
    if not Path(spec, "config.json").exists():
        raise FileNotFoundError(f"algo.critic_model={spec!r} is not a transformers folder (no config.json); give a "
                                "model folder, preset:NAME, or leave it empty for a head on the policy's base")
    return spec, finetune


def ptx_rows(cfg: Config, tok) -> list[dict]:
    """Tokenised supervised rows (input_ids, labels on the answer) for the PPO-ptx loss: ``algo.ptx_data`` in any
    datapipe format, or the built-in task's reference answers."""
    from datapipe import normalize_rows, read_rows
    from datapipe.tokens import tokenize_rows

    if cfg.algo.ptx_data:
        rows, _ = normalize_rows(read_rows(cfg.algo.ptx_data))
    elif cfg.data.train == "builtin:arithmetic":
        from tasks.arithmetic import make_rows, solution

        rows = [{"messages": r["prompt"] + [{"role": "assistant", "content": solution(r)}]}
                for r in make_rows(512, seed=cfg.seed + 2000)]
    else:
        raise ConfigError("algo.ptx_coef > 0 needs supervised data: set algo.ptx_data to a messages or "
                          "prompt/completion file")
    kept, report = tokenize_rows(rows, tok, cfg.rollout.max_model_len)
    if not kept:
        raise ConfigError(f"algo.ptx_data={cfg.algo.ptx_data!r} gave no usable row ({report['dropped']})")
    return kept


def split_learner_share(plan, pg) -> tuple[dict, dict]:
    """Actor options for the learner and the critic: they split the learner role's bundle share in half (on one
    GPU they take turns on the same slice, as the learner and its reference already do)."""
    opts = actor_options(plan, pg, "learner")
    half = {**opts, "num_cpus": opts["num_cpus"] / 2, "num_gpus": opts["num_gpus"] / 2}
    if "memory" in opts:
        half["memory"] = opts["memory"] // 2
    return half, dict(half)


def main(argv: list[str]) -> dict:
    cfg = load(Config, "tiny-cpu", ["algo.name=ppo", *argv])
    algo = resolve(cfg.algo, cfg.rollout.max_new_tokens)
    if algo.adv_estimator not in NEEDS_CRITIC:
        raise ConfigError(f"pipelines/ppo.py trains a critic for GAE; algo.name={cfg.algo.name} (advantages "
                          f"{algo.adv_estimator!r}) has none: run pipelines/grpo.py algo.name={cfg.algo.name}")
    require_single(cfg.cluster, ("learner",), "pipelines/ppo.py (one learner and its critic)")
    run_dir = Path(cfg.runs_dir).resolve() / cfg.run_name
    max_lora_rank = lora_rank(cfg.model)  # before anything starts: a model.adapter that is not there is named here
    run_dir.mkdir(parents=True, exist_ok=True)

    # Data: training prompts in a seeded order, held-out prompts, supervised rows for the ptx loss.
    train_rows = load_prompts(cfg.data.train, cfg.data.prompt_field, cfg.data.answer_field, cfg.data.builtin_size, cfg.seed)
    heldout_rows = load_prompts(cfg.data.heldout or cfg.data.train, cfg.data.prompt_field, cfg.data.answer_field,
                                cfg.data.builtin_size, cfg.seed, heldout=True)[: cfg.train.heldout_prompts]
    check_rl_inputs(cfg, train_rows + heldout_rows)
    if cfg.algo.critic_model and not cfg.algo.critic_model.startswith("preset:"):
        check_model_dir("algo.critic_model", cfg.algo.critic_model, causal_lm=False)
    model_path = prepare_model(cfg)
    critic_path, critic_finetune = critic_source(cfg, model_path)
    tok = load_tokenizer(model_path)
    train_rows, heldout_rows = fit_rl_prompts(cfg, lambda rows: encode_prompts(tok, rows), train_rows, heldout_rows)
    order = list(range(len(train_rows)))
    random.Random(cfg.seed).shuffle(order)
    heldout_ids = encode_prompts(tok, heldout_rows)
    probe_ids = [p + tok(f' {{"answer": {r["answer"]}}}', add_special_tokens=False).input_ids
                 for p, r in zip(heldout_ids[:4], heldout_rows[:4])]
    ptx = ptx_rows(cfg, tok) if algo.ptx_coef > 0 else []

    # Cluster: the usual three roles; the critic shares the learner's bundle.
    connect(cfg.cluster)
    plan = plan_resources(cfg.cluster)
    pg = make_placement_group(plan, cfg.cluster.placement_timeout_s)
    learner_opts, critic_opts = split_learner_share(plan, pg)
    threads = max(1, int(learner_opts["num_cpus"] * 2))
    learner = LearnerActor.options(**learner_opts).remote(model_path, cfg.model, algo, cfg.train, cfg.seed, num_threads=threads,
                                                         temperature=cfg.rollout.temperature)
    critic = CriticActor.options(**critic_opts).remote(critic_path, model_path, critic_finetune, cfg.model.lora,
                                                       cfg.model.dtype, algo, cfg.train, cfg.seed, num_threads=threads)
    reward = RewardPool(plan, pg, cfg.reward)
    engine_base = ray.get(learner.export_engine_base.remote(str(run_dir / "engine_base")))
    engines = EnginePool(plan, pg, engine_base, cfg.rollout, max_lora_rank=max_lora_rank, dtype=cfg.model.dtype,
                         device=cfg.cluster.device)

    start = 0
    ckpt = latest_checkpoint(run_dir / "checkpoints") if cfg.resume else None
    if ckpt is not None:
        ray.get([learner.load_state.remote(str(ckpt)), critic.load_state.remote(str(ckpt))])
        start = read_meta(ckpt)["step"]
        print(f"[ppo] resumed from {ckpt} at step {start}", flush=True)
    # config.json records the algorithm as resolved (its defaults filled in), so a run says what it ran.
    log = RunLog(run_dir, cfg.tensorboard, start_step=start, config={**to_dict(cfg), "algo": to_dict(algo)})

    verifier = SyncVerifier(engines.actors, learner, probe_ids, cfg.model.dtype, cfg.rollout.sync_tolerance_factor)
    verifier.calibrate(run_dir / "adapters")
    sync = verifier.sync(run_dir / "adapters")
    held_start = heldout_reward(engines, reward, heldout_ids, heldout_rows, cfg.rollout.max_new_tokens)
    if ckpt is not None:
        held_start = read_meta(ckpt).get("heldout_reward_start", held_start)
    print(f"[ppo] {plan.describe()} (critic shares the learner's share: {critic_path}, {critic_finetune}); "
          f"held-out reward at start {held_start:.3f}", flush=True)

    P, n = cfg.train.prompts_per_step, cfg.rollout.n_samples
    colocate_sleep = cfg.cluster.mode == "colocate" and cfg.rollout.sleep_between_phases

    def save(step: int):
        save_checkpoint(run_dir / "checkpoints", step,
                        lambda d: ray.get([learner.save_state.remote(str(d)), critic.save_state.remote(str(d))]),
                        {"data_pos": step * P, "heldout_reward_start": held_start}, cfg.checkpoint.keep)

    from tqdm import tqdm

    bar = tqdm(total=cfg.train.steps, initial=start, desc="ppo", disable=not cfg.progress, mininterval=1.0)
    for step in range(start, cfg.train.steps):
        t_step = time.time()
        # 1. generate: n samples per prompt from the current adapter
        rows = [train_rows[order[(step * P + i) % len(order)]] for i in range(P)]
        gen = ray.get(engines.generate(encode_prompts(tok, rows), n=n, seed=(cfg.seed * 100003 + step) << 20))  # the engine adds prompt and sample offsets
        t_gen = time.time() - t_step
        if colocate_sleep:
            engines.sleep()
        samples = [s for group in gen["samples"] for s in group]
        prompt_ids = [p for p in gen["prompt_token_ids"] for _ in range(n)]
        completion_ids = [s["token_ids"] for s in samples]

        # 2. score: one scalar per completion (failures score 0 and are counted)
        t0 = time.time()
        sc = reward.score([str(r["prompt"]) for r in rows for _ in range(n)], [s["text"] for s in samples],
                          [r["answer"] for r in rows for _ in range(n)])
        t_score = time.time() - t0

        # 3. values: V(s_t) of every completion token under the current critic
        t0 = time.time()
        values = ray.get(critic.values.remote(prompt_ids, completion_ids))
        t_values = time.time() - t0

        # 4. policy: KL penalty in the token rewards, GAE + whitening, PPO epochs over minibatches (+ ptx)
        ptx_batch = None
        if ptx:
            pick = [ptx[(step * algo.ptx_batch_size + i) % len(ptx)] for i in range(algo.ptx_batch_size)]
            ptx_batch = {"input_ids": [r["input_ids"] for r in pick], "labels": [r["labels"] for r in pick]}
        stats = ray.get(learner.step.remote(prompt_ids, completion_ids, sc["rewards"], [i // n for i in range(len(samples))],
                                            behaviour_logprobs=[s["logprobs"] for s in samples], values=values,
                                            ptx=ptx_batch))

        # 5. critic: fit the GAE returns (queued on the critic actor; it runs while the adapter syncs)
        t0 = time.time()
        critic_ref = critic.update.remote(prompt_ids, completion_ids, stats.pop("returns"), values)

        # 6. sync: move only the adapter, and check that the engine now serves it
        sync = verifier.sync(run_dir / "adapters")
        crit = ray.get(critic_ref)
        t_critic = time.time() - t0

        rewards = sc["rewards"]
        mean_r = sum(rewards) / len(rewards)
        lengths = [len(s["token_ids"]) for s in samples]
        row = {
            "reward/mean": mean_r,
            "reward/std": (sum((r - mean_r) ** 2 for r in rewards) / len(rewards)) ** 0.5,
            **{f"reward/{k}": v for k, v in sc["per_scorer"].items()},
            "reward/failed_items": sc["failed"],
            "actor/kl": stats.get("kl", 0.0), "actor/kl_seq": stats.get("kl_seq", 0.0), "actor/kl_coef": stats["kl_coef"],
            "actor/clipfrac": stats.get("clipfrac", 0.0), "actor/entropy": stats.get("entropy", 0.0),
            "actor/pg_loss": stats.get("pg_loss", 0.0), "actor/approx_kl": stats.get("approx_kl", 0.0),
            "actor/grad_norm": stats.get("grad_norm", 0.0), "actor/lr": stats.get("lr", 0.0),
            "actor/ptx_loss": stats.get("ptx_loss", 0.0), "actor/adv_abs_mean": stats["adv_abs_mean"],
            "critic/value_loss": crit["value_loss"], "critic/vf_clipfrac": crit["vf_clipfrac"],
            "critic/explained_var": crit["explained_var"], "critic/grad_norm": crit["grad_norm"],
            "critic/value_mean": sum(sum(v) for v in values) / max(1, sum(len(v) for v in values)),
            "response/length_mean": sum(lengths) / len(lengths),
            "response/clipped_frac": sum(s["finish_reason"] == "length" for s in samples) / len(samples),
            "perf/tokens_per_s": gen["tokens"] / max(gen["seconds"], 1e-9),
            "time/generate": t_gen, "time/score": t_score, "time/values": t_values, "time/logprobs": stats["time_logprobs"],
            "time/update": stats["time_update"], "time/critic": t_critic, "time/sync": sync["time/sync"],
            "time/step": time.time() - t_step,
            **{k: v for k, v in sync.items() if k.startswith("sync/")}, "adapter_version": sync["adapter_version"],
            "rollout/adapter_version": gen["adapter_version"],
            **{k: v for k, v in stats.items() if k.startswith("rollout_corr/")},
        }
        log.log(step, row)
        bar.update(1)
        bar.set_postfix(reward=f"{mean_r:.3f}", ev=f"{crit['explained_var']:.2f}")
        if cfg.checkpoint.every and (step + 1) % cfg.checkpoint.every == 0 and step + 1 < cfg.train.steps:
            save(step + 1)
    bar.close()

    held_end = heldout_reward(engines, reward, heldout_ids, heldout_rows, cfg.rollout.max_new_tokens)
    save(cfg.train.steps)
    rows_logged = log.read()
    summary = {"run_name": cfg.run_name, "algo": cfg.algo.name, "steps": cfg.train.steps, "model": model_path,
               "critic": {"model": critic_path, "finetune": critic_finetune},
               "heldout_reward_start": held_start, "heldout_reward_end": held_end,
               "train_reward_first": rows_logged[0]["reward/mean"] if rows_logged else None,
               "train_reward_last": rows_logged[-1]["reward/mean"] if rows_logged else None,
               "explained_var_last": rows_logged[-1]["critic/explained_var"] if rows_logged else None,
               "mean_step_s": sum(r["time/step"] for r in rows_logged) / max(1, len(rows_logged)),
               "final_adapter": str(run_dir / "adapters" / f"v{sync['adapter_version']:06d}")}
    log.summary(summary)
    log.plot(["reward/mean", "critic/explained_var", "actor/kl_seq"], "reward_curve.png", f"PPO {cfg.run_name}")
    log.close()
    print(f"[ppo] held-out reward {held_start:.3f} -> {held_end:.3f}; results in {run_dir}", flush=True)
    return summary


if __name__ == "__main__":
    run_cli(main)
