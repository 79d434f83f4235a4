"""The course in one run: SFT -> DPO -> GRPO -> one continual stage, each stage's output the next stage's input,
and the evaluation panel's table after every stage.

    python pipelines/course.py run_name=course eval.suites=[heldout,arithmetic]
    python pipelines/course.py run_name=course sft:sft.steps=100 dpo:train.steps=40 grpo:train.steps=20
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python pipelines/course.py runs_dir=$PWD/runs

Overrides: ``key=value`` goes to every stage; ``STAGE:key=value`` (STAGE = sft, dpo, grpo, continual) to that
stage only (the stages read ``train.steps`` differently, for one). Each stage runs as a Ray job of its own --
pipelines/<stage>.py in a child process that joins this run's cluster -- so it gets its own placement group
and gives it back when it ends.

    base --sft.py--> SFT adapter                       sft       = base + SFT adapter
         --dpo.py, starting from the SFT adapter,
           reference = the SFT model-->                dpo       = base + DPO adapter
         --grpo.py, starting from the DPO adapter,
           reference = the SFT model-->                grpo      = base + RL adapter (merged: the RL model)
         --continual.py on the RL model: a new
           instruction task, SFT data replayed-->      continual = RL model + continual adapter

Writes runs/<run_name>/: <stage>/ (each stage's own run folder), models/ (merged models), comparison.md /
.json / .png (the panel's table, rewritten after every stage), summary.json.

Re-running a run_name: refused unless ``resume=true`` (go on with the course: stages that finished are reused,
the one that was cut off resumes from its checkpoint, or starts again when it left none) or ``overwrite=true``
(the whole course folder is replaced and every stage runs again).
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from config import Config, ConfigError, load, run_cli, to_dict  # noqa: E402

STAGES = ("sft", "dpo", "grpo", "continual")


def split_overrides(argv: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """``key=value`` (every stage) and ``STAGE:key=value`` (one stage) apart."""
    common, per = [], {s: [] for s in STAGES}
    for a in argv:
        head, sep, rest = a.partition(":")
        if sep and "=" not in head:
            if head not in per:
                raise ConfigError(f"override {a!r}: {head!r} is not a stage; use one of {list(STAGES)} (STAGE:key=value)")
            per[head].append(rest)
        else:
            common.append(a)
    return common, per


def merge_adapter(base: str, adapter: str, out_dir: Path) -> str:
    """base + LoRA adapter -> one full model folder (W' = W + (alpha/r) B A), for the next stage to start from."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from learners.models import derived_is_current, mark_derived, source_stamp

    # Reused only when made from this very base and adapter: a rerun under the same run_name trains new adapters,
    # and a stale merged model would silently become the next stage's start.
    stamp = source_stamp(base, adapter)
    if derived_is_current(out_dir, stamp):
        return str(out_dir)
    from runlog import atomic_dir

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    with atomic_dir(out_dir) as tmp:  # the next stage never starts from a half-written model
        merged.save_pretrained(str(tmp), safe_serialization=True)
        AutoTokenizer.from_pretrained(base).save_pretrained(str(tmp))
        mark_derived(tmp, stamp)
    return str(out_dir)


def run_stage(script: str, args: list[str], run_dir: Path, env: dict, resume: bool = False) -> dict:
    """Run pipelines/<script> as its own Ray job on this cluster; its summary.json.

    In a resumed course (``resume``) a stage that finished in an earlier attempt (its summary.json is there) is
    not run again; one that was cut off resumes from its last complete checkpoint, or, when it left none, starts
    again over what it left."""
    from runlog import latest_checkpoint
    from runlog.rundir import run_dir_entries

    flags = []
    if resume and (run_dir / "summary.json").exists():
        print(f"\n[course] {run_dir.name}: finished in an earlier attempt, its results are reused "
              "(overwrite=true runs the whole course again)", flush=True)
        return json.loads((run_dir / "summary.json").read_text())
    if resume and latest_checkpoint(run_dir / "checkpoints") is not None:
        flags = ["resume=true"]
    elif resume and run_dir_entries(run_dir):
        flags = ["overwrite=true"]  # cut off before its first checkpoint: nothing to resume from
    cmd = [sys.executable, str(REPO / "pipelines" / script), *flags, *args]  # a STAGE:key=value in args still wins
    print(f"\n[course] $ {shlex.join(cmd)}", flush=True)
    rc = subprocess.run(cmd, cwd=str(REPO), env=env).returncode
    if rc != 0:
        raise RuntimeError(f"stage {script} failed (exit code {rc}); its output is above. Re-run it alone with:\n"
                           f"  {shlex.join(cmd)}")
    return json.loads((run_dir / "summary.json").read_text())


def main(argv: list[str]) -> dict:
    import ray

    from cluster import connect
    from evalpanel import run_panel, write_table
    from evalpanel.report import comparison, markdown
    from evalpanel.suites import load_suites
    from pipelines.stage import prepare_model
    from runlog import atomic_write_text
    from runlog.rundir import refuse_reuse, replace_run_dir, run_dir_entries

    # 1. Config: the common part is checked here, each stage checks its own part when it starts.
    common, per = split_overrides(argv)
    cfg = load(Config, "tiny-cpu", common)
    for stage in STAGES:
        load(Config, "tiny-cpu", common + per[stage])  # a wrong stage key fails now, not an hour in
    course_dir = Path(cfg.runs_dir).resolve() / cfg.run_name
    suites = load_suites(cfg.eval.suites, cfg.eval.limit)
    from pipelines.preflight import check_model_dir, check_scorers

    if cfg.model.path:
        check_model_dir("model.path", cfg.model.path, needs_chat_template=True)  # the SFT stage trains on chats
    check_scorers(cfg.reward)  # the DPO and GRPO stages score with them

    # The course folder holds every stage's run folder: one check here, and each stage is told what to do with
    # its own (see run_stage).
    earlier = run_dir_entries(course_dir)
    if cfg.resume and cfg.overwrite:
        raise ConfigError("resume=true and overwrite=true contradict each other: resume=true goes on with the course "
                          f"in {course_dir}, overwrite=true deletes it; pass one")
    if cfg.resume and not earlier:
        raise ConfigError(f"resume=true but {course_dir} holds no earlier course to go on with; drop resume=true")
    if earlier and not cfg.resume and not cfg.overwrite:
        raise refuse_reuse(course_dir, earlier)
    if earlier and cfg.overwrite:
        print(f"overwrite=true: removing the earlier course in {course_dir}", flush=True)
        replace_run_dir(course_dir)
    course_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(course_dir / "config.json", json.dumps(to_dict(cfg), indent=2, default=str))

    # 2. The cluster every stage joins, and the starting model.
    connect(cfg.cluster)
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    base = prepare_model(cfg)
    shared = [a for a in common if not a.startswith(("run_name=", "runs_dir=", "model.path=", "resume=", "overwrite="))]

    def args(stage: str, defaults: dict | None = None, **keys) -> list[str]:
        """The stage's command line: its defaults < the common overrides < what the course wires in < STAGE:key=value."""
        return [f"runs_dir={course_dir}", f"run_name={stage}", *[f"{k}={v}" for k, v in (defaults or {}).items()],
                *shared, *[f"{k}={v}" for k, v in keys.items()], *per[stage]]

    results: dict[str, dict] = {}
    stages: dict[str, dict] = {}

    def evaluate(name: str, model: str, adapter: str | None) -> None:
        """The panel on this stage's model, then the whole table so far (the first column is the baseline)."""
        results[name] = run_panel(model, adapter, suites, cfg=cfg.eval, against=results.get("base"), name=name)
        stages.setdefault(name, {}).update(model=model, adapter=adapter, metrics=results[name]["metrics"])
        write_table(results, course_dir)
        print(f"\n[course] after {name}:\n{markdown(comparison(results))}", flush=True)

    evaluate("base", base, None)

    # 3. SFT on the base: an adapter.
    s = run_stage("sft.py", args("sft", **{"model.path": base}), course_dir / "sft", env, cfg.resume)
    evaluate("sft", base, s["adapter"])
    sft_model = merge_adapter(base, s["adapter"], course_dir / "models" / "sft")

    # 4. DPO from the SFT adapter; its reference is the SFT model (the adapter's frozen copy).
    d = run_stage("dpo.py", args("dpo", **{"model.path": base, "dpo.sft_adapter": s["adapter"]}), course_dir / "dpo", env,
                  cfg.resume)
    evaluate("dpo", base, d["adapter"])

    # 5. GRPO from the DPO adapter on the same base; its KL reference is the SFT adapter (frozen in the learner).
    g = run_stage("grpo.py", args("grpo", **{"model.path": base, "model.adapter": d["adapter"],
                                             "model.reference_adapter": s["adapter"]}), course_dir / "grpo", env,
                  cfg.resume)
    engine_base = course_dir / "grpo" / "engine_base"  # the dequantised base a QLoRA learner trained on
    grpo_base = str(engine_base) if (engine_base / "config.json").exists() else base
    evaluate("grpo", grpo_base, g["final_adapter"])
    rl_model = merge_adapter(grpo_base, g["final_adapter"], course_dir / "models" / "grpo")

    # 6. One continual stage on the RL model: a new instruction task, with the SFT data as the past to replay.
    memory = "[" + ",".join(cfg.sft.sources) + "]"
    defaults = {"continual.stream": "instruct", "continual.tasks": "[reverse]", "continual.methods": "[inscl]"}
    c = run_stage("continual.py", args("continual", defaults, **{"model.path": rl_model, "continual.memory": memory}),
                  course_dir / "continual", env, cfg.resume)
    method = next(iter(c["methods"]))
    final = c["methods"][method]["final"]
    evaluate("continual", final["model"], final["adapter"])

    summary = {"stages": {**stages, "continual": {**stages["continual"], "method": method, "tasks": c["tasks"],
                                                   "R": c["methods"][method]["R"]}},
               "sft_heldout_loss": [s["heldout_loss_start"], s["heldout_loss_end"]],
               "dpo_heldout_accuracy": [d["heldout_accuracy_before"], d["heldout_accuracy_after"]],
               "grpo_heldout_reward": [g["heldout_reward_start"], g["heldout_reward_end"]],
               "table": str(course_dir / "comparison.md")}
    atomic_write_text(course_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary


if __name__ == "__main__":
    run_cli(main)
