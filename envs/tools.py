"""Tools by name, with OpenAI-style schemas, and how a call runs so that its deadline holds.

A :class:`Tool` is a function of JSON arguments (checked against its JSON schema with ``jsonschema`` before it
runs) returning a value that becomes the tool message's text. How it runs (``Tool.isolation``):

- ``"inline"``: in the caller, for tools that bound their own time and are told ``timeout_s``: ``calculator``
  (bounded by construction) and ``python`` (the sandbox's wall limit kills the whole sandboxed process tree);
- ``"process"`` (the default for tools registered by plugins and tests): in a forked child process in its own
  session; at the deadline the whole session (the child and whatever it started) is SIGKILLed, so nothing is left
  running. Fork copies the caller (cheap, copy-on-write; the function needs no import in the child); a tool that
  deadlocks in the child on a lock another thread held at fork time just times out. Its arguments and result
  cross by pickle (the result is cut to 1 MB of text in the child);
- ``"thread"``: in a daemon worker thread, for tools that cannot leave the process. At the deadline the call ends
  as a timeout and the thread is abandoned: Python cannot kill a thread, so one that never returns keeps running
  (and holding what it holds) until the process exits; its late result is dropped.
"""
from __future__ import annotations

import ast
import json
import math
import multiprocessing
import os
import signal
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import jsonschema

RESULT_CAP = 1 << 20  # characters of a process tool's result sent back to the parent


class ToolTimeout(Exception):
    """Raised by an inline tool whose own deadline passed."""


class ToolError(Exception):
    """A tool's own failure; its message (the reason) is shown to the model as ``error: <tool>: <reason>``."""


@dataclass
class Tool:
    """A tool: ``fn(**arguments)`` (inline tools also get ``timeout_s=``) -> a value (str, number, or JSON data)."""

    name: str
    description: str
    parameters: dict
    """JSON schema of the arguments object."""
    fn: Callable[..., Any]
    isolation: str = "process"
    """"inline" | "process" | "thread": see the module docstring."""
    validator: Any = field(default=None, repr=False)

    def __post_init__(self):
        if self.isolation not in ("inline", "process", "thread"):
            raise ValueError(f"tool {self.name!r}: isolation must be inline, process or thread, got {self.isolation!r}")
        cls = jsonschema.validators.validator_for(self.parameters)
        cls.check_schema(self.parameters)  # a bad schema is the tool author's error, raised at registration
        self.validator = cls(self.parameters)

    def schema(self) -> dict:
        """The OpenAI-style function definition offered to the model."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


TOOLS: dict[str, Tool] = {}


def register_tool(tool: Tool) -> Tool:
    """Add (or replace) a tool in this process's registry; returns it."""
    TOOLS[tool.name] = tool
    return tool


