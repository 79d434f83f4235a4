"""The continual-learning methods for the LLM, by name: which phases each serves, what it trains (full model or
LoRA), which past rows it replays, and the hooks it adds to the learner (continual.hooks strategies).

    name        phases                     trains     replay        hooks
    seq_ft      cpt, instruct, align       full       --            -- (sequential fine-tuning baseline)
    seq_lora    cpt, instruct, align       one LoRA   --            -- (LoRA-sequential baseline)
    replay      cpt, instruct, align       model.*    uniform       --
    inscl       cpt, instruct, align       model.*    InsCL         --
    ewc         cpt, instruct, align       model.*    --            continual.strategies.EWC
    lwf         cpt, instruct, align       model.*    --            continual.strategies.LwF
    task_lora   cpt, instruct, align       LoRA/task  --            continual.strategies.TaskLoRA
    multistage  instruct                   model.*    self-distill  PreferenceBias
    cppo        align                      model.*    --            CPPOObjective
    copr        align                      model.*    uniform       COPRObjective (replayed rows = constraints)

On alignment streams every method but cppo and copr trains with DPO (``DPOObjective``) against the starting
model; ``model.*`` is ``model.finetune`` (qlora by default). The formulas are in each module's docstring.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from config.continual import ContinualConfig
from config.loader import ConfigError

ALL = ("cpt", "instruct", "align")


@dataclass(frozen=True)
class Method:
    name: str
    phases: tuple[str, ...]
    replay: Literal["none", "uniform", "inscl", "self_distill"] = "none"
    finetune: str | None = None
    """Forced fine-tuning mode (seq_ft trains every weight); None: model.finetune."""
    needs_lora: bool = False
    description: str = ""


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("seq_ft", ALL, finetune="full", description="sequential fine-tuning of every weight"),
    Method("seq_lora", ALL, needs_lora=True, description="one LoRA adapter fine-tuned task after task"),
    Method("replay", ALL, replay="uniform", description="a share of past rows, drawn uniformly"),
    Method("inscl", ALL, replay="inscl", description="InsCL: replay split by Wasserstein distance, InsInfo-sampled"),
    Method("ewc", ALL, description="elastic weight consolidation (diagonal Fisher)"),
    Method("lwf", ALL, description="learning without forgetting (distil the pre-task model)"),
    Method("task_lora", ALL, needs_lora=True, description="a fresh LoRA adapter per task, chosen by task identity"),
    Method("multistage", ("instruct",), replay="self_distill",
           description="preference bias against conflicting old answers + self-distillation"),
    Method("cppo", ("align",), description="CPPO: reward/likelihood-category weights, knowledge retention"),
    Method("copr", ("align",), replay="uniform", description="COPR: optimal-policy fit, Lagrangian old-task constraint"),
]}


def check_method(name: str, phase: str, finetune: str) -> Method:
    """The method ``name``, or a ConfigError saying why it cannot run on a ``phase`` stream with ``finetune``."""
    m = METHODS[name]
    if phase not in m.phases:
        raise ConfigError(f"continual.methods: {name} runs on {'/'.join(m.phases)} streams, not on this {phase} "
                          "stream; drop it or pick another stream")
    if m.needs_lora and (m.finetune or finetune) == "full":
        raise ConfigError(f"continual.methods: {name} trains LoRA adapters but model.finetune=full; set "
                          "model.finetune=qlora or lora")
    return m


def build_strategy(name: str, cc: ContinualConfig, phase: str, seed: int = 0):
    """The hooks of method ``name`` as one continual.hooks.Strategy (a Compose when there are several)."""
    from continual.hooks import Compose, Strategy
    from continual.strategies import EWC, LwF, TaskLoRA
    from llm_continual.objectives import COPRObjective, CPPOObjective, DPOObjective, PreferenceBias

    parts: list[Strategy] = []
    if phase == "align":
        if name == "cppo":
            parts.append(CPPOObjective(cc.cppo_k, cc.cppo_low, cc.cppo_high, cc.cppo_kr_coef))
        elif name == "copr":
            parts.append(COPRObjective(cc.copr_beta, cc.copr_epsilon, cc.copr_dual_lr))
        else:
            parts.append(DPOObjective(cc.pref_beta))
    if name == "ewc":
        parts.append(EWC(lam=cc.ewc_lambda, n_samples=cc.ewc_samples, seed=seed))
    elif name == "lwf":
        parts.append(LwF(alpha=cc.lwf_alpha, temperature=cc.lwf_temperature))
    elif name == "task_lora":
        parts.append(TaskLoRA())
    elif name == "multistage":
        parts.append(PreferenceBias(cc.ms_bias_coef, cc.ms_beta, cc.batch_size, seed))
    if not parts:
        return Strategy()
    return parts[0] if len(parts) == 1 else Compose(parts)


def parts_of(strategy) -> list:
    return list(getattr(strategy, "strategies", [strategy]))
