"""What every stage's script does around its own flow, written once: the run folder (new, resumed or replaced),
the starting model, the data a checkpoint was trained on, held-out evaluation, the logged training step, periodic
checkpoints, the summary, and freeing the actors.

A training stage (pipelines/sft.py, dpo.py, rm.py) reads:

    check_model(cfg)                                       # user errors first, before anything is written
    run_dir, ckpt = open_run(cfg)                          # runs_dir/run_name: new, resume=true or overwrite=true
    model_path = prepare_model(cfg)
    ... rows, placement group, learner actor ...
    meta = resume_from(ckpt, fingerprint(train), load)     # {"step": 0} for a new run
    log = run_log(cfg, run_dir, meta["step"])
    heldout = Heldout(log, evaluate, every, steps, meta["step"])
    for step in range(meta["step"], steps):
        m, dt = logged_step(log, step + 1, lambda: <the learner's step>, "pairs", len(batch))
        heldout.after(step + 1)
        checkpoint(cfg, run_dir, step + 1, steps, write, {"data": data_id})
    finish(log, summary, curves, "curves.png", title)
    ... finally: release(pg, learner)
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from config import Config, ConfigError, to_dict
# One fingerprint for every stage's rows (a dict per row, in order), so that a checkpoint names its data one way.
from datapipe.preference import fingerprint  # noqa: F401
from runlog import RunLog, prepare_run_dir, save_checkpoint
from runlog.checkpoints import read_meta


def check_model(cfg: Config, needs_chat_template: bool = False) -> None:
    """``model.path``, when given, is a causal-LM folder with a tokenizer (and a chat template when the stage's
    data are chats): a wrong folder is a ``ConfigError`` naming the key before a run folder or a cluster exists."""
    if cfg.model.path:
        from pipelines.preflight import check_model_dir

        check_model_dir("model.path", cfg.model.path, needs_chat_template=needs_chat_template)


def open_run(cfg: Config) -> tuple[Path, Path | None]:
    """The run folder runs_dir/run_name (absolute), checked before anything is written there
    (``runlog.prepare_run_dir``: refused when it holds another run, replaced with overwrite=true), and the
    checkpoint to resume from with resume=true (None: a new run)."""
    run_dir = Path(cfg.runs_dir).resolve() / cfg.run_name
    return run_dir, prepare_run_dir(run_dir, cfg.resume, cfg.overwrite)


def prepare_model(cfg: Config, warm_start: bool = True) -> str:
    """The base to train: ``model.path``, or a tiny model built here -- plus, with ``warm_start``, the built-in
    task's supervised warm start when data.warm_start_steps > 0 and data.train is builtin:arithmetic (SFT and the
    evaluation panel take the bare model).

    The warm start is part of the model, like a pretrained checkpoint: it follows ``model.model_seed``, not the
    run's ``seed``, so runs that differ only in ``seed`` start from the same model (a seed sweep then measures the
    stage's robustness, not the warm start's)."""
    if cfg.model.path:
        return cfg.model.path
    from tinymodels import ensure_tiny_model

    path = ensure_tiny_model(cfg.cache_dir, cfg.model.preset, cfg.model.model_seed)
    if warm_start and cfg.data.warm_start_steps and cfg.data.train == "builtin:arithmetic":
        from tasks.arithmetic import make_rows, solution
        from tasks.warm_start import warm_start as train_warm_start

        path = train_warm_start(path, make_rows(cfg.data.builtin_size, seed=cfg.model.model_seed + 1000), solution,
                                cfg.data.warm_start_steps, Path(cfg.cache_dir) / "warm", seed=cfg.model.model_seed)
    elif warm_start and cfg.data.warm_start_steps and cfg.data.train in ("builtin:calculator", "builtin:python"):
        # Tool use: tool-using transcripts (call, the tool's real result, the answer) teach the format; half the rows
        # are answered straight away instead, so the warmed-up model calls the tool on some prompts only and RL has
        # room to climb (tasks/tools.py: warm_start_transcript). The prompts offer the run's environment's tools.
        from envs.registry import make_env
        from tasks import tools as tool_tasks
        from tasks.warm_start import warm_start as train_warm_start

        tool = cfg.data.train.split(":", 1)[1]
        rows = tool_tasks.make_rows(cfg.data.builtin_size, seed=cfg.model.model_seed + 1000, tool=tool)
        path = train_warm_start(path, rows, lambda r: tool_tasks.warm_start_transcript(r, tool)[len(r["prompt"]):],
                                cfg.data.warm_start_steps, Path(cfg.cache_dir) / "warm", seed=cfg.model.model_seed,
                                tools=make_env(cfg.env).tools if cfg.env.name else None)
    return str(path)


def resume_from(ckpt: Path | None, data_id: str, load: Callable[[str], object]) -> dict:
    """The checkpoint's meta (its ``step`` and what the stage kept in it) once ``load(path)`` has restored the
    learner from it; ``{"step": 0}`` for a new run (``ckpt`` None). A checkpoint trained on other rows than
    these (fingerprint ``data_id``) is refused: a run never resumes onto other data."""
    if ckpt is None:
        return {"step": 0}
    meta = read_meta(ckpt)
    if meta.get("data") != data_id:
        raise ConfigError(f"resume=true but {ckpt} was trained on other data than this run's (sources, cleaning, "
                          "split or seed changed); resume with the same data settings and seed, or pick a new run_name")
    load(str(ckpt))
    print(f"resuming from {ckpt} at step {meta['step']}", flush=True)
    return meta


def run_log(cfg: Config, run_dir: Path, start: int = 0) -> RunLog:
    """The run's metrics.jsonl (and TensorBoard with ``tensorboard``), config.json beside it. Resumed at checkpoint
    step ``start``, the rows up to that step stay (a training row is logged as step + 1, after its update) and the
    rest, from the run that was cut off, go."""
    return RunLog(run_dir, cfg.tensorboard, start + 1 if start else 0, config=to_dict(cfg))


class Heldout:
    """Held-out evaluation: ``evaluate()`` -> metrics, logged as heldout/<name> at step 0, every ``every`` steps
    and at the last of ``steps``.

    ``first`` is step 0's -- for a run resumed at ``start`` > 0 the original run's, read back from metrics.jsonl
    (measured again, not logged, where it is missing), so before and after compare with the same start -- and
    ``last`` the latest evaluation (``first`` when none followed)."""

    def __init__(self, log: RunLog, evaluate: Callable[[], dict], every: int, steps: int, start: int):
        self.log, self.evaluate, self.every, self.steps = log, evaluate, every, steps
        self.evals: dict[int, dict] = {}
        if start:
            row0 = next((x for x in log.read() if x["step"] == 0 and any(k.startswith("heldout/") for k in x)), {})
            first = {k.removeprefix("heldout/"): v for k, v in row0.items() if k.startswith("heldout/")}
            self.first = first or evaluate()
        else:
            self.first = self.at(0)

    def at(self, step: int) -> dict:
        m = self.evaluate()
        self.evals[step] = m
        self.log.log(step, {f"heldout/{k}": v for k, v in m.items()})
        return m

    def after(self, step: int) -> None:
        """Evaluate after training step ``step`` when it is due."""
        if step % self.every == 0 or step == self.steps:
            self.at(step)

    @property
    def last(self) -> dict:
        return self.evals[max(self.evals)] if self.evals else self.first


def logged_step(log: RunLog, step: int, train_step: Callable[[], dict], unit: str, rows: int) -> tuple[dict, float]:
    """Run ``train_step()`` (one optimizer step on the learner, returning its metrics) and log them as train/<name>
    at ``step`` with the step's seconds (perf/step_s) and throughput (perf/<unit>_per_s over ``rows``); returns
    the metrics and the seconds."""
    t0 = time.time()
    m = train_step()
    dt = time.time() - t0
    log.log(step, {**{f"train/{k}": v for k, v in m.items()}, "perf/step_s": dt, f"perf/{unit}_per_s": rows / dt})
    return m, dt


def checkpoint(cfg: Config, run_dir: Path, step: int, steps: int, write: Callable[[Path], None], meta: dict) -> None:
    """A checkpoint of ``step`` under run_dir/checkpoints (``write(folder)`` fills it; ``meta`` with the run's name
    goes beside it) every checkpoint.every steps, keeping checkpoint.keep -- but not at the last step, which the
    stage's export follows."""
    if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < steps:
        save_checkpoint(run_dir / "checkpoints", step, write, {"run_name": cfg.run_name, **meta}, cfg.checkpoint.keep)


def finish(log: RunLog, summary: dict, curves: list[str], png: str, title: str) -> dict:
    """The run's end: ``curves`` (metric names) plotted into run_dir/``png``, summary.json written, the log closed."""
    log.plot(curves, png, title)
    log.summary(summary)
    log.close()
    return summary


def release(pg, *actors) -> None:
    """Kill the stage's actors (None: never started) and remove its placement group, whatever happened, so that a
    driver that goes on (the course, a notebook) is not left short of resources. A run's reservation
    (cluster.reservation) is not the stage's to remove: it stays for the next stage."""
    import ray

    from cluster import release_group

    for actor in actors:
        if actor is not None:
            ray.kill(actor)
    release_group(pg)
