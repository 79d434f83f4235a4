"""Preference data: normalise pairs, build pairs from rated samples or scored rollouts, clean, dedup, tokenise.

Row formats accepted (the Hugging Face / TRL ones):
- pairs: ``prompt``/``chosen``/``rejected``, each a string or a list of chat messages, or ``chosen``/``rejected``
  full conversations that share their prompt turns (TRL's implicit prompt); an optional ``margin`` (how far
  apart the two were rated) feeds the reward model's margin loss;
- rated samples: ``prompt``/``completion``/``rating``, several per prompt, turned into pairs;
- labelled completions (outcome RM): ``prompt``/``completion``/``label`` (true = good);
- step-labelled solutions (process RM): ``prompt``/``completions`` (the steps)/``labels`` (one bool each).

Canonical pair row: ``{"prompt": str | [messages], "chosen": str, "rejected": str}`` where chosen/rejected are
the responses' text. Every step returns ``(rows, report)`` like the rest of datapipe; unusable rows are
dropped, counted and named (file and row), never silently.
"""
from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from typing import Any, Callable, Sequence

from datapipe.rows import Row, RowError, origin_of

PAIR_FORMATS = ("prompt/chosen/rejected (strings or chat messages), chosen/rejected conversations sharing their "
                "prompt, or prompt/completion/rating rated samples")


# --------------------------------------------------------------------------------------------- normalising
def _row(data: dict, like) -> Row:
    return like.derive(data) if isinstance(like, Row) else Row(data)


def _messages(value: Any, field: str, where: str) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        raise RowError(where, f"'{field}' must be a string or a list of {{role, content}} messages")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _prompt(value: Any, where: str) -> str | list[dict]:
    if isinstance(value, str):
        return value
    return _messages(value, "prompt", where)


def _response(value: Any, field: str, where: str) -> str:
    """A response as text: a string, or the single assistant message of a conversational side."""
    if isinstance(value, str):
        return value
    msgs = _messages(value, field, where)
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise RowError(where, f"'{field}' must hold exactly one assistant message when the prompt is given apart "
                              f"(got roles {[m['role'] for m in msgs]})")
    return msgs[0]["content"]


def normalize_pair(row: dict) -> Row:
    """Any accepted pair format -> the canonical pair row (origin kept). Raises RowError naming the row."""
    where = origin_of(row)
    if not isinstance(row, dict):
        raise RowError(where, f"expected an object with {PAIR_FORMATS}, got {type(row).__name__}")
    if "chosen" not in row or "rejected" not in row:
        raise RowError(where, f"no 'chosen'/'rejected' fields (found {sorted(row)}); expected {PAIR_FORMATS}")
    chosen, rejected = row["chosen"], row["rejected"]
    if "prompt" in row:
        prompt = _prompt(row["prompt"], where)
        out = {"prompt": prompt, "chosen": _response(chosen, "chosen", where),
               "rejected": _response(rejected, "rejected", where)}
    else:  # implicit prompt: the shared leading turns of two full conversations
        c, r = _messages(chosen, "chosen", where), _messages(rejected, "rejected", where)
        n = 0
        while n < min(len(c), len(r)) - 1 and c[n] == r[n]:
            n += 1
        if n == 0 or c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant" or len(c) != n + 1 or len(r) != n + 1:
            raise RowError(where, "'chosen' and 'rejected' conversations must share every turn but a final assistant "
                                  "message (or give 'prompt' apart)")
        out = {"prompt": c[:n], "chosen": c[-1]["content"], "rejected": r[-1]["content"]}
    for k in ("chosen", "rejected"):
        if not isinstance(out[k], str):
            raise RowError(where, f"'{k}' content must be text, got {type(out[k]).__name__}")
    if "margin" in row and row["margin"] is not None:
        if not isinstance(row["margin"], (int, float)) or isinstance(row["margin"], bool):
            raise RowError(where, f"'margin' must be a number, got {row['margin']!r}")
        out["margin"] = float(row["margin"])
    return _row(out, row)


