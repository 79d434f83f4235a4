"""The tiny-model factory's output loads in transformers, peft, bitsandbytes 4-bit (with a backward step)
and vLLM's CPU engine."""
import json
import math

import pytest
import torch

from pathlib import Path

from config import Config, LoraConfig, load


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
    # adapter off = the untouched base, to the bit: with one 4-bit kernel for every forward (training and no-grad
    # alike, learners.models.select_4bit_kernel) and B = 0 at the start, both compute the same numbers
    assert torch.equal(ref, before)


def test_one_4bit_kernel_for_training_and_no_grad_forwards(tiny_model_dir):
    """bitsandbytes' fused bf16 CPU path (AVX512-BF16 machines, eval + no grad only) computes another function than
    the training forward; the learner turns it off so the two agree exactly on every machine. Where this CPU has
    the fused path, the test also shows that it is live when asked for, and differs."""
    from bitsandbytes.functional import has_avx512bf16

    from learners.logprobs import sequence_logprobs
    from learners.models import load_policy, select_4bit_kernel

    model, tok = load_policy(tiny_model_dir, "qlora", LoraConfig(r=4, alpha=8))
    ids = torch.tensor([tok("What is 2+2? 4").input_ids])
    att = torch.ones_like(ids)
    model.train()
    train_lp = sequence_logprobs(model, ids, att).detach()
    model.eval()
    with torch.no_grad():
        assert torch.equal(sequence_logprobs(model, ids, att), train_lp)
    if not has_avx512bf16():
        return
    fused, _ = load_policy(tiny_model_dir, "qlora", LoraConfig(r=4, alpha=8), fused_4bit_cpu=True)
    assert select_4bit_kernel(fused, True) > 0
    fused.eval()
    with torch.no_grad():
        fused_lp = sequence_logprobs(fused, ids, att)
    assert not torch.equal(fused_lp, train_lp)  # the hazard the default removes
    # ... and it is rounding-sized, not a different model: bf16 keeps 8 bits of mantissa
    assert (fused_lp - train_lp).abs().max() < 2 ** -8 * train_lp.abs().max() * 8


def _saved_adapter(model_dir, out, seed):
    """A LoRA adapter with random (non-zero) B, so that it changes the model's logprobs."""
    from learners.models import load_policy, save_adapter

    torch.manual_seed(seed)
    model, _ = load_policy(str(model_dir), "lora", dtype="float32")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return save_adapter(model, out), model


def test_learner_starts_from_one_adapter_and_anchors_to_another(tiny_model_dir, tmp_path):
    """RL after DPO: train from the DPO adapter, KL to the SFT adapter; only the trained one moves or leaves."""
    from actors.learner import LearnerWorker
    from learners.step import build_sequences

    start, start_model = _saved_adapter(tiny_model_dir, tmp_path / "dpo", 1)
    ref, ref_model = _saved_adapter(tiny_model_dir, tmp_path / "sft", 2)
    cfg = load(Config, "tiny-cpu", ["model.finetune=lora", f"model.adapter={start}", f"model.reference_adapter={ref}",
                                    "train.lr=0.05"])
    w = LearnerWorker(str(tiny_model_dir), cfg.model, cfg.algo, cfg.train, 0)
    seq = [[1, 5, 9, 13, 17, 21, 25]]
    ids, att, _ = build_sequences(seq, [[]], w.pad_id)
    from learners.step import batched_logprobs
    with torch.no_grad():
        want_policy = batched_logprobs(start_model, ids, att, 8)
        want_ref = batched_logprobs(ref_model, ids, att, 8)
        assert torch.allclose(torch.tensor(w.probe_logprobs(seq)["logprobs"][0]), want_policy[0, :6], atol=1e-5)
        assert torch.allclose(w._ref_logprobs(ids, att), want_ref, atol=1e-5)
        assert not torch.allclose(want_policy, want_ref, atol=1e-3)
    ref_before = {n: p.clone() for n, p in w.model.named_parameters() if ".ref." in n}
    out = w.step([[1, 5, 9]] * 4, [[13, 17, 21, 25]] * 2 + [[30, 31, 32, 33]] * 2, [1.0, 1.0, 0.0, 0.0], [0, 0, 0, 0])
    assert out["kl_loss"] > 0  # policy and reference differ from the first step
    assert all(torch.equal(p, ref_before[n]) for n, p in w.model.named_parameters() if ".ref." in n)
    assert not any(p.requires_grad for n, p in w.model.named_parameters() if ".ref." in n)
    assert all(p.requires_grad for n, p in w.model.named_parameters() if ".default." in n and "lora_" in n)
    exported = Path(w.export_adapter(str(tmp_path / "out"))["path"])
    assert (exported / "adapter_model.safetensors").exists() and not (exported / "ref").exists()


