"""The data pipeline's row steps on real files: read, normalise, clean, dedup, mix."""
from __future__ import annotations

import json
import random

import pytest

from datapipe import RowError, clean_rows, dedup_exact, dedup_near, mix_sources, normalize_row, read_rows
from datapipe.formats import normalize_rows
from datapipe.mix import mixture_weights

WORDS = ("river city music book water light tree dog cat red blue green small large night day answer policy "
         "reward model learn explain write return function list string number value result question short "
         "long good better best wrong right please help compute solve sum add plus minus times equals").split()


def chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def test_formats_normalise_to_messages():
    openai = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "you"}]},
                           {"role": "assistant", "content": "Hello"}]}
    sharegpt = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi you"},
                                  {"from": "gpt", "value": "Hello"}]}
    alpaca = {"instruction": "Greet", "input": "Bob", "output": "Hello Bob"}
    pc = {"prompt": "Hi you", "completion": "Hello"}
    assert normalize_row(openai)["messages"] == chat("Hi you", "Hello")["messages"]
    assert normalize_row(sharegpt)["messages"][0] == {"role": "system", "content": "Be brief."}
    assert normalize_row(sharegpt)["messages"][1:] == chat("Hi you", "Hello")["messages"]
    assert normalize_row(alpaca)["messages"] == chat("Greet\n\nBob", "Hello Bob")["messages"]
    assert normalize_row(pc)["messages"] == chat("Hi you", "Hello")["messages"]


def test_unusable_rows_are_named_and_the_rest_kept(tmp_path):
    p = tmp_path / "mixed.jsonl"
    lines = [json.dumps(chat("a", "b")), "{not json", json.dumps({"text": "no format"}),
             json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}),
             json.dumps({"messages": [{"content": "no role"}]}), json.dumps(chat("c", "d"))]
    p.write_text("\n".join(lines) + "\n")
    errors: list[RowError] = []
    rows = read_rows(str(p), errors=errors)
    assert len(rows) == 5 and len(errors) == 1
    assert f"{p} line 2" in str(errors[0]) and "not valid JSON" in str(errors[0])
    kept, report = normalize_rows(rows)
    assert [r["messages"][0]["content"] for r in kept] == ["a", "c"]
    assert report["dropped"] == {"unusable_row": 3}
    text = "\n".join(report["examples"]["unusable_row"])
    assert f"{p} line 3" in text and "no recognised format" in text
    assert f"{p} line 4" in text and "preference row" in text
    assert f"{p} line 5" in text and "no 'role'" in text
    with pytest.raises(RowError, match=r"line 3: no recognised format"):
        normalize_row(rows[1])


def test_parquet_and_saved_dataset_read(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([{"instruction": f"say {i}", "input": "", "output": str(i)} for i in range(5)])
    ds.to_parquet(str(tmp_path / "a.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    for src in (str(tmp_path / "a.parquet"), str(tmp_path / "saved"), ds):
        rows = [normalize_row(r) for r in read_rows(src)]
        assert [r["messages"][1]["content"] for r in rows] == ["0", "1", "2", "3", "4"]
    with pytest.raises(ValueError, match="pass one split"):
        read_rows(datasets.DatasetDict({"train": ds}))


def test_clean_counts_each_reason(tmp_path):
    good = chat("What is 2+2?", "4")
    rows = [good,
            chat("", "empty user"),
            {"messages": [{"role": "narrator", "content": "x"}, {"role": "assistant", "content": "y"}]},
            chat("caf\u00c3\u00a9?", "mojibake"),
            chat("bad \ufffd byte", "x"),
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 42}]},
            {"messages": [{"role": "user", "content": "only a question"}]},
            {"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "late"},
                          {"role": "assistant", "content": "a"}]},
            chat("long " * 100, "x"),
            chat("Cafe\u0301 ok", "fine")]  # decomposed accent: kept, NFC-normalised
    kept, report = clean_rows(rows, max_chars=200)
    assert report["dropped"] == {"empty_turn": 1, "unknown_role": 1, "bad_encoding": 2, "broken_turn": 1,
                                 "no_assistant_turn": 1, "bad_turn_order": 1, "too_long": 1}
    assert report["in"] == 10 and report["kept"] == 2
    assert kept[1]["messages"][0]["content"] == "Caf\u00e9 ok"