def _report(n_in: int, kept: list, dropped: Counter, examples: dict) -> dict:
    return {"in": n_in, "kept": len(kept), "dropped": dict(dropped), "examples": examples}


def _drop(dropped: Counter, examples: dict, reason: str, detail: str, max_examples: int = 3) -> None:
    dropped[reason] += 1
    ex = examples.setdefault(reason, [])
    if len(ex) < max_examples:
        ex.append(detail)


def normalize_pairs(rows) -> tuple[list[Row], dict]:
    """Normalise every row; unusable ones are counted and named in the report, the rest are kept."""
    kept, dropped, examples = [], Counter(), {}
    rows = list(rows)
    for row in rows:
        try:
            kept.append(normalize_pair(row))
        except RowError as e:
            _drop(dropped, examples, "unusable_row", str(e))
    return kept, _report(len(rows), kept, dropped, examples)


def prompt_key(prompt: str | list[dict]) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


# ------------------------------------------------------------------------------------------ building pairs
def pairs_from_groups(prompts: Sequence, completions: Sequence[Sequence[str]], scores: Sequence[Sequence[float | None]],
                      min_gap: float = 0.0, mode: str = "best_worst",
                      origins: Sequence | None = None) -> tuple[list[Row], dict]:
    """Pairs from groups of scored responses to the same prompt (scored rollouts, rated samples).

    ``best_worst``: one pair per group, the highest-scored response against the lowest (as in iterative /
    online DPO and RLAIF pipelines); ``all``: every pair whose scores differ by more than ``min_gap``.
    A group whose scores are all equal carries no preference and is dropped (``no_preference``); responses
    whose score is None (the scorer could not judge them) are left out (``unscored``). The score gap rides
    along as ``margin``.
    """
    if mode not in ("best_worst", "all"):
        raise ValueError(f"pair mode must be best_worst or all, got {mode!r}")
    out, dropped, examples = [], Counter(), {}
    for g, (prompt, comps, scs) in enumerate(zip(prompts, completions, scores, strict=True)):
        where = str(origins[g]) if origins is not None else f"group {g}"
        items = [(s, c) for c, s in zip(comps, scs, strict=True) if s is not None]
        if len(items) < len(comps):
            _drop(dropped, examples, "unscored", f"{where}: {len(comps) - len(items)} responses without a score")
        # Stable order: among equal scores the earlier response is taken, so pairs are reproducible.
        ranked = sorted(range(len(items)), key=lambda i: -items[i][0])
        cands = [(items[ranked[0]], items[ranked[-1]])] if mode == "best_worst" and items else [
            (items[i], items[j]) for a, i in enumerate(ranked) for j in ranked[a + 1:]]
        made = 0
        for (s_hi, c_hi), (s_lo, c_lo) in cands:
            if s_hi - s_lo > min_gap and c_hi != c_lo:
                data = {"prompt": prompt, "chosen": c_hi, "rejected": c_lo, "margin": float(s_hi - s_lo)}
                like = origins[g] if origins is not None else None
                out.append(like.derive(data) if isinstance(like, Row) else Row(data, "<groups>", g))
                made += 1
        if not made:
            _drop(dropped, examples, "no_preference", f"{where}: no two responses scored more than {min_gap} apart")
    return out, _report(len(prompts), out, dropped, examples)


