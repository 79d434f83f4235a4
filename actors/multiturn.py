"""Multi-turn, tool-using rollouts inside the rollout role: the engine continues every trajectory turn by turn.

One call runs a batch of trajectories (``n`` per dataset row) to their ends:

    ids_0 = template(first messages, tools) + generation prompt          (the prompt; its ids are the row's)
    turn k: the engine samples y_k from prompt + c_<k (token ids in, never text); the environment reads y_k
            (tool calls -> results); the results' text -- what the chat template puts after the end of y_k up
            to the next generation prompt (envs/chat.py: tool_turn_text) -- is tokenised on its own and appended:
            c_<k+1 = c_<k + y_k + tool_k
    until the environment says done (an answer without a call, the turn cap) or the token budget is spent.

Each trajectory's completion ``c`` is the concatenation of exactly the sampled ids and the appended tool ids, so
the learner trains on the very ids the engine sampled (no re-tokenisation); ``loss_mask`` is 1 on sampled ids, 0
on the tools'; ``logprobs`` are the engine's sampling logprobs on sampled ids (NaN on the tools'). Every pending
trajectory's next turn goes to the engine in one batched generate call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Trajectory:
    env: object
    prompt_ids: list[int]
    seed: int | None
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    turns: int = 0
    done: bool = False
    finish: str = "stop"  # stop: the environment ended it; length: the token budget or a turn's token cap did
    shaping: float = 0.0
    calls: int = 0
    valid: int = 0
    errors: int = 0
    error_kinds: dict = field(default_factory=dict)


def sampled_logprobs(output) -> list[float]:
    """The engine's logprob of each sampled token of a vLLM CompletionOutput (NaN where it gave none)."""
    return [d[t].logprob if d and t in d else math.nan for d, t in zip(output.logprobs or [], output.token_ids)]


def turn_seed(seed: int | None, turn: int) -> int | None:
    """Sample seed of turn ``turn``: the trajectory's own seed, moved by 2^16 per turn (the caller's seeds step by
    1 per trajectory, well under 2^16 per batch), so every turn of every trajectory draws its own stream."""
    return None if seed is None else seed + (turn << 16)


