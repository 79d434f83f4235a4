"""Typed configs: dataclasses loaded from YAML and overridden with ``key.sub=value``.

Every error names the offending key and says what to change, at load time -- before a cluster
starts or a model loads.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")

CONFIG_DIR = Path(__file__).resolve().parent


class ConfigError(ValueError):
    """A config a user wrote is wrong; the message names the key and what to change."""


class RunStopped(RuntimeError):
    """A run met a fault it cannot go on from (an actor that died or stopped answering, a scorer that fails on most
    items): the message names the role, what happened and what to do; ``run_cli`` prints it without a traceback."""


def preset_path(name: str) -> Path:
    """``tiny-cpu`` -> ``config/tiny-cpu.yaml``; a path to a YAML file is returned as it is."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        return p
    cand = CONFIG_DIR / f"{name}.yaml"
    if not cand.exists():
        known = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"no config preset named {name!r}; known presets: {known}, or pass a path to a .yaml file")
    return cand


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-4", "run_name=x"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"command-line override {arg!r} is not of the form key.sub=value")
        key, _, raw = arg.partition("=")
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"command-line override {arg!r} has an empty key part")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"value of override {key!r} is not valid YAML: {e}") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r} conflicts with an earlier override of {part!r}")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (with the few safe coercions YAML needs)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} is not any of {[_type_name(a) for a in args]}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "1e-4" as a string
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected a whole number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict; unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{k}'{hint}; known keys here: {names}")
        kwargs[k] = _coerce(v, hints[k], prefix + k)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {e}") from None


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def load(cls: type[T], preset: str | None = None, overrides: list[str] | dict | None = None) -> T:
    """Load ``cls`` from a preset name or YAML path, then apply ``key.sub=value`` overrides.

    A ``config=NAME`` entry among the overrides picks the preset (so scripts take it on the command line).
    """
    over = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    preset = over.pop("config", None) or preset
    data = read_preset(str(preset)) if preset else {}
    return from_dict(cls, deep_merge(data, over))


def read_preset(name: str, seen: tuple[str, ...] = ()) -> dict:
    """A preset's sections; a top-level ``extends: OTHER`` reads OTHER first and merges this file over it."""
    path = preset_path(name)
    if str(path) in seen:
        raise ConfigError(f"{path}: 'extends' goes round in a circle ({' -> '.join(seen + (str(path),))})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                          f"{e.start}); re-encode it as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    parent = data.pop("extends", None)
    return deep_merge(read_preset(str(parent), seen + (str(path),)), data) if parent else data


def check(cond: bool, key: str, msg: str) -> None:
    """Raise ConfigError naming ``key`` unless ``cond`` holds (for ``__post_init__`` validation)."""
    if not cond:
        raise ConfigError(f"{key}: {msg}")