def pairs_from_ratings(rows, min_gap: float = 0.0, mode: str = "best_worst", rating_field: str = "rating",
                       completion_field: str = "completion") -> tuple[list[Row], dict]:
    """Rated samples (``prompt``/``completion``/``rating``, several rows per prompt) -> pairs, grouped by prompt
    (UltraFeedback-style binarisation). Rows without a numeric rating are dropped and named."""
    groups: dict[str, list] = defaultdict(list)
    first: dict[str, Any] = {}
    dropped, examples = Counter(), {}
    rows = list(rows)
    for row in rows:
        where = origin_of(row)
        try:
            if not isinstance(row.get(completion_field), str):
                raise RowError(where, f"'{completion_field}' must be a string")
            rating = row.get(rating_field)
            if not isinstance(rating, (int, float)) or isinstance(rating, bool):
                raise RowError(where, f"'{rating_field}' must be a number, got {rating!r}")
            prompt = _prompt(row.get("prompt"), where) if "prompt" in row else None
            if prompt is None:
                raise RowError(where, "no 'prompt' field")
        except RowError as e:
            _drop(dropped, examples, "unusable_row", str(e))
            continue
        key = prompt_key(prompt)
        first.setdefault(key, row)
        groups[key].append((row[completion_field], float(rating), prompt))
    keys = list(groups)
    pairs, rep = pairs_from_groups([groups[k][0][2] for k in keys], [[c for c, _, _ in groups[k]] for k in keys],
                                   [[s for _, s, _ in groups[k]] for k in keys], min_gap, mode,
                                   origins=[first[k] for k in keys])
    dropped.update(rep["dropped"])
    for k, v in rep["examples"].items():
        examples.setdefault(k, []).extend(v[:3])
    return pairs, _report(len(rows), pairs, dropped, examples)


def to_pairs(rows, min_gap: float = 0.0, mode: str = "best_worst") -> tuple[list[Row], dict]:
    """Whatever the file holds -- pairs or rated samples -- as canonical pairs."""
    rows = list(rows)
    if rows and all(isinstance(r, dict) and "rating" in r and "chosen" not in r for r in rows[:50]):
        return pairs_from_ratings(rows, min_gap, mode)
    return normalize_pairs(rows)


# ---------------------------------------------------------------------------------------- clean and dedup
def _as_chat(prompt, response: str) -> list[dict]:
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return msgs + [{"role": "assistant", "content": response}]


def clean_pairs(rows, max_chars: int | None = None) -> tuple[list[Row], dict]:
    """Run both sides of every pair through the SFT cleaner (``datapipe.clean.clean_rows``: empty turns, unknown
    roles, bad encodings, turn order, length) and keep a pair only when both sides survive; a pair whose two
    responses are the same text says nothing and is dropped as ``identical_pair``."""
    from datapipe.clean import clean_rows

    rows = list(rows)
    dropped, examples = Counter(), {}
    kept = []
    for row in rows:
        if row["chosen"].strip() == row["rejected"].strip():
            _drop(dropped, examples, "identical_pair", f"{origin_of(row)}: chosen and rejected are the same text")
            continue
        sides = [_row({"messages": _as_chat(row["prompt"], row[k])}, row) for k in ("chosen", "rejected")]
        ok, rep = clean_rows(sides, max_chars=max_chars)
        if len(ok) < 2:
            for reason, exs in rep["examples"].items():
                _drop(dropped, examples, reason, exs[0])
            continue
        c, r = ok[0]["messages"], ok[1]["messages"]
        prompt = c[0]["content"] if isinstance(row["prompt"], str) else c[:-1]
        kept.append(_row({**row, "prompt": prompt, "chosen": c[-1]["content"], "rejected": r[-1]["content"]}, row))
    return kept, _report(len(rows), kept, dropped, examples)


def pair_text(row: dict) -> str:
    p = row["prompt"]
    if not isinstance(p, str):
        p = "\n".join(f"{m['role']}: {m['content']}" for m in p)
    return f"{p}\nchosen: {row['chosen']}\nrejected: {row['rejected']}"