def _sentence(rng: random.Random, n: int = 14) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def test_dedup_finds_planted_near_duplicates_and_keeps_distinct_rows():
    rng = random.Random(0)
    distinct = [chat(_sentence(rng), _sentence(rng)) for _ in range(80)]
    edits = [lambda s: s.upper(), lambda s: s.replace(" ", "  "), lambda s: s[:-1] + "!",
             lambda s: s.replace(s.split()[3], "zebra", 1), lambda s: s + " ok"]
    planted = []
    for i, row in enumerate(distinct[:20]):
        edit = edits[i % len(edits)]
        u, a = row["messages"][0]["content"], row["messages"][1]["content"]
        planted.append(chat(edit(u), a) if i % 2 else chat(u, edit(a)))
    exact_copies = [dict(r) for r in distinct[20:25]]
    tail = planted + exact_copies
    rng.shuffle(tail)
    rows = distinct + tail  # originals first: the first occurrence is the one kept

    kept, rep_exact = dedup_exact(rows)
    # Upper-casing and extra spaces are the same text once canonicalised: exact duplicates.
    assert rep_exact["dropped"] == {"exact_duplicate": 5 + 8}
    # The planted edits leave J ~ 0.83-0.86 over word 3-grams, the distinct rows J < 0.1.
    kept, rep_near = dedup_near(kept, threshold=0.7)
    assert rep_near["dropped"] == {"near_duplicate": 12}
    assert kept == distinct


def test_dedup_near_keeps_rows_that_merely_share_a_template():
    rows = [chat(f"What is {a}+{b}? Answer as JSON.", json.dumps({"answer": a + b})) for a in range(10, 20) for b in (31, 57)]
    kept, report = dedup_near(rows, threshold=0.8)
    assert len(kept) == len(rows), report


def test_mixing_ratios_hold_and_are_deterministic():
    sources = {"big": [("big", i) for i in range(900)], "mid": [("mid", i) for i in range(300)],
               "small": [("small", i) for i in range(30)]}
    mixed, report = mix_sources(sources, weights={"big": 0.5, "mid": 0.3, "small": 0.2}, total=1000, seed=3)
    assert len(mixed) == 1000
    for prefix in (mixed[:300], mixed):
        frac = {k: sum(1 for s, _ in prefix if s == k) / len(prefix) for k in sources}
        assert frac == pytest.approx({"big": 0.5, "mid": 0.3, "small": 0.2}, abs=0.05)
    assert report["sources"]["small"]["passes"] == 7  # 200 rows from 30: repeated in whole passes
    again, _ = mix_sources(sources, weights={"big": 0.5, "mid": 0.3, "small": 0.2}, total=1000, seed=3)
    other, _ = mix_sources(sources, weights={"big": 0.5, "mid": 0.3, "small": 0.2}, total=1000, seed=4)
    assert again == mixed and other != mixed

    p = mixture_weights({k: len(v) for k, v in sources.items()}, temperature=2.0)
    sizes = {"big": 900, "mid": 300, "small": 30}
    z = sum(n ** 0.5 for n in sizes.values())
    assert p == pytest.approx({k: n ** 0.5 / z for k, n in sizes.items()})
    mixed_t, _ = mix_sources(sources, temperature=2.0, seed=0)
    frac_small = sum(1 for s, _ in mixed_t if s == "small") / len(mixed_t)
    assert frac_small == pytest.approx(p["small"], abs=0.01) and frac_small > 30 / 1230
    with pytest.raises(ValueError, match="exactly one"):
        mix_sources(sources, weights={"big": 1, "mid": 1, "small": 1}, temperature=2.0)
