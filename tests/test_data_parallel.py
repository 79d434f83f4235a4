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


def _rl_batch(vocab: int, groups: int = 4, n: int = 3, seed: int = 0):
    """``groups`` prompts x ``n`` completions of unequal lengths, with rewards that differ inside each group."""
    g = torch.Generator().manual_seed(seed)
    prompts, completions, rewards, gids = [], [], [], []
    for k in range(groups):
        p = torch.randint(3, vocab, (int(torch.randint(3, 7, (1,), generator=g)),), generator=g).tolist()
        for j in range(n):
            L = int(torch.randint(2, 9, (1,), generator=g))
            prompts.append(p)
            completions.append(torch.randint(3, vocab, (L,), generator=g).tolist())
            rewards.append(float(torch.rand((), generator=g)) + (j == 0))
            gids.append(k)
    return prompts, completions, rewards, gids


@pytest.mark.parametrize("algo", [
    ["algo.name=grpo"],  # group-normalised advantages, seq-mean-token-mean, k3 KL as a loss term
    ["algo.name=reinforce_pp", "algo.kl_ctrl=adaptive", "algo.kl_target=0.01"],  # batch whitening, token-mean, KL in reward
])
def test_learner_group_steps_like_one_learner(ray_local, tiny_model_dir, algo):
    """LearnerGroup with cluster.learner.count=2 (the path pipelines/grpo.py takes) gives each actor half of the
    groups; after two steps of two epochs each, both replicas hold the model one LearnerWorker reaches on the
    whole batches (global whitening, token counts, KL controller), and not the one it reaches on half."""
    ray = ray_local
    from actors.learner import LearnerGroup, LearnerWorker
    from cluster import make_placement_group, plan_resources
    from config import Config, load

    cfg = load(Config, "tiny-cpu", ["cluster.learner.count=2", "cluster.learner.num_cpus=0.5", "train.epochs=2",
                                    "train.mini_batches=1", "train.micro_batch_size=4", "train.lr=5e-3",
                                    "algo.kl_coef=0.05", *algo])
    plan = plan_resources(cfg.cluster, ("learner",))
    pg = make_placement_group(plan, 60)
    batches = [_rl_batch(vocab=400, seed=s) for s in (0, 1)]
    probe = [b[0][i] + b[1][i] for b in batches for i in (0, 5, 10)]
    group = LearnerGroup(plan, pg, str(tiny_model_dir), cfg.model, cfg.algo, cfg.train, cfg.seed)
    try:
        assert group.world == 2 and group.backend == "gloo"
        stats = [group.step(*b) for b in batches]
        ranks = [ray.get(a.probe_logprobs.remote(probe))["logprobs"] for a in group.actors]
    finally:
        for a in group.actors:
            ray.kill(a)
        ray.util.remove_placement_group(pg)
    assert ranks[0] == ranks[1]  # one reduced gradient, one AdamW step: the replicas are identical

    one = LearnerWorker(str(tiny_model_dir), cfg.model, cfg.algo, cfg.train, cfg.seed)
    start = one.probe_logprobs(probe)["logprobs"]
    ref = [one.step(*b) for b in batches]
    whole = one.probe_logprobs(probe)["logprobs"]
    flat = lambda x: torch.tensor([v for row in x for v in row])  # noqa: E731
    moved = (flat(whole) - flat(start)).abs().max().item()
    assert moved > 1e-3  # the steps moved the model
    # The group sums the same gradients in another order (all-reduce) and AdamW divides by sqrt(v): the two models
    # differ by float rounding carried through two steps, a small fraction of how far the steps moved the probe.
    atol = 1e-2 * moved
    torch.testing.assert_close(flat(ranks[0]), flat(whole), rtol=0, atol=atol)
    for s, r in zip(stats, ref):  # the combined metrics are the whole batch's
        for k in ("loss", "pg_loss", "kl_coef", "adv_abs_mean", "grad_norm"):
            assert s[k] == pytest.approx(r[k], rel=1e-4, abs=1e-6), k

    half = LearnerWorker(str(tiny_model_dir), cfg.model, cfg.algo, cfg.train, cfg.seed)
    for b in batches:
        half.step(*[x[:6] for x in b])
    assert (flat(half.probe_logprobs(probe)["logprobs"]) - flat(whole)).abs().max() > 5 * atol


def test_shard_by_group_keeps_groups_whole():
    from actors.learner import shard_by_group

    gids = [0, 0, 1, 1, 1, 2, 3, 3, 4]
    shards = shard_by_group(gids, 2)
    assert sorted(i for s in shards for i in s) == list(range(len(gids)))
    assert all({gids[i] for i in shards[0]}.isdisjoint({gids[i] for i in s}) for s in shards[1:])
    assert [len({gids[i] for i in s}) for s in shards] in ([2, 3], [3, 2])
    with pytest.raises(ValueError, match="2 groups cannot feed 3"):
        shard_by_group([0, 0, 1], 3)

    from cluster import shares  # the split the engine and reward pools use too

    assert shares(5, 2) == [(0, 2), (2, 5)] and shares(1, 3) == [(0, 1)] and shares(6, 3) == [(0, 2), (2, 4), (4, 6)]


def test_reward_shares_merge_in_order_with_weighted_means():
    from actors.reward import merge_scores

    a = {"rewards": [1.0, 0.0], "valid": [True, True], "statuses": ["ok", "ok"], "per_scorer": {"x": 0.5}, "failed": 0,
         "failures": {}, "seconds": 1.0}
    b = {"rewards": [None], "valid": [False], "statuses": ["timeout"], "per_scorer": {"x": 1.0}, "failed": 1,
         "failures": {"x:timeout": 1}, "seconds": 2.0}
    m = merge_scores([a, b])
    assert m["rewards"] == [1.0, 0.0, None] and m["statuses"] == ["ok", "ok", "timeout"]
    assert m["valid"] == [True, True, False] and m["failures"] == {"x:timeout": 1}
    assert m["per_scorer"]["x"] == pytest.approx(2 / 3) and m["failed"] == 1 and m["seconds"] == 2.0
