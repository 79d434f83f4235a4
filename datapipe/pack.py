"""Pack tokenised samples into fixed-length rows with best-fit decreasing, and unpack them again.

Each packed row holds whole samples back to back, then padding. ``position_ids`` restart at 0 at every
sample (and at the padding), which is all a model needs to keep samples apart: ``learners.sft`` builds
the block-diagonal causal mask from them (or hands them to varlen attention where the hardware has it),
and drops the label that would predict one sample's first token from the previous sample.

Best-fit decreasing (Johnson 1973; at most 11/9 OPT + 6/9 bins, Dosa 2007): sort by length, longest
first, and put each sample into the open row with the least room that still fits it.
"""
from __future__ import annotations

import bisect

from datapipe.tokens import IGNORE_INDEX


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of indices into ``lengths``, each summing to at most ``capacity``. Ties keep input order."""
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(f"samples {too_long[:5]} are longer than the row length {capacity}; drop them first "
                         "(tokenize_rows does) or raise the row length")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), kept sorted for the best-fit search
    for i in order:
        k = bisect.bisect_left(free, (lengths[i], -1))
        if k < len(free):
            room, b = free.pop(k)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        bisect.insort(free, (room - lengths[i], b))
    return bins


def pack_samples(samples: list[dict], max_len: int, pad_id: int) -> tuple[list[dict], dict]:
    """Packed rows of exactly ``max_len`` tokens: input_ids, labels, position_ids, seq_lens, sample_ids."""
    lengths = [len(s["input_ids"]) for s in samples]
    rows = []
    for b in best_fit_decreasing(lengths, max_len):
        ids, labels, pos = [], [], []
        for i in b:
            ids += samples[i]["input_ids"]
            labels += samples[i]["labels"]
            pos += list(range(lengths[i]))
        pad = max_len - len(ids)
        rows.append({"input_ids": ids + [pad_id] * pad, "labels": labels + [IGNORE_INDEX] * pad,
                     "position_ids": pos + list(range(pad)), "seq_lens": [lengths[i] for i in b], "sample_ids": list(b)})
    real = sum(lengths)
    return rows, {"in": len(samples), "kept": len(samples), "dropped": {}, "rows": len(rows), "row_len": max_len,
                  "tokens": real, "fill": round(real / (len(rows) * max_len), 4) if rows else 0.0}


def unpack(rows: list[dict]) -> list[dict]:
    """The samples of packed ``rows``, back in their original order (input_ids and labels)."""
    out: dict[int, dict] = {}
    for r in rows:
        start = 0
        for sid, n in zip(r["sample_ids"], r["seq_lens"]):
            out[sid] = {"input_ids": r["input_ids"][start:start + n], "labels": r["labels"][start:start + n]}
            start += n
    return [out[i] for i in sorted(out)]
