"""Environments for multi-turn, tool-using rollouts: reset/step over chat messages, tools, per-turn info.

``envs.registry.make_env(cfg.env)`` builds one :class:`envs.base.Environment` per trajectory; the rollout
loop (actors/multiturn.py) renders its messages, samples an assistant turn, hands the raw text to
``step`` and appends ``envs.chat.tool_turn_text`` of the tool messages it gets back.
"""
