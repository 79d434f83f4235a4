"""Preference data: the formats people have become canonical pairs, pairs come from ratings and scored groups,
bad rows are named and dropped without losing the rest, and cleaning/dedup/splitting behave."""
from __future__ import annotations

import json

import pytest

from datapipe.preference import (
    batch_indices, clean_pairs, dedup_pairs, normalize_pair, normalize_pairs, pairs_from_groups, pairs_from_ratings,
    prepare_rows, prompt_key, split_heldout,
)
from datapipe.rows import Row, RowError

CHAT_PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]


def test_accepted_formats_become_canonical_pairs():
    plain = normalize_pair({"prompt": "2+2?", "chosen": "4", "rejected": "5", "margin": 2})
    assert dict(plain) == {"prompt": "2+2?", "chosen": "4", "rejected": "5", "margin": 2.0}
    chat = normalize_pair({"prompt": CHAT_PROMPT, "chosen": [{"role": "assistant", "content": "4"}],
                           "rejected": [{"role": "assistant", "content": "5"}]})
    implicit = normalize_pair({"chosen": CHAT_PROMPT + [{"role": "assistant", "content": "4"}],
                               "rejected": CHAT_PROMPT + [{"role": "assistant", "content": "5"}]})
    assert dict(chat) == dict(implicit) == {"prompt": CHAT_PROMPT, "chosen": "4", "rejected": "5"}


@pytest.mark.parametrize("row, fragment", [
    ({"prompt": "x", "chosen": "a"}, "no 'chosen'/'rejected' fields"),
    ({"prompt": "x", "chosen": 3, "rejected": "b"}, "'chosen' must be a string or a list of {role, content} messages"),
    ({"prompt": "x", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "exactly one assistant message"),
    ({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
      "rejected": [{"role": "user", "content": "z"}, {"role": "assistant", "content": "c"}]}, "must share every turn"),
    ({"prompt": "x", "chosen": "a", "rejected": "b", "margin": "big"}, "'margin' must be a number"),
])
def test_bad_rows_are_named(row, fragment):
    with pytest.raises(RowError, match="data.jsonl line 7") as e:
        normalize_pair(Row(row, "data.jsonl", 6, 7))
    assert fragment in str(e.value)


def test_bad_rows_are_dropped_without_losing_the_rest(tmp_path):
    f = tmp_path / "prefs.jsonl"
    good = {"prompt": "What is 1+1?", "chosen": "2", "rejected": "3"}
    lines = [json.dumps(good), "{not json", json.dumps({"prompt": "p", "chosen": "a"}),
             json.dumps({**good, "prompt": "What is 2+2?", "chosen": "4", "rejected": "4"}),
             json.dumps({**good, "prompt": "Bad \ufffd bytes"}), json.dumps(good),
             *[json.dumps({"prompt": f"What is {i}+1?", "chosen": str(i + 1), "rejected": str(i)}) for i in range(8)]]
    f.write_text("\n".join(lines) + "\n")
    train, held, rep = prepare_rows(str(f), "pairs", heldout_fraction=0.2)
    assert len(train) + len(held) == 9  # 1 + 8 distinct good pairs
    t = rep["train"]
    assert t["read"]["dropped"] == {"unreadable_row": 1} and "line 2" in t["read"]["examples"]["unreadable_row"][0]
    assert t["normalise"]["dropped"] == {"unusable_row": 1}
    assert "line 3" in t["normalise"]["examples"]["unusable_row"][0]
    assert t["clean"]["dropped"] == {"identical_pair": 1, "bad_encoding": 1}
    assert t["dedup"]["dropped"] == {"exact_duplicate": 1}
    assert not {prompt_key(r["prompt"]) for r in train} & {prompt_key(r["prompt"]) for r in held}
    with pytest.raises(ValueError, match="no usable pairs rows"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "a"}) + "\n")
        prepare_rows(str(bad), "pairs")


