"""The course in one run: SFT -> DPO -> GRPO -> one continual stage, each stage's output the next stage's input,
and the evaluation panel's table after every stage.

    python pipelines/course.py run_name=course eval.suites=[heldout,arithmetic]
    python pipelines/course.py run_name=course sft:sft.steps=100 dpo:train.steps=40 grpo:train.steps=20
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python pipelines/course.py runs_dir=/mnt/runs

Overrides: ``key=value`` goes to every stage; ``STAGE:key=value`` (STAGE = sft, dpo, grpo, continual) to that
stage only (the stages read ``train.steps`` differently, for one).

One reservation, stages as Ray jobs (the design card's Placement section): the course reserves one named, detached
placement group for the whole run (``cluster.reservation``, default ``course-<run_name>``; cluster/reservation.py),
then submits each stage through Ray's job API -- ``python pipelines/<stage>.py ... cluster.address=<this cluster>
cluster.reservation=<name>``, run in this repository on the cluster's node -- and waits on it, so every stage has a
job id, logs and a status (``ray job status/logs/stop``, the dashboard), and its actors land in the reservation's
bundles: no stage loses its devices to another job between stages. (The stage jobs run on the head, in this
repository's folder there: on a cluster, submit the course itself as a job, as above.) The reservation holds, bundle by bundle, the
most that any stage's plan asks (in colocate mode: one bundle, every role's share -- the RL stage's plan); a stage
that does not fit is refused before its actors start. It is released when the course ends, fails or is stopped
(Ctrl-C, SIGTERM, ``ray job stop`` of the course); a course killed outright leaves it on a persistent cluster until
``resume=true`` reattaches to it or ``python -m cluster.reservation release <name> cluster.address=...`` frees it
(with ``cluster.address=local`` the course's cluster -- dashboard and job server on 127.0.0.1 -- lives in the
course's process and goes down with it).

    base --sft.py--> SFT adapter                       sft       = base + SFT adapter
         --dpo.py, starting from the SFT adapter,
           reference = the SFT model-->                dpo       = base + DPO adapter
         --grpo.py, starting from the DPO adapter,
           reference = the SFT model-->                grpo      = base + RL adapter (merged: the RL model)
         --continual.py on the RL model: a new
           instruction task, SFT data replayed-->      continual = RL model + continual adapter

Writes runs/<run_name>/: <stage>/ (each stage's own run folder), models/ (merged models), comparison.md /
.json / .png (the panel's table, rewritten after every stage), jobs/<stage>.log (each stage job's log), jobs.json
(each stage's job id, status, entrypoint and the placement groups its actors ran in), reservation.json, summary.json.

Re-running a run_name: refused unless ``resume=true`` (go on with the course: the reservation is reattached, or made
again on a new cluster; a stage job of the earlier attempt still running is stopped; stages that finished are
reused, the one that was cut off resumes from its checkpoint, or starts again when it left none) or
``overwrite=true`` (the whole course folder is replaced and every stage runs again).
"""
from __future__ import annotations

import dataclasses
import json
import shlex
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from config import Config, ConfigError, RunStopped, load, run_cli, to_dict  # noqa: E402

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


def reservation_bundles(stage_cfgs: list[Config]) -> tuple[list[dict[str, float]], str]:
    """The run's reservation: bundle by bundle, the most any stage's plan asks (every stage planned with all its
    roles, an upper bound on what it places), and the placement strategy of that plan. In colocate mode that is one
    bundle holding every role's share: the RL stage's plan, which the memory planner sizes for one GPU."""
    from cluster import plan_resources

    plans = [plan_resources(c.cluster) for c in stage_cfgs]
    n = max(len(p.bundles) for p in plans)
    bundles = []
    for i in range(n):
        keys = {k for p in plans if i < len(p.bundles) for k in p.bundles[i]}
        bundles.append({k: max(p.bundles[i].get(k, 0.0) for p in plans if i < len(p.bundles)) for k in sorted(keys)})
    return bundles, plans[0].strategy


def stage_flags(run_dir: Path, resume: bool) -> list[str] | None:
    """How a stage of the course starts: None when a resumed course reuses it (its summary.json is there); else
    ``resume=true`` (cut off after a complete checkpoint), ``overwrite=true`` (cut off before any: nothing to resume
    from, start again over what it left) or nothing (a new stage)."""
    from runlog import latest_checkpoint
    from runlog.rundir import run_dir_entries

    if resume and (run_dir / "summary.json").exists():
        return None
    if resume and latest_checkpoint(run_dir / "checkpoints") is not None:
        return ["resume=true"]
    if resume and run_dir_entries(run_dir):
        return ["overwrite=true"]
    return []


