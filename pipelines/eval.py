"""Evaluate a list of checkpoints (base, SFT, DPO, RL, ...) on the same suites and write the comparison table.

    python pipelines/eval.py run_name=compare eval.checkpoints='[base, sft=runs/sft/adapter, grpo=runs/grpo/adapter]'
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python pipelines/eval.py ...

Writes runs/<run_name>/: comparison.md / .json / .png (one row per metric, one column per checkpoint, the
change from the first), metrics.jsonl (one row per checkpoint), summary.json, config.json.
Plan -> one vLLM rollout actor per distinct base model (adapters are hot-loaded into it) -> every suite on
every checkpoint -> table.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import Config, ConfigError, load, run_cli  # noqa: E402


def parse_checkpoints(entries: list[str], base: Path) -> list[tuple[str, Path, Path | None]]:
    """``base`` / ``NAME=PATH`` -> (name, model folder, adapter folder or None), in the given order.

    PATH is a PEFT adapter (adapter_config.json; served on its recorded base model when that folder exists,
    else on ``base``) or a full model folder (config.json).
    """
    out, seen = [], set()
    for entry in entries:
        name, sep, path = entry.partition("=")
        name = name.strip()
        if not sep:
            if name != "base":
                raise ConfigError(f"eval.checkpoints: {entry!r} is neither 'base' nor NAME=PATH")
            out.append(("base", base, None))
        else:
            p = Path(path.strip()).expanduser()
            if (p / "adapter_config.json").exists():
                recorded = json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""
                model = Path(recorded) if recorded and (Path(recorded) / "config.json").exists() else base
                out.append((name, model.resolve(), p.resolve()))
            elif (p / "config.json").exists():
                out.append((name, p.resolve(), None))
            else:
                raise ConfigError(f"eval.checkpoints: {entry!r}: {p} holds neither a PEFT adapter (adapter_config.json) "
                                  "nor a transformers model (config.json)")
        if name in seen:
            raise ConfigError(f"eval.checkpoints: the name {name!r} is used twice; names label the table's columns")
        seen.add(name)
    return out


def start_engine(cfg: Config, model_path: Path):
    """A RolloutActor for ``model_path`` in its own placement group, as the training pipelines make them."""
    import ray

    from actors.rollout import RolloutActor
    from cluster import actor_options, make_placement_group, plan_resources

    plan = plan_resources(cfg.cluster, roles=("rollout",))
    pg = make_placement_group(plan, cfg.cluster.placement_timeout_s)
    rollout = dataclasses.replace(cfg.rollout, max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.eval.seed,
                                  sleep_between_phases=False)
    engine = RolloutActor.options(**actor_options(plan, pg, "rollout", 0)).remote(
        str(model_path), rollout, max_lora_rank=cfg.eval.max_lora_rank, dtype=cfg.model.dtype, device=cfg.cluster.device)
    ray.get(engine.info.remote())  # wait for the engine to be up, so that a start failure surfaces here
    return engine, pg


def stop_engine(engine, pg) -> None:
    """Shut the engine down and free its bundle. Called from a finally: an engine that already died must not
    hide the error that brought us here."""
    import ray

    from cluster import release_group

    try:
        ray.get(engine.shutdown.remote(), timeout=120)
    except Exception as e:  # noqa: BLE001 - dead actor or lost node: nothing left to shut down
        print(f"engine shutdown: {type(e).__name__}", flush=True)
    try:
        ray.kill(engine)
        release_group(pg)  # its own group; a run's reservation stays
    except Exception as e:  # noqa: BLE001
        print(f"engine cleanup: {type(e).__name__}", flush=True)


def main(argv: list[str]) -> dict:
    from cluster import connect, require_single
    from evalpanel import run_panel, write_table
    from evalpanel.panel import make_judge
    from evalpanel.report import comparison, markdown
    from evalpanel.suites import load_suites
    from pipelines.stage import check_model, open_run, prepare_model, run_log

    cfg = load(Config, "tiny-cpu", argv)
    require_single(cfg.cluster, ("learner", "rollout", "reward"), "pipelines/eval.py")
    check_model(cfg)
    base = Path(prepare_model(cfg, warm_start=False))  # the model as given (or built), the column others compare to
    checkpoints = parse_checkpoints(cfg.eval.checkpoints, base)
    suites = load_suites(cfg.eval.suites, cfg.eval.limit)  # bad suites fail here, before any engine starts
    run_dir, _ = open_run(cfg)  # no checkpoints here: resume=true is refused, saying so
    runlog = run_log(cfg, run_dir)
    print(f"evaluating {[c[0] for c in checkpoints]} on {[s.name for s in suites]} -> {run_dir}", flush=True)

    connect(cfg.cluster)
    needs_engine = any(s.spec.kind != "perplexity" for s in suites)
    judge = make_judge(cfg.eval, base) if any(s.spec.kind == "win_rate" for s in suites) else None
    results: dict[str, dict] = {}
    baseline = None
    for model_path in dict.fromkeys(c[1] for c in checkpoints):  # one engine per distinct model, in order of first use
        engine, pg = start_engine(cfg, model_path) if needs_engine else (None, None)
        try:
            for i, (name, m, adapter) in enumerate(checkpoints):
                if m != model_path:
                    continue
                r = run_panel(m, adapter, suites, engine=engine, cfg=cfg.eval, against=baseline, judge=judge, name=name)
                results[name] = r
                baseline = baseline or r
                runlog.log(i, {"checkpoint": name, **r["metrics"]})
                print(f"[{name}] {sum(r['seconds'].values()):.1f} s: "
                      + ", ".join(f"{k}={v:.3f}" for k, v in r["metrics"].items()), flush=True)
        finally:
            if engine is not None:
                stop_engine(engine, pg)
    results = {c[0]: results[c[0]] for c in checkpoints}  # table columns in the order given

    paths = write_table(results, run_dir)
    comp = comparison(results)
    runlog.summary({"checkpoints": comp["checkpoints"], "baseline": comp["baseline"],
                    "table": {k: str(p) for k, p in paths.items()},
                    **{f"{n}/{k}": v for k, row in comp["metrics"].items() for n, v in row.items()}})
    runlog.close()
    print(markdown(comp), flush=True)
    return results


if __name__ == "__main__":
    run_cli(main)
