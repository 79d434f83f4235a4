"""Resource plans: roles (rollout, reward, learner) -> placement-group bundles, in split or colocate mode.

colocate: one bundle holds every actor; on a GPU the roles share the card by fractions (the 16 GB 4080
case, vLLM sleeping while the learner steps). split: a bundle per actor (rollout engines on their own
GPUs, learners on others). On CPU the same shapes hold fractional CPUs, so 2 cores run every role.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from config.schema import ClusterConfig, RoleResources

ROLES = ("rollout", "reward", "learner")


@dataclass
class Placement:
    role: str
    index: int
    bundle: int
    num_cpus: float
    num_gpus: float
    memory_gib: float


@dataclass
class ResourcePlan:
    mode: str
    device: str
    bundles: list[dict[str, float]]
    placements: list[Placement] = field(default_factory=list)
    reservation: str = ""
    """cluster.reservation: the run's detached placement group this plan's actors go into ('' = a group of its own)."""

    @property
    def strategy(self) -> str:
        return "STRICT_PACK" if self.mode == "colocate" else "PACK"

    def of(self, role: str) -> list[Placement]:
        return [p for p in self.placements if p.role == role]

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for b in self.bundles:
            for k, v in b.items():
                out[k] = out.get(k, 0.0) + v
        return out

    def describe(self) -> str:
        rows = [f"{p.role}[{p.index}]: bundle {p.bundle}, {p.num_cpus:g} CPU, {p.num_gpus:g} GPU" for p in self.placements]
        return f"{self.mode} plan on {self.device}: " + "; ".join(rows)


def _bundle(cpus: float, gpus: float, mem_gib: float) -> dict[str, float]:
    b = {"CPU": round(cpus, 4)}
    if gpus:
        b["GPU"] = round(gpus, 4)
    if mem_gib:
        b["memory"] = float(int(mem_gib * 2**30))
    return b


def plan_resources(cfg: ClusterConfig, roles: tuple[str, ...] = ROLES) -> ResourcePlan:
    """Map ``cfg``'s roles to bundles. Raises ValueError naming the role when the shape is impossible."""
    specs: dict[str, RoleResources] = {r: getattr(cfg, r) for r in roles}
    for role, s in specs.items():
        if cfg.device == "cpu" and s.num_gpus:
            raise ValueError(f"cluster.{role}.num_gpus={s.num_gpus} but cluster.device=cpu; set it to 0 or device=gpu")
    plan = ResourcePlan(cfg.mode, cfg.device, bundles=[], reservation=cfg.reservation)
    if cfg.mode == "colocate":
        gpus = sum(s.num_gpus * s.count for s in specs.values())
        if cfg.device == "gpu" and gpus > 1.0 + 1e-9:
            asks = ", ".join(f"{r}: {s.count} x {s.num_gpus:g}" for r, s in specs.items())
            raise ValueError(f"colocate mode shares one GPU, but the roles ask for {gpus:g} GPUs in all ({asks}); "
                             "lower cluster.<role>.num_gpus so they sum to at most 1, or use mode=split")
        plan.bundles.append(_bundle(sum(s.num_cpus * s.count for s in specs.values()), gpus,
                                    sum(s.memory_gib * s.count for s in specs.values())))
        for role, s in specs.items():
            for i in range(s.count):
                plan.placements.append(Placement(role, i, 0, s.num_cpus, s.num_gpus, s.memory_gib))
    else:
        for role, s in specs.items():
            for i in range(s.count):
                plan.placements.append(Placement(role, i, len(plan.bundles), s.num_cpus, s.num_gpus, s.memory_gib))
                plan.bundles.append(_bundle(s.num_cpus, s.num_gpus, s.memory_gib))
    return plan


def check_fits(plan: ResourcePlan, available: dict[str, float]) -> None:
    """Raise ValueError, in the user's terms, when the plan asks for more than the cluster has."""
    from cluster.connect import ClusterError

    totals = plan.totals()
    short = {k: v for k, v in totals.items() if v > available.get(k, 0.0) + 1e-9}
    biggest = {k: max(b.get(k, 0.0) for b in plan.bundles) for k in totals}
    if not short and all(biggest[k] <= available.get(k, 0.0) + 1e-9 for k in biggest):
        return
    asks = "; ".join(f"{p.role}[{p.index}] asks {p.num_cpus:g} CPU + {p.num_gpus:g} GPU" for p in plan.placements)
    have = ", ".join(f"{k}={available.get(k, 0):g}" for k in sorted(totals))
    need = ", ".join(f"{k}={v:g}" for k, v in sorted(totals.items()))
    raise ClusterError(f"the {plan.mode} plan does not fit this cluster: it needs {need} but the cluster has {have} ({asks}). "
                       "Lower cluster.<role>.num_cpus / num_gpus / count, or add nodes")