def test_learner_started_from_an_adapter_anchors_to_it(tiny_model_dir, tmp_path):
    from actors.learner import LearnerWorker
    from learners.step import batched_logprobs, build_sequences

    start, _ = _saved_adapter(tiny_model_dir, tmp_path / "dpo", 1)
    cfg = load(Config, "tiny-cpu", ["model.finetune=lora", f"model.adapter={start}"])
    w = LearnerWorker(str(tiny_model_dir), cfg.model, cfg.algo, cfg.train, 0)
    ids, att, _ = build_sequences([[1, 5, 9, 13, 17]], [[]], w.pad_id)
    with torch.no_grad():
        assert torch.allclose(w._ref_logprobs(ids, att), batched_logprobs(w.model, ids, att, 8), atol=1e-6)
    bad = load(Config, "tiny-cpu", ["model.finetune=lora", f"model.reference_adapter={tmp_path / 'none'}"])
    with pytest.raises(FileNotFoundError, match="model.reference_adapter"):
        LearnerWorker(str(tiny_model_dir), bad.model, bad.algo, bad.train, 0)
    bad = load(Config, "tiny-cpu", ["model.finetune=lora", f"model.adapter={tmp_path / 'none'}"])
    with pytest.raises(FileNotFoundError, match="model.adapter"):
        LearnerWorker(str(tiny_model_dir), bad.model, bad.algo, bad.train, 0)
    from config import ConfigError
    with pytest.raises(ConfigError, match="model.adapter: needs model.finetune=qlora or lora"):
        load(Config, "tiny-cpu", ["model.finetune=full", f"model.adapter={start}"])


def test_resolve_dtype_reads_the_hardware(tmp_path):
    """model.dtype=auto: bf16 on every CUDA device and on CPUs with AVX512-BF16 or AMX-BF16, fp32 on other CPUs;
    named dtypes pass through; the CPU's flags come from /proc/cpuinfo unless given."""
    from config import ConfigError
    from learners.models import cpu_flags, resolve_dtype

    assert resolve_dtype("auto", "cpu", {"avx512f", "avx512_bf16"}) == "bfloat16"
    assert resolve_dtype("auto", "cpu", {"amx_tile", "amx_bf16"}) == "bfloat16"
    assert resolve_dtype("auto", "cpu", {"avx512f", "avx512_vnni", "amx_int8"}) == "float32"
    assert resolve_dtype("auto", "cpu", set()) == "float32"
    assert resolve_dtype("auto", "cuda:1", set()) == "bfloat16"
    assert resolve_dtype("float32", "cuda", {"avx512_bf16"}) == "float32"
    assert resolve_dtype("bfloat16", "cpu", set()) == "bfloat16"
    with pytest.raises(ConfigError, match="model.dtype"):
        resolve_dtype("fp8", "cpu")
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    assert cpu_flags(fake) == {"fpu", "sse2", "avx512f", "avx512_bf16"}
    assert cpu_flags(tmp_path / "absent") == set()
    # this machine, read the plain way
    words = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    want = "bfloat16" if words & {"avx512_bf16", "amx_bf16"} else "float32"
    assert resolve_dtype("auto", "cpu") == want


def test_bf16_learner_keeps_fp32_lora_weights_and_optimizer_state(tiny_model_dir):
    """model.dtype=bfloat16: the frozen 4-bit base computes in bf16 (its non-quantised weights are bf16), while the
    LoRA weights, their gradients and AdamW's moments stay fp32, and a step moves the weights."""
    from actors.learner import LearnerWorker

    cfg = load(Config, "tiny-cpu", ["model.dtype=bfloat16", "train.lr=0.01"])
    w = LearnerWorker(str(tiny_model_dir), cfg.model, cfg.algo, cfg.train, 0)
    assert w.model.get_output_embeddings().weight.dtype == torch.bfloat16
    assert w.params and all(p.dtype == torch.float32 for p in w.params)
    before = [p.detach().clone() for p in w.params]
    out = w.step([[1, 5, 9]] * 4, [[13, 17, 21, 25]] * 2 + [[30, 31, 32, 33]] * 2, [1.0, 1.0, 0.0, 0.0], [0, 0, 0, 0])
    assert math.isfinite(out["loss"]) and out["grad_norm"] > 0
    assert any(not torch.equal(p, b) for p, b in zip(w.params, before))
    moments = [t for s in w.optimizer.state.values() for k, t in s.items() if k in ("exp_avg", "exp_avg_sq")]
    assert moments and all(t.dtype == torch.float32 for t in moments)


def test_config_dtype_auto_is_the_default_and_reaches_the_learner(tiny_model_dir):
    from actors.learner import LearnerWorker
    from learners.models import resolve_dtype

    cfg = load(Config, "tiny-cpu", ["model.dtype=auto"])
    assert Config().model.dtype == "auto"
    w = LearnerWorker(str(tiny_model_dir), cfg.model, cfg.algo, cfg.train, 0)
    assert w.model.get_output_embeddings().weight.dtype == getattr(torch, resolve_dtype("auto", "cpu"))


def test_bf16_training_and_no_grad_forwards_agree(tiny_model_dir):
    """Under a bf16 base too, the training forward, the no-grad probe and the reference (adapter off, B = 0 at the
    start) compute the same numbers to the bit by the lean path the learner uses: the ratio starts at 1
    and the KL at 0 (select_4bit_kernel's guarantee, in the dtype model.dtype=auto picks on bf16 hardware)."""
    from learners.logprobs import sequence_logprobs
    from learners.models import load_policy, reference_mode

    model, tok = load_policy(tiny_model_dir, "qlora", LoraConfig(r=4, alpha=8), "bfloat16")
    ids = torch.tensor([tok("What is 2+2? 4").input_ids] * 2)
    att = torch.ones_like(ids)
    pos = torch.ones(ids.shape[0], ids.shape[1] - 1)
    model.train()
    train_lean = sequence_logprobs(model, ids, att, positions=pos).detach()
    model.eval()
    with torch.no_grad():
        assert torch.equal(sequence_logprobs(model, ids, att, positions=pos), train_lean)
        with reference_mode(model):
            assert torch.equal(sequence_logprobs(model, ids, att, positions=pos), train_lean)
