"""Continual learning for the LLM: a stream of tasks learnt one after another, each method from the same start.

    python pipelines/continual.py continual.stream=instruct continual.methods=[seq_lora,replay,inscl]
    python pipelines/continual.py continual.stream=align continual.methods=[seq_lora,cppo,copr]
    python pipelines/continual.py continual.stream=files continual.tasks=[a=data/a.jsonl,b=data/b.jsonl,c=data/c.jsonl]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python pipelines/continual.py runs_dir=$PWD/runs

config -> stream (built-in, or the user's files) -> evaluation suites per task -> one placement group (learner,
plus a rollout engine when a score needs generation) -> per method: a learner actor; the start scored; per task:
replay rows chosen, the task learnt, the weights exported, every task scored by the evaluation panel (R[t][i]) ->
runs/<run_name>/: metrics.jsonl, summary.json (matrices, OP/BWT/FWT/forgetting, general-ability deltas),
methods.md/.json (the comparison), matrices.png, methods.png, general/comparison.md, suites/, stages/.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import Config, ConfigError, load, run_cli  # noqa: E402


def _quiet() -> None:
    """The panel loads a model per evaluation; transformers' load bars would bury the run's own lines."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def load_stream(cfg: Config):
    from llm_continual.streams import builtin_stream
    from llm_continual.user_streams import file_stream

    cc = cfg.continual
    if cc.stream == "files":
        return file_stream(cc.tasks, cc.heldout_fraction, cfg.seed)
    try:
        return builtin_stream(cc.stream, cc.n_tasks, cc.train_size, cc.test_size, cfg.seed, names=cc.tasks)
    except ValueError as e:
        raise ConfigError(f"continual.tasks / continual.n_tasks: {e}") from None


def choose_replay(kind: str, task, past: list[tuple[str, list[dict]]], cc, seed: int,
                  embeddings: dict) -> tuple[list[dict], dict]:
    """Rows of earlier tasks (and of the memory) learnt again with ``task``: none, a uniform share of them
    (replay, and multistage's prompts), or InsCL's distance-split, information-sampled share. ``embeddings``
    caches each task's MiniLM instruction embeddings across methods."""
    from llm_continual.replay import replay_budget, uniform_replay
    from llm_continual.streams import instruction_text

    if kind == "none" or not past:
        return [], {}
    budget = replay_budget(len(task.train), cc.replay_ratio)
    if kind in ("uniform", "self_distill"):
        return uniform_replay([rows for _, rows in past], budget, seed), {}
    from llm_continual.inscl import embed_instructions, plan_replay

    for name, rows in past + [(task.name, task.train)]:
        if name not in embeddings:
            embeddings[name] = embed_instructions([instruction_text(r) for r in rows[:cc.inscl_embed_rows]])
    rows, rep = plan_replay(embeddings[task.name],
                            [(rows, [instruction_text(r) for r in rows], embeddings[name]) for name, rows in past],
                            budget, seed)
    return rows, {f"inscl/{name}": {"distance": d, "share": k}
                  for (name, _), d, k in zip(past, rep["distances"], rep["shares"])}


