"""Exact and near-duplicate removal. The first occurrence wins, so results are deterministic in input order.

Near duplicates: MinHash signatures of word 3-gram shingles, bucketed with locality-sensitive hashing
(Broder 1997, "On the resemblance and containment of documents"; LSH banding as in Leskovec, Rajaraman &
Ullman, "Mining of Massive Datasets", ch. 3), through the maintained ``datasketch`` library. Words and
punctuation are separate tokens and digits split from operators, so rows that share a template but differ in
their numbers ("What is 12+7?" vs "What is 13+9?") stay distinct: character shingles would call them
near duplicates, since only a few characters differ.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Callable

from datapipe.rows import origin_of

_WS = re.compile(r"\s+")
_TOKEN = re.compile(r"\w+|[^\w\s]")


def messages_text(row: dict) -> str:
    """The text of a chat row, one ``role: content`` line per turn (what dedup compares)."""
    if "messages" in row:
        return "\n".join(f"{m['role']}: {m['content']}" for m in row["messages"])
    return json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)


def exchange_text(row: dict) -> str:
    """The chat without its system prompt: what near-dedup compares by default, since a long shared system
    prompt would otherwise make different questions look alike."""
    if "messages" in row:
        return messages_text({"messages": [m for m in row["messages"] if m.get("role") != "system"]})
    return messages_text(row)


def canonical_text(text: str) -> str:
    """Lower case, whitespace collapsed: differences nobody would call a different example."""
    return _WS.sub(" ", text.lower()).strip()


def _report(n_in: int, kept: list, reason: str, examples: list[str]) -> dict:
    dropped = n_in - len(kept)
    return {"in": n_in, "kept": len(kept), "dropped": {reason: dropped} if dropped else {},
            "examples": {reason: examples} if examples else {}}


def dedup_exact(rows, key_fn: Callable[[dict], str] | None = None, max_examples: int = 3) -> tuple[list, dict]:
    """Drop rows whose ``key_fn(row)`` (default: canonical chat text) was seen before."""
    rows = list(rows)
    key_fn = key_fn or (lambda r: canonical_text(messages_text(r)))
    seen: dict[bytes, str] = {}
    kept, examples = [], []
    for row in rows:
        h = hashlib.blake2b(key_fn(row).encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if h in seen:
            if len(examples) < max_examples:
                examples.append(f"{origin_of(row)} repeats {seen[h]}")
            continue
        seen[h] = origin_of(row)
        kept.append(row)
    return kept, _report(len(rows), kept, "exact_duplicate", examples)


def shingles(text: str, n: int = 3) -> set[bytes]:
    """The set of word n-grams of the canonical text (the whole text when it has fewer than n tokens)."""
    toks = _TOKEN.findall(canonical_text(text))
    grams = [toks[i:i + n] for i in range(max(1, len(toks) - n + 1))]
    return {" ".join(g).encode("utf-8", "surrogatepass") for g in grams}


def dedup_near(rows, text_fn: Callable[[dict], str] | None = None, threshold: float = 0.8, num_perm: int = 128,
               ngram: int = 3, seed: int = 1, max_examples: int = 3) -> tuple[list, dict]:
    """Drop rows whose estimated Jaccard similarity to an earlier kept row is at least ``threshold``.

    LSH proposes candidates; each candidate is confirmed with the MinHash estimate of the Jaccard similarity
    J(A, B) = |A & B| / |A | B| over shingle sets, so a bucket collision alone never drops a row.
    """
    from datasketch import MinHash, MinHashLSH

    rows = list(rows)
    text_fn = text_fn or exchange_text
    # LSH only proposes candidates; the MinHash estimate decides. Banding tuned for `threshold` itself
    # finds only ~40% of pairs at J = threshold, so band for a lower threshold and weigh misses over
    # false candidates (a false candidate costs one signature comparison).
    lsh = MinHashLSH(threshold=max(0.05, threshold - 0.1), num_perm=num_perm, weights=(0.1, 0.9))
    sigs: dict[int, MinHash] = {}
    kept, examples = [], []
    for i, row in enumerate(rows):
        m = MinHash(num_perm=num_perm, seed=seed)
        m.update_batch(list(shingles(text_fn(row), ngram)))
        match = min((j for j in lsh.query(m) if sigs[j].jaccard(m) >= threshold), default=None)
        if match is not None:
            if len(examples) < max_examples:
                examples.append(f"{origin_of(row)} ~ {origin_of(rows[match])} (J~{sigs[match].jaccard(m):.2f})")
            continue
        lsh.insert(i, m)
        sigs[i] = m
        kept.append(row)
    return kept, _report(len(rows), kept, "near_duplicate", examples)