def make_placement_group(plan: ResourcePlan, timeout_s: float = 60.0):
    """Create and wait for the plan's placement group; explain a misfit instead of hanging.

    With ``plan.reservation`` (cluster.reservation) no group is made: the run's reserved group is returned, once the
    plan is checked to fit its bundles (``cluster.reservation.fit``, which points the placements at them) -- before
    any actor starts. ``release_group`` leaves such a group in place."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from cluster.connect import ClusterError

    if plan.reservation:
        from cluster.reservation import attach, bundles_of, fit

        pg = attach(plan.reservation)
        fit(plan, plan.reservation, bundles_of(pg))
        return pg
    check_fits(plan, ray.available_resources())
    pg = placement_group(plan.bundles, strategy=plan.strategy)
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise ClusterError(f"placement group {plan.bundles} ({plan.strategy}) was not ready after {timeout_s:g}s: "
                           f"{plan.describe()}; the cluster has {ray.available_resources()} free. "
                           "Free resources, lower the roles' asks, or raise cluster.placement_timeout_s") from None
    return pg


def release_group(pg) -> None:
    """Remove a stage's own placement group (None: never made); a run's reservation stays for the next stage."""
    from ray.util.placement_group import remove_placement_group

    from cluster.reservation import is_reserved

    if pg is not None and not is_reserved(pg):
        remove_placement_group(pg)


def actor_options(plan: ResourcePlan, pg, role: str, index: int = 0) -> dict:
    """``.options(**actor_options(...))`` for actor ``role[index]`` inside the placement group."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    (p,) = [q for q in plan.placements if q.role == role and q.index == index]
    opts = {"num_cpus": p.num_cpus, "num_gpus": p.num_gpus,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=p.bundle)}
    if p.memory_gib:
        opts["memory"] = int(p.memory_gib * 2**30)
    return opts


def torch_threads(plan: ResourcePlan, role: str, index: int = 0, concurrent: bool = False) -> int:
    """Intra-op threads for a role's torch work. In a colocated CPU plan the roles take turns on the node's cores (a
    synchronous step runs one phase at a time), so a role of one actor may use them all: 0, which the actor reads as
    every core it may run on. Otherwise (split, GPU, several actors of the role, or ``concurrent``: the roles run at
    the same time, as with train.max_staleness > 0) the actor's own share: its num_cpus rounded, at least 1. Ray would
    give an actor of num_cpus 0.5 one thread, half of a 2-core machine idle while the learner steps; two roles of
    every core each at once spin against each other (an asynchronous `small` step took 10.5 s instead of 5)."""
    if plan.mode == "colocate" and plan.device == "cpu" and len(plan.of(role)) == 1 and not concurrent:
        return 0
    (p,) = [q for q in plan.placements if q.role == role and q.index == index]
    return max(1, round(p.num_cpus))


def all_cores() -> int:
    """Cores this process may run on (its affinity mask), the meaning of ``torch_threads(...) == 0``."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def require_single(cfg, roles: tuple[str, ...], script: str) -> None:
    """Refuse ``cluster.<role>.count`` > 1 for a pipeline that drives one actor of that role (the others would
    hold their bundles and do nothing): the error names the key and where several are used."""
    from config import ConfigError

    for role in roles:
        if getattr(cfg, role).count > 1:
            raise ConfigError(f"cluster.{role}.count={getattr(cfg, role).count}: {script} drives one {role} actor; "
                              f"set cluster.{role}.count=1 (several engines and data-parallel learners: pipelines/grpo.py)")


def shares(n: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous ``[lo, hi)`` shares of ``n`` items over ``parts`` actors, sizes differing by at most one, empty
    shares left out (a batch smaller than the pool)."""
    b = [round(r * n / parts) for r in range(parts + 1)]
    return [(lo, hi) for lo, hi in zip(b, b[1:]) if hi > lo]
