"""The PPO critic's update (learners/value.py) on a real, tiny token-classification model."""
import pytest
import torch
from transformers import Qwen3Config, Qwen3ForTokenClassification

from config import TrainConfig
from learners.value import ValueBatch, critic_update


def tiny_critic(seed: int = 0):
    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, num_labels=1,
                         classifier_dropout=0.0)
    return Qwen3ForTokenClassification(config)


def value_batch(B: int, L: int = 8, seed: int = 0) -> ValueBatch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, L - 1)
    mask[:, L // 2:] = 1.0  # the response: the second half of every row
    return ValueBatch(input_ids=torch.randint(0, 64, (B, L), generator=g), attention_mask=torch.ones(B, L, dtype=torch.long),
                      mask=mask, returns=torch.randn(B, L - 1, generator=g), old_values=torch.zeros(B, L - 1))


@pytest.mark.parametrize("B, mini_batches, epochs", [(6, 4, 1), (5, 4, 2), (3, 3, 1), (8, 4, 1)])
def test_one_optimizer_step_per_minibatch_even_when_the_batch_is_small(B, mini_batches, epochs):
    # torch.chunk(6 rows, 4) gives 3 chunks of 2: a small batch would get fewer updates than train.mini_batches
    # asks for (and fewer than the policy's learner makes on the same batch: learners/step.py uses tensor_split).
    critic = tiny_critic()
    optimizer = torch.optim.AdamW(critic.parameters(), lr=1e-3)
    steps = []
    optimizer.register_step_post_hook(lambda opt, args, kwargs: steps.append(1))
    train = TrainConfig(mini_batches=mini_batches, epochs=epochs, micro_batch_size=2)
    before = [p.detach().clone() for p in critic.parameters()]
    metrics = critic_update(critic, optimizer, value_batch(B), value_clip=0.2, train=train)
    assert len(steps) == mini_batches * epochs
    assert metrics["value_loss"] > 0 and metrics["grad_norm"] > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, critic.parameters()))
