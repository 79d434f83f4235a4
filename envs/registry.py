"""Environments by name: the built-ins, plus entry-point plugins that the operator enabled.

Plugins are Python entry points in the group ``raypost.envs`` (``name = "package.module:factory"``; the factory
takes the run's :class:`config.envs.EnvConfig` and returns a fresh :class:`envs.base.Environment`). An installed
plugin is loaded only when ``env.enable_plugins`` names it: installing a package must not be enough to run its
code in the rollout (the same rule as rewards/registry.py). A plugin with tools of its own can return
``envs.builtin.ToolEnv(cfg, [envs.tools.Tool(...), ...])``.
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from config.envs import EnvConfig
from config.loader import ConfigError
from envs.base import Environment

ENTRY_POINT_GROUP = "raypost.envs"
BUILTINS = {"calculator": "envs.builtin:calculator_env", "python": "envs.builtin:python_env"}


def installed_plugins() -> dict[str, str]:
    """Entry-point name -> ``module:attr`` of every environment plugin installed (loaded or not)."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def make_env(cfg: EnvConfig) -> Environment:
    """A fresh environment (one trajectory) for ``cfg.name``: a built-in, or a plugin named in
    ``cfg.enable_plugins``. Raises ConfigError naming ``env.name`` and the choices otherwise."""
    if cfg.name in BUILTINS:
        module, _, attr = BUILTINS[cfg.name].partition(":")
        factory = getattr(importlib.import_module(module), attr)
    elif cfg.name in cfg.enable_plugins:
        eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == cfg.name]
        if not eps:
            raise ConfigError(f"env.name: plugin {cfg.name!r} is enabled but no installed package provides it in "
                              f"entry-point group {ENTRY_POINT_GROUP!r}; installed: {sorted(installed_plugins())}")
        factory = eps[0].load()
    else:
        choices = sorted(BUILTINS) + sorted(n for n in cfg.enable_plugins if n not in BUILTINS)
        hint = ""
        if cfg.name in installed_plugins():
            hint = f"; {cfg.name!r} is an installed plugin but not enabled: add it to env.enable_plugins"
        raise ConfigError(f"env.name: unknown environment {cfg.name[:100]!r}; choices: {choices}{hint}")
    env = factory(cfg)
    for method in ("reset", "step", "final_answer"):
        if not callable(getattr(env, method, None)):
            raise ConfigError(f"env.name: {cfg.name!r} ({factory!r}) built an object without a {method}() method")
    return env
