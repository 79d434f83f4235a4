"""pipelines/continual.py end to end on the tiny model: a two-task instruction stream, the LoRA-sequential baseline
and InsCL (with an SFT dataset as replayable memory), learner actors in one placement group, every stage scored
by the evaluation panel, and the report."""
from __future__ import annotations

import json
import math


def test_continual_pipeline_runs_a_stream_and_compares_methods(ray_local, tmp_path):
    from pipelines.continual import main

    s = main([f"runs_dir={tmp_path}", "run_name=cl", "model.preset=tiny", "data.warm_start_steps=0",
              "tensorboard=false", "progress=false", "continual.stream=instruct", "continual.n_tasks=2",
              "continual.train_size=16", "continual.test_size=6", "continual.epochs=1",
              "continual.methods=[seq_lora,inscl]", "continual.memory=[samples:wordplay_sharegpt.jsonl]",
              "continual.inscl_embed_rows=16", "eval.limit=8"])
    run = tmp_path / "cl"
    assert s["tasks"] == ["add", "reverse"] and s["phase"] == "instruct"
    for m in ("seq_lora", "inscl"):
        r = s["methods"][m]
        assert len(r["R"]) == 2 and all(len(row) == 2 and all(math.isfinite(v) for v in row) for row in r["R"])
        assert set(r["general_delta"]) == {"heldout/perplexity"}
        # after training a task, its held-out answers are likelier than before any training
        assert r["R"][0][0] > r["b"][0] and r["R"][1][1] > r["b"][1]
    assert s["methods"]["seq_lora"]["b"] == s["methods"]["inscl"]["b"]  # one start for every method

    stages = json.loads((run / "stages.json").read_text())
    assert all(st["train"]["replay_rows"] == 0 for st in stages["seq_lora"])
    first, second = (st["replay"] for st in stages["inscl"])
    assert list(first) == ["inscl/memory0-wordplay_sharegpt"]  # the memory is a past task from the start
    assert list(second) == ["inscl/memory0-wordplay_sharegpt", "inscl/add"]
    assert sum(v["share"] for v in second.values()) == round(0.3 * 16) == stages["inscl"][1]["train"]["replay_rows"]
    assert all(v["distance"] > 0 for v in second.values())

    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["method"], r["task"]) for r in rows] == [("seq_lora", "add"), ("seq_lora", "reverse"),
                                                         ("inscl", "add"), ("inscl", "reverse")]
    table = (run / "methods.md").read_text()
    assert "| seq_lora |" in table and "| inscl |" in table and "BWT" in table
    for f in ("matrices.png", "methods.png", "general/comparison.md", "summary.json", "suites/add.jsonl"):
        assert (run / f).exists(), f
