"""What every run writes to runs/<run-name>/: metrics.jsonl, TensorBoard events, curves, summary.json,
and atomic, rotated checkpoints."""
from runlog.checkpoints import latest_checkpoint, save_checkpoint  # noqa: F401
from runlog.metrics import RunLog  # noqa: F401