def main(argv: list[str]) -> dict:
    import ray

    from cluster import actor_options, connect, make_placement_group, plan_resources, release_group, require_single
    from evalpanel import run_panel
    from evalpanel import write_table as write_general_table
    from evalpanel.report import direction
    from evalpanel.suites import load_suites
    from llm_continual import report
    from llm_continual.evaluation import needs_engine, task_score, write_suites
    from llm_continual.methods import check_method
    from llm_continual.user_streams import memory_rows
    from llm_continual.worker import ContinualActor
    from pipelines.stage import check_model, open_run, prepare_model, run_log
    from runlog import atomic_write_text

    # 1. Config, stream, methods, suites: every user error surfaces here, before a model loads.
    cfg = load(Config, "tiny-cpu", argv)
    require_single(cfg.cluster, ("learner", "rollout", "reward"), "pipelines/continual.py")
    _quiet()
    cc = cfg.continual
    check_model(cfg)
    tasks = load_stream(cfg)
    phase = tasks[0].phase
    memory = memory_rows(cc.memory, phase, cfg.seed)
    methods = [check_method(m, phase, cfg.model.finetune) for m in cc.methods]
    # Before anything is written there. This stage keeps no checkpoints, so resume=true is refused with the way out.
    run_dir, _ = open_run(cfg)
    suites = write_suites(tasks, run_dir / "suites", cc.score)
    general = load_suites(cc.general_suites, cfg.eval.limit)
    names = [t.name for t in tasks]
    print(f"[continual] {phase} stream {names}, methods {[m.name for m in methods]} -> {run_dir}", flush=True)

    # 2. The starting model and the cluster: one placement group for the whole run.
    model_path = prepare_model(cfg)
    connect(cfg.cluster)
    generate = needs_engine(suites) or any(s.spec.kind != "perplexity" for s in general)
    plan = plan_resources(cfg.cluster, ("rollout", "learner") if generate else ("learner",))
    pg = make_placement_group(plan, cfg.cluster.placement_timeout_s)
    log = run_log(cfg, run_dir)
    engine = {"actor": None, "model": None}

    def engine_for(model: str):
        """The run's rollout engine when it serves ``model`` (started on first need); None lets the panel build
        its own for another base (a full fine-tune's weights) -- or skip it when every suite is perplexity."""
        if not generate:
            return None
        if engine["actor"] is None:
            import dataclasses

            from actors.rollout import RolloutActor

            rc = dataclasses.replace(cfg.rollout, max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.eval.seed,
                                     sleep_between_phases=False)
            engine["actor"] = RolloutActor.options(**actor_options(plan, pg, "rollout")).remote(
                model, rc, max_lora_rank=cfg.eval.max_lora_rank, dtype=cfg.model.dtype, device=cfg.cluster.device)
            engine["model"] = model
        return engine["actor"] if engine["model"] == model else None

    base_scores: dict[str, tuple[list[float], dict]] = {}

    def evaluate(model: str, adapters: dict) -> tuple[list[float], dict]:
        """Score every task with the panel (``adapters``: {"all": path} or per task id; none = the base)."""
        metrics: dict = {}
        groups = ([(adapters.get("all"), [s for n in names for s in suites[n].refs])] if "all" in adapters or not adapters
                  else [(adapters.get(i), suites[n].refs) for i, n in enumerate(names)])
        for adapter, refs in groups:
            res = run_panel(model, adapter, refs, engine=engine_for(model), cfg=cfg.eval)
            metrics.update(res["metrics"])
        return [task_score(suites[n], metrics) for n in names], metrics

    def general_panel(model: str, adapter: str | None, name: str) -> dict:
        return run_panel(model, adapter, general, engine=engine_for(model), cfg=cfg.eval, name=name)

    # 3. Each method on the stream, from the same start.
    embeddings: dict[str, object] = {}
    results: dict[str, dict] = {}
    general_results: dict[str, dict] = {}
    general_start: dict[str, dict] = {}  # per starting weights (a QLoRA base is the dequantised copy)
    step = 0
    try:
        for m in methods:
            t_method = time.time()
            worker = ContinualActor.options(**actor_options(plan, pg, "learner")).remote(
                model_path, cfg.model, cc, m.name, phase, cfg.seed)
            print(f"[continual] {m.name}: {ray.get(worker.describe.remote())}", flush=True)
            ray.get(worker.prepare.remote([r for t in tasks for r in t.train] + [r for _, rows in memory for r in rows]))
            base = ray.get(worker.export_base.remote(str(run_dir / "eval_base")))
            if base not in base_scores:  # the untrained model's scores: b for FWT, and the general-ability start
                base_scores[base] = evaluate(base, {})
                general_start[base] = general_panel(base, None, "start")
                general_results.setdefault("start", general_start[base])
            b = base_scores[base][0]
            R, stages = [], []
            for t, task in enumerate(tasks):
                past = memory + [(p.name, p.train) for p in tasks[:t]]
                replay, replay_info = choose_replay(m.replay, task, past, cc, cfg.seed * 1000 + t, embeddings)
                train = ray.get(worker.train_task.remote(t, task.name, task.train, replay))
                out = ray.get(worker.export.remote(str(run_dir / "stages" / m.name / f"{t:02d}-{task.name}")))
                model = out["model"] or base
                scores, metrics = evaluate(model, out["adapters"])
                R.append(scores)
                stages.append({"task": task.name, "train": train, "replay": replay_info, "weights": out, "metrics": metrics})
                log.log(step, {"method": m.name, "stage": t, "task": task.name, "train/loss": train["loss"],
                               "train/replay_rows": train["replay_rows"], "train/seconds": train["seconds"],
                               "cl/acc_seen": sum(scores[: t + 1]) / (t + 1),
                               **{f"cl/R/{n}": s for n, s in zip(names, scores)},
                               **{k: v for k, v in train.items() if "/" in k}})
                step += 1
                print(f"[continual] {m.name} after {task.name}: " + ", ".join(f"{n}={s:.3f}" for n, s in zip(names, scores)),
                      flush=True)
            last = out["adapters"].get("all") or (out["adapters"].get(len(tasks) - 1) if out["adapters"] else None)
            general_results[m.name] = general_panel(model, last, m.name)
            results[m.name] = {"R": R, "b": b, "stages": stages, "final": {"model": model, "adapter": last},
                               "start": base, "seconds": time.time() - t_method}
            ray.kill(worker)
    finally:
        if engine["actor"] is not None:
            try:
                ray.get(engine["actor"].shutdown.remote())
            finally:
                ray.kill(engine["actor"])
        release_group(pg)  # its own group; a run's reservation stays

    # 4. Report: matrices, the methods' comparison, the general-ability table, plots, summary.json.
    rows = []
    for name, r in results.items():
        start, end = general_start[r["start"]]["metrics"], general_results[name]["metrics"]
        # Lengths and judge diagnostics (no better direction) stay in general/comparison.md, out of the table.
        r["general_delta"] = {k: end[k] - start[k] for k in start if k in end and direction(k) != 0}
        rows.append(report.method_row(name, r["R"], r["b"], r["general_delta"], r["seconds"]))
    paths = report.write_table(rows, run_dir, cc.score)
    report.plot_matrices({n: r["R"] for n, r in results.items()}, names, run_dir / "matrices.png")
    report.plot_methods(rows, run_dir / "methods.png")
    write_general_table(general_results, run_dir / "general")
    summary = {"stream": cc.stream, "phase": phase, "tasks": names, "score": cc.score, "model": model_path,
               "methods": {n: {k: v for k, v in r.items() if k != "stages"} for n, r in results.items()},
               "table": rows, "files": {k: str(p) for k, p in paths.items()}}
    log.summary(summary)
    atomic_write_text(run_dir / "stages.json",
                      json.dumps({n: r["stages"] for n, r in results.items()}, indent=2, default=str))
    log.close()
    print(report.markdown(rows, cc.score), flush=True)
    return summary


if __name__ == "__main__":
    run_cli(main)
