"""pipelines/sft.py end to end on the tiny model: held-out loss falls, a resumed run retraces the uninterrupted
one, and vLLM serves the saved adapter (the very weights the learner trained)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipelines import sft


def _args(runs_dir: Path, cache_dir: Path, *extra: str) -> list[str]:
    return [f"runs_dir={runs_dir}", f"cache_dir={cache_dir}", "run_name=t", "model.preset=tiny", "model.finetune=qlora",
            "sft.steps=12", "sft.lr=3e-3", "sft.warmup_steps=2", "sft.micro_batch_rows=4", "sft.grad_accum=2",
            "sft.eval_every=6", "sft.max_seq_len=128", "checkpoint.every=6", "checkpoint.keep=3", "tensorboard=false",
            "progress=false", *extra]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, cache_dir, ray_local):
    runs = tmp_path_factory.mktemp("runs")
    summary = sft.main(_args(runs, cache_dir))
    return runs / "t", summary


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_short_sft_run_lowers_heldout_loss(sft_run):
    run_dir, summary = sft_run
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["heldout_loss_end"] < on_disk["heldout_loss_start"] - 0.2, on_disk
    assert on_disk["heldout_ppl_end"] < on_disk["heldout_ppl_start"]
    rows = _rows(run_dir)
    assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, 13))
    assert rows[0]["step"] == 0 and "heldout/loss" in rows[0]
    report = json.loads((run_dir / "data_report.json").read_text())
    assert report["dedup_exact"]["dropped"]["exact_duplicate"] > 0 and report["pack_train"]["fill"] > 0.8
    assert (run_dir / "adapter" / "adapter_config.json").exists()


def test_resume_retraces_the_uninterrupted_run(sft_run, cache_dir, tmp_path):
    run_dir, summary = sft_run
    # A copy of the run as if it had been killed after the step-6 checkpoint.
    killed = tmp_path / "t"
    shutil.copytree(run_dir, killed)
    shutil.rmtree(killed / "checkpoints" / "step-000012")
    shutil.rmtree(killed / "adapter")
    resumed = sft.main(_args(tmp_path, cache_dir, "resume=true"))
    before = {r["step"]: r for r in _rows(run_dir) if "train/loss" in r}
    after = {r["step"]: r for r in _rows(killed) if "train/loss" in r}
    assert sorted(after) == list(range(1, 13))  # one row per step, no duplicates from the first attempt
    for step in range(7, 13):
        assert after[step]["train/loss"] == pytest.approx(before[step]["train/loss"], abs=1e-4)
        assert after[step]["train/lr"] == pytest.approx(before[step]["train/lr"])
    assert resumed["heldout_loss_start"] == summary["heldout_loss_start"]
    assert resumed["heldout_loss_end"] == pytest.approx(summary["heldout_loss_end"], abs=1e-4)


def test_vllm_serves_the_saved_adapter(sft_run, tiny_model_dir):
    import torch

    from actors.rollout import RolloutEngine
    from config import RolloutConfig
    from learners.models import load_policy

    run_dir, _ = sft_run
    adapter = run_dir / "adapter"
    msgs = [{"role": "user", "content": 'What is 3+4? Reply with JSON: {"answer": N}'}]
    engine = RolloutEngine(tiny_model_dir, RolloutConfig(max_model_len=256, max_new_tokens=12, seed=0), max_lora_rank=16)
    try:
        prompt = engine.chat_prompt(msgs)
        ids = engine.tokenizer(prompt + '{"answer": 7}<|im_end|>', add_special_tokens=False).input_ids
        base = engine.prompt_logprobs([ids])["logprobs"][0]
        engine.load_adapter(adapter, version=1)
        out = engine.generate([prompt], n=1, temperature=0.0)
        served = engine.prompt_logprobs([ids])
    finally:
        engine.shutdown()
    assert out["adapter_version"] == 1 and served["adapter_version"] == 1
    assert out["samples"][0][0]["token_ids"]
    # The adapter took: the engine's logprobs are those of the trained adapter on the full-precision base
    # (scored here by transformers + peft), and not those of the base.
    model, _ = load_policy(tiny_model_dir, finetune="lora", adapter_path=adapter)

    def scored(m):
        with torch.no_grad():
            lp = torch.log_softmax(m(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
            return lp.gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1)

    ref = scored(model)
    with model.disable_adapter():
        base_ref = scored(model)
    served_t = torch.tensor(served["logprobs"][0])
    # Tolerance from this run: how far the engine and transformers already differ on the bare base (their
    # kernels' rounding), times 4, and at least one fp32 rounding unit at these magnitudes.
    floor = (torch.tensor(base) - base_ref).abs().max().item()
    atol = 4 * max(floor, torch.finfo(torch.float32).eps * (1 + ref.abs().max().item()))
    assert torch.allclose(served_t, ref, atol=atol), ((served_t - ref).abs().max(), atol)
    assert (served_t - torch.tensor(base)).abs().max() > 0.1
