"""Environments for multi-turn tool use: the tool-call parser, the tools, each failure kind, the turn cap, plugins,
the chat template's tools, the tool-turn delta (tiny and real Qwen3 templates), the sandboxed python tool."""
from __future__ import annotations

import builtins
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from config.envs import EnvConfig
from config.loader import ConfigError
from envs import registry
from envs.builtin import ToolEnv
from envs.chat import TemplateNotPrefixConsistent, tool_turn_text
from envs.registry import make_env
from envs.tool_calls import format_tool_call, parse_tool_calls, strip_tool_calls
from envs.tools import TOOLS, Tool, calculate, call_tool, register_tool
from rewards.answer import ExactAnswerScorer
from rewards.base import Item
from rewards.sandbox import sandbox_problem
from tasks.tools import make_rows, transcript
from tinymodels.factory import CHAT_TEMPLATE

FIXTURES = Path(__file__).parent / "fixtures"
# The ChatML template as it was before tools (tinymodels/factory.py, commit 69ee035): chats without tools must
# render byte for byte the same, or every model and test built on it changes.
OLD_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def call(name, **arguments) -> str:
    return format_tool_call(name, arguments)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert t.chat_template == CHAT_TEMPLATE
    return t


@pytest.fixture(scope="module")
def qwen3_tok(tok):
    """The tiny tokenizer (it has <|im_start|> / <|im_end|>) carrying the real Qwen3 chat template."""
    import copy

    t = copy.deepcopy(tok)
    t.chat_template = (FIXTURES / "qwen3_chat_template.jinja").read_text()
    return t


# ---- test tools (module level: the process runner forks, so they need no import in the child) ---------------------
def _boom(x: int = 0):
    raise KeyError("no such thing")


def _hang(pidfile: str = ""):
    if pidfile:  # a grandchild too: killing the tool's session must take it down as well
        child = subprocess.Popen(["sleep", "600"])
        Path(pidfile).write_text(f"{os.getpid()} {child.pid}")
    while True:
        time.sleep(1)


def _long():
    return "y" * 1000


def _die():
    os._exit(3)


TEST_TOOLS = [
    Tool("boom", "raises", {"type": "object", "properties": {"x": {"type": "integer"}}}, _boom),
    Tool("hang", "never returns", {"type": "object", "properties": {"pidfile": {"type": "string"}}}, _hang),
    Tool("hang_thread", "never returns, in a thread", {"type": "object"}, lambda: time.sleep(3600), isolation="thread"),
    Tool("long", "a long result", {"type": "object"}, _long, isolation="thread"),
    Tool("die", "its process exits without answering", {"type": "object"}, _die),
    Tool("nested", "nested arguments", {"type": "object", "properties": {  # recursive: {"xs": [{"xs": [...]}, {"n": 1}]}
        "xs": {"type": "array", "items": {"$ref": "#"}}, "n": {"type": "integer"}}}, lambda xs: len(xs), isolation="thread"),
]


def test_env_config_section_holds_defaults():
    cfg = EnvConfig(name="calculator")
    env = make_env(cfg)
    assert [t["function"]["name"] for t in env.tools] == ["calculator"]
    assert env.tools[0]["type"] == "function" and env.tools[0]["function"]["parameters"]["required"] == ["expression"]


# ---- parser --------------------------------------------------------------------------------------------------------
def test_parser_reads_qwen3_calls_several_per_turn():
    text = ('Let me compute.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "37*48"}}\n</tool_call>\n'
            '<tool_call>{"name":"python","arguments":"{\\"code\\": \\"print(1)\\"}"}</tool_call> done')
    calls = parse_tool_calls(text)
    assert [(c.name, c.arguments, c.error) for c in calls] == [
        ("calculator", {"expression": "37*48"}, None), ("python", {"code": "print(1)"}, None)]
    assert strip_tool_calls(text) == "Let me compute.\n\n done".strip()
    assert parse_tool_calls('{"answer": 3} </tool_call>') == []  # a stray closing tag is text
    assert parse_tool_calls(call("calculator", expression="1+2"))[0].arguments == {"expression": "1+2"}
    assert parse_tool_calls('<tool_call>{"name": "f"}</tool_call>')[0].arguments == {}


