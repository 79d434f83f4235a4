"""The SFT learner in-process: a checkpoint restores everything a step depends on, for full fine-tunes too."""
from __future__ import annotations

import pytest

from actors.sft_worker import SFTWorker
from config import ModelConfig
from config.sft import SFTConfig
from datapipe.pack import pack_samples
from datapipe.tokens import tokenize_chat


def test_checkpoint_round_trip_continues_the_same_run(tiny_model_dir, tmp_path):
    # A full fine-tune: the LoRA path is checked end to end by the resumed pipeline run in test_sft_pipeline.py.
    finetune = "full"
    sft = SFTConfig(steps=4, lr=5e-3, warmup_steps=1, micro_batch_rows=2, grad_accum=1)
    model_cfg = ModelConfig(finetune=finetune)
    a = SFTWorker(tiny_model_dir, model_cfg, sft, seed=0)
    chats = [[{"role": "user", "content": f"Uppercase: word{i}"}, {"role": "assistant", "content": f"WORD{i}"}]
             for i in range(8)]
    rows, _ = pack_samples([tokenize_chat(a.tokenizer, c) for c in chats], max_len=64, pad_id=a.tokenizer.pad_token_id)
    batch = [rows[:2]]
    a.train_step(batch)
    ckpt = a.save_checkpoint(str(tmp_path / "ckpt"), 1, {"note": "x"})
    want = [a.train_step(batch)["loss"] for _ in range(2)]

    b = SFTWorker(tiny_model_dir, model_cfg, sft, seed=123)  # different init: only the checkpoint can make it match
    meta = b.load_checkpoint(ckpt)
    got = [b.train_step(batch)["loss"] for _ in range(2)]
    assert meta["step"] == 1 and meta["note"] == "x"
    assert got == pytest.approx(want, abs=1e-5)
    assert want[1] < want[0]
