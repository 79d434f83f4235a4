"""GRPO on Ray, read top to bottom: plan -> actors -> (generate -> score -> update -> sync) x steps -> report.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python pipelines/grpo.py run_name=demo
    python pipelines/grpo.py config=tiny-cpu train.steps=10          # local mode, same code
    python pipelines/grpo.py algo.name=dapo                          # (or algo=dapo) the critic-free family:
                                                                     # grpo dr_grpo dapo gspo rloo reinforce_pp reinforce_pp_baseline
    python pipelines/grpo.py train.max_staleness=1                   # asynchronous: generate t+1 while training t

Config: config/tiny-cpu.yaml (default), any key overridable as key.sub=value (see config/schema.py).
Output: runs/<run_name>/ with metrics.jsonl, TensorBoard events (tb/), reward_curve.png, summary.json,
checkpoints/ (resume=true continues from the last complete one; a used run_name needs resume=true or overwrite=true).
The loop's machinery (cluster, verified sync, bounded-staleness rollouts, masking, deadlines, checkpoints) is
pipelines/rl_loop.py, shared with pipelines/ppo.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from actors.learner import LearnerGroup  # noqa: E402
from config import Config, ConfigError, load, run_cli  # noqa: E402
from learners.advantages import zero_variance_groups  # noqa: E402
from learners.algorithms import NEEDS_CRITIC, resolve  # noqa: E402
from pipelines.rl_loop import RLRun, get, mask_failed  # noqa: E402


def dynamic_sampling(groups: list[dict], draw, want: int, max_rounds: int, at_least: int = 1) -> tuple[list[dict], dict]:
    """DAPO's dynamic sampling (Yu et al. 2025, sec. 3.2): keep the groups whose rewards differ (an all-equal
    group has zero advantage, so no gradient) and ``draw(round)`` more until ``want`` are kept or ``max_rounds``
    extra rounds are spent. With none kept at all it returns the first round as it was; with fewer than
    ``at_least`` (one per data-parallel learner) it tops up with dropped ones, in the order drawn. Only the KL
    and entropy terms move on such groups."""
    kept, dropped, rounds, spare, first = [], 0, 0, [], groups
    while True:
        sizes = torch.tensor([len(g["rewards"]) for g in groups])  # groups may differ in size (masked items)
        same = zero_variance_groups(torch.tensor([r for g in groups for r in g["rewards"]]),
                                    torch.arange(len(groups)).repeat_interleave(sizes))
        starts = torch.cumsum(sizes, 0) - sizes
        for i, g in enumerate(groups):
            if same[starts[i]]:
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

    # Data, model, cluster, engines, verified sync, resume: the shared RL machinery. cluster.learner.count
    # learners form one data-parallel group (rank 0 exports and checkpoints); cluster.rollout.count engines share
    # every batch of prompts.
    group: dict = {}

    def make_learners(plan, pg, model_path):
        group["l"] = LearnerGroup(plan, pg, model_path, cfg.model, algo, cfg.train, cfg.seed,
                                  temperature=cfg.rollout.temperature)
        return group["l"].rank0

    R = 1 + (algo.dynamic_sampling_max_rounds if algo.dynamic_sampling else 0)  # prompt draws per step at most
    run = RLRun.start(cfg, algo, "grpo", make_learners, lambda ckpt: group["l"].load_state(ckpt), draws_per_step=R)
    learners, n = group["l"], cfg.rollout.n_samples
    min_group = 2 if algo.adv_estimator != "reinforce_pp" else 1  # a group baseline needs two judged samples

    def as_groups(batch, sc) -> tuple[list[dict], dict]:
        """The judged samples by prompt (failed items masked), and the masking's counts."""
        keep, masked = mask_failed(sc, n, cfg, batch.step, min_group)
        keep = set(keep)
        return [{"prompt_ids": p, "samples": [s for j, s in enumerate(g) if i * n + j in keep],
                 "rewards": [sc["rewards"][i * n + j] for j in range(n) if i * n + j in keep]}
                for i, (p, g) in enumerate(zip(batch.gen["prompt_token_ids"], batch.gen["samples"]))
                if any(i * n + j in keep for j in range(n))], masked

    def draw(step: int, k: int) -> list[dict]:
        batch = run.rollouts.take(step, step, k)
        return as_groups(batch, run.score(batch.rows, batch.samples, n))[0]

    for step in run.steps():
        # 1. generate: n samples per prompt (with train.max_staleness = k, launched up to k versions ago)
        batch = run.rollouts.take(step, version=step)
        t_gen = batch.gen["seconds"]

        # 2. score: per item a reward and a status; items no scorer could judge leave the loss (masked, counted)
        sc = run.score(batch.rows, batch.samples, n)
        groups, masked = as_groups(batch, sc)

        # 2b. DAPO: drop groups with all-equal rewards and draw more prompts until the batch is full (capped)
        ds = {}
        if algo.dynamic_sampling:
            groups, ds = dynamic_sampling(groups, lambda k: draw(step, k), cfg.train.prompts_per_step,
                                          algo.dynamic_sampling_max_rounds, at_least=learners.world)
        if len(groups) < learners.world:
            raise ConfigError(f"step {step}: {len(groups)} prompt groups left after masking failed reward items, fewer "
                              f"than the {learners.world} data-parallel learners")
        train_samples = [s for g in groups for s in g["samples"]]

        # 3. update: reference/old logprobs, advantages of the configured algorithm, clipped objective + KL
        stats = get(learners.step_refs(
            [g["prompt_ids"] for g in groups for _ in g["samples"]], [s["token_ids"] for s in train_samples],
            [r for g in groups for r in g["rewards"]], [i for i, g in enumerate(groups) for _ in g["samples"]],
            behaviour_logprobs=[s["logprobs"] for s in train_samples], loss_masks=run.loss_masks(train_samples),
            ref_logprobs=run.ref_logprobs(train_samples),
            truncated=[s["finish_reason"] == "length" for s in train_samples] if algo.overlong_filter else None),
            "learner", cfg, f"step {step}", run.ckpt)[0]

        # 4. sync: move the new weights, check that the engines now serve them, launch what may use them
        sync = run.after_update()

        row = {**run.common_row(batch, sc, stats, sync), **masked, "time/generate": t_gen,
               "time/score": sc["seconds"],
               **{f"actor/{k}": stats[k] for k in ("kl_loss", "kl_reward") if k in stats},  # where measured
               "actor/clipfrac": stats.get("clipfrac", 0.0),
               "actor/entropy": stats.get("entropy", 0.0), "actor/pg_loss": stats.get("pg_loss", 0.0),
               "actor/approx_kl": stats.get("approx_kl", 0.0), "actor/grad_norm": stats.get("grad_norm", 0.0),
               "actor/lr": stats.get("lr", 0.0), "actor/kl_coef": stats["kl_coef"],
               "actor/adv_abs_mean": stats["adv_abs_mean"], **ds}
        run.log_step(step, row, {"reward": f"{row['reward/mean']:.3f}", "kl": f"{row.get(f'actor/kl_{algo.kl_mode}', 0.0):.4f}"})

    return run.finish({}, ["reward/mean", f"actor/kl_{algo.kl_mode}", "response/length_mean"], f"{cfg.algo.name} {cfg.run_name}")


if __name__ == "__main__":
    run_cli(main)