def dedup_pairs(rows, near_threshold: float = 0.0) -> tuple[list[Row], dict]:
    """Exact dedup of whole pairs (``datapipe.dedup.dedup_exact``), then, if ``near_threshold`` > 0, MinHash
    near-dedup (``dedup_near``) at that Jaccard threshold. Keyed on prompt + both responses, so the same prompt
    with a different pair is kept."""
    from datapipe.dedup import canonical_text, dedup_exact, dedup_near

    kept, rep = dedup_exact(rows, key_fn=lambda r: canonical_text(pair_text(r)))
    if near_threshold > 0:
        kept, rep2 = dedup_near(kept, text_fn=pair_text, threshold=near_threshold)
        rep = {"in": rep["in"], "kept": len(kept), "dropped": {**rep["dropped"], **rep2["dropped"]},
               "examples": {**rep["examples"], **rep2["examples"]}}
    return kept, rep


def split_heldout(rows: list, fraction: float, seed: int = 0) -> tuple[list, list]:
    """Hold out ``fraction`` of the prompts (all pairs of a prompt go to the same side, so held-out accuracy is
    measured on prompts never trained on)."""
    keys = sorted({prompt_key(r["prompt"]) for r in rows})
    random.Random(seed).shuffle(keys)
    held = set(keys[:max(1, round(fraction * len(keys)))]) if fraction > 0 and len(keys) > 1 else set()
    train = [r for r in rows if prompt_key(r["prompt"]) not in held]
    return train, [r for r in rows if prompt_key(r["prompt"]) in held]


# ------------------------------------------------------------------------------------------ built-in data
def arithmetic_rated_samples(n_prompts: int, seed: int = 0, heldout: bool = False) -> list[Row]:
    """Rated samples on the built-in arithmetic prompts (``tasks.arithmetic``): per distinct prompt among the first
    ``n_prompts``, two responses with
    ratings 2 (right answer as JSON), 1 (a wrong number as JSON) or 0 (the right number, not as JSON). The pair
    kinds come in equal shares, so a third of the pairs can only be told apart by doing the sum."""
    from tasks.arithmetic import make_rows

    rng = random.Random(seed * 7 + 3 + int(heldout))
    out, seen = [], set()
    for i, task in enumerate(make_rows(n_prompts, seed=seed, heldout=heldout)):
        # The task repeats prompts (few single-digit sums); one rated pair per distinct prompt.
        if prompt_key(task["prompt"]) in seen:
            continue
        seen.add(prompt_key(task["prompt"]))
        ans = task["answer"]
        wrong = ans + rng.choice([d for d in range(-3, 4) if d and ans + d >= 0])
        cands = {2: json.dumps({"answer": ans}), 1: json.dumps({"answer": wrong}),
                 0: rng.choice([f"The answer is {ans}.", f"answer: {ans}", f'{{"answer": {ans}', str(ans)])}
        for rating in rng.choice([(2, 1), (2, 0), (1, 0)]):
            out.append(Row({"prompt": task["prompt"], "completion": cands[rating], "rating": rating,
                            "answer": ans}, f"builtin:arithmetic{'-heldout' if heldout else ''}", i))
    return out


def arithmetic_steps(n: int, seed: int = 0, heldout: bool = False, n_terms: int = 4,
                     errors: tuple[str, ...] = ("carry",)) -> list[Row]:
    """Step-labelled solutions of running sums for a process RM: ``a+b+c+d`` solved as ``a+b=s1``, ``s1+c=s2``, ...

    In half of them one step is wrong and the solution stops there, as PRM800K's labels stop at the first error
    (Lightman et al. 2023); the steps before it are labelled true. A wrong step either carries a wrong running
    total into its left operand (``carry``: its own sum is right, but it does not continue the previous step, so
    a step score must look back along the solution) or gets its sum wrong (``sum``: judging it takes arithmetic,
    which the tiny built-in models do not learn in a short run, so the default asks for ``carry`` only)."""
    rng = random.Random(seed * 11 + 5 + int(heldout))
    rows = []
    for i in range(n):
        terms = [rng.randint(0, 9) for _ in range(n_terms)]
        bad = rng.randrange(n_terms - 1) if rng.random() < 0.5 else None
        kind = rng.choice(errors)
        total, steps, labels = terms[0], [], []
        for k, t in enumerate(terms[1:]):
            left = total
            if k == bad and kind == "carry":
                left = total + rng.choice([d for d in (-3, -2, -1, 1, 2, 3) if total + d >= 0])
            result = left + t
            if k == bad and kind == "sum":
                result += rng.choice([d for d in (-3, -2, -1, 1, 2, 3) if result + d >= 0])
            steps.append(f"{left}+{t}={result}")
            labels.append(k != bad)
            if k == bad:
                break
            total = result
        prompt = ("Add up " if heldout else "Compute ") + "+".join(map(str, terms)) + " step by step."
        rows.append(Row({"prompt": prompt, "completions": steps, "labels": labels},
                        f"builtin:arithmetic_steps{'-heldout' if heldout else ''}", i))
    return rows


