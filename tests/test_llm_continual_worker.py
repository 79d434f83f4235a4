"""The continual learner in-process on the tiny Qwen3 (QLoRA: 4-bit base + LoRA): each family of methods trains
through continual.loop with its hooks, and the weights it exports are what the evaluation panel loads."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import config
from llm_continual.streams import builtin_stream
from llm_continual.worker import ContinualWorker


@pytest.fixture(scope="module")
def cfg():
    return config.load(config.Config, "tiny-cpu", ["model.preset=tiny", "continual.epochs=1", "continual.batch_size=4",
                                                   "continual.lr=5e-3", "continual.copr_epsilon=0.0"])


def _lora_weights(w: ContinualWorker) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for n, p in w.model.named_parameters() if "lora_" in n])


def test_copr_and_cppo_learn_an_alignment_stream(tiny_model_dir, cfg):
    tasks = builtin_stream("align", 2, 8, 2)
    rows = [r for t in tasks for r in t.train]
    w = ContinualWorker(str(tiny_model_dir), cfg.model, cfg.continual, "copr", "align")
    assert w.prepare(rows) == 4 * len(rows)  # every response scored once under the starting model
    before = _lora_weights(w)
    first = w.train_task(0, tasks[0].name, tasks[0].train, [])
    assert "copr/fit_old" not in first and first["copr/lambda"] == 0.0  # no old task yet: no constraint
    second = w.train_task(1, tasks[1].name, tasks[1].train, tasks[0].train[:4])
    assert second["replay_rows"] == 4 and second["copr/fit_old"] > 0.0
    assert w.strategy.lam > 0.0  # the old tasks' fit drifted above epsilon = 0, so the multiplier rose
    assert not torch.equal(before, _lora_weights(w))

    c = ContinualWorker(str(tiny_model_dir), cfg.model, cfg.continual, "cppo", "align")
    c.prepare(rows)
    out = c.train_task(0, tasks[0].name, tasks[0].train, [])
    counts = {k: v for k, v in out.items() if k.startswith("cppo/n_")}
    assert sum(counts.values()) == 4 * len(tasks[0].train) and counts["cppo/n_normal"] < sum(counts.values())
    assert {"cppo/pg_loss", "cppo/kr_loss"} <= set(out)


def test_multistage_finds_conflicts_and_distils_its_own_answers(tiny_model_dir, cfg):
    add, rev = builtin_stream("instruct", 2, 6, 2)
    w = ContinualWorker(str(tiny_model_dir), cfg.model, cfg.continual, "multistage", "instruct")
    out = w.train_task(1, rev.name, rev.train, add.train[:3])
    # The untrained model cannot reverse words: every training row is a conflict with its own answer.
    assert out["ms/conflicts"] == len(rev.train)
    assert out["replay_rows"] == out["ms/self_distilled"] <= 3
    bias = w.strategy
    assert len(bias.pairs) == len(rev.train) and all(len(p["ref"]) == 2 for p in bias.pairs)


def test_exports_are_what_the_panel_loads(tiny_model_dir, cfg, tmp_path):
    from evalpanel.likelihood import load_scoring_model

    a, b = builtin_stream("cpt", 2, 8, 2)
    w = ContinualWorker(str(tiny_model_dir), cfg.model, cfg.continual, "task_lora", "cpt")
    w.train_task(0, a.name, a.train, [])
    w.train_task(1, b.name, b.train, [])
    out = w.export(str(tmp_path / "tl"))
    assert out["model"] is None and set(out["adapters"]) == {0, 1}
    base = w.export_base(str(tmp_path / "base"))
    probe = torch.tensor([[1, 5, 9, 13, 2]])
    logits = []
    for tid in (0, 1):
        model, _ = load_scoring_model(base, out["adapters"][tid])
        logits.append(model(input_ids=probe).logits)
    assert not torch.allclose(logits[0], logits[1])  # each task kept its own adapter
    written = Path(base, "model.safetensors").stat().st_mtime_ns
    assert w.export_base(str(tmp_path / "base")) == base  # the same base: reused
    assert Path(base, "model.safetensors").stat().st_mtime_ns == written
    from learners.models import DERIVED_STAMP

    stamp = Path(base, DERIVED_STAMP)
    stamp.write_text(stamp.read_text().replace(str(Path(tiny_model_dir).resolve()), "/elsewhere"))  # another base
    assert w.export_base(str(tmp_path / "base")) == base
    assert Path(base, "model.safetensors").stat().st_mtime_ns != written  # rewritten, not a stale reuse

    f = ContinualWorker(str(tiny_model_dir), cfg.model, cfg.continual, "seq_ft", "cpt")  # model.finetune is qlora
    assert f.finetune == "full" and f.export_base(str(tmp_path / "unused")) == str(tiny_model_dir)
    f.train_task(0, a.name, a.train, [])
    exported = f.export(str(tmp_path / "ft"))
    model, _ = load_scoring_model(exported["model"])
    assert exported["adapters"] == {} and model.config.num_hidden_layers == 2