@pytest.mark.parametrize("inner, why", [
    ('{"name": "calculator", "arguments": {"expression": "1"}', "not valid JSON"),
    ('[1, 2]', "must be a JSON object"),
    ('{"arguments": {}}', 'no "name"'),
    ('{"name": "", "arguments": {}}', 'no "name"'),
    ('{"name": "calculator", "arguments": [1]}', '"arguments" must be an object'),
    ('{"name": "calculator", "arguments": "{not json"}', "string that is not JSON"),
    ('{"name": "calculator", "arguments": "[1]"}', '"arguments" must be an object'),
    ('[' * 100000, "not valid JSON"),
])
def test_parser_marks_malformed_calls(inner, why):
    (c,) = parse_tool_calls(f"<tool_call>{inner}</tool_call>")
    assert why in c.error


def test_parser_unclosed_block_takes_the_rest():
    calls = parse_tool_calls('ok <tool_call>{"name": "calculator", "arguments": {}}')
    assert len(calls) == 1 and "unclosed" in calls[0].error
    assert strip_tool_calls('ok <tool_call>{"name": "calculator"') == "ok"


# ---- calculator ----------------------------------------------------------------------------------------------------
def test_calculator_evaluates_arithmetic_without_eval(monkeypatch):
    monkeypatch.setattr(builtins, "eval", lambda *a, **k: pytest.fail("calculator used eval"))
    assert calculate("37*48") == 1776
    assert calculate("(2+3)*-4 // 3 % 5") == ((2 + 3) * -4 // 3) % 5
    assert calculate("7/2") == 3.5 and calculate("2**10") == 1024 and calculate("2**-1") == 0.5
    assert calculate(" 1.5e3 + 1 ") == 1501.0


@pytest.mark.parametrize("expr", ["9**9**9", "10**100*10**100", "2**257", "(10**70)*(10**70)", "2.0**5000",
                                  "1e308*10", "(-8)**0.5", "__import__('os')", "x+1", "abs(-1)", "(1).real",
                                  "1 if 1 else 2", "[1]", "True+1", "'a'*3", "1<<10", "lambda: 1", "1" * 300, "(" * 300])
def test_calculator_refuses_unsafe_or_huge_fast(expr):
    t = time.monotonic()
    with pytest.raises((ValueError, OverflowError)):
        calculate(expr)
    assert time.monotonic() - t < 0.5


def test_calculator_errors_become_tool_results():
    assert call_tool(TOOLS["calculator"], {"expression": "1/0"}, 1.0) == (
        "error: calculator: raised ZeroDivisionError: division by zero", "raised")
    text, kind = call_tool(TOOLS["calculator"], {"expression": "9**9**9"}, 1.0)
    assert kind == "raised" and "too large" in text
    assert call_tool(TOOLS["calculator"], {"expression": 5}, 1.0)[1] == "bad_arguments"
    assert call_tool(TOOLS["calculator"], {"expression": "1", "x": 1}, 1.0)[1] == "bad_arguments"


# ---- environment: each failure kind, the turn cap, shaping ---------------------------------------------------------
@pytest.fixture()
def test_tools():
    saved = dict(TOOLS)
    for t in TEST_TOOLS:
        register_tool(t)
    yield
    TOOLS.clear()
    TOOLS.update(saved)


def test_each_failure_kind_ends_in_a_defined_turn_result(test_tools, tmp_path):
    cfg = EnvConfig(name="calculator", tools=["calculator", "boom", "hang", "long"], tool_timeout_s=0.5,
                    max_result_chars=50, shaping={"valid_call": 0.5, "tool_error": -0.25})
    env = make_env(cfg)
    assert env.reset({"prompt": "hi"}) == [{"role": "user", "content": "hi"}]
    pidfile = tmp_path / "pids"
    text = "".join([call("calculator", expression="6*7"), "<tool_call>{oops}</tool_call>", call("search", q="x"),
                    call("calculator", expression=3), call("boom"), call("hang", pidfile=str(pidfile)), call("long")])
    t = time.monotonic()
    r = env.step(text)
    took = time.monotonic() - t
    assert took < 0.5 + 1.5, took  # one hang: its timeout plus slack
    assert not r.done
    assert r.info["errors"] == ["malformed", "unknown_tool", "bad_arguments", "raised", "timeout"]
    assert (r.info["tool_calls"], r.info["valid_calls"], r.info["tool_errors"]) == (7, 2, 5)
    assert r.reward == pytest.approx(2 * 0.5 - 5 * 0.25)
    contents = [m["content"] for m in r.messages]
    assert contents[0] == "42"
    assert all(c.startswith("error: ") for c in contents[1:6])
    assert "malformed" in contents[1] and "unknown tool 'search'" in contents[2] and "bad arguments" in contents[3]
    assert "KeyError" in contents[4] and "timed out after 0.5 s" in contents[5]
    assert contents[6].startswith("y" * 50) and "[cut: 1000 characters, first 50 shown]" in contents[6]
    assert [m["role"] for m in r.messages] == ["tool"] * 7
    assert [m["name"] for m in r.messages] == ["calculator", "", "search", "calculator", "boom", "hang", "long"]
    # nothing of the hung tool is left running: neither its process nor the process it started
    tool_pid, grandchild = map(int, pidfile.read_text().split())
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and
                                              "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]
                                              for p in (tool_pid, grandchild)):
        time.sleep(0.02)
    for p in (tool_pid, grandchild):
        assert not Path(f"/proc/{p}").exists() or Path(f"/proc/{p}/stat").read_text().split()[2] == "Z", p
    assert multiprocessing.active_children() == []