def normalize_steps(rows) -> tuple[list[Row], dict]:
    """Step-labelled rows (``prompt``/``completions``/``labels``, TRL's stepwise-supervision format): checked and
    kept, unusable ones counted and named."""
    kept, dropped, examples = [], Counter(), {}
    rows = list(rows)
    for row in rows:
        where = origin_of(row)
        steps, labels = row.get("completions"), row.get("labels")
        if "prompt" not in row or not isinstance(steps, list) or not isinstance(labels, list):
            _drop(dropped, examples, "unusable_row", f"{where}: needs 'prompt', 'completions' (list of steps) and "
                                                     f"'labels' (list of bools); found {sorted(row)}")
        elif not steps or len(steps) != len(labels):
            _drop(dropped, examples, "unusable_row", f"{where}: {len(steps)} steps but {len(labels)} labels")
        elif not all(isinstance(s, str) and s.strip() for s in steps) or not all(isinstance(b, bool) for b in labels):
            _drop(dropped, examples, "unusable_row", f"{where}: steps must be non-empty strings and labels true/false")
        else:
            try:
                data = {"prompt": _prompt(row["prompt"], where), "completions": steps, "labels": labels}
                kept.append(_row(data, row))
            except RowError as e:
                _drop(dropped, examples, "unusable_row", str(e))
    return kept, _report(len(rows), kept, dropped, examples)


def normalize_labelled(rows) -> tuple[list[Row], dict]:
    """Labelled completions (``prompt``/``completion``/``label``, TRL's unpaired format) for a pointwise outcome RM."""
    kept, dropped, examples = [], Counter(), {}
    rows = list(rows)
    for row in rows:
        where = origin_of(row)
        if not isinstance(row.get("completion"), str) or not isinstance(row.get("label"), bool) or "prompt" not in row:
            _drop(dropped, examples, "unusable_row", f"{where}: needs 'prompt', 'completion' (text) and 'label' "
                                                     f"(true/false); found {sorted(row)}")
            continue
        try:
            kept.append(_row({"prompt": _prompt(row["prompt"], where), "completion": row["completion"],
                              "label": row["label"]}, row))
        except RowError as e:
            _drop(dropped, examples, "unusable_row", str(e))
    return kept, _report(len(rows), kept, dropped, examples)


# -------------------------------------------------------------------------------------------- tokenising
def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def render_prompt(tokenizer, prompt: str | list[dict]) -> str:
    """The prompt text a generator continues: chat messages through the chat template with the assistant
    header; a string as it is."""
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in prompt)