def test_pairs_from_scored_groups_best_vs_worst_and_all():
    pairs, rep = pairs_from_groups(["p1", "p2", "p3"], [["a", "b", "c"], ["x", "y"], ["u", "v", "w"]],
                                   [[0.5, 1.0, 0.0], [1.0, 1.0], [None, 0.2, 0.9]])
    assert [(p["prompt"], p["chosen"], p["rejected"], p["margin"]) for p in pairs] == [
        ("p1", "b", "c", 1.0), ("p3", "w", "v", pytest.approx(0.7))]
    assert rep["dropped"] == {"no_preference": 1, "unscored": 1}
    every, _ = pairs_from_groups(["p1"], [["a", "b", "c"]], [[0.5, 1.0, 0.0]], min_gap=0.4, mode="all")
    assert {(p["chosen"], p["rejected"]) for p in every} == {("b", "a"), ("b", "c"), ("a", "c")}
    gap, _ = pairs_from_groups(["p1"], [["a", "b", "c"]], [[0.5, 1.0, 0.0]], min_gap=0.6, mode="all")
    assert {(p["chosen"], p["rejected"]) for p in gap} == {("b", "c")}


def test_pairs_from_rated_samples_group_by_prompt():
    rows = [Row({"prompt": CHAT_PROMPT, "completion": c, "rating": s}, "rated.jsonl", i)
            for i, (c, s) in enumerate([("4", 9), ("five", 2), ("4.0", 7)])]
    rows.append(Row({"prompt": "other", "completion": "z", "rating": "high"}, "rated.jsonl", 3))
    pairs, rep = pairs_from_ratings(rows)
    assert [(p["chosen"], p["rejected"], p["margin"]) for p in pairs] == [("4", "five", 7.0)]
    assert pairs[0].origin == "rated.jsonl row 0"
    assert rep["dropped"] == {"unusable_row": 1} and "'rating' must be a number" in rep["examples"]["unusable_row"][0]


def test_clean_and_dedup_keep_pairs_whole():
    rows = [Row({"prompt": "Caf\u0065\u0301?", "chosen": "ok", "rejected": "no"}, "a", 0),
            Row({"prompt": "Café?", "chosen": "ok", "rejected": "no"}, "a", 1),
            Row({"prompt": CHAT_PROMPT, "chosen": "   ", "rejected": "no"}, "a", 2)]
    kept, rep = clean_pairs(rows)
    assert rep["dropped"] == {"empty_turn": 1} and len(kept) == 2
    assert kept[0]["prompt"] == "Café?"  # NFC: the two spellings are now one text
    deduped, rep = dedup_pairs(kept)
    assert len(deduped) == 1 and rep["dropped"] == {"exact_duplicate": 1}


def test_split_and_batches_are_deterministic():
    rows = [{"prompt": f"p{i % 10}", "chosen": "a", "rejected": str(i)} for i in range(40)]
    train, held = split_heldout(rows, 0.2, seed=3)
    assert len({r["prompt"] for r in held}) == 2 and len(train) + len(held) == 40
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    # Steps continue across epochs, each epoch a permutation; the same step always draws the same batch.
    drawn = [i for s in range(5) for i in batch_indices(7, 3, s, seed=1)]
    assert sorted(drawn[:7]) == list(range(7)) and sorted(drawn[7:14]) == list(range(7))
    assert batch_indices(7, 3, 4, seed=1) == drawn[12:15]


def test_builtin_data_has_disjoint_heldout_prompts():
    train, held, rep = prepare_rows("builtin:arithmetic", "outcome", builtin_size=200)
    assert rep["kind"] == "pairs" and len(train) > 100 and len(held) > 20
    assert not {prompt_key(r["prompt"]) for r in train} & {prompt_key(r["prompt"]) for r in held}
    assert all(r["chosen"] != r["rejected"] and r["margin"] > 0 for r in train)
    steps, held_steps, rep = prepare_rows("builtin:arithmetic_steps", "steps", builtin_size=100)
    assert rep["kind"] == "steps" and all(len(r["completions"]) == len(r["labels"]) for r in steps)
    assert any(not all(r["labels"]) for r in steps) and any(all(r["labels"]) for r in steps)
    with pytest.raises(ValueError, match="built-in steps data: builtin:arithmetic_steps"):
        prepare_rows("builtin:arithmetic", "steps")