def test_odd_tool_failures_are_results_too(test_tools):
    assert call_tool(TOOLS["die"], {}, 2.0) == ("error: die: its process died (exit status 3)", "raised")
    text, kind = call_tool(TOOLS["nested"], {"xs": [{"n": 1}, {"n": "two"}]}, 1.0)
    assert kind == "bad_arguments" and "xs/1/n" in text
    deep = {"xs": [{"n": "deep down"}]}  # wrong at the bottom: validation recurses past Python's limit
    for _ in range(5000):
        deep = {"xs": [deep]}
    assert call_tool(TOOLS["nested"], deep, 1.0)[1] == "bad_arguments"


def test_thread_tool_past_its_deadline_is_a_timeout(test_tools):
    t = time.monotonic()
    assert call_tool(TOOLS["hang_thread"], {}, 0.2) == ("error: hang_thread: timed out after 0.2 s", "timeout")
    assert time.monotonic() - t < 1.0


def test_turn_cap_ends_the_trajectory_without_running_its_calls(test_tools):
    env = make_env(EnvConfig(name="calculator", tools=["calculator", "hang"], max_turns=2, tool_timeout_s=30))
    env.reset({"prompt": [{"role": "user", "content": "What is 6*7?"}]})
    r1 = env.step(call("calculator", expression="6*7"))
    assert (r1.done, r1.info["valid_calls"], r1.messages[0]["content"]) == (False, 1, "42")
    t = time.monotonic()
    r2 = env.step('{"answer": 42} ' + call("hang"))  # would hang 30 s if it ran
    assert time.monotonic() - t < 1.0
    assert r2.done and r2.messages == [] and r2.info["not_run"] == 1 and r2.info["turn"] == 2
    assert env.final_answer() == '{"answer": 42}'
    with pytest.raises(RuntimeError, match="fresh env"):
        env.step("again")


def test_a_turn_without_calls_is_the_final_answer():
    env = make_env(EnvConfig(name="calculator", shaping={"valid_call": 1.0}))
    env.reset({"prompt": "q"})
    r = env.step('  {"answer": 1776}  ')
    assert (r.done, r.messages, r.reward, r.info["tool_calls"]) == (True, [], 0.0, 0)
    assert env.final_answer() == '{"answer": 1776}'