def encode_policy_pair(tokenizer, row: dict, max_len: int) -> dict:
    """Token ids of prompt + chosen and prompt + rejected, as TRL's DPOTrainer builds them: a conversational pair
    through the chat template, a plain one as prompt + response + EOS; the completion starts where the tokenised
    prompt and the tokenised whole diverge. Sequences longer than ``max_len`` keep their start."""
    def ids(text=None, messages=None, gen=False):
        if messages is not None:
            return tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen,
                                                 return_dict=True)["input_ids"]
        return tokenizer(text, add_special_tokens=True)["input_ids"]

    prompt = row["prompt"]
    if isinstance(prompt, str):
        eos = tokenizer.eos_token
        ends = {k: row[k] if row[k].endswith(eos) else row[k] + eos for k in ("chosen", "rejected")}
        p = ids(prompt)
        full = {k: ids(prompt + ends[k]) for k in ends}
    else:
        p = ids(messages=prompt, gen=True)
        full = {k: ids(messages=list(prompt) + [{"role": "assistant", "content": row[k]}])
                for k in ("chosen", "rejected")}
    n = min(common_prefix_length(p, full["chosen"]), common_prefix_length(p, full["rejected"]))
    out = {}
    for k, seq in full.items():
        seq = list(seq)[:max_len]
        out[f"{k}_ids"] = seq
        out[f"{k}_start"] = min(n, len(seq))
    return out


def collate_policy_pairs(encoded: list[dict], pad_id: int):
    """[chosen_1..chosen_B, rejected_1..rejected_B] right-padded, with the completion mask aligned to the
    next-token log-probs (mask[:, t] scores input_ids[:, t + 1], as ``learners.logprobs.sequence_logprobs``)."""
    import torch

    seqs = [e["chosen_ids"] for e in encoded] + [e["rejected_ids"] for e in encoded]
    starts = [e["chosen_start"] for e in encoded] + [e["rejected_start"] for e in encoded]
    L = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), L), dtype=torch.long)
    completion = torch.zeros((len(seqs), L - 1), dtype=torch.float32)
    for i, (s, st) in enumerate(zip(seqs, starts)):
        input_ids[i, :len(s)] = torch.tensor(s)
        attention[i, :len(s)] = 1
        completion[i, max(st - 1, 0):len(s) - 1] = 1.0
    return input_ids, attention, completion


def rm_text(tokenizer, prompt: str | list[dict], response: str) -> tuple[str, str]:
    """What a reward model reads: (rendered prompt, response) as a text pair -- ``tokenizer(prompt, response)``,
    which is [CLS] p [SEP] r [SEP] for an encoder and p followed by r for a byte-level decoder tokenizer; the
    ``reward_model`` scorer reads (prompt, completion) the same way."""
    return render_prompt(tokenizer, prompt), response


def encode_rm(tokenizer, prompts: list, responses: list[str], max_len: int):
    """Batch of (prompt, response) text pairs -> (input_ids, attention_mask), truncating the prompt's start first
    so the response -- what is judged -- survives."""
    texts = [rm_text(tokenizer, p, r) for p, r in zip(prompts, responses)]
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        enc = tokenizer([t[0] for t in texts], [t[1] for t in texts], padding=True, truncation="only_first",
                        max_length=max_len, return_tensors="pt")
    except Exception:  # a pair too long even with the prompt gone: cut the whole pair
        enc = tokenizer([t[0] for t in texts], [t[1] for t in texts], padding=True, truncation=True,
                        max_length=max_len, return_tensors="pt")
    finally:
        tokenizer.truncation_side = side
    return enc["input_ids"], enc["attention_mask"]


def step_prefixes(row: dict, separator: str = "\n") -> list[str]:
    """The solution text up to and including each step: s_1, s_1 + sep + s_2, ..."""
    steps = row["completions"]
    return [separator.join(steps[:k + 1]) for k in range(len(steps))]


