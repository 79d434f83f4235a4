"""Load RL prompt datasets: JSONL, Parquet, a saved `datasets` folder, or a built-in task.

Rows keep two fields: the prompt (a string or a list of chat messages) and the reference answer the
scorers compare against. A bad row is reported with its file, row number and what is wrong; the
others are kept.
"""
from __future__ import annotations

import logging
from pathlib import Path

from config import ConfigError

log = logging.getLogger(__name__)


class DatasetError(ConfigError):
    """The dataset cannot be used as configured (data.train / data.heldout); the message names the file, row or
    field. A ConfigError, so a pipeline reports it as the user's input, not as a crash."""


def _read(spec: str):
    p = Path(spec)
    if not p.exists():
        raise DatasetError(f"data file {spec} does not exist (data.train / data.heldout take a .jsonl, .parquet, "
                           "a saved datasets folder, or builtin:arithmetic)")
    import datasets

    if p.is_dir():
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        return ds
    if p.suffix in (".jsonl", ".json"):
        import json

        rows = []
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            line = p.read_bytes()[: e.start].count(b"\n") + 1
            raise DatasetError(f"data file {spec} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}, "
                               f"line {line}); re-encode it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                log.warning("%s row %d is not valid JSON (%s); skipped", spec, i, e.msg)
                rows.append(None)
        return rows
    if p.suffix == ".parquet":
        return datasets.Dataset.from_parquet(str(p))
    raise DatasetError(f"data file {spec}: unsupported format {p.suffix!r}; use .jsonl, .parquet or a saved datasets folder")


def _valid_prompt(v) -> bool:
    if isinstance(v, str):
        return bool(v.strip())
    return isinstance(v, list) and bool(v) and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                    and m.get("role") in ("system", "user", "assistant") for m in v)


def load_prompts(spec: str, prompt_field: str = "prompt", answer_field: str = "answer", n_builtin: int = 2000,
                 seed: int = 0, heldout: bool = False) -> list[dict]:
    """Rows ``{"prompt": str | messages, "answer": any}``; invalid rows are logged with their position and dropped."""
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        if name in ("calculator", "python"):  # tasks that need a tool (env.name=calculator / python)
            from tasks.tools import make_rows as tool_rows

            return tool_rows(n_builtin, seed=seed, heldout=heldout, tool=name)
        if name != "arithmetic":
            raise DatasetError(f"unknown builtin dataset {spec!r}; available: builtin:arithmetic, builtin:calculator, "
                               "builtin:python")
        from tasks.arithmetic import make_rows

        return make_rows(n_builtin, seed=seed, heldout=heldout)
    data = _read(spec)
    out, bad = [], []
    for i, row in enumerate(data, 1):
        if not isinstance(row, dict):
            bad.append((i, "not a JSON object"))
            continue
        if prompt_field not in row:
            bad.append((i, f"no {prompt_field!r} field (fields: {sorted(row)}); set data.prompt_field"))
            continue
        if not _valid_prompt(row[prompt_field]):
            bad.append((i, f"{prompt_field!r} must be a non-empty string or a list of {{role, content}} messages"))
            continue
        if answer_field not in row:
            bad.append((i, f"no {answer_field!r} field (fields: {sorted(row)}); set data.answer_field"))
            continue
        out.append({"prompt": row[prompt_field], "answer": row[answer_field]})
    for i, why in bad[:20]:
        log.warning("%s row %d skipped: %s", spec, i, why)
    if bad:
        log.warning("%s: %d of %d rows skipped", spec, len(bad), len(bad) + len(out))
    if not out:
        raise DatasetError(f"{spec}: no usable rows ({len(bad)} skipped; first problem: row {bad[0][0]}: {bad[0][1]})"
                           if bad else f"{spec} is empty")
    return out