def test_tools_override_and_none():
    assert [t["function"]["name"] for t in make_env(EnvConfig(name="python", tools=["calculator"])).tools] == ["calculator"]
    env = make_env(EnvConfig(name="calculator", tools=["none"]))
    assert env.tools == []
    env.reset({"prompt": "q"})
    r = env.step(call("calculator", expression="1+1"))
    assert r.info["errors"] == ["unknown_tool"] and "answer without tools" in r.messages[0]["content"]
    with pytest.raises(ConfigError, match="env.tools"):
        make_env(EnvConfig(name="calculator", tools=["nope"]))


def test_bad_rows_are_refused_clearly():
    env = make_env(EnvConfig(name="calculator"))
    with pytest.raises(ValueError, match='"prompt"'):
        env.reset({"question": "q"})


# ---- registry and plugins ------------------------------------------------------------------------------------------
def test_unknown_env_names_the_key_and_the_choices():
    with pytest.raises(ConfigError, match=r"env.name.*'maze'.*\['calculator', 'python'\]"):
        make_env(EnvConfig(name="maze"))
    a, b = make_env(EnvConfig(name="calculator")), make_env(EnvConfig(name="calculator"))
    assert a is not b  # a fresh instance per trajectory


@pytest.fixture()
def plugin_dist(tmp_path, monkeypatch):
    """An installed distribution providing the ``raypost.envs`` entry point ``echo``."""
    (tmp_path / "echo_env_plugin.py").write_text(
        "from envs.builtin import ToolEnv\n"
        "def make(cfg):\n"
        "    return ToolEnv(cfg, [])\n")
    dist = tmp_path / "echo_env_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-env-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[raypost.envs]\necho = echo_env_plugin:make\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("echo_env_plugin", None)


def test_plugins_load_only_when_enabled(plugin_dist):
    assert registry.installed_plugins()["echo"] == "echo_env_plugin:make"
    with pytest.raises(ConfigError, match="installed plugin but not enabled"):
        make_env(EnvConfig(name="echo"))
    assert "echo_env_plugin" not in sys.modules
    env = make_env(EnvConfig(name="echo", enable_plugins=["echo"]))
    assert isinstance(env, ToolEnv) and env.tools == []
    with pytest.raises(ConfigError, match="no installed package provides it"):
        make_env(EnvConfig(name="ghost", enable_plugins=["ghost"]))


# ---- the chat template ---------------------------------------------------------------------------------------------
CHATS = [
    [{"role": "user", "content": "What is 2+3? Reply with JSON: {\"answer\": N}"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": '{"answer": 5}'}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c\n<x>"}, {"role": "assistant", "content": ""}],
]


@pytest.mark.parametrize("chat", CHATS)
def test_template_keeps_chats_without_tools_byte_identical(tok, chat):
    for gen in (False, True):
        kw = dict(tokenize=False, add_generation_prompt=gen)
        assert tok.apply_chat_template(chat, **kw) == tok.apply_chat_template(chat, chat_template=OLD_CHAT_TEMPLATE, **kw)
        assert tok.apply_chat_template(chat, tools=[], **kw) == tok.apply_chat_template(chat, **kw)
    new = tok.apply_chat_template(chat, return_dict=True, return_assistant_tokens_mask=True)
    old = tok.apply_chat_template(chat, return_dict=True, return_assistant_tokens_mask=True, chat_template=OLD_CHAT_TEMPLATE)
    assert (new["input_ids"], new["assistant_masks"]) == (old["input_ids"], old["assistant_masks"])


