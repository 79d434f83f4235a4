"""The panel's parts on the tiny model, without a vLLM engine: perplexity against a direct computation,
the judges with and without swapping positions, suite cards and rows in, the comparison table out."""
import json
import math

import pytest
import torch

from config import ConfigError
from evalpanel.judges import ModelJudge, RewardModelJudge
from evalpanel.likelihood import heldout_logprobs, load_scoring_model, scored_tokens
from evalpanel.metrics import perplexity, position_consistency, win_rate
from evalpanel.report import write_table
from evalpanel.suites import builtin_suites, load_suite, load_suites

ROWS = [
    {"text": "The quick brown fox jumps over the lazy dog."},
    {"messages": [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": '{"answer": 5}'}]},
    {"prompt": "Compute 4 + 4.", "completion": " 8"},
    {"prompt": [{"role": "user", "content": "Add 1 and 2."}], "completion": '{"answer": 3}'},
]


@pytest.fixture(scope="module")
def scoring(tiny_model_dir):
    return load_scoring_model(tiny_model_dir)


def test_perplexity_matches_direct_computation(scoring):
    model, tok = scoring
    # Direct: one row at a time, no padding, cross-entropy of the counted tokens from the logits.
    nll, count = 0.0, 0
    for row in ROWS:
        ids, mask = scored_tokens(tok, row)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
        keep = torch.tensor(mask[1:]).bool()
        nll += torch.nn.functional.cross_entropy(logits[keep], torch.tensor(ids[1:])[keep], reduction="sum").item()
        count += int(keep.sum())
    direct = math.exp(nll / count)
    for batch_size in (1, 3):  # padding must not change a row's numbers
        lp = heldout_logprobs(model, tok, ROWS, batch_size=batch_size)
        assert lp.numel() == count
        assert perplexity(lp, torch.ones_like(lp)).item() == pytest.approx(direct, rel=1e-4)


def test_scored_tokens_count_only_the_answer(scoring):
    _, tok = scoring
    ids, mask = scored_tokens(tok, ROWS[1])
    answer = tok.decode([i for i, m in zip(ids, mask) if m])
    assert answer.startswith('{"answer": 5}') and "What is" not in answer
    ids, mask = scored_tokens(tok, ROWS[2])
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == " 8"
    with pytest.raises(ValueError, match="needs 'text', 'messages' or 'prompt'"):
        scored_tokens(tok, {"question": "x"})


PROMPTS = [[{"role": "user", "content": q}] for q in ("What is 2+3?", "Name a colour.", "Say hi.", "Add 1 and 1.")]
A = ['{"answer": 5}', "blue", "hi", "2"]
B = ["five", "the the the", "", '{"answer": 2}']


def test_model_judge_swapping_removes_order_bias(tiny_model_dir):
    judge = ModelJudge(tiny_model_dir)
    ab, ba = judge.prefer(PROMPTS, A, B), judge.prefer(PROMPTS, B, A)
    assert set(ab.tolist()) <= {0.0, 0.5, 1.0}
    # Swapped win-rates of A over B and B over A are complementary whatever the judge's bias...
    assert win_rate(ab, ba).item() + win_rate(ba, ab).item() == pytest.approx(1.0)
    # ...and an answer set against itself is exactly a draw, while one order alone shows the judge's lean.
    same = judge.prefer(PROMPTS, A, A)
    assert win_rate(same, same).item() == 0.5
    assert win_rate(same).item() == same.mean().item()
    assert position_consistency(same, same).item() == 0.0
    # Unswapped win-rates need not be complementary: the gap is exactly the judge's first-position bias.
    bias = (ab.mean() + ba.mean() - 1).item()
    assert win_rate(ab).item() - win_rate(ab, ba).item() == pytest.approx(bias / 2)


def test_reward_model_judge_is_order_blind():
    judge = RewardModelJudge("minilm")  # the pretrained MiniLM encoder with a seeded value head
    ab, ba = judge.prefer(PROMPTS, A, B), judge.prefer(PROMPTS, B, A)
    assert torch.equal(ab, 1 - ba)  # the same scores, read the other way round
    assert win_rate(ab).item() == win_rate(ab, ba).item()
    assert win_rate(judge.prefer(PROMPTS, A, A)).item() == 0.5  # equal rewards tie


def test_builtin_suites_load_and_rows_are_checked(tmp_path):
    assert {"arithmetic", "heldout", "code", "chat"} <= set(builtin_suites())
    s = load_suite("arithmetic", limit=5)
    assert s.spec.kind == "generate" and len(s.rows) == 5 and "exact_match" in s.spec.scorers
    assert load_suite("code").spec.kind == "pass_at_k"

    data = tmp_path / "mine.jsonl"
    data.write_text(json.dumps({"text": "hello world"}) + "\n" + json.dumps({"question": "no text here"}) + "\n")
    with pytest.raises(ConfigError, match=r"mine.jsonl line 2: a perplexity row needs 'text'"):
        load_suite(f"perplexity:{data}")
    data.write_text(json.dumps({"text": "hello world"}) + "\n")
    assert load_suite(f"perplexity:{data}").rows == [{"text": "hello world"}]
    clash = tmp_path / "heldout.jsonl"  # would report as heldout/perplexity, like the built-in
    clash.write_text(data.read_text())
    with pytest.raises(ConfigError, match=r"more than one suite is named \['heldout'\]"):
        load_suites(["heldout", f"perplexity:{clash}"])

    card = tmp_path / "qa.yaml"
    card.write_text("kind: generate\ndata: qa.jsonl\nscorers: {exact: {scorer: exact_answer, reference: answer}}\n")
    (tmp_path / "qa.jsonl").write_text(json.dumps({"prompt": "2+2=", "label": 4}) + "\n")
    with pytest.raises(ConfigError, match=r"qa.jsonl line 1: scorer 'exact' reads the reference from column 'answer'"):
        load_suite(str(card))


@pytest.mark.parametrize("card, fragment", [
    ("kind: generate\ndata: x.jsonl\nscorer: {}\n", "unknown config key 'scorer' (did you mean 'scorers'?)"),
    ("kind: pass_at_k\ndata: x.jsonl\nn_samples: 2\nk: [5]\ntemperature: 1\nscorers: {t: {scorer: python_unit_tests}}\n",
     "n_samples: pass@5 needs n_samples >= 5"),
    ("kind: rank\ndata: x.jsonl\n", "kind: 'rank' is not one of"),
    ("kind: generate\ndata: x.jsonl\n", "scorers: a generate suite needs at least one scorer"),
])
def test_bad_suite_cards_name_the_key(tmp_path, card, fragment):
    (tmp_path / "x.jsonl").write_text(json.dumps({"prompt": "hi"}) + "\n")
    (tmp_path / "bad.yaml").write_text(card)
    with pytest.raises(ConfigError) as e:
        load_suite(str(tmp_path / "bad.yaml"))
    assert fragment in str(e.value) and "bad.yaml" in str(e.value)


def test_unknown_suite_lists_the_builtins():
    with pytest.raises(ConfigError, match=r"built-ins: \[.*'arithmetic'"):
        load_suite("arithmetc")


def test_write_table(tmp_path):
    results = {
        "base": {"metrics": {"t/perplexity": 40.0, "t/exact_match": 0.2, "t/len_mean": 30.0},
                 "stderr": {"t/exact_match": 0.05}, "direction": {"t/exact_match": 1}},
        "sft": {"metrics": {"t/perplexity": 10.0, "t/exact_match": 0.5, "t/len_mean": 8.0, "t/win_rate": 0.7},
                "stderr": {"t/exact_match": 0.06}},
        "plain": {"t/perplexity": 20.0, "t/exact_match": 0.1},  # a bare {metric: value} mapping works too
    }
    paths = write_table(results, tmp_path / "eval")
    md = paths["markdown"].read_text()
    assert "| metric | base | sft | plain | Δ sft vs base | Δ plain vs base |" in md
    assert "| t/perplexity ↓ | 40.000 | **10.000** | 20.000 | -30.000 | -20.000 |" in md
    assert "| t/exact_match ↑ | 0.200 ± 0.050 | **0.500 ± 0.060** | 0.100 | +0.300 | -0.100 |" in md
    assert "| t/len_mean | 30.000 | 8.000 | – | -22.000 | – |" in md  # no verdict on lengths, a gap stays a gap
    comp = json.loads(paths["json"].read_text())
    assert comp["delta"]["t/exact_match"]["sft"] == pytest.approx(0.3)
    assert comp["metrics"]["t/win_rate"] == {"base": None, "sft": 0.7, "plain": None}
    assert paths["png"].stat().st_size > 1000 and paths["png"].read_bytes()[:4] == b"\x89PNG"
