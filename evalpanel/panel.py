"""run_panel: every suite on one model or model + adapter, generating through the vLLM rollout engine.

    results = run_panel(model_path, adapter_path, suites=["arithmetic", "heldout"], engine=engine)
    results["metrics"]  # {"arithmetic/exact_match": 0.41, "heldout/perplexity": 3.2, ...}

Metric names are ``<suite>/<metric>``: the scorers' names from the suite card, ``pass@k``, ``perplexity``,
``win_rate`` (positions swapped), ``win_rate_unswapped``, ``consistency``, and the length statistics
``len_mean``, ``len_p90``, ``truncated``. The engine is loaded with the adapter (or unloaded for the base)
and left that way: a training loop reloads its own adapter with its next version anyway.
"""
from __future__ import annotations

import logging
import os
import time
import zlib
from pathlib import Path

import torch

from config.evaluation import EvalConfig
from evalpanel import metrics
from evalpanel.suites import Suite, load_suites, prompt_of, reference_answer
from learners.models import load_tokenizer

log = logging.getLogger(__name__)

# Adapter ids the panel gives the engine live far above a training run's versions (0, 1, 2, ...), so that an
# evaluation never collides with, and never serves a cached copy of, a training adapter.
EVAL_VERSION_BASE = 1 << 24


def _call(engine, method: str, *args, **kwargs):
    """Call ``engine.method`` on a plain RolloutEngine or on a RolloutActor handle alike."""
    fn = getattr(engine, method)
    if hasattr(fn, "remote"):
        import ray

        return ray.get(fn.remote(*args, **kwargs))
    return fn(*args, **kwargs)


def adapter_version(adapter_path: str | os.PathLike) -> int:
    """A version id for the adapter, fixed by its path and the time its weights were written: a rewritten
    adapter gets a new id, so vLLM (which caches adapters by id) cannot serve the old weights."""
    p = Path(adapter_path).resolve()
    stamp = max((f.stat().st_mtime_ns for f in p.iterdir() if f.is_file()), default=0)
    return EVAL_VERSION_BASE + zlib.crc32(f"{p}:{stamp}".encode()) % (1 << 24)


def serve(engine, adapter_path: str | os.PathLike | None) -> int:
    """Make the engine serve the base (None) or base + adapter; returns the version the samples must carry."""
    if adapter_path is None:
        _call(engine, "unload_adapter")
        return -1
    return _call(engine, "load_adapter", str(adapter_path), adapter_version(adapter_path))


def make_engine(model_path: str | os.PathLike, cfg: EvalConfig, rollout=None):
    """An in-process vLLM engine for evaluation (``rollout``: a config.RolloutConfig for its context length and
    memory; RolloutConfig's defaults when None)."""
    import dataclasses

    from actors.rollout import RolloutEngine
    from config.schema import RolloutConfig

    device = "gpu" if torch.cuda.is_available() else "cpu"
    rc = dataclasses.replace(rollout or RolloutConfig(), max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                             sleep_between_phases=False)
    return RolloutEngine(model_path, rc, max_lora_rank=cfg.max_lora_rank, device=device)


def make_judge(cfg: EvalConfig, model_path: str | os.PathLike):
    """The win-rate judge named by ``eval.judge`` (None for ``none``)."""
    from evalpanel.judges import ModelJudge, RewardModelJudge

    if cfg.judge == "none":
        return None
    if cfg.judge == "reward_model":
        return RewardModelJudge(cfg.judge_path)
    return ModelJudge(cfg.judge_path or model_path)


