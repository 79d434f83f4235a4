"""SFT math and data shapes on the tiny model: assistant-only labels, lossless packing, no attention across
packed samples, and a loss that gradient accumulation does not change."""
from __future__ import annotations

import random

import pytest
import torch

from datapipe.pack import best_fit_decreasing, pack_samples, unpack
from datapipe.tokens import IGNORE_INDEX, check_generation_marks, tokenize_chat, tokenize_rows
from learners.sft import packed_attention_mask, packed_forward, shift_labels, sft_loss, token_nll


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from learners.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def labelled_spans(ids: list[int], labels: list[int]) -> list[list[int]]:
    spans, cur = [], []
    for t, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            assert lab == t
            cur.append(t)
        elif cur:
            spans.append(cur)
            cur = []
    return spans + ([cur] if cur else [])


@pytest.mark.parametrize("msgs", [
    [{"role": "user", "content": "What is 2+3? Reply with JSON."}, {"role": "assistant", "content": '{"answer": 5}'}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hi"},
     {"role": "assistant", "content": "hi there"}, {"role": "user", "content": "Now uppercase it: assistant"},
     {"role": "assistant", "content": "HI THERE, caf\u00e9 \U0001F642"}, {"role": "user", "content": "thanks"},
     {"role": "assistant", "content": "user: you are welcome"}],
], ids=["single-turn", "multi-turn"])
def test_labels_cover_exactly_the_assistant_turns(tok, msgs):
    s = tokenize_chat(tok, msgs)
    spans = [tok.decode(span) for span in labelled_spans(s["input_ids"], s["labels"])]
    # Each assistant turn, with its end-of-turn token (so the model learns to stop), and nothing else --
    # even where user text contains the word "assistant" or assistant text looks like a role header.
    assert spans == [m["content"] + tok.eos_token for m in msgs if m["role"] == "assistant"]


def test_template_without_generation_marks_is_refused(tiny_model_dir):
    from learners.models import load_tokenizer

    t = load_tokenizer(tiny_model_dir)
    t.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ValueError, match="generation"):
        check_generation_marks(t)


def test_too_long_chats_are_dropped_and_counted(tok):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo " * n}]} for n in (2, 200)]
    kept, report = tokenize_rows(rows, tok, max_len=64)
    assert len(kept) == 1 and report["dropped"] == {"too_long": 1}


def test_best_fit_decreasing_fills_rows_and_packing_is_lossless():
    rng = random.Random(0)
    samples = []
    for _ in range(200):
        n = rng.randint(3, 60)
        ids = [rng.randrange(5, 500) for _ in range(n)]
        samples.append({"input_ids": ids, "labels": [t if rng.random() < 0.5 else IGNORE_INDEX for t in ids]})
    rows, report = pack_samples(samples, max_len=64, pad_id=0)
    assert all(len(r["input_ids"]) == len(r["labels"]) == len(r["position_ids"]) == 64 for r in rows)
    assert unpack(rows) == samples
    for r in rows:  # position ids restart at every sample, and at the padding
        expect = [p for n in r["seq_lens"] for p in range(n)]
        assert r["position_ids"][:len(expect)] == expect and sum(r["seq_lens"]) <= 64
        assert r["position_ids"][len(expect):] == list(range(64 - len(expect)))
    lengths = [len(s["input_ids"]) for s in samples]
    assert len(rows) <= 11 / 9 * (-(-sum(lengths) // 64)) + 1  # Dosa's bound on best-fit decreasing
    assert report["fill"] > 0.9
    # Best fit: every sample sits in the fullest row that had room for it when it was placed.
    assert best_fit_decreasing([5, 4, 3, 3, 2, 2, 1], 7) == [[0, 4], [1, 2], [3, 5, 6]]


def test_packed_forward_matches_each_sample_alone(tiny_model_dir, tok):
    from learners.models import load_policy

    model, _ = load_policy(tiny_model_dir, finetune="qlora")
    model.eval()
    chats = [[{"role": "user", "content": f"What is {i}+{2 * i}?"}, {"role": "assistant", "content": str(3 * i)}]
             for i in range(6)]
    samples = [tokenize_chat(tok, c) for c in chats]
    rows, _ = pack_samples(samples, max_len=48, pad_id=tok.pad_token_id)
    assert any(len(r["seq_lens"]) > 1 for r in rows)
    ids = torch.tensor([r["input_ids"] for r in rows])
    pos = torch.tensor([r["position_ids"] for r in rows])
    with torch.no_grad():
        packed = packed_forward(model, ids, pos)
        for b, r in enumerate(rows):
            start = 0
            for sid, n in zip(r["sample_ids"], r["seq_lens"]):
                alone = model(input_ids=torch.tensor([samples[sid]["input_ids"]])).logits[0]
                torch.testing.assert_close(packed[b, start:start + n], alone, atol=1e-4, rtol=1e-4)
                start += n
        # Without the mask, later samples would see earlier ones: the check above can fail.
        leaky = model(input_ids=ids, position_ids=pos, attention_mask=torch.ones_like(ids)).logits
        assert not torch.allclose(leaky, packed, atol=1e-3)


def test_packed_mask_is_block_diagonal_causal():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0]])
    allowed = packed_attention_mask(pos)[0, 0] == 0
    expect = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                           [0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(allowed, expect)
    labels = torch.tensor([[-100, 7, 8, 9, 10, 11]])
    # Position 3 starts a sample: predicting it from the previous sample would leak across the boundary.
    assert shift_labels(labels, pos).tolist() == [[7, 8, -100, 10, -100]]


def test_sft_loss_is_the_labelled_token_mean_and_accumulates_exactly():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 10, 32, generator=g, requires_grad=True)
    labels = torch.randint(0, 32, (4, 10), generator=g)
    labels[torch.rand(4, 10, generator=g) < 0.5] = IGNORE_INDEX
    # Independent computation: log-softmax, gather, mean over labelled positions.
    lp = torch.log_softmax(logits[:, :-1], -1)
    tgt = labels[:, 1:]
    m = tgt != IGNORE_INDEX
    ref = -(lp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * m).sum() / m.sum()
    torch.testing.assert_close(sft_loss(logits, labels), ref)
    # Two micro-batches normalised by the step's label count give the one-batch gradient.
    full = torch.autograd.grad(sft_loss(logits, labels), logits)[0]
    n = int(m.sum())
    parts = [torch.autograd.grad(sft_loss(logits[i:i + 2], labels[i:i + 2], num_label_tokens=n), logits)[0]
             for i in (0, 2)]
    torch.testing.assert_close(parts[0] + parts[1], full)
    # Unlabelled positions carry no gradient.
    assert torch.all(full[:, :-1][~m] == 0)
    nll, count = token_nll(logits, labels)
    assert count == n
