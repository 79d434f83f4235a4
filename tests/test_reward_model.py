"""Reward models: the losses against hand-worked numbers, the value head's scores (per prefix, after saving, through
the reward_model scorer), and a short pipeline run that must rank held-out pairs clearly above chance."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from learners.reward_model import (
    RewardModel, bradley_terry_loss, outcome_loss, outcome_metrics, pairwise_accuracy, pairwise_metrics,
    process_loss, process_metrics, process_score,
)

def test_losses_match_hand_worked_example():
    rc, rr = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 1.0])
    # Differences 0.5 and -1: mean of log(1 + e^-0.5) = 0.474077 and log(1 + e^1) = 1.313262.
    bt = (math.log(1 + math.exp(-0.5)) + math.log(1 + math.exp(1))) / 2
    assert bradley_terry_loss(rc, rr).item() == pytest.approx(bt, abs=1e-6)
    # Margins 1 and 0: the first pair must now be 1 apart, -log sigma(0.5 - 1) = log(1 + e^0.5) = 0.974077.
    with_margin = (math.log(1 + math.exp(0.5)) + math.log(1 + math.exp(1))) / 2
    assert bradley_terry_loss(rc, rr, torch.tensor([1.0, 0.0])).item() == pytest.approx(with_margin, abs=1e-6)
    # Centering adds c * mean((r_w + r_l)^2) = 0.1 * (1.5^2 + 1^2) / 2 = 0.1625.
    assert bradley_terry_loss(rc, rr, center_coef=0.1).item() == pytest.approx(bt + 0.1625, abs=1e-6)
    assert pairwise_accuracy(rc, rr) == 0.5 and pairwise_accuracy(rc, rc) == 0.0  # ties are not wins
    # Outcome / process: binary cross-entropy, -log sigma(2) for a true label, -log(1 - sigma(-1)) for a false one.
    ce = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    assert outcome_loss(torch.tensor([2.0, -1.0]), torch.tensor([True, False])).item() == pytest.approx(ce, abs=1e-6)
    assert process_loss(torch.tensor([2.0, -1.0]), torch.tensor([1, 0])).item() == pytest.approx(ce, abs=1e-6)
    steps = torch.tensor([2.0, -1.0, 0.5])
    assert process_score(steps, "min").item() == -1.0 and process_score(steps, "last").item() == 0.5
    want = sum(math.log(1 / (1 + math.exp(-v))) for v in (2.0, -1.0, 0.5))
    assert process_score(steps, "prod").item() == pytest.approx(want, abs=1e-6)


def test_metrics_match_hand_worked_example():
    rc, rr = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.5, 1.0, 2.0])
    m = pairwise_metrics(rc, rr)
    assert m["accuracy"] == pytest.approx(1 / 3)  # 1 > 0.5 only; the tie 2 = 2 is not a win
    assert m["margin"] == pytest.approx((0.5 - 1.0 + 0.0) / 3)
    assert m["rewards/chosen"] == pytest.approx(1.0) and m["rewards/rejected"] == pytest.approx(3.5 / 3)
    m = outcome_metrics(torch.tensor([2.0, -1.0, 0.5, 0.0]), torch.tensor([True, False, False, True]))
    assert m["accuracy"] == 0.5 and m["score_mean"] == pytest.approx(0.375)  # r = 0 is sigma = 1/2: not "correct"
    # Three solutions of 2, 0 (cut by max_len) and 2 steps. Solution 1: steps 2, -1 labelled right, wrong -> min -1
    # judges it wrong, truly wrong; solution 3: steps 3, 0.5 both right -> right, truly right.
    v, z = torch.tensor([2.0, -1.0, 3.0, 0.5]), torch.tensor([True, False, True, True])
    m = process_metrics(v, z, [2, 0, 2], "min")
    assert m == {"step_accuracy": 1.0, "solution_accuracy": 1.0, "accuracy": 1.0}
    # prod: log P(all right) = log sigma(3) + log sigma(0.5) = -0.0486 - 0.4741 > log 1/2: right, as labelled.
    assert process_metrics(v, z, [2, 0, 2], "prod")["solution_accuracy"] == 1.0
    # Labels saying solution 3 went wrong at its last step: the step and the solution are now misjudged.
    m = process_metrics(v, torch.tensor([True, False, True, False]), [2, 0, 2], "last")
    assert m["step_accuracy"] == 0.75 and m["solution_accuracy"] == 0.5

def test_causal_value_head_scores_every_prefix_in_one_pass(tiny_model_dir):
    """The step logits a process RM trains on (one forward, read at each step's last token) are exactly the scores
    the sequence classifier gives each prefix on its own -- what a scorer sees when it scores a partial solution."""
    from datapipe.preference import encode_rm, encode_steps, step_prefixes

    torch.manual_seed(0)
    rm = RewardModel.load(tiny_model_dir).eval()
    assert not rm.bidirectional
    rows = [{"prompt": "Compute 3+4+5 step by step.", "completions": ["3+4=7", "7+5=12"], "labels": [True, True]},
            {"prompt": [{"role": "user", "content": "Add 9+1+2."}], "completions": ["9+1=10", "10+2=13", "x"],
             "labels": [True, False, False]}]
    ids, mask, pos, labels = encode_steps(rm.tokenizer, rows, 128, bidirectional=False)
    with torch.no_grad():
        values = rm.token_values(ids, mask)
        one_pass = torch.stack([values[i, t] for i, t in pos])
        prompts = [r["prompt"] for r in rows for _ in r["completions"]]
        pids, pmask = encode_rm(rm.tokenizer, prompts, [p for r in rows for p in step_prefixes(r)], 128)
        separately = rm(pids, pmask)
    assert labels.tolist() == [True, True, True, False, False]
    assert torch.allclose(one_pass, separately, atol=1e-5)
    assert one_pass.std() > 0  # not a constant head


def test_saved_reward_models_load_in_the_reward_scorer(tiny_model_dir, tmp_path):
    """Both backbones, full and LoRA (merged on save): the scorer reads back the learner's very scores."""
    from rewards.base import Item
    from rewards.registry import make_scorer
    from rewards.reward_model import minilm_path

    prompts = ["What is 2+2?", "Say hi."]
    responses = ['{"answer": 4}', "hello there"]
    for path, finetune in [(tiny_model_dir, "lora"), (minilm_path(), "full")]:
        torch.manual_seed(0)
        rm = RewardModel.load(path, finetune)
        with torch.no_grad():  # move the head and (for LoRA) the adapters off their initial values
            for n, p in rm.named_parameters():
                if p.requires_grad and ("lora_B" in n or "score" in n or "classifier" in n):
                    p.add_(0.1 * torch.randn_like(p))
        rm.eval()
        from datapipe.preference import encode_rm

        with torch.no_grad():
            mine = rm(*encode_rm(rm.tokenizer, prompts, responses, 64)).tolist()
        out = rm.save_pretrained(tmp_path / f"{Path(path).name}-{finetune}", {"kind": "outcome"})
        assert (out / "reward_model.json").exists() and not (out / "adapter_config.json").exists()
        scorer = make_scorer("reward_model", model_path=str(out), max_len=64)
        got = [r.score for r in scorer.score([Item(p, c) for p, c in zip(prompts, responses)])]
        assert got == pytest.approx(mine, abs=1e-5)
        assert rm.bidirectional == (finetune == "full")


def test_short_rm_run_ranks_heldout_pairs_above_chance(ray_local, tmp_path, cache_dir):
    from rewards.base import Item
    from rewards.registry import make_scorer

    from pipelines import rm

    s = rm.main([f"runs_dir={tmp_path}", f"cache_dir={cache_dir}", "run_name=rm", "model.preset=tiny",
                 "progress=false", "tensorboard=false", "train.steps=30", "rm.lr=2e-3", "rm.eval_every=15",
                 "rm.builtin_size=400", "rm.batch_size=16", "checkpoint.every=0", "train.micro_batch_size=32",
                 "rm.margin_scale=0.5"])
    assert s["data_kind"] == "pairs" and s["heldout_rows"] >= 40
    assert s["heldout_accuracy_after"] >= 0.7 > s["heldout_accuracy_before"]
    assert s["heldout_after"]["margin"] > s["heldout_before"]["margin"]
    assert s["export_max_abs_diff"] < 1e-4
    assert (tmp_path / "rm" / "metrics.jsonl").exists() and (tmp_path / "rm" / "summary.json").exists()
    # The trained model plugs into the reward scorers: a right JSON answer outscores a wrong one.
    scorer = make_scorer("reward_model", model_path=s["reward_model"])
    prompt = "<|im_start|>user\nWhat is 3+4? Reply with JSON: {\"answer\": N}<|im_end|>\n<|im_start|>assistant\n"
    good, bad = scorer.score([Item(prompt, '{"answer": 7}'), Item(prompt, "The answer is 7.")])
    assert good.score > bad.score


def test_process_and_labelled_outcome_learners_train(tiny_model_dir):
    """Step labels train a process RM and labelled completions a pointwise outcome RM (loss falls on the batch)."""
    import config
    from actors.preference_worker import RewardModelWorker
    from datapipe.preference import arithmetic_steps

    steps = [dict(r) for r in arithmetic_steps(16, seed=0)]
    labelled = [{"prompt": f"What is {a}+1?", "completion": str(a + 1 + (a % 2)), "label": a % 2 == 0}
                for a in range(16)]
    for kind, rows in (("process", steps), ("outcome", labelled)):
        cfg = config.load(config.Config, "tiny-cpu", ["model.preset=tiny", f"rm.kind={kind}", "rm.lr=3e-3",
                                                      "train.micro_batch_size=16"])
        w = RewardModelWorker(str(tiny_model_dir), cfg, total_steps=8)
        before = w.evaluate(rows)
        for _ in range(8):
            w.train_step(rows)
        after = w.evaluate(rows)
        assert after["loss"] < before["loss"] - 0.05, kind
        assert ("step_accuracy" in after) == (kind == "process")