def run_episodes(llm, tokenizer, rows: list[dict], n: int, env_cfg, sampling: dict, seed: int | None,
                 version: int, lora_request=None) -> dict:
    """Trajectories for ``rows`` (``n`` each) with the engine ``llm`` (a vLLM ``LLM``); ``sampling`` holds
    SamplingParams fields (temperature, top_p, max_tokens = one turn's cap). Returns the shape of
    RolloutEngine.generate -- ``{"samples": [[sample] * n] * len(rows), "prompt_token_ids", "tokens", ...}`` -- with
    per sample: token_ids (the whole completion), loss_mask, logprobs, text (the final answer the outcome reward
    scores), finish_reason, version, turns, tool_calls, valid_calls, tool_errors, tool_error_kinds, shaping."""
    from vllm import SamplingParams, TokensPrompt

    from envs.chat import tool_turn_text
    from envs.registry import make_env

    trajs: list[Trajectory] = []
    prompt_ids: list[list[int]] = []
    for i, row in enumerate(rows):
        for j in range(n):
            env = make_env(env_cfg)
            messages = env.reset(row)
            text = tokenizer.apply_chat_template(messages, tools=env.tools or None, tokenize=False,
                                                 add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False).input_ids
            if j == 0:
                prompt_ids.append(ids)
            trajs.append(Trajectory(env, ids, None if seed is None else seed + i * n + j))
    budget = env_cfg.max_tokens
    tokens = 0
    while True:
        live = [t for t in trajs if not t.done]
        if not live:
            break
        params, inputs = [], []
        for t in live:
            room = budget - len(t.ids)
            params.append(SamplingParams(n=1, max_tokens=min(sampling["max_tokens"], room), logprobs=0,
                                         temperature=sampling["temperature"], top_p=sampling["top_p"],
                                         seed=turn_seed(t.seed, t.turns)))
            inputs.append(TokensPrompt(prompt_token_ids=t.prompt_ids + t.ids))
        outs = llm.generate(inputs, params, lora_request=lora_request, use_tqdm=False)
        for t, o in zip(live, outs):
            s = o.outputs[0]
            sampled = list(s.token_ids)
            tokens += len(sampled)
            t.ids += sampled
            t.mask += [1] * len(sampled)
            t.logprobs += sampled_logprobs(s)
            t.turns += 1
            if s.finish_reason == "length":  # the turn's cap or the trajectory's budget: it ends unfinished
                t.done, t.finish = True, "length"
                continue
            res = t.env.step(s.text)
            t.shaping += res.reward
            t.calls += res.info.get("tool_calls", 0)
            t.valid += res.info.get("valid_calls", 0)
            t.errors += res.info.get("tool_errors", 0)
            for kind in res.info.get("errors", []):
                t.error_kinds[kind] = t.error_kinds.get(kind, 0) + 1
            if res.done:
                t.done = True
                continue
            tool_ids = tokenizer(tool_turn_text(tokenizer, res.messages, t.env.tools or None),
                                 add_special_tokens=False).input_ids
            if len(t.ids) + len(tool_ids) >= budget:  # no room left for the model to answer the results
                t.done, t.finish = True, "length"
                continue
            t.ids += tool_ids
            t.mask += [0] * len(tool_ids)
            t.logprobs += [math.nan] * len(tool_ids)
    samples = []
    for i in range(len(rows)):
        group = []
        for t in trajs[i * n:(i + 1) * n]:
            # A trajectory cut off by a token cap has no final answer (the environment's last answer may be an
            # earlier turn's): it scores as an empty one.
            group.append({"text": t.env.final_answer() if t.finish == "stop" else "", "token_ids": t.ids, "loss_mask": t.mask, "logprobs": t.logprobs,
                          "finish_reason": t.finish, "version": version, "turns": t.turns, "tool_calls": t.calls,
                          "valid_calls": t.valid, "tool_errors": t.errors, "tool_error_kinds": t.error_kinds,
                          "shaping": t.shaping})
        samples.append(group)
    return {"adapter_version": version, "samples": samples, "prompt_token_ids": prompt_ids, "tokens": tokens}


def tool_metrics(samples: list[dict], rewards: list | None = None) -> dict:
    """Per-step tool-use metrics of multi-turn samples (none for single-turn ones): turns per trajectory, calls,
    the fraction of calls that parsed and ran, tool errors by kind, the share of trajectories that used a tool; with
    ``rewards`` (None where not judged) also the mean reward of the trajectories that called a tool and of those that
    did not (``reward/with_tool``, ``reward/without_tool``)."""
    multi = [s for s in samples if "turns" in s]
    if not multi:
        return {}
    by_use = {}
    for key, used in (("reward/with_tool", True), ("reward/without_tool", False)):
        rs = [r for s, r in zip(samples, rewards or []) if r is not None and (s["tool_calls"] > 0) == used]
        if rs:
            by_use[key] = sum(rs) / len(rs)
    calls = sum(s["tool_calls"] for s in multi)
    kinds: dict[str, int] = {}
    for s in multi:
        for k, v in s["tool_error_kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
    return {"tools/turns_mean": sum(s["turns"] for s in multi) / len(multi),
            "tools/calls_mean": calls / len(multi),
            "tools/call_validity": sum(s["valid_calls"] for s in multi) / calls if calls else 0.0,
            "tools/errors_mean": sum(s["tool_errors"] for s in multi) / len(multi),
            "tools/used_frac": sum(s["tool_calls"] > 0 for s in multi) / len(multi),
            "tools/shaping_mean": sum(s["shaping"] for s in multi) / len(multi),
            **{f"tools/errors/{k}": v for k, v in sorted(kinds.items())}, **by_use}
