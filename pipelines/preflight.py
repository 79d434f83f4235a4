"""Checks a stage runs on the user's input before it starts a cluster: model folders, scorer names, prompt lengths.

Each failure is one ``ConfigError`` naming the key, the value and what would be accepted, so that
``config.run_cli`` ends the script with ``config error: ...`` and exit status 1 -- before any Ray actor starts,
instead of a traceback from the hub client, a remote actor or the engine at the first generate.
"""
from __future__ import annotations

import json
from pathlib import Path

from config import ConfigError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def check_model_dir(key: str, path: str, causal_lm: bool = True, needs_chat_template: bool = False) -> None:
    """``path`` (the value of config key ``key``) must be a transformers model folder: config.json that transformers
    reads, a causal LM architecture when ``causal_lm``, a tokenizer, and a chat template when the data is chat."""
    p = Path(path)
    empty_means = " (empty = build the tiny model named by model.preset)" if key == "model.path" else ""
    if not p.is_dir():
        raise ConfigError(f"{key}={path}: no such folder; give a local transformers model folder with config.json"
                          f"{empty_means} -- models are not downloaded from a hub")
    if not (p / "config.json").is_file():
        raise ConfigError(f"{key}={path}: no config.json in that folder; give a transformers model folder (the one "
                          "save_pretrained writes)")
    try:
        cfg = json.loads((p / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{key}={path}: config.json is not readable JSON ({e})") from None
    model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
    if causal_lm:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise ConfigError(f"{key}={path}: model_type {model_type!r} is not a causal language model transformers "
                              "can load (e.g. qwen3, llama, mistral); give a decoder-only LM folder")
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(f"{key}={path}: no tokenizer in that folder (one of {', '.join(TOKENIZER_FILES)}); save the "
                          "tokenizer next to the weights (tokenizer.save_pretrained)")
    if needs_chat_template and not has_chat_template(p):
        raise ConfigError(f"{key}={path}: the data has chat messages but the tokenizer has no chat template; add "
                          "one (chat_template.jinja or tokenizer_config.json's chat_template) or give plain-text prompts")


def has_chat_template(path: str | Path) -> bool:
    p = Path(path)
    if (p / "chat_template.jinja").is_file() or (p / "chat_template.json").is_file():
        return True
    try:
        return bool(json.loads((p / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, ValueError):
        return False


def check_scorers(reward_cfg) -> None:
    """Every name in ``reward.scorers`` (or the base an ``reward.options`` entry names) is a known scorer: a
    built-in or an enabled plugin (``reward.plugins``); every weight is a number. A remote service
    (``reward.remote_url``) knows its own names, so they are not checked here."""
    from rewards.registry import enable_plugins, known_scorers

    if not reward_cfg.scorers:
        raise ConfigError("reward.scorers is empty: name at least one scorer with its weight, e.g. {exact_answer: 1.0}")
    enable_plugins(reward_cfg.plugins)
    known = set(known_scorers())
    for name, weight in reward_cfg.scorers.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError(f"reward.scorers.{name}={weight!r}: a weight must be a number")
        base = (reward_cfg.options.get(name) or {}).get("scorer", name)
        if not reward_cfg.remote_url and base not in known:
            via = f" (reward.options.{name}.scorer)" if base != name else ""
            raise ConfigError(f"reward.scorers: unknown scorer {base!r}{via}; known: {', '.join(sorted(known))} "
                              "(plugins must be named in reward.plugins)")
    extra = sorted(set(reward_cfg.options) - set(reward_cfg.scorers))
    if extra:
        raise ConfigError(f"reward.options has entries for {extra}, which are not in reward.scorers {sorted(reward_cfg.scorers)}")
    sandboxed = [n for n in reward_cfg.scorers if (reward_cfg.options.get(n) or {}).get("scorer", n) == "python_unit_tests"]
    if sandboxed and not reward_cfg.remote_url:
        from rewards.sandbox import sandbox_problem

        problem = sandbox_problem()  # runs a real sandboxed program once (it fails closed: every item infra_error)
        if problem:
            raise ConfigError(f"reward.scorers.{sandboxed[0]} (python_unit_tests): the sandbox cannot run programs here: "
                              f"{problem}")


def check_rl_inputs(cfg, rows: list[dict]) -> None:
    """The RL stages' checks that need no model loaded: ``model.path`` (with a chat template when any prompt is a
    list of messages) and the reward scorers."""
    if cfg.model.path:
        check_model_dir("model.path", cfg.model.path, needs_chat_template=any(not isinstance(r["prompt"], str) for r in rows))
    check_scorers(cfg.reward)


def fit_rl_prompts(cfg, encode, train_rows: list[dict], heldout_rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """:func:`fit_prompts` on the training and held-out rows of an RL stage; ``encode(rows)`` gives their token ids.
    A multi-turn stage (env.name set) needs room for a whole trajectory (env.max_tokens) after the prompt."""
    new_tokens = cfg.env.max_tokens if cfg.env.name else cfg.rollout.max_new_tokens
    fit = lambda key, rows: fit_prompts(key, encode(rows), rows, cfg.rollout.max_model_len,  # noqa: E731
                                        new_tokens, cfg.data.too_long,
                                        "env.max_tokens" if cfg.env.name else "rollout.max_new_tokens")[1]
    return fit("data.train", train_rows), fit("data.heldout", heldout_rows)


def fit_prompts(key: str, prompt_ids: list[list[int]], rows: list[dict], max_model_len: int, max_new_tokens: int,
                too_long: str, new_key: str = "rollout.max_new_tokens") -> tuple[list[list[int]], list[dict]]:
    """Prompts whose tokens plus ``max_new_tokens`` exceed ``max_model_len`` (the engine would refuse them at the
    first generate): dropped with a warning and a count (``data.too_long=drop``), or refused (``error``).
    Returns the kept (prompt_ids, rows)."""
    limit = max_model_len - max_new_tokens
    if limit < 1:
        raise ConfigError(f"{new_key}={max_new_tokens} leaves no room for a prompt in "
                          f"rollout.max_model_len={max_model_len}; raise rollout.max_model_len or lower {new_key}")
    over = [i for i, p in enumerate(prompt_ids) if len(p) > limit]
    if not over:
        return prompt_ids, rows
    longest = max(len(prompt_ids[i]) for i in over)
    what = (f"{key}: {len(over)} of {len(rows)} prompts are longer than {limit} tokens (rollout.max_model_len="
            f"{max_model_len} minus {new_key}={max_new_tokens}; the longest has {longest}, the first is "
            f"row {over[0] + 1})")
    if len(over) == len(rows):
        raise ConfigError(what + "; every prompt would be dropped: raise rollout.max_model_len or shorten the prompts")
    if too_long == "error":
        raise ConfigError(what + "; raise rollout.max_model_len, shorten the prompts, or set data.too_long=drop")
    print(f"[data] {what}; dropped (data.too_long=drop)", flush=True)  # in the job's log, beside its [stage] lines
    drop = set(over)
    keep = [i for i in range(len(rows)) if i not in drop]
    return [prompt_ids[i] for i in keep], [rows[i] for i in keep]