def test_template_renders_tools_tool_calls_and_tool_messages(tok):
    tools = make_env(EnvConfig(name="calculator")).tools
    user = {"role": "user", "content": "What is 37*48?"}
    alone = tok.apply_chat_template([user], tools=tools, tokenize=False, add_generation_prompt=True)
    # the tiny models' terse tools block: each tool's name and parameters, one per line
    assert alone == ("<|im_start|>system\n# Tools\ncalculator(expression)<|im_end|>\n"
                     "<|im_start|>user\nWhat is 37*48?<|im_end|>\n<|im_start|>assistant\n")
    two = tok.apply_chat_template([user], tools=make_env(EnvConfig(name="calculator", tools=["calculator", "python"])).tools,
                                  tokenize=False)
    assert two.startswith("<|im_start|>system\n# Tools\ncalculator(expression)\npython(code)<|im_end|>\n")
    merged = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, user], tools=tools, tokenize=False)
    assert merged.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n") and merged.count("<|im_start|>system") == 1

    field = {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "37*48"}}},
        {"type": "function", "function": {"name": "calculator", "arguments": '{"expression":"1+1"}'}}]}
    plain = {"role": "assistant", "content": call("calculator", expression="37*48") + "\n" + call("calculator", expression="1+1")}
    rest = [{"role": "tool", "name": "calculator", "content": "1776"}, {"role": "tool", "name": "calculator", "content": "2"},
            {"role": "assistant", "content": '{"answer": 1776}'}]
    a = tok.apply_chat_template([user, field, *rest], tools=tools, tokenize=False)
    assert a == tok.apply_chat_template([user, plain, *rest], tools=tools, tokenize=False)
    assert a.endswith("<|im_start|>assistant\n" + plain["content"] + "<|im_end|>\n<|im_start|>user\n<tool_response>\n1776\n"
                      "</tool_response>\n<tool_response>\n2\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
                      '{"answer": 1776}<|im_end|>\n')
    # the loss mask (the generation marks) covers the tool calls and the answer, never the tool results
    r = tok.apply_chat_template([user, field, *rest], tools=tools, return_dict=True, return_assistant_tokens_mask=True)
    masked = tok.decode([i for i, m in zip(r["input_ids"], r["assistant_masks"]) if m])
    assert masked == plain["content"] + "<|im_end|>" + '{"answer": 1776}<|im_end|>'


# ---- tool_turn_text: the delta --------------------------------------------------------------------------------------
def _check_delta(t, tools):
    """P + sampled + end-of-turn + delta must be exactly the full render of the conversation."""
    convo = [{"role": "system", "content": "S"}, {"role": "user", "content": "What is 37*48?"}]
    sampled = call("calculator", expression="37*48")
    results = [{"role": "tool", "name": "calculator", "content": "1776"}, {"role": "tool", "name": "x", "content": "e"}]
    delta = tool_turn_text(t, results, tools)
    for n in (1, 2):
        prompt = t.apply_chat_template(convo, tools=tools, tokenize=False, add_generation_prompt=True)
        full = t.apply_chat_template([*convo, {"role": "assistant", "content": sampled}, *results[:n]], tools=tools,
                                     tokenize=False, add_generation_prompt=True)
        assert full == prompt + sampled + "<|im_end|>" + tool_turn_text(t, results[:n], tools)
    return delta


def test_tool_turn_text_for_the_tiny_template(tok):
    tools = make_env(EnvConfig(name="calculator")).tools
    assert _check_delta(tok, tools) == ("\n<|im_start|>user\n<tool_response>\n1776\n</tool_response>\n<tool_response>\n"
                                        "e\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert tool_turn_text(tok, [{"role": "tool", "name": "c", "content": "1"}]) == \
        "\n<|im_start|>user\n<tool_response>\n1\n</tool_response><|im_end|>\n<|im_start|>assistant\n"


def test_tool_turn_text_for_the_real_qwen3_template(qwen3_tok, tok):
    tools = make_env(EnvConfig(name="calculator")).tools
    assert _check_delta(qwen3_tok, tools) == _check_delta(tok, tools)  # Qwen3's tool results, exactly as ours
    system = qwen3_tok.apply_chat_template([{"role": "user", "content": "q"}], tools=tools, tokenize=False)
    assert "# Tools" in system and json.dumps(tools[0], ensure_ascii=False) in system
    # what Qwen3 writes for a call (spaces in its JSON) is what the parser reads, and so is our compact form
    turn = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "37*48"}}}]}
    text = qwen3_tok.apply_chat_template([{"role": "user", "content": "q"}, turn], tokenize=False)
    assert '<tool_call>\n{"name": "calculator", "arguments": {"expression": "37*48"}}\n</tool_call>' in text
    assert [(c.name, c.arguments) for c in parse_tool_calls(text)] == [("calculator", {"expression": "37*48"})]


