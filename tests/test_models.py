"""The tiny-model factory's output loads in transformers, peft, bitsandbytes 4-bit (with a backward step)
and vLLM's CPU engine."""
import json

import torch

from config import LoraConfig


def test_factory_is_deterministic_and_sized(tmp_path):
    from tinymodels import build_tiny_model

    a = build_tiny_model(tmp_path / "a", "tiny", seed=3)
    b = build_tiny_model(tmp_path / "b", "tiny", seed=3)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    n = json.loads((a / "tiny_model.json").read_text())["parameters"]
    assert 0.2e6 < n < 0.5e6


def test_chat_template_marks_assistant_tokens(tiny_model_dir):
    from learners.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    enc = tok.apply_chat_template(msgs, return_assistant_tokens_mask=True, return_dict=True)
    kept = tok.decode([t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m])
    assert kept == "hello there<|im_end|>"


def test_qlora_loads_in_4bit_and_takes_a_backward_step(tiny_model_dir):
    import bitsandbytes as bnb

    from learners.models import load_policy, reference_mode
    from learners.logprobs import sequence_logprobs

    model, tok = load_policy(tiny_model_dir, "qlora", LoraConfig(r=4, alpha=8))
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    ids = torch.tensor([tok("What is 2+2? 4").input_ids])
    att = torch.ones_like(ids)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n, p in model.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    before = sequence_logprobs(model, ids, att).detach()
    for _ in range(3):
        loss = -sequence_logprobs(model, ids, att).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = sequence_logprobs(model, ids, att).detach()
    assert after.mean() > before.mean()  # the adapter learned
    with torch.no_grad(), reference_mode(model):
        ref = sequence_logprobs(model, ids, att)
    assert torch.allclose(ref, before, atol=1e-5)  # adapter off = the untouched base
