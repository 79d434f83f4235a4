"""pipelines/eval.py end to end on the tiny model: base vs a LoRA adapter fine-tuned for a few steps on
arithmetic chats, every built-in suite kind plus a user's own file, one real vLLM engine (a Ray actor),
the real sandbox for pass@k, and the comparison table on disk."""
import json
import random
import runpy
from pathlib import Path

import torch

from config import LoraConfig
from learners.logprobs import sequence_logprobs
from learners.models import load_policy, save_adapter

REPO = Path(__file__).resolve().parents[1]


def train_sft_adapter(model_dir: Path, out: Path, steps: int = 40, seed: int = 0) -> Path:
    """A few LoRA steps on `{"answer": N}` chats, loss on the answer tokens only: enough for a visible change."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model, tok = load_policy(model_dir, finetune="lora", lora=LoraConfig(r=8, alpha=16))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    data = []
    for _ in range(256):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        msgs = [{"role": "user", "content": f"What is {a}+{b}? Reply with JSON: {{\"answer\": N}}"},
                {"role": "assistant", "content": json.dumps({"answer": a + b})}]
        enc = tok.apply_chat_template(msgs, return_assistant_tokens_mask=True, return_dict=True)
        data.append((list(enc["input_ids"]), list(enc["assistant_masks"])))
    for _ in range(steps):
        batch = [data[rng.randrange(len(data))] for _ in range(16)]
        width = max(len(i) for i, _ in batch)
        ids = torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i, _ in batch])
        attn = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch])
        mask = torch.tensor([m + [0] * (width - len(m)) for _, m in batch])[:, 1:].float()
        loss = -(sequence_logprobs(model, ids, attn) * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save_adapter(model, out)


def test_eval_pipeline_base_vs_sft_adapter(tiny_model_dir, cache_dir, ray_local, tmp_path):
    adapter = train_sft_adapter(tiny_model_dir, tmp_path / "sft-adapter")
    user_text = tmp_path / "my_heldout.jsonl"  # a user's own held-out file, in a training format
    user_text.write_text("".join(json.dumps({"prompt": f"{a}+{a}=", "completion": str(2 * a)}) + "\n" for a in range(6)))

    main = runpy.run_path(str(REPO / "pipelines" / "eval.py"), run_name="eval_pipeline")["main"]
    results = main([
        "model.preset=tiny", f"cache_dir={cache_dir}", f"runs_dir={tmp_path / 'runs'}", "run_name=cmp",
        "tensorboard=false", "eval.limit=6", "eval.max_new_tokens=16",
        f"eval.checkpoints=[base, sft={adapter}]",
        f"eval.suites=[heldout, arithmetic, code, chat, 'perplexity:{user_text}']",
    ])
    base, sft = results["base"]["metrics"], results["sft"]["metrics"]

    # The adapter was trained on exactly this kind of answer: held-out perplexity must fall.
    assert sft["heldout/perplexity"] < 0.5 * base["heldout/perplexity"]
    assert sft["my_heldout/perplexity"] != base["my_heldout/perplexity"]
    # Answers really came from two different models: the adapter was served, not silently skipped.
    assert results["sft"]["samples"]["arithmetic"] != results["base"]["samples"]["arithmetic"]
    for m in ("format", "json_valid", "json_schema", "exact_match"):
        assert 0.0 <= base[f"arithmetic/{m}"] <= 1.0 and 0.0 <= sft[f"arithmetic/{m}"] <= 1.0
    assert base["arithmetic/json_schema"] <= base["arithmetic/json_valid"]  # conforming implies valid
    assert 0.0 <= sft["code/pass@1"] <= sft["code/pass@4"] <= 1.0  # 4 samples, sandboxed unit tests
    assert "code/unit_tests" not in results["sft"]["notes"]  # every sample got a verdict (no sandbox failure)
    # Win-rate: against the baseline's answers, judged both ways round; the baseline has no opponent.
    assert 0.0 <= sft["chat/win_rate"] <= 1.0 and "chat/consistency" in sft
    assert results["sft"]["notes"]["chat/win_rate"] == "against base"
    assert "chat/win_rate" not in base

    run = tmp_path / "runs" / "cmp"
    md = (run / "comparison.md").read_text()
    assert "| metric | base | sft | Δ sft vs base |" in md and "| heldout/perplexity ↓ |" in md
    comp = json.loads((run / "comparison.json").read_text())
    assert comp["metrics"]["heldout/perplexity"]["sft"] == sft["heldout/perplexity"]
    assert (run / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["checkpoint"] for r in rows] == ["base", "sft"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["baseline"] == "base" and summary["sft/heldout/perplexity"] == sft["heldout/perplexity"]
