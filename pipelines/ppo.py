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

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402

from actors.critic import CriticActor  # noqa: E402
from actors.learner import LearnerActor  # noqa: E402
from cluster import actor_options, require_single, torch_threads  # noqa: E402
from config import Config, ConfigError, load, run_cli  # noqa: E402
from learners.algorithms import NEEDS_CRITIC, resolve  # noqa: E402
from pipelines.preflight import check_model_dir  # noqa: E402
from pipelines.rl_loop import RLData, RLRun, get, mask_failed  # noqa: E402


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

    def critic_checks():
        if cfg.algo.critic_model and not cfg.algo.critic_model.startswith("preset:"):
            check_model_dir("algo.critic_model", cfg.algo.critic_model, causal_lm=False)

    # Data, model, cluster, engines, verified sync, resume: the shared RL machinery; the critic shares the
    # learner's bundle (half its share each).
    roles: dict = {}

    def make_learners(plan, pg, model_path):
        critic_path, critic_finetune = critic_source(cfg, model_path)
        learner_opts, critic_opts = split_learner_share(plan, pg)
        threads = torch_threads(plan, "learner", concurrent=cfg.train.max_staleness > 0)
        roles["learner"] = LearnerActor.options(**learner_opts).remote(
            model_path, cfg.model, algo, cfg.train, cfg.seed, num_threads=threads, temperature=cfg.rollout.temperature)
        roles["critic"] = CriticActor.options(**critic_opts).remote(
            critic_path, model_path, critic_finetune, cfg.model.lora, cfg.model.dtype, algo, cfg.train, cfg.seed,
            num_threads=threads)
        roles["critic_src"] = {"model": critic_path, "finetune": critic_finetune}
        return roles["learner"]

    def load_state(ckpt: str):
        ray.get([roles["learner"].load_state.remote(ckpt), roles["critic"].load_state.remote(ckpt)])

    def save_state(d):
        ray.get([roles["learner"].save_state.remote(str(d)), roles["critic"].save_state.remote(str(d))])

    data = RLData.load(cfg, critic_checks)
    ptx = ptx_rows(cfg, data.tok) if algo.ptx_coef > 0 else []  # bad ptx data is named before the cluster starts
    run = RLRun.start(cfg, algo, "ppo", make_learners, load_state, save_state, data=data)
    learner, critic, n = roles["learner"], roles["critic"], cfg.rollout.n_samples

    for step in run.steps():
        # 1. generate: n samples per prompt (with train.max_staleness = k, launched up to k versions ago)
        batch = run.rollouts.take(step, version=step)

        # 2. score: one scalar per completion; items no scorer could judge leave the batch (masked, counted)
        sc = run.score(batch.rows, batch.samples, n)
        keep, masked = mask_failed(sc, n, cfg, step)
        samples = [batch.samples[i] for i in keep]
        prompt_ids = [batch.gen["prompt_token_ids"][i // n] for i in keep]
        completion_ids = [s["token_ids"] for s in samples]

        # 3. values: V(s_t) of every completion token under the current critic
        t0 = time.time()
        values = get(critic.values.remote(prompt_ids, completion_ids), "learner", cfg, "critic values", run.ckpt)
        t_values = time.time() - t0

        # 4. policy: KL penalty in the token rewards, GAE + whitening, PPO epochs over minibatches (+ ptx)
        ptx_batch = None
        if ptx:
            pick = [ptx[(step * algo.ptx_batch_size + i) % len(ptx)] for i in range(algo.ptx_batch_size)]
            ptx_batch = {"input_ids": [r["input_ids"] for r in pick], "labels": [r["labels"] for r in pick]}
        stats = get(learner.step.remote(prompt_ids, completion_ids, [sc["rewards"][i] for i in keep],
                                        [i // n for i in keep], behaviour_logprobs=[s["logprobs"] for s in samples],
                                        values=values, ptx=ptx_batch, loss_masks=run.loss_masks(samples),
                                        ref_logprobs=run.ref_logprobs(samples)),
                    "learner", cfg, f"step {step}", run.ckpt)

        # 5. critic: fit the GAE returns (queued on the critic actor; it runs while the weights sync)
        t0 = time.time()
        critic_ref = critic.update.remote(prompt_ids, completion_ids, stats.pop("returns"), values,
                                          run.loss_masks(samples))

        # 6. sync: move the new weights, check that the engines now serve them, launch what may use them
        sync = run.after_update()
        crit = get(critic_ref, "learner", cfg, "critic update", run.ckpt)
        t_critic = time.time() - t0

        row = {**run.common_row(batch, sc, stats, sync), **masked, "time/generate": batch.gen["seconds"],
               "time/score": sc["seconds"], "time/values": t_values, "time/critic": t_critic,
               **{f"actor/{k}": stats[k] for k in ("kl_loss", "kl_reward") if k in stats},  # where measured
               "actor/kl_seq": stats.get("kl_seq", 0.0), "actor/kl_coef": stats["kl_coef"],
               "actor/clipfrac": stats.get("clipfrac", 0.0), "actor/entropy": stats.get("entropy", 0.0),
               "actor/pg_loss": stats.get("pg_loss", 0.0), "actor/approx_kl": stats.get("approx_kl", 0.0),
               "actor/grad_norm": stats.get("grad_norm", 0.0), "actor/lr": stats.get("lr", 0.0),
               "actor/ptx_loss": stats.get("ptx_loss", 0.0), "actor/adv_abs_mean": stats["adv_abs_mean"],
               "critic/value_loss": crit["value_loss"], "critic/vf_clipfrac": crit["vf_clipfrac"],
               "critic/explained_var": crit["explained_var"], "critic/grad_norm": crit["grad_norm"],
               "critic/value_mean": sum(sum(v) for v in values) / max(1, sum(len(v) for v in values))}
        run.log_step(step, row, {"reward": f"{row['reward/mean']:.3f}", "ev": f"{crit['explained_var']:.2f}"})

    rows = run.log.read()
    return run.finish({"critic": roles["critic_src"],
                       "explained_var_last": rows[-1]["critic/explained_var"] if rows else None},
                      ["reward/mean", "critic/explained_var", "actor/kl_seq"], f"PPO {cfg.run_name}")


if __name__ == "__main__":
    run_cli(main)
