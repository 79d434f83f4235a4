"""GPU smoke test: a few GRPO steps in colocate mode on one NVIDIA GPU (the real pipeline, pipelines/grpo.py),
with each role's measured memory peak printed beside the memory planner's estimate (cluster/memory.py).

    python bench/gpu_smoke.py                                    # a tiny model built here (no hub), config rtx4080
    python bench/gpu_smoke.py model.path=/models/Qwen3-0.6B      # a real small model
    python bench/gpu_smoke.py model.path=/models/Qwen3-4B rollout.gpu_memory_utilization=0.65 train.micro_batch_size=2
    python bench/gpu_smoke.py --dry-run                          # no GPU: the plan and the command it would run

Measured = the largest GPU memory ``nvidia-smi`` reported for the role's processes while the job ran (sampled
every 0.25 s; CUDA contexts included), matched to roles by their process titles (Ray names actor processes
``ray::LearnerWorker...``, vLLM its engine ``VLLM::EngineCore``). Where the container hides other processes'
PIDs, only the device total is shown. Any ``key.sub=value`` goes to both the planner and the pipeline.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cluster.memory import CUDA_CONTEXT_GIB, GiB, ModelShape, plan_memory  # noqa: E402
from config import Config, load  # noqa: E402

# Process-title fragments -> role (Ray sets ``ray::<Class>.<method>``, vLLM ``VLLM::EngineCore``).
ROLE_TITLES = {"LearnerWorker": "learner", "RolloutEngine": "rollout", "EngineCore": "rollout", "RewardWorker": "reward"}
# Without a model path the smoke run builds the project's tiny model; it cannot hold rtx4080's 1536-token windows.
TINY_DEFAULTS = ["model.path=", "model.preset=small", "rollout.max_model_len=512", "rollout.max_new_tokens=128"]
SMOKE_DEFAULTS = ["cluster.address=local", "cluster.mode=colocate", "cluster.device=gpu", "train.steps=3",
                  "train.heldout_prompts=8", "checkpoint.every=0", "progress=false", "tensorboard=false"]


def gpu_processes() -> dict[int, float]:
    """{pid: MiB} of the compute processes on the GPU, as nvidia-smi reports them."""
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=10).stdout
    procs = {}
    for line in out.strip().splitlines():
        pid, _, mib = line.partition(",")
        if pid.strip().isdigit() and mib.strip().replace(".", "").isdigit():
            procs[int(pid)] = float(mib)
    return procs


def device_used_mib() -> float:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=10).stdout
    return float(out.strip().splitlines()[0])


def role_of(pid: int) -> str:
    import psutil

    try:
        p = psutil.Process(pid)
        title = " ".join(p.cmdline()) or p.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "other"
    return next((role for key, role in ROLE_TITLES.items() if key in title), "other")


def plan_for(overrides: list[str]):
    cfg = load(Config, "rtx4080", overrides)
    if cfg.model.path:
        shape = ModelShape.load(cfg.model.path)
    else:
        from tinymodels import ensure_tiny_model

        shape = ModelShape.load(str(ensure_tiny_model(REPO / cfg.cache_dir, cfg.model.preset, cfg.model.model_seed)))
    return cfg, shape


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the command; no GPU needed")
    ap.add_argument("--gpu", default=None, help="planner device (GiB or a name); default: this GPU's memory")
    ap.add_argument("overrides", nargs="*", help="key.sub=value for the planner and the pipeline")
    a = ap.parse_intermixed_args(argv)
    has_model = any(o.startswith("model.path=") and o != "model.path=" for o in a.overrides)
    overrides = SMOKE_DEFAULTS + ([] if has_model else TINY_DEFAULTS) + a.overrides
    run_name = f"gpu-smoke-{int(time.time())}"
    cmd = [sys.executable, str(REPO / "pipelines" / "grpo.py"), "config=rtx4080", f"run_name={run_name}",
           f"runs_dir={REPO / 'runs'}", f"cache_dir={REPO / '.cache'}", *overrides]

    gpu = a.gpu
    if not a.dry_run:
        try:
            device_used_mib()
        except (OSError, subprocess.SubprocessError, IndexError, ValueError):
            print("no NVIDIA GPU answers `nvidia-smi` here; run on a GPU machine, or add --dry-run for the plan only",
                  file=sys.stderr)
            return 2
        if gpu is None:
            import torch

            gpu = torch.cuda.get_device_properties(0).total_memory / GiB
    cfg, shape = plan_for(overrides)
    plan = plan_memory(cfg, shape, gpu or "rtx4080")
    print(plan.report(), flush=True)
    print("command:", " ".join(cmd), flush=True)
    if a.dry_run:
        return 0

    # Run the real pipeline and sample every GPU process's memory until it ends.
    baseline = device_used_mib()
    peaks: dict[str, float] = {}
    peak_total = 0.0
    proc = subprocess.Popen(cmd, cwd=REPO)
    while proc.poll() is None:
        per_role: dict[str, float] = {}
        for pid, mib in gpu_processes().items():
            role = role_of(pid)
            per_role[role] = per_role.get(role, 0.0) + mib
        for role, mib in per_role.items():
            peaks[role] = max(peaks.get(role, 0.0), mib)
        peak_total = max(peak_total, device_used_mib() - baseline)
        time.sleep(0.25)
    if proc.returncode != 0:
        print(f"the GRPO run failed (exit {proc.returncode}); the plan above says what it expected", flush=True)
        return proc.returncode

    lrn, eng = plan.roles["learner"], plan.roles["rollout"]
    ctx = CUDA_CONTEXT_GIB * GiB
    estimates = {"learner": lrn["peak"] + ctx, "rollout": eng["budget"] + ctx}
    phase_peak = max(sum(p.values()) for p in plan.phases.values()) if plan.phases else sum(estimates.values())
    print(f"\n{'role':<10}{'measured peak':>16}{'planner':>12}   (GiB; CUDA contexts included)")
    for role in sorted(set(peaks) | set(estimates)):
        m = peaks.get(role)
        e = estimates.get(role)
        print(f"{role:<10}{(f'{m / 1024:.2f}' if m is not None else '-'):>16}{(f'{e / GiB:.2f}' if e else '-'):>12}")
    print(f"{'device':<10}{peak_total / 1024:>16.2f}{phase_peak / GiB:>12.2f}   (largest phase of the plan)")
    print(f"run: runs/{run_name}/ (metrics.jsonl, summary.json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