class StageJobs:
    """The course's stage jobs on one cluster's job server (``ray.job_submission.JobSubmissionClient``, what
    ``ray job submit`` uses): submit, follow the log, record in jobs.json, stop."""

    def __init__(self, dashboard: str, gcs: str, course_dir: Path):
        from ray.job_submission import JobSubmissionClient

        self.dashboard, self.gcs, self.course_dir = dashboard, gcs, course_dir
        self.client = JobSubmissionClient(dashboard)
        self.record_path = course_dir / "jobs.json"
        self.record: dict = json.loads(self.record_path.read_text()) if self.record_path.exists() else {}
        self.running: str | None = None

    def save(self) -> None:
        from runlog import atomic_write_text

        atomic_write_text(self.record_path, json.dumps(self.record, indent=2))

    def stop(self, job_id: str, timeout_s: float = 60.0) -> None:
        """``ray job stop``: SIGTERM to the stage's process, then its end (its actors die with its driver)."""
        try:
            if self.client.get_job_status(job_id).is_terminal():
                return
            self.client.stop_job(job_id)
            deadline = time.time() + timeout_s
            while not self.client.get_job_status(job_id).is_terminal() and time.time() < deadline:
                time.sleep(0.5)
        except RuntimeError:  # a job this cluster never ran (the earlier attempt's cluster is gone)
            pass

    def stop_leftovers(self) -> None:
        """Stop stage jobs an earlier attempt left running (a course killed outright on a persistent cluster): a
        resumed stage must not share its run folder with the one that was cut off."""
        for stage, rec in self.record.items():
            if rec.get("cluster") == self.gcs and rec.get("status") not in ("SUCCEEDED", "FAILED", "STOPPED"):
                print(f"[course] stopping {stage}'s job {rec['job_id']}, left running by an earlier attempt", flush=True)
                self.stop(rec["job_id"])

    def run(self, stage: str, cmd: list[str], env_vars: dict[str, str]) -> dict:
        """Submit ``cmd`` (run in this repository) as a Ray job, print its log as it comes, wait for its end; the
        job's record (id, status, entrypoint, placement groups of its actors). Raises RunStopped naming the job
        and how to look at it and rerun it when it does not succeed."""
        from cluster import ClusterError
        from runlog import atomic_write_text

        entrypoint = f"cd {shlex.quote(str(REPO))} && {shlex.join(cmd)}"
        deadline = time.time() + 120
        while True:
            try:
                job_id = self.client.submit_job(entrypoint=entrypoint, runtime_env={"env_vars": env_vars},
                                                metadata={"course": self.course_dir.name, "stage": stage})
                break
            except RuntimeError as e:  # a head that has just started: its job agent registers a moment later
                if "No available agent" not in str(e) or time.time() > deadline:
                    raise ClusterError(f"the job server at {self.dashboard} refused stage {stage}: {e}") from None
                time.sleep(1.0)
        self.running = job_id
        rec = self.record[stage] = {"job_id": job_id, "status": "PENDING", "entrypoint": entrypoint,
                                    "dashboard": self.dashboard, "cluster": self.gcs,
                                    "log": str(self.course_dir / "jobs" / f"{stage}.log")}
        self.save()
        print(f"[course] {stage}: Ray job {job_id} (ray job status/logs/stop {job_id} --address {self.dashboard})",
              flush=True)
        shown = 0
        while True:
            status = self.client.get_job_status(job_id)
            logs = self.client.get_job_logs(job_id)
            if len(logs) > shown:
                print(logs[shown:], end="", flush=True)
                shown = len(logs)
            if status.is_terminal():
                break
            if rec["status"] != str(status):
                rec["status"] = str(status)
                self.save()
            time.sleep(1.0)
        self.running = None
        (self.course_dir / "jobs").mkdir(exist_ok=True)
        atomic_write_text(Path(rec["log"]), logs)
        rec["status"] = str(status)
        rec.update(self.placement(job_id))
        self.save()
        if str(status) != "SUCCEEDED":
            tail = "\n".join("    " + line for line in logs.rstrip().splitlines()[-12:])
            raise RunStopped(f"stage {stage} failed: Ray job {job_id} ended {status} "
                             f"({self.client.get_job_info(job_id).message or 'no message'}). Its log ends:\n{tail}\n"
                             f"The whole log: {rec['log']} (`ray job logs {job_id} --address {self.dashboard}` while the "
                             f"cluster runs). Re-run the stage alone (a placement group of its own) with:\n"
                             f"  cd {REPO} && {shlex.join([c for c in cmd if not c.startswith(('cluster.reservation=', 'cluster.address='))])}\n"
                             "or fix the cause and go on with the course: the same command with resume=true")
        return rec

    def placement(self, job_id: str) -> dict:
        """Where the job's actors ran, from Ray's own actor table: the ids of their placement groups."""
        from ray.util.state import list_actors

        info = self.client.get_job_info(job_id)
        if info.driver_info is None:
            return {"actors": 0, "placement_groups": []}
        actors = list_actors(address=self.dashboard, filters=[("job_id", "=", info.driver_info.id)], detail=True,
                             limit=10_000, raise_on_missing_output=False)
        return {"driver_job_id": info.driver_info.id, "actors": len(actors),
                "placement_groups": sorted({str(a.placement_group_id) for a in actors})}