def to_text(value) -> str:
    """A tool's return value as message text: str as is, int exactly, float to 12 significant digits, else JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format(value, ".12g")
    return json.dumps(value, ensure_ascii=False, default=str)


def call_tool(tool: Tool, arguments: dict, timeout_s: float) -> tuple[str, str | None]:
    """Run one call within ``timeout_s``: ``(text, None)``, or ``("error: ...", kind)`` with kind one of
    ``bad_arguments``, ``raised``, ``timeout``. Never raises for what the tool or its arguments do."""
    try:
        problem = jsonschema.exceptions.best_match(tool.validator.iter_errors(arguments))
    except RecursionError:
        return f"error: bad arguments for {tool.name} (nested too deeply)", "bad_arguments"
    if problem is not None:
        where = "/".join(map(str, problem.path)) or "arguments"
        return f"error: bad arguments for {tool.name} ({where}: {problem.message[:160]})", "bad_arguments"
    try:
        if tool.isolation == "inline":
            value = tool.fn(timeout_s=timeout_s, **arguments)
        elif tool.isolation == "thread":
            value = _in_thread(tool, arguments, timeout_s)
        else:
            value = _in_process(tool, arguments, timeout_s)
        return to_text(value), None
    except ToolTimeout:
        return f"error: {tool.name}: timed out after {timeout_s:g} s", "timeout"
    except ToolError as e:
        return f"error: {tool.name}: {str(e)[:300]}", "raised"
    except (Exception, SystemExit) as e:  # the tool's own failure, reported to the model, never a crash of the rollout
        return f"error: {tool.name}: raised {type(e).__name__}: {str(e)[:200]}", "raised"


def _in_thread(tool: Tool, arguments: dict, timeout_s: float):
    box: dict = {}

    def work():
        try:
            box["value"] = tool.fn(**arguments)
        except (Exception, SystemExit) as e:
            box["error"] = e

    t = threading.Thread(target=work, name=f"tool-{tool.name}", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise ToolTimeout  # the thread is abandoned (see the module docstring)
    if "error" in box:
        raise box["error"]
    return box["value"]


def _child(fn, arguments, conn):
    os.setsid()  # its own session: the parent kills the whole group at the deadline
    try:
        msg = ("ok", to_text(fn(**arguments))[:RESULT_CAP])
    except BaseException as e:
        msg = ("raised", f"raised {type(e).__name__}: {str(e)[:200]}")
    conn.send(msg)
    conn.close()


def _in_process(tool: Tool, arguments: dict, timeout_s: float):
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(tool.fn, arguments, send), name=f"tool-{tool.name}", daemon=True)
    proc.start()
    send.close()
    try:
        if not recv.poll(timeout_s):
            raise ToolTimeout
        try:
            status, value = recv.recv()
        except EOFError:
            proc.join(1.0)  # the exit status, once it is reaped
            code = proc.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            raise ToolError(f"its process died ({how})") from None
    finally:
        recv.close()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # gone already, or not yet in its own group
            pass
        proc.kill()
        proc.join()
    if status == "raised":
        raise ToolError(value)
    return value


# ---- calculator -------------------------------------------------------------------------------------------------
MAX_EXPRESSION_CHARS = 200
MAX_INT_BITS = 256  # every intermediate int stays below 2**256 (~1e77): no 9**9**9, no huge products


def _check(x):
    if isinstance(x, int) and x.bit_length() > MAX_INT_BITS:
        raise ValueError(f"number too large (more than {MAX_INT_BITS} bits)")
    if isinstance(x, float) and not math.isfinite(x):
        raise ValueError("result is not a finite number")
    return x


def _pow(a, b):
    if isinstance(b, int) and isinstance(a, int) and b >= 0 and abs(a) > 1:
        if b * (abs(a).bit_length() - 1) > MAX_INT_BITS:  # a lower bound of the result's bits, checked before computing
            raise ValueError(f"number too large (more than {MAX_INT_BITS} bits)")
    if abs(b) > 10_000:  # floats: huge exponents only over/underflow; keep them out
        raise ValueError("exponent too large")
    r = a ** b
    if isinstance(r, complex):
        raise ValueError("the result is not a real number")
    return r


_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
           ast.Pow: _pow}
_UNARY = {ast.UAdd: lambda a: +a, ast.USub: lambda a: -a}


def _eval(node):
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _check(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _check(_BINOPS[type(node.op)](_eval(node.left), _eval(node.right)))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _check(_UNARY[type(node.op)](_eval(node.operand)))
    raise ValueError(f"unsupported syntax: {type(node).__name__} (only numbers, + - * / // % ** and parentheses)")


def calculate(expression: str) -> int | float:
    """The value of an arithmetic ``expression``: int and float literals, ``+ - * / // % **``, unary ``+ -`` and
    parentheses, evaluated over Python's AST (never ``eval``). Raises ValueError for anything else, for expressions
    longer than 200 characters and for any int beyond 256 bits (checked before a power is computed, so
    ``9**9**9`` fails at once), ZeroDivisionError / OverflowError as Python does."""
    if not isinstance(expression, str) or len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression must be a string of at most {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ValueError("not an arithmetic expression") from None
    try:
        return _eval(tree.body)
    except RecursionError:
        raise ValueError("expression nested too deeply") from None


def _calculator(expression: str, timeout_s: float | None = None):
    return calculate(expression)


CALCULATOR = register_tool(Tool(
    name="calculator", description="Evaluate arithmetic: + - * / // % ** and parentheses.",
    parameters={"type": "object", "properties": {"expression": {"type": "string"}},
                "required": ["expression"], "additionalProperties": False},
    fn=_calculator, isolation="inline"))


# ---- python -----------------------------------------------------------------------------------------------------
PYTHON_EXE = "/usr/bin/python3"
MAX_CODE_CHARS = 4096
# The sandbox's first trusted lines: rlimits, then the code (read whole from stdin, which is then closed).
_BOOT = ("import resource as R, sys, os\n"
         "mb = 1 << 20\n"
         "R.setrlimit(R.RLIMIT_CORE, (0, 0)); R.setrlimit(R.RLIMIT_CPU, ({cpu}, {cpu} + 1))\n"
         "R.setrlimit(R.RLIMIT_AS, ({mem} * mb, {mem} * mb)); R.setrlimit(R.RLIMIT_FSIZE, (mb, mb))\n"
         "R.setrlimit(R.RLIMIT_NOFILE, (32, 32))\n"
         "src = sys.stdin.buffer.read().decode(); os.dup2(os.open(os.devnull, os.O_RDONLY), 0)\n"
         "exec(compile(src, '<code>', 'exec'), {{'__name__': '__main__'}})\n")


def run_python(code: str, timeout_s: float = 5.0) -> str:
    """Run ``code`` with ``/usr/bin/python3 -I`` in :mod:`rewards.sandbox` (no network, uid 65534, read-only root,
    pids/memory cgroups, 256 MB address space, CPU and wall limits of ``timeout_s``) and return its stdout (without
    its final newline).
    Raises ToolTimeout at the wall or CPU limit, ToolError when the code fails (the reason: its last traceback line)
    or the sandbox is unavailable (the code is then not run)."""
    from rewards import sandbox

    if len(code) > MAX_CODE_CHARS:
        raise ToolError(f"code longer than {MAX_CODE_CHARS} characters")
    problem = sandbox.sandbox_problem()
    if problem:
        raise ToolError(f"the sandbox is unavailable, code not run: {problem}")
    limits = sandbox.Limits(cpu_s=max(1, math.ceil(timeout_s)), wall_s=timeout_s, memory_mb=256, tmp_mb=4,
                            output_bytes=64 << 10, pids=8, nofile=32, file_mb=1)
    boot = _BOOT.format(cpu=limits.cpu_s, mem=limits.memory_mb)
    try:
        run = sandbox.run([PYTHON_EXE, "-I", "-c", boot], code.encode(), limits)
    except sandbox.SandboxUnavailable as e:
        raise ToolError(f"the sandbox is unavailable, code not run: {e}") from None
    if run.wall_timeout or run.signal in (9, 24) and not run.memory_limit_hit:
        raise ToolTimeout
    if run.output_exceeded:
        raise ToolError(f"output longer than {limits.output_bytes} bytes")
    if run.memory_limit_hit:
        raise ToolError("memory limit")
    if run.exit_code != 0:
        lines = run.stderr.decode(errors="replace").strip().splitlines()
        raise ToolError(lines[-1][:200] if lines else f"exit status {run.exit_code}")
    out = run.stdout.decode(errors="replace").removesuffix("\n")
    return out if out else "(no output: print the result)"


PYTHON = register_tool(Tool(
    name="python", description="Run Python code; returns what it prints.",
    parameters={"type": "object", "properties": {"code": {"type": "string"}},
                "required": ["code"], "additionalProperties": False},
    fn=run_python, isolation="inline"))
