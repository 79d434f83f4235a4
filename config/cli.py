"""The entry point every pipeline script shares: ``if __name__ == "__main__": run_cli(main)``.

A ConfigError is the user's input being wrong (a key, a value, a path, a data file); its message already says
what to change, so the script ends with that message and exit status 1 instead of a traceback -- locally and
under ``ray job submit`` alike. Any other exception is a bug or an outage and keeps its traceback.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

from config.loader import ConfigError, RunStopped


def run_cli(main: Callable[[list[str]], Any], argv: list[str] | None = None) -> Any:
    """Run ``main(argv)`` (default: ``sys.argv[1:]``) and return its result; a ConfigError exits with
    ``config error: <message>``, a RunStopped with ``run stopped: <message>``. A Ray session the script started is shut down either way."""
    try:
        return main(sys.argv[1:] if argv is None else argv)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    except RunStopped as e:
        sys.exit(f"run stopped: {e}")
    finally:
        ray = sys.modules.get("ray")  # config imports nothing heavy; shut down only what the script opened
        if ray is not None and ray.is_initialized():
            ray.shutdown()