def run_panel(model_path: str | os.PathLike, adapter_path: str | os.PathLike | None = None,
              suites: list[str] | None = None, engine=None, cfg: EvalConfig | None = None, against: dict | None = None,
              judge=None, name: str = "") -> dict:
    """Evaluate ``model_path`` (+ ``adapter_path``) on ``suites`` (default ``cfg.suites``).

    ``engine``: a RolloutEngine or RolloutActor already serving ``model_path`` (None: build one here and shut
    it down after). ``against``: an earlier run_panel result whose answers are the win-rate opponent where a
    suite's rows carry no reference completion. ``judge``: a built judge (None: ``make_judge(cfg)`` on first
    need). Returns ``{"name", "model", "adapter", "metrics", "stderr", "n", "samples", "answers", "notes",
    "seconds", "direction"}`` (``direction``: +1 where higher is better, for the report).
    """
    cfg = cfg or EvalConfig()
    loaded = load_suites(suites or cfg.suites, cfg.limit)
    res = {"name": name or (Path(adapter_path).name if adapter_path else "base"), "model": str(model_path),
           "adapter": str(adapter_path) if adapter_path else None, "metrics": {}, "stderr": {}, "n": {},
           "samples": {}, "answers": {}, "notes": {}, "seconds": {}, "direction": {}}
    own_engine = engine is None and any(s.spec.kind != "perplexity" for s in loaded)
    if own_engine:
        engine = make_engine(model_path, cfg)
    try:
        version = serve(engine, adapter_path) if engine is not None else None
        # Prompts are rendered here with the model's own chat template (one tokenizer, not a remote call each).
        tok = load_tokenizer(model_path) if engine is not None else None
        scoring = None  # the transformers copy, loaded once if a perplexity suite asks for it
        for suite in loaded:
            t0 = time.time()
            kind = suite.spec.kind
            if kind == "perplexity":
                if scoring is None:
                    from evalpanel.likelihood import load_scoring_model

                    scoring = load_scoring_model(model_path, adapter_path)
                _perplexity(suite, scoring, cfg, res)
            elif kind in ("generate", "pass_at_k"):
                _generate_and_score(suite, engine, version, cfg, res, tok)
                if suite.spec.without_tools:  # the same suite with no tool offered: what the tools are worth
                    _generate_and_score(suite, engine, version, cfg, res, tok, without_tools=True)
            elif kind == "win_rate":
                if judge is None and cfg.judge != "none":
                    judge = make_judge(cfg, model_path)
                _win_rate(suite, engine, version, cfg, res, tok, against, judge)
            res["seconds"][suite.name] = round(time.time() - t0, 3)
            log.info("suite %s: %.1f s", suite.name, res["seconds"][suite.name])
    finally:
        if own_engine:
            engine.shutdown()
    return res


def _put(res: dict, key: str, r: dict) -> None:
    res["metrics"][key], res["stderr"][key], res["n"][key] = r["mean"], r["stderr"], r["n"]


def _perplexity(suite: Suite, scoring, cfg: EvalConfig, res: dict) -> None:
    from evalpanel.likelihood import heldout_logprobs

    model, tok = scoring
    lp = heldout_logprobs(model, tok, suite.rows, batch_size=cfg.perplexity_batch_size)
    key = f"{suite.name}/perplexity"
    res["metrics"][key] = metrics.perplexity(lp, torch.ones_like(lp)).item()
    res["n"][key] = int(lp.numel())  # scored tokens


def _render(engine_prompts: list, tokenizer) -> list[str]:
    """Chat prompts through the model's chat template; string prompts as raw text (as TRL treats them)."""
    return [p if isinstance(p, str) else tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            for p in engine_prompts]


def _sample(suite: Suite, engine, version: int, cfg: EvalConfig, res: dict, tok,
            without_tools: bool = False) -> tuple[list, list[str], list[list[dict]]]:
    s = suite.spec
    prompts = [prompt_of(r) for r in suite.rows]
    texts = _render(prompts, tok)
    seed = cfg.seed if s.temperature > 0 else None
    if s.env:  # tool use: whole trajectories in the suite's environment (actors/multiturn.py), final answers scored
        env = s.env_config.without_tools() if without_tools else s.env_config
        out = _call(engine, "generate_episodes", [{**r, "prompt": p} for r, p in zip(suite.rows, prompts)], env,
                    n=s.n_samples, max_tokens=s.max_new_tokens or cfg.max_new_tokens, temperature=s.temperature,
                    seed=seed)
    else:
        out = _call(engine, "generate", texts, n=s.n_samples, max_tokens=s.max_new_tokens or cfg.max_new_tokens,
                    temperature=s.temperature, stop=s.stop or None, seed=seed)
    if out["adapter_version"] != version:
        # The design's rule: never report numbers from weights other than the ones named.
        raise RuntimeError(f"suite {suite.name}: the engine sampled with adapter version {out['adapter_version']}, "
                           f"expected {version} ({res['adapter'] or 'base'})")
    groups = out["samples"]
    flat = [g for group in groups for g in group]
    ls = metrics.length_stats(torch.tensor([len(g["token_ids"]) for g in flat]),
                              torch.tensor([g["finish_reason"] == "length" for g in flat]))
    tail = "_no_tools" if without_tools else ""
    for k in ("mean", "p90"):
        res["metrics"][f"{suite.name}/len_{k}{tail}"] = ls[k]
    res["metrics"][f"{suite.name}/truncated{tail}"] = ls["truncated"]
    if s.env:
        from actors.multiturn import tool_metrics

        for k, v in tool_metrics(flat).items():
            res["metrics"][f"{suite.name}/{k.split('/', 1)[1].replace('/', '_')}{tail}"] = v
    if not without_tools:
        res["samples"][suite.name] = [{"prompt": t[-300:], "answer": g[0]["text"]}
                                      for t, g in zip(texts, groups)][:cfg.keep_samples]
    return prompts, texts, groups


