"""What every run writes to runs/<run-name>/: metrics.jsonl, TensorBoard events, curves, summary.json,
and atomic, verified, rotated checkpoints; and whether a run may write there at all."""
from runlog.atomic import atomic_dir, atomic_file, atomic_write_text  # noqa: F401
from runlog.checkpoints import checkpoint_problem, checkpoint_step, latest_checkpoint, save_checkpoint  # noqa: F401
from runlog.metrics import RunLog, read_metrics  # noqa: F401
from runlog.rundir import prepare_run_dir  # noqa: F401