def encode_steps(tokenizer, rows: list[dict], max_len: int, bidirectional: bool, separator: str = "\n"):
    """Inputs for step scores. A causal model reads each solution once and is scored at the last token of every
    step (the value there sees exactly the prefix up to that step); an encoder, which would see later steps, reads
    one sequence per prefix and is scored where its classifier reads. Returns (input_ids, attention_mask,
    positions) where ``positions`` is a list of (sequence index, token index or -1 for the pooled score) per step,
    and the flat step labels."""
    import torch

    labels = [bool(b) for r in rows for b in r["labels"]]
    if bidirectional:
        prompts = [r["prompt"] for r in rows for _ in r["completions"]]
        texts = [p for r in rows for p in step_prefixes(r, separator)]
        ids, mask = encode_rm(tokenizer, prompts, texts, max_len)
        return ids, mask, [(i, -1) for i in range(len(texts))], torch.tensor(labels)
    seqs, positions = [], []
    for i, r in enumerate(rows):
        prompt_ids = tokenizer(render_prompt(tokenizer, r["prompt"]), add_special_tokens=False)["input_ids"]
        ids = list(prompt_ids)
        for k, step in enumerate(r["completions"]):
            ids += tokenizer((separator if k else "") + step, add_special_tokens=False)["input_ids"]
            positions.append((i, len(ids) - 1))
        seqs.append(ids)
    # Keep the end (the steps); shift positions by what is cut from the start.
    cut = [max(0, len(s) - max_len) for s in seqs]
    seqs = [s[c:] for s, c in zip(seqs, cut)]
    positions = [(i, t - cut[i]) for i, t in positions]
    keep = [j for j, (i, t) in enumerate(positions) if t >= 0]
    L = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(seqs), L), pad, dtype=torch.long)
    attention = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, :len(s)] = torch.tensor(s)
        attention[i, :len(s)] = 1
    return input_ids, attention, [positions[j] for j in keep], torch.tensor([labels[j] for j in keep])


def score_groups(score_fn: Callable[[list, list[str], list], list[float | None]], groups: list[dict]) -> list[list]:
    """Scores for groups ``{"prompt", "completions", "reference"}`` through one batched ``score_fn(prompts,
    completions, references)`` call (a verifier or a reward model), regrouped per prompt."""
    flat_p = [g["prompt"] for g in groups for _ in g["completions"]]
    flat_c = [c for g in groups for c in g["completions"]]
    flat_r = [g.get("reference") for g in groups for _ in g["completions"]]
    flat = list(score_fn(flat_p, flat_c, flat_r))
    out, k = [], 0
    for g in groups:
        out.append(flat[k:k + len(g["completions"])])
        k += len(g["completions"])
    return out


