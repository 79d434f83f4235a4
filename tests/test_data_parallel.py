"""Two Ray learner actors in a gloo process group, each on half of a batch, must make the same update as one
learner on the whole batch; rank 0's adapter reaches another actor through broadcast_adapter."""
from __future__ import annotations

import sys

import pytest
import torch

from config import LoraConfig
from learners.logprobs import sequence_logprobs
from learners.models import load_policy, save_adapter

LR = 1e-2


def _batches(vocab: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two batches of 8 right-padded rows with unequal lengths, so the halves hold different token counts."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        ids = torch.randint(3, vocab, (8, 24), generator=g)
        lengths = torch.randint(6, 25, (8,), generator=g)
        mask = (torch.arange(24)[None, :] < lengths[:, None]).long()
        out.append((ids * mask, mask))
    return out


def token_mean_nll(model, ids, mask, global_tokens: float) -> torch.Tensor:
    """-sum_t log p(x_t) / N with N the token count of the whole (global) batch: sums over shards add up."""
    m = mask[:, 1:].float()
    return -(sequence_logprobs(model, ids, mask) * m).sum() / global_tokens


def _learner_class(ray):
    # tests/ is not importable on Ray's workers: ship this module's code by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    @ray.remote(num_cpus=0.5)
    class Learner:
        def __init__(self, model_dir: str, seed: int):
            torch.set_num_threads(1)
            torch.manual_seed(seed)  # ranks start from different adapters until broadcast_params
            self.model, _ = load_policy(model_dir, finetune="lora", lora=LoraConfig(r=4))
            self.params = [p for p in self.model.parameters() if p.requires_grad]
            self.opt = torch.optim.AdamW(self.params, lr=LR)

        def rendezvous(self):
            from cluster.distributed import rendezvous

            return rendezvous()

        def join(self, rank: int, world: int, addr: str, port: int) -> str:
            from cluster.distributed import broadcast_params, init_group

            backend = init_group(rank, world, addr, port, backend="auto")
            broadcast_params(self.params, src=0)
            return backend

        def step(self, ids, mask) -> float:
            from cluster.distributed import all_sum, allreduce_grads

            n = all_sum(mask[:, 1:].sum().item())
            loss = token_mean_nll(self.model, ids, mask, n)
            loss.backward()
            allreduce_grads(self.params, average=False)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            return loss.item()

        def weights(self) -> list[torch.Tensor]:
            return [p.detach().clone() for p in self.params]

        def save(self, out_dir: str) -> str:
            return str(save_adapter(self.model, out_dir))

        def load_adapter(self, path: str, version: int) -> int:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(self.model, load_file(f"{path}/adapter_model.safetensors"))
            return version

        def leave(self) -> None:
            from cluster.distributed import destroy_group

            destroy_group()

    return Learner


def _reference_updates(model_dir, init: list[torch.Tensor], batches, rows=slice(None)) -> list[torch.Tensor]:
    """One learner, same start, the same two AdamW steps on ``rows`` of each batch."""
    model, _ = load_policy(model_dir, finetune="lora", lora=LoraConfig(r=4))
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        for p, w in zip(params, init):
            p.copy_(w)
    opt = torch.optim.AdamW(params, lr=LR)
    for ids, mask in batches:
        ids, mask = ids[rows], mask[rows]
        token_mean_nll(model, ids, mask, mask[:, 1:].sum().item()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return [p.detach().clone() for p in params]


def test_two_learners_update_like_one_on_the_whole_batch(ray_local, tiny_model_dir, tmp_path):
    ray = ray_local
    from cluster.distributed import broadcast_adapter

    Learner = _learner_class(ray)
    learners = [Learner.remote(str(tiny_model_dir), seed) for seed in (0, 1)]
    try:
        before = ray.get([a.weights.remote() for a in learners])
        assert any(not torch.equal(x, y) for x, y in zip(*before)), "the two seeds should start apart"
        addr, port = ray.get(learners[0].rendezvous.remote())
        assert ray.get([a.join.remote(r, 2, addr, port) for r, a in enumerate(learners)]) == ["gloo", "gloo"]
        start = ray.get([a.weights.remote() for a in learners])
        for x, y in zip(*start):
            assert torch.equal(x, y)  # broadcast_params gave rank 1 rank 0's adapter
        assert all(torch.equal(x, y) for x, y in zip(start[0], before[0]))

        batches = _batches(vocab=400)
        for ids, mask in batches:
            ray.get([learners[0].step.remote(ids[:4], mask[:4]), learners[1].step.remote(ids[4:], mask[4:])])
        after = ray.get([a.weights.remote() for a in learners])
        for x, y in zip(*after):
            assert torch.equal(x, y)  # the same reduced gradient and the same AdamW step keep replicas identical

        whole = _reference_updates(tiny_model_dir, start[0], batches)
        for x, y in zip(after[0], whole):
            # float sums in another order, through AdamW (which divides by sqrt(v)): 1e-3 of one step's size
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-3 * LR)
        moved = max((x - s).abs().max().item() for x, s in zip(after[0], start[0]))
        assert moved > 1e-3
        # the check is sharp: one learner on half of the batch lands elsewhere
        half = _reference_updates(tiny_model_dir, start[0], batches, rows=slice(0, 4))
        assert max((x - y).abs().max().item() for x, y in zip(half, whole)) > 10 * 1e-3 * LR

        # rank 0's adapter reaches another actor through the object store
        saved = ray.get(learners[0].save.remote(str(tmp_path / "rank0")))
        ray.get([a.leave.remote() for a in learners])
        ray.get(learners[1].step.remote(*[t[4:] for t in batches[0]]))  # out of the group: a purely local step
        assert broadcast_adapter([learners[1]], saved, version=7, dest_root=str(tmp_path / "engines")) == [7]
        for x, y in zip(ray.get(learners[1].weights.remote()), after[0]):
            assert torch.equal(x, y)
        assert (tmp_path / "engines" / "v000007" / "adapter_config.json").exists()
    finally:
        for a in learners:
            ray.kill(a)


def test_group_errors_say_what_to_check():
    from cluster.distributed import DistributedError, init_group, pick_backend

    with pytest.raises(DistributedError, match="cluster.learner.count=2"):
        init_group(2, 2, "127.0.0.1", 1)
    if not torch.cuda.is_available():
        with pytest.raises(DistributedError, match="use gloo on CPU"):
            pick_backend("nccl")
        assert pick_backend() == "gloo"
