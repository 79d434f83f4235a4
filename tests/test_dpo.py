"""DPO family: the losses against a hand-worked example and TRL 1.16's DPOTrainer, the learner's reference policy,
and a short pipeline run that must raise held-out preference accuracy and margins."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from learners.dpo import DPO_LOSSES, cdpo_loss, completion_logps, dpo_loss, get_dpo_loss, pair_losses

def test_losses_match_hand_worked_example():
    # log pi(y_w)=-2, log pi(y_l)=-5, log ref(y_w)=-3, log ref(y_l)=-4:
    # h = (-2 - -3) - (-5 - -4) = 1 + 1 = 2; beta = 0.5 so beta*h = 1.
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-2.0, -5.0, -3.0, -4.0))
    beta = 0.5
    sig = math.log(1 + math.exp(-1))               # -log sigma(1)  = 0.313262
    expected = {
        "sigmoid": sig,
        "ipo": (2 - 1 / (2 * 0.5)) ** 2,           # (h - 1/(2 tau))^2 = 1
        "hinge": max(0.0, 1 - 1),                  # max(0, 1 - beta h) = 0
        "cdpo": 0.9 * sig + 0.1 * math.log(1 + math.exp(1)),  # eps=0.1: 0.9*0.313262 + 0.1*1.313262 = 0.413262
    }
    assert set(expected) == set(DPO_LOSSES)
    for name, want in expected.items():
        loss, m = dpo_loss(name, pc, pr, rc, rr, beta, label_smoothing=0.1 if name == "cdpo" else 0.0)
        assert loss.item() == pytest.approx(want, abs=1e-6), name
    assert m["rewards/chosen"] == pytest.approx(0.5) and m["rewards/rejected"] == pytest.approx(-0.5)
    assert m["rewards/margins"] == pytest.approx(1.0) and m["rewards/accuracies"] == 1.0
    assert m["logps/accuracy"] == 1.0  # -2 > -5


def test_completion_logps_sum_and_mean_over_mask():
    lp = torch.tensor([[-1.0, -2.0, -3.0, -4.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    assert completion_logps(lp, mask).item() == -5.0
    assert completion_logps(lp, mask, average=True).item() == -2.5


def test_cdpo_reduces_to_dpo_and_stops_at_its_finite_optimum():
    h = torch.linspace(-3, 3, 7)
    assert torch.allclose(cdpo_loss(h, 0.3, 0.0), get_dpo_loss("sigmoid")(h, 0.3))
    eps, beta = 0.2, 0.5
    h_star = torch.tensor(math.log((1 - eps) / eps) / beta, requires_grad=True)
    cdpo_loss(h_star, beta, eps).backward()
    assert abs(h_star.grad.item()) < 1e-6  # DPO's gradient never vanishes; cDPO's does at h*
    with pytest.raises(ValueError, match="unknown DPO loss 'kto'"):
        get_dpo_loss("kto")


def test_pair_losses_average_over_tokens_for_length_normalised_losses_only():
    # Sums: log pi(y_w)=-4, log pi(y_l)=-6, log ref(y_w)=-6, log ref(y_l)=-4 -> h = 2 - (-2) = 4.
    # Per token, |y_w| = 2 and |y_l| = 4: h = (-2 - -3) - (-1.5 - -1) = 1.5.
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-4.0, -6.0, -6.0, -4.0))
    n_w, n_l = torch.tensor([2.0]), torch.tensor([4.0])
    ipo = pair_losses("ipo", pc, pr, rc, rr, 0.5, chosen_len=n_w, rejected_len=n_l)
    assert ipo.item() == pytest.approx((1.5 - 1.0) ** 2)  # (h - 1/(2 tau))^2 on the per-token h
    sig = pair_losses("sigmoid", pc, pr, rc, rr, 0.5, chosen_len=n_w, rejected_len=n_l)
    assert sig.item() == pytest.approx(math.log(1 + math.exp(-2.0)))  # -log sigma(beta h), summed h
    # No lengths: the inputs are taken as they are (what dpo_loss does); an empty completion counts as 1 token.
    assert pair_losses("ipo", pc, pr, rc, rr, 0.5).item() == pytest.approx((4.0 - 1.0) ** 2)
    zero = torch.tensor([0.0])
    assert pair_losses("ipo", pc, pr, rc, rr, 0.5, chosen_len=zero, rejected_len=zero).item() == pytest.approx(9.0)

@pytest.fixture(scope="module")
def trl_setup(tiny_model_dir):
    """A policy whose weights differ from the reference's, so the log-ratios -- and the losses -- are not trivial."""
    from transformers import AutoModelForCausalLM

    from learners.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    policy = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return tok, policy.eval(), ref.eval()