# ------------------------------------------------------------------------------------- the whole pipeline
def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of step ``step``'s batch: consecutive slices of per-epoch shuffles, so a resumed run draws the very
    batches the uninterrupted run would have."""
    out, pos = [], step * batch_size
    while len(out) < batch_size:
        epoch, off = divmod(pos, n)
        order = list(range(n))
        random.Random(seed * 100003 + epoch).shuffle(order)
        take = order[off:off + batch_size - len(out)]
        out += take
        pos += len(take)
    return out


def fingerprint(rows: list) -> str:
    """A short hash of the rows in order: a checkpoint remembers it, so a run never resumes onto other data."""
    import hashlib

    h = hashlib.sha1()
    for r in rows:
        h.update(json.dumps(dict(r), sort_keys=True, ensure_ascii=False, default=str).encode())
    return h.hexdigest()[:16]


def _read(spec: str) -> tuple[list, dict]:
    """Rows of a file/folder/dataset; lines that are not JSON objects are counted and named, not fatal."""
    from datapipe.io import read_rows

    errors: list = []
    rows = read_rows(spec, errors=errors)
    if errors and not rows:
        raise ValueError(f"{spec}: no readable rows; first problem: {errors[0]}")
    return rows, {"in": len(rows) + len(errors), "kept": len(rows),
                  "dropped": {"unreadable_row": len(errors)} if errors else {},
                  "examples": {"unreadable_row": [str(e) for e in errors[:3]]} if errors else {}}


def _merge(report: dict, stage: str, rep: dict) -> None:
    report[stage] = {"in": rep["in"], "kept": rep["kept"], "dropped": rep["dropped"], "examples": rep["examples"]}


def prepare_rows(spec: str, kind: str = "pairs", heldout_spec: str = "", heldout_fraction: float = 0.1,
                 builtin_size: int = 600, seed: int = 0, pair_mode: str = "best_worst", min_gap: float = 0.0,
                 near_dedup: float = 0.0, max_chars: int = 0) -> tuple[list[Row], list[Row], dict]:
    """Read -> normalise (or build pairs from rated samples) -> clean -> dedup -> split, for ``kind`` pairs,
    labels (labelled completions), steps (step-labelled solutions) or outcome (pairs or labels, whichever the
    data holds). Returns (train, heldout, report); the report
    says per stage how many rows came in, were kept and were dropped why. Raises ValueError naming the source
    when nothing usable is left."""
    def one(src: str, heldout: bool) -> tuple[list[Row], dict]:
        nonlocal kind
        report: dict = {}
        n = max(8, builtin_size // 5) if heldout else builtin_size
        if src == "builtin:arithmetic" and kind in ("pairs", "outcome"):
            kind = "pairs"
            raw = arithmetic_rated_samples(n, seed, heldout)
        elif src == "builtin:arithmetic_steps" and kind == "steps":
            raw = arithmetic_steps(n, seed, heldout)
        elif src.startswith("builtin:"):
            known = {"pairs": "builtin:arithmetic", "outcome": "builtin:arithmetic",
                     "steps": "builtin:arithmetic_steps"}.get(kind, "none")
            raise ValueError(f"no built-in {kind} data called {src!r}; built-in {kind} data: {known}")
        else:
            raw, rep = _read(src)
            _merge(report, "read", rep)
        if kind == "outcome":  # an outcome RM learns from pairs (Bradley-Terry) or from labelled completions
            head = [r for r in raw[:50] if isinstance(r, dict)]
            kind = "labels" if head and all("label" in r and "chosen" not in r for r in head) else "pairs"
        if kind == "pairs":
            rows, rep = to_pairs(raw, min_gap, pair_mode)
            _merge(report, "normalise", rep)
            rows, rep = clean_pairs(rows, max_chars or None)
            _merge(report, "clean", rep)
            rows, rep = dedup_pairs(rows, near_dedup)
            _merge(report, "dedup", rep)
        else:
            rows, rep = (normalize_steps if kind == "steps" else normalize_labelled)(raw)
            _merge(report, "normalise", rep)
            from datapipe.dedup import dedup_exact

            rows, rep = dedup_exact(rows, key_fn=lambda r: json.dumps(dict(r), sort_keys=True, ensure_ascii=False))
            _merge(report, "dedup", rep)
        if not rows:
            first = next((ex[0] for st in report.values() for ex in st["examples"].values() if ex), "no rows at all")
            raise ValueError(f"{src}: no usable {kind} rows left after {list(report)}; first problem: {first}")
        return rows, report

    train, report = one(spec, False)
    if heldout_spec:
        heldout, hrep = one(heldout_spec, True)
    elif spec.startswith("builtin:"):
        heldout, hrep = one(spec, True)
    else:
        train, heldout = split_heldout(train, heldout_fraction, seed)
        hrep = {"split": {"heldout_fraction": heldout_fraction, "kept": len(heldout)}}
    # A held-out row identical to a training row would measure recall, not generalisation.
    seen = {json.dumps(dict(r), sort_keys=True, ensure_ascii=False, default=str) for r in train}
    before = len(heldout)
    heldout = [r for r in heldout if json.dumps(dict(r), sort_keys=True, ensure_ascii=False, default=str) not in seen]
    return train, heldout, {"kind": kind, "train": report, "heldout": hrep,
                            "heldout_overlap_dropped": before - len(heldout),
                            "train_rows": len(train), "heldout_rows": len(heldout)}