def run_stage(jobs: StageJobs, script: str, args: list[str], run_dir: Path, env_vars: dict[str, str],
              resume: bool = False) -> dict:
    """Run pipelines/<script> as a Ray job of this course (``jobs``); its summary.json.

    In a resumed course (``resume``) a stage that finished in an earlier attempt (its summary.json is there) is
    not run again; one that was cut off resumes from its last complete checkpoint, or, when it left none, starts
    again over what it left (``stage_flags``)."""
    flags = stage_flags(run_dir, resume)
    if flags is None:
        print(f"\n[course] {run_dir.name}: finished in an earlier attempt, its results are reused "
              "(overwrite=true runs the whole course again)", flush=True)
        return json.loads((run_dir / "summary.json").read_text())
    cmd = ["python", f"pipelines/{script}", *flags, *args]  # a STAGE:key=value in args still wins
    cmd[0] = sys.executable
    print(f"\n[course] $ {shlex.join(cmd)}", flush=True)
    jobs.run(run_dir.name, cmd, env_vars)
    return json.loads((run_dir / "summary.json").read_text())


def _stopped(signum, frame):
    """SIGTERM (``ray job stop`` of the course, a scheduler's kill) ends the course the way Ctrl-C does: through
    its finally, which stops the running stage job and releases the reservation."""
    raise SystemExit(f"course stopped by signal {signum}")


def main(argv: list[str]) -> dict:
    from cluster import ClusterError, connect
    from cluster.connect import stop_local_head
    from cluster.reservation import release, reserve
    from evalpanel.suites import load_suites
    from runlog import atomic_write_text
    from runlog.rundir import refuse_reuse, replace_run_dir, run_dir_entries

    # 1. Config: the common part is checked here, each stage checks its own part when it starts.
    common, per = split_overrides(argv)
    cfg = load(Config, "tiny-cpu", common)
    stage_cfgs = [load(Config, "tiny-cpu", common + per[stage]) for stage in STAGES]  # a wrong key fails now
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

    # 2. The cluster every stage joins (a local one gets a dashboard: its job server runs the stages), the run's
    #    reservation, and the starting model.
    bundles, strategy = reservation_bundles(stage_cfgs)  # a stage key that makes no plan fails here, before Ray
    name = cfg.cluster.reservation or f"course-{cfg.run_name}"
    ctx = connect(dataclasses.replace(cfg.cluster, reservation=name), dashboard=True)
    if not ctx.dashboard_url:
        raise ClusterError(f"the Ray cluster at {ctx.address_info['gcs_address']} runs no dashboard, so no job server "
                           "for the stages: start its head with one (`ray start --head --dashboard-host=127.0.0.1` serves "
                           "it on port 8265) or use cluster.address=local")
    dashboard = "http://" + ctx.dashboard_url
    gcs = ctx.address_info["gcs_address"]
    earlier_res = json.loads((course_dir / "reservation.json").read_text()) \
        if cfg.resume and (course_dir / "reservation.json").exists() else {}
    jobs = StageJobs(dashboard, gcs, course_dir)
    if cfg.resume:
        jobs.stop_leftovers()
    pg, created = reserve(name, bundles, strategy, cfg.cluster.placement_timeout_s)
    owned = created or (earlier_res.get("name") == name and earlier_res.get("owned", False))
    res = {"name": name, "id": pg.id.hex(), "bundles": bundles, "strategy": strategy, "owned": owned,
           "gcs_address": gcs, "dashboard": dashboard, "session_dir": ctx.address_info.get("session_dir"),
           "reattached": not created}
    atomic_write_text(course_dir / "reservation.json", json.dumps(res, indent=2))
    print(f"[course] reservation {name!r} ({pg.id.hex()}): {len(bundles)} bundle(s) {bundles}, {strategy}"
          f"{' (reattached)' if not created else ''}; dashboard {dashboard}", flush=True)
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        return _stages(cfg, common, per, course_dir, suites, jobs, gcs, name, res)
    finally:
        if jobs.running is not None:  # stopped or failed while a stage ran: stop it, its actors go with it
            print(f"[course] stopping the running stage job {jobs.running}", flush=True)
            jobs.stop(jobs.running)
        if owned:
            release(name)
            print(f"[course] reservation {name!r} released", flush=True)
        signal.signal(signal.SIGTERM, previous)
        stop_local_head()  # the cluster this course started, if it started one