@pytest.mark.parametrize("rows", [
    [{"prompt": f"What is {a}+{b}?", "chosen": f" {a + b}", "rejected": f" {a + b + 1} maybe"}
     for a, b in [(1, 2), (3, 4), (5, 6), (7, 1)]],
    [{"prompt": [{"role": "user", "content": f"Add {a} and {b}."}],
      "chosen": [{"role": "assistant", "content": json.dumps({"answer": a + b})}],
      "rejected": [{"role": "assistant", "content": f"answer: {a + b - 1}"}]} for a, b in [(2, 2), (9, 0), (4, 5)]],
], ids=["standard", "conversational"])
def test_matches_trl_dpo_trainer(trl_setup, rows, tmp_path):
    """Same rows, same weights: our tokenisation gives TRL's sequences, and our loss gives TRL's loss."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from datapipe.preference import collate_policy_pairs, encode_policy_pair, normalize_pair
    from learners.logprobs import sequence_logprobs

    tok, policy, ref = trl_setup
    ours = [encode_policy_pair(tok, normalize_pair(r), 256) for r in rows]
    ids, attn, comp = collate_policy_pairs(ours, tok.pad_token_id)
    with torch.no_grad():
        lp = completion_logps(sequence_logprobs(policy, ids, attn), comp)
        lr = completion_logps(sequence_logprobs(ref, ids, attn), comp)
        lp_avg = completion_logps(sequence_logprobs(policy, ids, attn), comp, average=True)
        lr_avg = completion_logps(sequence_logprobs(ref, ids, attn), comp, average=True)
    B = len(rows)
    for loss_type in ("sigmoid", "hinge", "ipo"):
        args = DPOConfig(output_dir=str(tmp_path / loss_type), per_device_train_batch_size=B, loss_type=[loss_type],
                         beta=0.3, report_to=[], use_cpu=True, max_length=None, bf16=False)
        trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tok)
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(B)])
        L = batch["input_ids"].shape[1]
        assert not attn[:, L:].any()
        assert torch.equal(batch["attention_mask"], attn[:, :L])
        assert torch.equal(batch["input_ids"] * batch["attention_mask"], ids[:, :L] * attn[:, :L])
        assert torch.equal(batch["completion_mask"][:, 1:].float(), comp[:, :L - 1])
        with torch.no_grad():
            trl_loss = trainer._compute_loss(trainer.model, batch, False).item()
        if loss_type == "ipo":
            mine, _ = dpo_loss("ipo", lp_avg[:B], lp_avg[B:], lr_avg[:B], lr_avg[B:], 0.3)
        else:
            mine, _ = dpo_loss(loss_type, lp[:B], lp[B:], lr[:B], lr[B:], 0.3)
        assert trl_loss == pytest.approx(mine.item(), rel=1e-5, abs=1e-6), loss_type
        assert abs(trl_loss - {"sigmoid": math.log(2), "hinge": 1.0, "ipo": (1 / 0.6) ** 2}[loss_type]) > 1e-3


@pytest.mark.parametrize("override, fragment", [
    ("dpo.loss=kto", "dpo.loss: 'kto' is not one of ['sigmoid', 'ipo', 'hinge', 'cdpo']"),
    ("dpo.label_smoothing=0.1", "dpo.label_smoothing: only the cdpo loss uses it"),
    ("dpo.beta=0", "dpo.beta: must be > 0"),
    ("rm.backbone=bert", "rm.backbone: 'bert' is not one of ['qwen', 'minilm']"),
    ("rm.margin_scale=-1", "rm.margin_scale: must be >= 0"),
])
def test_bad_preference_config_names_the_key(override, fragment):
    import config

    with pytest.raises(config.ConfigError) as e:
        config.load(config.Config, "tiny-cpu", [override])
    assert fragment in str(e.value)


def _cfg(**over):
    import config

    base = {"model.preset": "tiny", "model.finetune": "lora", "model.lora.r": 8, "model.lora.alpha": 16,
            "dpo.max_len": 96, "train.micro_batch_size": 8}
    base.update(over)
    return config.load(config.Config, "tiny-cpu", [f"{k}={v}" for k, v in base.items()])


def test_reference_is_the_sft_model_when_starting_from_an_sft_adapter(tiny_model_dir, tmp_path):
    from actors.preference_worker import DPOWorker
    from learners.models import load_policy, save_adapter

    rows = [{"prompt": "What is 2+3?", "chosen": " 5", "rejected": " 6"},
            {"prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hello!", "rejected": "no"}]
    # An "SFT adapter" that really moves the model.
    sft, _ = load_policy(tiny_model_dir, "lora", _cfg().model.lora)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in sft.named_parameters():
            if "lora_B" in n:
                p.add_(0.2 * torch.randn_like(p))
    save_adapter(sft, tmp_path / "sft")

    plain = DPOWorker(str(tiny_model_dir), _cfg(), total_steps=4)
    from_sft = DPOWorker(str(tiny_model_dir), _cfg(**{"dpo.sft_adapter": str(tmp_path / "sft")}), total_steps=4)
    base_ref = torch.tensor(plain.reference_logps(rows))
    sft_ref = torch.tensor(from_sft.reference_logps(rows))
    assert (base_ref - sft_ref).abs().max() > 1e-3  # the SFT model, not the bare base, is the reference
    m0 = from_sft.evaluate(rows)
    assert m0["rewards/margins"] == pytest.approx(0.0, abs=1e-5)  # at step 0 the policy is its own reference
    # Training moves the policy but never the reference.
    for _ in range(2):
        from_sft.train_step(rows)
    assert torch.allclose(torch.tensor(from_sft.reference_logps(rows)), sft_ref, atol=1e-5)
    m1 = from_sft.evaluate(rows)
    assert m1["rewards/margins"] > 0
    saved = Path(from_sft.save_adapter(str(tmp_path / "out")))
    assert (saved / "adapter_config.json").exists() and not (saved / "ref").exists()


def test_precomputed_and_online_reference_give_the_same_step(tiny_model_dir):
    from actors.preference_worker import DPOWorker

    rows = [{"prompt": f"{a}+{b}=", "chosen": f"{a + b}", "rejected": f"{a + b + 2}"}
            for a, b in [(1, 1), (2, 5), (3, 3)]]
    a = DPOWorker(str(tiny_model_dir), _cfg(**{"dpo.loss": "ipo"}), total_steps=2)
    b = DPOWorker(str(tiny_model_dir), _cfg(**{"dpo.loss": "ipo", "dpo.reference": "online"}), total_steps=2)
    ma = a.train_step(rows, a.reference_logps(rows))
    mb = b.train_step(rows, None)
    assert ma["loss"] == pytest.approx(mb["loss"], rel=1e-6)
    assert ma["loss"] == pytest.approx((1 / (2 * 0.1)) ** 2, rel=1e-4)  # IPO at h=0: (0 - 1/(2 beta))^2


def test_first_step_of_a_warmed_up_run_moves_the_policy(tiny_model_dir):
    """The preference learners use the RL learner's schedule: warm-up starts at lr / warmup_steps, not at 0 (a first
    optimizer step with lr 0 would leave the weights as they were)."""
    from actors.preference_worker import DPOWorker

    rows = [{"prompt": f"{a}+{b}=", "chosen": f"{a + b}", "rejected": f"{a + b + 2}"} for a, b in [(1, 1), (2, 5)]]
    w = DPOWorker(str(tiny_model_dir), _cfg(**{"train.warmup_steps": 4, "dpo.lr": 1e-2}), total_steps=8)
    assert w.opt.param_groups[0]["lr"] == pytest.approx(1e-2 / 4)
    before = w.evaluate(rows)
    m = w.train_step(rows)
    assert m["lr"] == pytest.approx(2e-2 / 4)  # the next step's rate
    assert w.evaluate(rows)["loss"] < before["loss"]

def test_short_dpo_run_raises_heldout_accuracy_and_margin(ray_local, tmp_path, cache_dir):
    from pipelines import dpo

    args = [f"runs_dir={tmp_path}", f"cache_dir={cache_dir}", "run_name=dpo", "model.preset=tiny",
            "data.warm_start_steps=0", "progress=false",
            "tensorboard=false", "train.steps=4", "dpo.lr=2e-3", "dpo.eval_every=2", "dpo.builtin_prompts=150",
            "dpo.batch_size=16", "train.micro_batch_size=16", "checkpoint.every=2"]
    s = dpo.main(args)
    assert s["heldout_accuracy_after"] > s["heldout_accuracy_before"] + 0.3
    assert s["heldout_margin_after"] > s["heldout_margin_before"]
    run = tmp_path / "dpo"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"train/loss", "train/rewards/margins", "train/rewards/accuracies"} <= set(rows[1])
    assert json.loads((run / "summary.json").read_text())["train_pairs"] == s["train_pairs"] > 50
    assert (run / "adapter" / "adapter_config.json").exists()
    # Resume from the step-2 checkpoint: the run continues there and never logs a step twice.
    s2 = dpo.main(args[:-1] + ["train.steps=5", "resume=true"])
    assert s2["start_step"] == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in rows if "heldout/loss" in r] == [0, 2, 4, 5]
    assert s2["heldout_accuracy_before"] == s["heldout_accuracy_before"]