def _generate_and_score(suite: Suite, engine, version: int, cfg: EvalConfig, res: dict, tok,
                        without_tools: bool = False) -> None:
    from rewards.base import Item
    from rewards.registry import make_scorer

    s = suite.spec
    _, texts, groups = _sample(suite, engine, version, cfg, res, tok, without_tools)
    tail = "_no_tools" if without_tools else ""
    metric_names = list(s.scorers) if s.kind == "generate" else list(s.scorers)[:1]
    for metric in metric_names:
        spec = s.scorers[metric]
        try:
            scorer = make_scorer(spec.scorer, **spec.options)
        except ValueError as e:
            raise ValueError(f"suite {suite.name}, scorer {metric!r}: {e}") from None
        items = [Item(prompt=t, completion=g["text"],
                      reference=row.get(spec.reference) if spec.reference else spec.reference_value)
                 for t, row, group in zip(texts, suite.rows, groups) for g in group]
        results = scorer.score(items)
        failed = [r for r in results if r.score is None]
        if failed:
            # Not the answer's fault (sandbox down, scorer error): counted as not passing, and said out loud.
            res["notes"][f"{suite.name}/{metric}"] = (f"{len(failed)} of {len(results)} items could not be scored "
                                                      f"(first: {failed[0].status} {failed[0].details})")
            log.warning("suite %s, %s: %s", suite.name, metric, res["notes"][f"{suite.name}/{metric}"])
        scores = torch.tensor([r.score if r.score is not None else 0.0 for r in results], dtype=torch.float64)
        if s.kind == "generate":
            _put(res, f"{suite.name}/{metric}{tail}", metrics.rate(scores))
            res["direction"][f"{suite.name}/{metric}{tail}"] = 1  # a scorer's score is a reward: higher is better
            continue
        # pass@k: a sample passes when the scorer gives it full marks.
        correct = (scores.view(len(groups), s.n_samples) >= 1.0).sum(1)
        for k in s.k:
            _put(res, f"{suite.name}/pass@{k}", metrics.rate(metrics.pass_at_k(s.n_samples, correct, k)))


def _win_rate(suite: Suite, engine, version: int, cfg: EvalConfig, res: dict, tok, against: dict | None,
              judge) -> None:
    prompts, _, groups = _sample(suite, engine, version, cfg, res, tok)
    answers = [g[0]["text"] for g in groups]
    res["answers"][suite.name] = answers
    refs = [reference_answer(r) for r in suite.rows]
    if all(r is not None for r in refs):
        opponent, who = refs, "reference"
    elif against is not None and suite.name in against.get("answers", {}):
        opponent, who = against["answers"][suite.name], against.get("name", "baseline")
    else:
        res["notes"][f"{suite.name}/win_rate"] = "no opponent: rows carry no completion and no baseline was given"
        return
    if judge is None:
        res["notes"][f"{suite.name}/win_rate"] = "eval.judge=none"
        return
    if len(opponent) != len(answers):
        raise ValueError(f"suite {suite.name}: {len(answers)} answers but {len(opponent)} opponent answers "
                         f"(was the baseline evaluated with another eval.limit?)")
    pref_ab = judge.prefer(prompts, answers, opponent)
    pref_ba = judge.prefer(prompts, opponent, answers) if cfg.swap_positions else None
    _put(res, f"{suite.name}/win_rate", metrics.rate(metrics.wins(pref_ab, pref_ba)))
    if pref_ba is not None:
        res["metrics"][f"{suite.name}/win_rate_unswapped"] = metrics.win_rate(pref_ab).item()
        res["metrics"][f"{suite.name}/consistency"] = metrics.position_consistency(pref_ab, pref_ba).item()
    res["notes"][f"{suite.name}/win_rate"] = f"against {who}"
