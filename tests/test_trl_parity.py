"""Our losses and advantages against TRL's (trl 1.16) on identical tensors.

TRL's loss lives in a trainer method, ``GRPOTrainer._compute_loss(self, model, inputs)``, that reads a dozen
attributes of the trainer and gets the policy's logprobs from ``self._get_per_token_logps_and_entropies``.
Building a real trainer needs a model, a dataset and accelerate; instead the unbound method is called on a
minimal object that carries exactly those attributes (one process, no gradient accumulation, no vLLM
correction, no entropy masking) and returns our tensors as the policy's logprobs, so TRL's own code computes
the loss and autograd gives its gradient. TRL's advantages are inline in ``_generate_and_score_completions``;
their few lines are reproduced verbatim below (with TRL's own ``nanstd``).
"""
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
from trl.trainer.utils import nanstd  # noqa: E402

from config import AlgoConfig  # noqa: E402
from learners.advantages import group_relative, leave_one_out, outcome_token_rewards, sequence_scores  # noqa: E402
from learners.algorithms import resolve  # noqa: E402
from learners.policy_loss import kl_penalty  # noqa: E402
from learners.step import rl_objective  # noqa: E402


class _OneProcess:
    """What ``_compute_loss`` asks of accelerate, for a single process."""

    num_processes, process_index, sync_gradients = 1, 0, True

    def gather(self, x):
        return x

    def gather_for_metrics(self, x):
        return x

    def reduce(self, x, reduction="sum"):
        return x


class _TRLLossCall:
    def __init__(self, loss_type, level, beta, eps_low, eps_high, max_completion_length, logps):
        self.loss_type, self.importance_sampling_level, self.beta = loss_type, level, beta
        self.epsilon_low, self.epsilon_high = eps_low, eps_high
        self.max_completion_length = max_completion_length
        self.top_entropy_quantile, self.off_policy_mask_threshold = 1.0, None
        self.use_vllm, self.vllm_importance_sampling_correction = False, False
        self._entropy_bonus_enabled, self.aux_loss_enabled = False, False
        self.current_gradient_accumulation_steps = 1
        self.args = SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1)
        self.model = SimpleNamespace(training=True)
        self.accelerator = _OneProcess()
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._logps = logps

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, **_):
        return self._logps, torch.zeros_like(self._logps), None

    def loss(self, old, ref, adv, mask):
        B, T = mask.shape
        inputs = {"prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
                  "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
                  "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
                  "num_items_in_batch": mask.sum()}
        return trl_grpo.GRPOTrainer._compute_loss(self, None, inputs)


def _tensors(seed, B=6, T=7):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    logp = -torch.rand(B, T, generator=g) * 3
    old = logp + 0.3 * torch.randn(B, T, generator=g)  # far enough that both clip sides bind somewhere
    ref = logp + 0.2 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    return logp, old, ref, adv, mask


# (our algorithm, overrides) <-> (TRL loss_type, importance_sampling_level, epsilon_high)
CASES = [
    ("grpo", {}, "grpo", "token", 0.2),
    ("dr_grpo", {}, "dr_grpo", "token", 0.2),
    ("dapo", {}, "dapo", "token", 0.28),
    ("grpo", {"loss_agg": "token-mean"}, "bnpo", "token", 0.2),
    ("gspo", {"clip_low": 0.05, "clip_high": 0.08}, "grpo", "sequence", 0.08),
]


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("name, overrides, loss_type, level, eps_high", CASES)
def test_policy_loss_value_and_gradient_match_trl(name, overrides, loss_type, level, eps_high, beta):
    T = 7
    algo = resolve(AlgoConfig(name=name, kl_coef=beta, kl_estimator="k3", **overrides), max_new_tokens=T)
    for seed in range(3):
        logp, old, ref, adv, mask = _tensors(seed, T=T)
        ours_x = logp.clone().requires_grad_(True)
        ours, _ = rl_objective(ours_x, None, old, ref, adv[:, None].expand(-1, T), mask.float(), algo)
        ours.backward()

        trl_x = logp.clone().requires_grad_(True)
        call = _TRLLossCall(loss_type, level, beta, algo.clip_low, eps_high, T, trl_x)
        theirs = call.loss(old, ref, adv, mask)
        theirs.backward()

        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours_x.grad, trl_x.grad, rtol=1e-5, atol=1e-6)
        if level == "token":  # the same clip statistics as TRL logs them
            _, metrics = rl_objective(logp, None, old, ref, adv[:, None].expand(-1, T), mask.float(), algo)
            assert metrics["clipfrac"] == pytest.approx(call._metrics["train"]["clip_ratio/region_mean"][-1], abs=1e-6)
            assert metrics["clipfrac_high"] == pytest.approx(call._metrics["train"]["clip_ratio/high_mean"][-1], abs=1e-6)


def test_grpo_and_dr_grpo_advantages_match_trl():
    g = torch.Generator().manual_seed(7)
    num_generations = 4
    rewards = torch.randint(0, 3, (5 * num_generations,), generator=g).float()
    rewards[:num_generations] = 1.0  # one all-equal group
    group_ids = torch.arange(5).repeat_interleave(num_generations)
    # TRL 1.16, GRPOTrainer._generate_and_score_completions, multi_objective_aggregation="sum_then_normalize":
    mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
    std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
    std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
    trl_group = (rewards - mean_grouped_rewards) / (std_rewards + 1e-4)  # scale_rewards="group"
    trl_none = rewards - mean_grouped_rewards                            # scale_rewards="none" (Dr.GRPO)
    torch.testing.assert_close(group_relative(rewards, group_ids, True, eps=1e-4), trl_group)
    torch.testing.assert_close(group_relative(rewards, group_ids, False), trl_none)


def test_rloo_advantages_with_kl_in_the_reward_match_trl():
    g = torch.Generator().manual_seed(8)
    num_generations, B, T, beta = 4, 12, 5, 0.05
    rewards = torch.rand(B, generator=g)
    mask = (torch.arange(T)[None, :] < torch.randint(1, T + 1, (B,), generator=g)[:, None]).float()
    old, ref = -torch.rand(B, T, generator=g), -torch.rand(B, T, generator=g)
    # TRL 1.16, RLOOTrainer._generate_and_score_completions (normalize_advantages=False, its default):
    per_token_kl = old - ref
    kl = (per_token_kl * mask).sum(-1)
    r = rewards - beta * kl
    grouped_rewards = r.view(-1, num_generations)
    scorable_counts = (~torch.isnan(grouped_rewards)).sum(dim=1, keepdim=True)
    grouped_sum = torch.nansum(grouped_rewards, dim=1, keepdim=True)
    baselines = ((grouped_sum - grouped_rewards) / (scorable_counts - 1)).view(-1)
    trl_adv = r - baselines
    # Ours: k1 KL per token as a reward penalty, outcome total, leave-one-out.
    tok = outcome_token_rewards(rewards, mask, kl_penalty(old, ref, "k1"), beta)
    ours = leave_one_out(sequence_scores(tok, mask), torch.arange(B // num_generations).repeat_interleave(num_generations))
    torch.testing.assert_close(ours, trl_adv, rtol=1e-5, atol=1e-6)
