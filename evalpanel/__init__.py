"""One evaluation panel for every stage: perplexity, format usability, JSON validity and schema conformance,
exact match, pass@k, win-rate and length statistics, for a model or a model + LoRA adapter.

    from evalpanel import run_panel, write_table
    base = run_panel(model_dir, suites=["arithmetic", "heldout"], engine=engine)
    sft = run_panel(model_dir, adapter_dir, engine=engine, against=base)
    write_table({"base": base, "sft": sft}, "runs/demo/eval")
"""
from evalpanel.panel import run_panel  # noqa: F401
from evalpanel.report import write_table  # noqa: F401
