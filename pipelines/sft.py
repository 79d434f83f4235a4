"""SFT: teach a base model to follow instructions with a QLoRA (or LoRA, or full) fine-tune on curated chats.

    python pipelines/sft.py run_name=sft-demo sft.steps=60
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python pipelines/sft.py runs_dir=$PWD/runs

data pipeline (driver) -> learner actor in the placement group -> train loop -> held-out loss -> PEFT adapter.
Output in runs/<run_name>/: metrics.jsonl, summary.json, data_report.json, curves.png, checkpoints/, adapter/.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import config  # noqa: E402
from config import Config  # noqa: E402


def main(argv: list[str]) -> dict:
    import ray

    from actors.sft_worker import SFTWorkerActor
    from cluster import actor_options, connect, make_placement_group, plan_resources, require_single
    from datapipe.sft_data import build_sft_data, report_table
    from learners.models import load_tokenizer
    from pipelines.stage import check_model, open_run, prepare_model, release
    from runlog import atomic_write_text

    cfg = config.load(Config, "tiny-cpu", argv)
    require_single(cfg.cluster, ("learner", "reward"), "pipelines/sft.py")
    s = cfg.sft
    check_model(cfg, needs_chat_template=True)  # SFT rows are chats
    run_dir, ckpt = open_run(cfg)
    model_path = prepare_model(cfg, warm_start=False)  # SFT is what teaches the base model to answer

    # 1. Data: read, normalise, clean, dedup, tokenise with the assistant mask, split, mix, pack.
    tokenizer = load_tokenizer(model_path)
    data = build_sft_data(s.sources, tokenizer, s.max_seq_len, max_chars=s.max_chars, dedup=s.dedup,
                          near_dup_threshold=s.near_dup_threshold, num_perm=s.num_perm,
                          heldout_fraction=s.heldout_fraction, heldout_max=s.heldout_max, mix=s.mix,
                          mix_temperature=s.mix_temperature, mix_total=s.mix_total, seed=cfg.seed)
    print(report_table(data.report), flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "data_report.json", json.dumps(data.report, indent=2))
    if not data.heldout:
        raise config.ConfigError("no held-out samples: raise sft.heldout_fraction or give more data")

    # 2. One learner actor in the placement group (the same code on a laptop, a 4080 or a cluster).
    started_ray = not ray.is_initialized()
    connect(cfg.cluster)
    plan = plan_resources(cfg.cluster, roles=("learner",))
    pg = make_placement_group(plan, cfg.cluster.placement_timeout_s)
    worker = SFTWorkerActor.options(**actor_options(plan, pg, "learner")).remote(model_path, cfg.model, s, cfg.seed)
    try:
        print(plan.describe(), ray.get(worker.describe.remote()), flush=True)
        return train(cfg, worker, data, run_dir, model_path, ckpt)
    finally:
        release(pg, worker)
        if started_ray:
            ray.shutdown()


def train(cfg: Config, worker, data, run_dir: Path, model_path: str, ckpt: Path | None = None) -> dict:
    """Steps 3-5 on the learner actor: resume from ``ckpt`` (what open_run found) or start, the training loop, the
    final evaluation and adapter."""
    import ray
    from tqdm import tqdm

    from datapipe.batches import chunks, step_rows
    from learners.sft import perplexity
    from pipelines.stage import finish, fingerprint, resume_from, run_log
    from runlog import atomic_dir

    s = cfg.sft
    data_id = fingerprint(data.train)

    # 3. Resume from the last complete checkpoint (trained on these very rows), or start.
    ckpt_root = run_dir / "checkpoints"
    meta = resume_from(ckpt, data_id, lambda path: ray.get(worker.load_checkpoint.remote(path)))
    start = meta["step"]
    log = run_log(cfg, run_dir, start)

    heldout_start = meta.get("heldout_loss_start")
    if heldout_start is None:
        ev = ray.get(worker.evaluate.remote(data.heldout))
        heldout_start = ev["loss"]
        log.log(0, {"heldout/loss": ev["loss"], "heldout/ppl": ev["ppl"]})

    # 4. Train: each step is grad_accum micro-batches of packed rows, one optimizer update.
    rows_per_step = s.micro_batch_rows * s.grad_accum
    for step in tqdm(range(start, s.steps), desc="sft", disable=not cfg.progress, initial=start, total=s.steps):
        rows = [data.train[i] for i in step_rows(len(data.train), rows_per_step, step, cfg.seed)]
        t0 = time.time()
        m = ray.get(worker.train_step.remote(chunks(rows, s.micro_batch_rows)))
        dt = time.time() - t0
        metrics = {"train/loss": m["loss"], "train/ppl": perplexity(m["loss"]),
                   "train/lr": m["lr"], "train/grad_norm": m["grad_norm"], "train/label_tokens": m["label_tokens"],
                   "perf/step_s": dt, "perf/tokens_per_s": m["tokens"] / dt,
                   "train/epoch": (step + 1) * rows_per_step / len(data.train)}
        done = step + 1
        if (s.eval_every and done % s.eval_every == 0) or done == s.steps:
            ev = ray.get(worker.evaluate.remote(data.heldout))
            metrics.update({"heldout/loss": ev["loss"], "heldout/ppl": ev["ppl"]})
        log.log(done, metrics)
        # The last step is kept too: a resume of a finished run then measures and exports without training.
        if (cfg.checkpoint.every and done % cfg.checkpoint.every == 0) or done == s.steps:
            ray.get(worker.save_checkpoint.remote(str(ckpt_root), done, {"heldout_loss_start": heldout_start,
                                                                          "data": data_id}, cfg.checkpoint.keep))

    # 5. Held-out loss after training (from the last step), the adapter vLLM serves, the summary.
    if start >= s.steps:  # resumed a finished run: nothing trained, measure again
        ev = ray.get(worker.evaluate.remote(data.heldout))
    with atomic_dir(run_dir / "adapter") as tmp:  # a kill mid-export leaves the old adapter or the new, never half
        ray.get(worker.save_adapter.remote(str(tmp)))
    summary = finish(log, {
        "stage": "sft", "model_path": model_path, "finetune": cfg.model.finetune, "steps": s.steps,
        "heldout_loss_start": heldout_start, "heldout_loss_end": ev["loss"],
        "heldout_ppl_start": perplexity(heldout_start), "heldout_ppl_end": ev["ppl"],
        "heldout_samples": data.report["pack_heldout"]["in"], "train_samples": data.report["pack_train"]["in"],
        "train_rows": len(data.train), "pack_fill": data.report["pack_train"]["fill"],
        "adapter": str(run_dir / "adapter"),
    }, ["train/loss", "heldout/loss", "train/lr"], "curves.png", f"SFT {cfg.run_name}")
    print(json.dumps(summary, indent=2), flush=True)
    return summary


if __name__ == "__main__":
    config.run_cli(main)