def test_tool_turn_text_needs_tool_messages(tok):
    with pytest.raises(ValueError, match="at least one tool message"):
        tool_turn_text(tok, [])


def test_tool_turn_text_refuses_a_template_that_is_not_prefix_consistent(tok):
    import copy

    t = copy.deepcopy(tok)
    t.chat_template = "{{ messages | length }}" + OLD_CHAT_TEMPLATE  # the turn count first: earlier text changes
    with pytest.raises(TemplateNotPrefixConsistent, match="not prefix-consistent"):
        tool_turn_text(t, [{"role": "tool", "name": "c", "content": "1"}])


# ---- built-in tasks and transcripts --------------------------------------------------------------------------------
@pytest.mark.parametrize("tool", ["calculator", "python"])
def test_tasks_need_the_tool_and_score_as_json(tok, tool):
    train, held = make_rows(50, seed=3, tool=tool), make_rows(50, seed=3, heldout=True, tool=tool)
    assert train == make_rows(50, seed=3, tool=tool) and train != make_rows(50, seed=4, tool=tool)
    strip = lambda s: "".join(c for c in s if not c.isdigit())
    assert not {strip(r["prompt"][0]["content"]) for r in train} & {strip(r["prompt"][0]["content"]) for r in held}
    env_tools = make_env(EnvConfig(name=tool)).tools
    scorer = ExactAnswerScorer()
    lengths = []
    for row in train[:10]:
        convo = transcript(row, tool=tool)
        assert convo[0] == row["prompt"][0] and [m["role"] for m in convo[1:]] == ["assistant", "tool", "assistant"]
        env = make_env(EnvConfig(name=tool))
        env.reset(row)
        if tool == "calculator":  # the env's real result is the transcript's (python: checked in the sandbox test)
            assert env.step(convo[1]["content"]).messages == [convo[2]]
        assert json.loads(convo[3]["content"]) == {"answer": row["answer"]}
        assert scorer.score([Item("p", convo[3]["content"], row["answer"])])[0].score == 1.0
        lengths.append(len(tok.apply_chat_template(convo, tokenize=True, return_dict=True)["input_ids"]))
    assert max(lengths) < 170, lengths  # without the tools' system block; see the module docstring of tasks/tools.py


@pytest.mark.skipif(sandbox_problem() is not None, reason=f"sandbox unavailable here: {sandbox_problem()}")
def test_python_tool_runs_in_the_sandbox():
    rows = make_rows(4, seed=0, tool="python")
    for row in rows:  # the transcript's tool result is what the sandboxed code really prints
        env = make_env(EnvConfig(name="python"))
        env.reset(row)
        convo = transcript(row, tool="python")
        r = env.step(convo[1]["content"])
        assert r.messages == [convo[2]] and r.info["valid_calls"] == 1
    env = make_env(EnvConfig(name="python", tool_timeout_s=1.0))
    env.reset(rows[0])
    codes = ["import os; print(os.getuid())", "import socket; socket.create_connection(('1.1.1.1', 53), timeout=1)",
             "open('/etc/hostname')", "1/0", "import time; time.sleep(60)", "pass"]
    t = time.monotonic()
    r = env.step("".join(call("python", code=c) for c in codes))
    assert time.monotonic() - t < 1.0 * 1 + 4.0  # one sleeper: its wall limit plus the others' start-ups
    out = [m["content"] for m in r.messages]
    assert out[0] == "65534"  # nobody, not the caller
    assert out[1].startswith("error: python: ") and "unreachable" in out[1].lower()
    assert "FileNotFoundError" in out[2] and "ZeroDivisionError" in out[3]
    assert out[4] == "error: python: timed out after 1 s" and r.info["errors"] == ["raised"] * 3 + ["timeout"]
    assert out[5] == "(no output: print the result)"