def _stages(cfg: Config, common: list[str], per: dict[str, list[str]], course_dir: Path, suites, jobs: StageJobs,
            gcs: str, reservation: str, res: dict) -> dict:
    """The stages in order, each a Ray job in the reservation, the panel after each; the course's summary."""
    from evalpanel import run_panel, write_table
    from evalpanel.report import comparison, markdown
    from pipelines.stage import prepare_model
    from runlog import atomic_write_text

    base = prepare_model(cfg)
    shared = [a for a in common if not a.startswith(("run_name=", "runs_dir=", "model.path=", "resume=", "overwrite="))]
    env_vars = {"PYTHONUNBUFFERED": "1"}

    def args(stage: str, defaults: dict | None = None, **keys) -> list[str]:
        """The stage's command line: its defaults < the common overrides < what the course wires in (the model, this
        cluster, the reservation) < STAGE:key=value."""
        keys = {**keys, "cluster.address": gcs, "cluster.reservation": reservation}
        return [f"runs_dir={course_dir}", f"run_name={stage}", *[f"{k}={v}" for k, v in (defaults or {}).items()],
                *shared, *[f"{k}={v}" for k, v in keys.items()], *per[stage]]

    def run(script: str, stage_args: list[str]) -> dict:
        stage = script.removesuffix(".py")
        return run_stage(jobs, script, stage_args, course_dir / stage, env_vars, cfg.resume)

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
    s = run("sft.py", args("sft", **{"model.path": base}))
    evaluate("sft", base, s["adapter"])
    sft_model = merge_adapter(base, s["adapter"], course_dir / "models" / "sft")

    # 4. DPO from the SFT adapter; its reference is the SFT model (the adapter's frozen copy).
    d = run("dpo.py", args("dpo", **{"model.path": base, "dpo.sft_adapter": s["adapter"]}))
    evaluate("dpo", base, d["adapter"])

    # 5. GRPO from the DPO adapter on the same base; its KL reference is the SFT adapter (frozen in the learner).
    g = run("grpo.py", args("grpo", **{"model.path": base, "model.adapter": d["adapter"],
                                       "model.reference_adapter": s["adapter"]}))
    engine_base = course_dir / "grpo" / "engine_base"  # the dequantised base a QLoRA learner trained on
    grpo_base = str(engine_base) if (engine_base / "config.json").exists() else base
    evaluate("grpo", grpo_base, g["final_adapter"])
    rl_model = merge_adapter(grpo_base, g["final_adapter"], course_dir / "models" / "grpo")

    # 6. One continual stage on the RL model: a new instruction task, with the SFT data as the past to replay.
    memory = "[" + ",".join(cfg.sft.sources) + "]"
    defaults = {"continual.stream": "instruct", "continual.tasks": "[reverse]", "continual.methods": "[inscl]"}
    c = run("continual.py", args("continual", defaults, **{"model.path": rl_model, "continual.memory": memory}))
    method = next(iter(c["methods"]))
    final = c["methods"][method]["final"]
    evaluate("continual", final["model"], final["adapter"])

    summary = {"stages": {**stages, "continual": {**stages["continual"], "method": method, "tasks": c["tasks"],
                                                   "R": c["methods"][method]["R"]}},
               "sft_heldout_loss": [s["heldout_loss_start"], s["heldout_loss_end"]],
               "dpo_heldout_accuracy": [d["heldout_accuracy_before"], d["heldout_accuracy_after"]],
               "grpo_heldout_reward": [g["heldout_reward_start"], g["heldout_reward_end"]],
               "table": str(course_dir / "comparison.md"),
               "reservation": res, "jobs": jobs.record}
    atomic_write_text(course_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary


if __name__ == "__main__":
    run_cli(main)
