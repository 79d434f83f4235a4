"""Multi-turn, tool-using rollouts (owned by envs/ and actors/multiturn.py; see docs/tools.md).

``env.name`` empty keeps the single-turn rollout every RL pipeline had; a name picks an environment from
envs/registry.py (built-ins, or an entry point of the group ``raypost.envs`` that the operator enabled).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from config.loader import check


@dataclass
class EnvConfig:
    name: str = ""
    """Environment of a multi-turn rollout: calculator, python, or an enabled plugin; '' = single-turn."""
    tools: list[str] = field(default_factory=list)
    """Tools offered to the model (their OpenAI-style schemas go into the chat template); [] = the environment's own
    set; ["none"] offers none (the same task answered without tools, for comparison)."""
    max_turns: int = 3
    """Assistant turns per trajectory at most; the last one ends it whatever it says."""
    max_tokens: int = 160
    """Tokens per trajectory after the first prompt at most (the model's and the tools' together)."""
    tool_timeout_s: float = 5.0
    """A tool call that has not returned by then ends as an error result ("timed out"), never a hang."""
    max_result_chars: int = 256
    """A tool result longer than this is cut (and says so)."""
    shaping: dict[str, float] = field(default_factory=dict)
    """Per-turn reward shaping added to the outcome reward: valid_call (each call that parsed and ran), tool_error
    (each call that failed: malformed, unknown tool, raised, timed out). {} = outcome reward only."""
    enable_plugins: list[str] = field(default_factory=list)
    """Installed entry-point environments (group raypost.envs) to allow in this run, by name."""

    def without_tools(self) -> "EnvConfig":
        """The same environment offering no tool (env.tools=[none]): the task answered without them."""
        from dataclasses import replace

        return replace(self, tools=["none"])

    def __post_init__(self):
        check(1 <= self.max_turns <= 16, "env.max_turns", f"must be 1..16, got {self.max_turns} (a turn's sample seed is "
              "the trajectory's + turn * 2^16, inside the 2^20 a batch's seeds span: actors/multiturn.py turn_seed)")
        check(self.max_tokens >= 1, "env.max_tokens", f"must be >= 1, got {self.max_tokens}")
        check(self.tool_timeout_s > 0, "env.tool_timeout_s", f"must be > 0, got {self.tool_timeout_s}")
        unknown = set(self.shaping) - {"valid_call", "tool_error"}
        check(not unknown, "env.shaping", f"unknown keys {sorted(unknown)}; use valid_call and/or tool_error")
