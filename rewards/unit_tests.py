"""Unit-test reward for Python: the completion's code against the reference's tests, in two processes.

Two processes run inside one :mod:`rewards.sandbox` sandbox (namespaces, uid 65534, cgroups, rlimits):

- the **solution's process** (``RUNNER``): split off by the sandbox's bootstrap (``BOOT_HARNESS``, one
  ``/usr/bin/python3 -I`` by default) *before* anything of the job is read, so it never holds the tests,
  the nonce or the reporting pipe; it keeps only stdin=/dev/null, the sandbox's stdout/stderr and two call
  pipes, sets its rlimits, runs the solution as ``__main__`` and sends back its top-level names;
- the **tests' process** (``HARNESS``, the bootstrap's parent half): reads the job from stdin, makes itself
  undumpable (``prctl(PR_SET_DUMPABLE, 0)``: no same-uid ptrace, no ``/proc/<pid>/mem``, ``fd``,
  ``environ`` or ``maps``), sets the rlimits, compiles the tests, and only then sends the solution's code to
  the solution's process.

The tests run in the tests' process against proxies: ``add(2, 3)`` sends the arguments, JSON-encoded, to
the solution's process, which calls the real function and sends back the result. Calls are **by value**:
None, bool, int, float (inf/nan too), complex, str, bytes, bytearray, list, tuple, dict, set, frozenset,
range cross; a result of any other type (an object whose ``__eq__`` / ``__ne__`` / ``__bool__`` lies, an
``int`` subclass) is a ``SolutionError`` in the test, so the test fails. Everything the solution sends is
decoded here into fresh plain objects; nothing it sends is code. Beyond plain functions:

- classes: calling an exported class builds the object in the solution's process and returns a handle;
  attributes, methods, ``len``, ``bool``, ``in``, ``[]``, iteration, ``str``/``repr`` are calls. A handle
  is never compared by asking the solution: ``==`` between handles is identity, with a plain value a
  TypeError (compare attributes, or what methods return). ``isinstance(obj, Cls)`` works; exception classes
  the solution defines are local classes with the same builtin base, so ``except TheirError`` works;
- a returned function (``make_adder(3)(4)``) or iterator / generator (``islice(fib(), 5)``) is a handle
  whose calls / items come back by value;
- list, dict, set and bytearray arguments that the call mutated are updated in place (``xs.sort()``);
- what a call prints is written to the tests' ``sys.stdout`` (``redirect_stdout`` works), and a
  ``sys.stdin`` the tests replaced is read and handed to the call (``input()`` works);
- top-level data (``X = 1``, ``results = {...}``) is copied once, after the solution ran; a module the
  solution imported is given to the tests as the real standard-library module of that name, imported in the
  tests' process; a name of a builtin (``sorted``, ``isinstance``) is never taken from the solution.

A reference is test code (a string of asserts, ``unittest`` -- ``unittest.main()`` included, whose exit
status is the verdict --, ...) or stdin/stdout cases: a list of
``{"input": str, "output": str}``. Each case runs the whole program afresh with that stdin; its stdout is
compared here with the expected text (trailing whitespace on each line and trailing blank lines ignored).

The tests' process reports each phase, tagged with a per-run random nonce, on a pipe that only it holds
(the solution's process never inherits it); a ``pass`` needs its "tests passed" report.

Statuses and scores:
- ``pass`` 1.0 -- the tests ran to the end;
- ``fail`` 0.0 -- a test raised (AssertionError, a SolutionError, any exception while the tests ran), or a
  stdin/stdout case printed something else;
- ``runtime_error`` 0.0 -- the solution did not compile or raised, exited before the tests finished, died
  of a signal, killed the tests' process, or hit the memory / output limit;
- ``timeout`` 0.0 -- CPU or wall-clock limit;
- ``infra_error`` None -- the sandbox could not be built, or the tests' process could not make itself
  undumpable (never run unsandboxed: fail closed);
- ``error`` None -- the item itself is unusable (no test code, not strings, too long).

Threat model. The completion is written by a policy that is rewarded for ``pass``, so it may be written
*against the reward*: to find the harness (frames, ``gc``), forge its report (the pipe, the nonce, fake
lines on stdout), patch what the tests rely on (builtins, ``AssertionError``, ``isinstance``, ``json``,
``unittest``, ``sys.modules``), return objects that lie when compared, exit early, or reach into the tests'
process (``/proc/<pid>/fd``, ``mem``, ptrace, signals). All of these end in ``fail`` / ``runtime_error`` /
``timeout`` (``tests/test_reward_forgery.py``: 9 of its 18 attacks scored ``pass`` with the former one-
interpreter harness). The solution's process can still: send the tests' process signals (SIGKILL, SIGSTOP:
a 0.0 verdict, never a pass); ptrace bwrap's init (pid 1 in the sandbox, same uid, which holds only the
drained job pipe and stdout/stderr); read the tests' command line (the short bootstrap, no secret);
share ``/tmp`` with the tests (files are data the tests choose to read); and make ``bool(obj)``,
``len(obj)`` or ``x in obj`` of *its own objects* say anything -- which is the class's behaviour, as a
method's return value is, never a comparison against the tests' expected values.

Out of scope: tests that ask the solution to judge itself (``assert check(f(2))`` with ``check`` from the
solution) cannot be protected; results that are not plain data (numpy arrays, dataclass instances compared
with ``==``) need the tests to compare plain values; callbacks from the tests into the solution
(``apply(lambda x: x, 1)``) are refused; top-level data is a snapshot, not live; no seccomp filter is
installed (the kernel's syscall surface is reduced only by namespaces, no capabilities and uid 65534).
"""
from __future__ import annotations

import json
import marshal
import re
import secrets
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from rewards import sandbox
from rewards.base import ERROR, FAIL, INFRA_ERROR, PASS, RUNTIME_ERROR, TIMEOUT, Item, Result

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)

# The solution's process: a fresh interpreter that holds nothing of the tests. It loads the solution, sends
# back its top-level names (plain values, or handles for functions, classes and objects), then answers calls
# until its pipe closes. Everything it says is untrusted: the harness decodes it into fresh plain values.
RUNNER = r'''
import sys
def _serve():
    import builtins, io, json, os, types
    dumps, loads, write, exit_now = json.dumps, json.loads, os.write, os._exit
    StringIO, is_, type_ = io.StringIO, id, type
    rd, wr = RD, WR
    handles, ids = {}, {}
    fn_types = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.BuiltinMethodType,
                types.LambdaType)
    simple = {"bytes": bytes, "bytearray": bytearray}

    def send(msg):
        data = ((msg if type_(msg) is str else dumps(msg)) + "\n").encode()
        while data:
            data = data[write(wr, data):]

    def ref(x):
        h = ids.get(is_(x))
        if h is None:
            h = len(handles) + 1
            handles[h], ids[is_(x)] = x, h
        if isinstance(x, type):
            exc = next((c.__name__ for c in x.__mro__ if c.__module__ == "builtins" and issubclass(c, Exception)),
                       None) if issubclass(x, BaseException) else None
            return {"$": "ref", "id": h, "k": "cls", "t": x.__name__, "exc": exc}
        if isinstance(x, fn_types):
            return {"$": "ref", "id": h, "k": "fn", "t": getattr(x, "__name__", "function")}
        if hasattr(type_(x), "__next__"):
            return {"$": "ref", "id": h, "k": "iter", "t": type_(x).__name__}
        return {"$": "ref", "id": h, "k": "obj", "t": type_(x).__name__, "c": ref(type_(x))["id"]}

    def enc(x):
        t = type_(x)
        if x is None or t is bool or t is int or t is str:
            return x
        if t is float:
            return x if x - x == 0 else {"$": "float", "v": repr(x)}
        if t is list:
            return [enc(i) for i in x]
        if t is tuple or t is set or t is frozenset:
            return {"$": t.__name__, "v": [enc(i) for i in x]}
        if t is dict:
            return {"$": "dict", "v": [[enc(k), enc(v)] for k, v in x.items()]}
        if t is bytes or t is bytearray:
            return {"$": t.__name__, "v": x.hex()}
        if t is complex:
            return {"$": "complex", "v": [enc(x.real), enc(x.imag)]}
        if t is range:
            return {"$": "range", "v": [x.start, x.stop, x.step]}
        return ref(x)

    def dec(x):
        t = type_(x)
        if t is list:
            return [dec(i) for i in x]
        if t is not dict:
            return x
        tag, v = x["$"], x.get("v")
        if tag == "ref":
            return handles[x["id"]]
        if tag == "dict":
            return {dec(k): dec(i) for k, i in v}
        if tag in simple:
            return simple[tag].fromhex(v)
        if tag == "float":
            return float(v)
        if tag == "complex":
            return complex(*v)
        if tag == "range":
            return range(*v)
        return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](dec(i) for i in v)

    def raised(e):
        info = {"types": [c.__name__ for c in type_(e).__mro__ if c.__module__ == "builtins"],
                "t": type_(e).__name__, "cid": ids.get(is_(type_(e)))}
        try:
            import traceback  # here, not at start-up: most runs never raise
            info.update(message=str(e)[:1000], traceback="".join(traceback.format_exception(e))[-1500:])
        except BaseException:
            pass
        return {"raised": info}

    ops = {"len": len, "bool": bool, "str": str, "repr": repr, "iter": iter, "next": next,
           "contains": lambda o, k: k in o, "getitem": lambda o, k: o[k],
           "setitem": lambda o, k, v: o.__setitem__(k, v), "delitem": lambda o, k: o.__delitem__(k),
           "getattr": getattr, "setattr": setattr, "delattr": delattr}
    job = loads(rd.readline())
    import resource  # the same per-process limits as the tests' process, before any line of the solution
    lim, mb = job["limits"], 1 << 20
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (lim["memory_mb"] * mb, lim["memory_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_mb"] * mb, lim["file_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["nofile"], lim["nofile"]))
    try:  # if memory runs out in the sandbox, the kernel should take the solution, not its judge
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    ns = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(job["code"], "solution.py", "exec"), ns)
    except SystemExit as e:
        send({"exit": str(e.code)[:100]})
        exit_now(0)
    except BaseException as e:
        send(raised(e))
        exit_now(0)
    exports = {}
    for name, value in list(ns.items()):
        if name.startswith("__"):
            continue
        try:
            exports[name] = ({"$": "module", "v": value.__name__} if isinstance(value, types.ModuleType)
                             else ref(value) if type_(value) is types.GeneratorType else enc(value))
        except BaseException:
            pass
    def flush():
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except BaseException:
                pass
    flush()
    send({"loaded": exports})
    while True:
        line = rd.readline()
        if not line:
            exit_now(0)
        req = loads(line)
        out, old_out, old_in = StringIO(), sys.stdout, sys.stdin
        try:
            sys.stdout = out
            if req.get("stdin") is not None:
                sys.stdin = StringIO(req["stdin"])
            target = handles[req["id"]]
            args, kwargs = [dec(a) for a in req["args"]], {k: dec(v) for k, v in req["kwargs"]}
            if req["op"] == "call":
                value = target(*args, **kwargs)
            else:
                value = ops[req["op"]](target, *args)
            sys.stdout, sys.stdin = old_out, old_in
            back = [enc(a) if type_(a) in (list, dict, set, bytearray) and enc(a) != r else None
                    for a, r in zip(args + list(kwargs.values()), req["args"] + [v for _, v in req["kwargs"]])]
            reply = dumps({"ok": enc(value), "out": out.getvalue(), "back": back})
        except BaseException as e:
            sys.stdout, sys.stdin = old_out, old_in
            reply = raised(e)
            reply["out"] = out.getvalue()
        flush()
        send(reply)
_serve()
'''

# The tests' process: the bootstrap's parent half. Reads the job, makes itself undumpable, sets the rlimits,
# then hands RUNNER and the solution to the solution's process (or, for stdin/stdout cases, starts the
# program afresh per case) and runs the tests against proxies. Only this process holds the reporting pipe,
# the nonce and the test code.
HARNESS = r'''
import json, os, sys
def _main():
    import builtins, ctypes, importlib, resource, time
    chan = int(sys.argv[1])
    os.set_inheritable(chan, False)
    job = JOB
    nonce = job["nonce"]
    def report(event, **kw):
        kw.update(event=event, nonce=nonce)
        try:
            os.write(chan, (json.dumps(kw) + "\n").encode())
        except Exception:
            pass
    def leave(code):
        for s in (sys.stdout, sys.stderr):
            try:
                s.flush()
            except Exception:
                pass
        os._exit(code)
    # Before any untrusted line exists: no same-uid ptrace, /proc/<pid>/mem, fd or environ of this process.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(4, 0, 0, 0, 0) != 0 or libc.prctl(3, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE, PR_GET_DUMPABLE
        report("harness_error", message=f"prctl(PR_SET_DUMPABLE, 0) failed: errno {ctypes.get_errno()}")
        leave(6)
    lim = job["limits"]
    mb = 1 << 20
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (lim["memory_mb"] * mb, lim["memory_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_mb"] * mb, lim["file_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["nofile"], lim["nofile"]))
    sys.stdin = devnull_in = open(os.devnull)
    cases = job.get("cases")
    try:
        tests = compile(job["tests"], "tests.py", "exec") if cases is None else None
    except BaseException as e:
        report("tests_invalid", error=type(e).__name__, message=str(e)[:300])
        leave(2)
    compiled = job.pop("tag", None) == sys.implementation.cache_tag
    code, runner, runner_bin = job.pop("solution"), job.pop("runner"), job.pop("runner_bin", None)
    runner = {"bin": runner_bin} if compiled and runner_bin else {"src": runner}
    del job
    exe, max_reply, max_out = sys.executable, lim["reply_bytes"], lim["output_bytes"]

    class Ended(BaseException):
        """The solution process is gone (or broke the protocol): ends the tests, whatever they catch."""
        def __init__(self, event, **info):
            super().__init__(event)
            self.event, self.info = event, info

    req_w, rep_r, runner_pid = CALL  # the solution's process-to-be, split off by the bootstrap

    def ended(phase):
        for _ in range(100):
            done, status = os.waitpid(runner_pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.01)
        else:
            os.kill(runner_pid, 9)
            os.waitpid(runner_pid, 0)
            return Ended("solution_error", phase=phase, error="ProtocolError",
                         message="the solution closed its side of the call pipe")
        if os.WIFSIGNALED(status):
            return Ended("solution_died", phase=phase, signal=os.WTERMSIG(status))
        return Ended("exited_early", phase=phase, code=str(os.waitstatus_to_exitcode(status)))

    # ---- stdin/stdout programs: the whole solution, run afresh per case; its output judged here ----
    if cases is not None:
        import selectors, subprocess
        os.close(req_w)  # the bootstrap's runner is not needed: it ends at the closed pipe
        report("start")
        norm = lambda s: [ln.rstrip() for ln in s.rstrip().splitlines()]
        for i, case in enumerate(cases):
            src_r, src_w = os.pipe()
            proc = subprocess.Popen([exe, "-I", "-c", BOOT_PROGRAM, str(src_r)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(src_r,),
                                    close_fds=True, cwd="/tmp")
            os.close(src_r)
            with open(src_w, "wb") as f:  # read whole by the child before it runs a line of it
                f.write(code.encode())
            out, err = bytearray(), bytearray()
            pending = case["input"].encode()
            sel = selectors.DefaultSelector()
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdout, selectors.EVENT_READ, out)
            sel.register(proc.stderr, selectors.EVENT_READ, err)
            if pending:
                sel.register(proc.stdin, selectors.EVENT_WRITE, None)
            else:
                proc.stdin.close()
            while sel.get_map():
                for key, _ in sel.select():
                    if key.data is None:
                        try:
                            pending = pending[os.write(key.fd, pending[:65536]):]
                        except BlockingIOError:
                            continue
                        except OSError:
                            pending = b""
                        if not pending:
                            sel.unregister(key.fileobj)
                            key.fileobj.close()
                        continue
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    key.data.extend(chunk)
                    if len(out) + len(err) > max_out:
                        proc.kill()
                        report("output_exceeded", phase="tests", case=i)
                        leave(5)
            rc = proc.wait()
            sys.stdout.write(out[-4000:].decode(errors="replace"))
            sys.stderr.write(err[-4000:].decode(errors="replace"))
            if rc < 0:
                report("solution_died", phase="tests", case=i, signal=-rc)
                leave(5)
            if rc != 0:
                report("solution_error", case=i, error=f"exit status {rc}",
                       message=err[-300:].decode(errors="replace"), traceback=err[-1500:].decode(errors="replace"))
                leave(3)
            got = out.decode(errors="replace")
            if norm(got) != norm(case["output"]):
                report("test_failed", case=i, error="WrongAnswer",
                       message=f"case {i}: expected {case['output'][:120]!r}, got {got[:120]!r}")
                leave(1)
        report("tests_passed")
        leave(0)

    # ---- functions and classes: called across the process boundary, by value ----
    report("start")
    os.write(req_w, (json.dumps(runner) + "\n").encode())
    del runner
    rd = os.fdopen(rep_r, "rb", buffering=1 << 16)
    dead = []

    class SolutionError(Exception):
        """What the solution sent back cannot be used (not a plain value, or not the protocol)."""

    def ask(msg, phase="tests"):
        if dead:
            raise dead[0]
        data = (json.dumps(msg) + "\n").encode()
        try:
            while data:
                data = data[os.write(req_w, data):]
        except OSError:
            pass
        line = rd.readline(max_reply + 1)
        if not line.endswith(b"\n"):
            if len(line) > max_reply:
                os.kill(runner_pid, 9)
                dead.append(SolutionError(f"the solution's reply is longer than {max_reply} bytes"))
                raise dead[0]
            dead.append(ended(phase))
            raise dead[0]
        try:
            reply = json.loads(line)
        except (ValueError, RecursionError):
            raise SolutionError("the solution's reply is not JSON") from None
        if type(reply) is not dict:
            raise SolutionError("the solution's reply is not a JSON object")
        return reply

    proxies, classes = {}, {}
    # standard-library modules with effects at import (or this process's own namespace): never imported here
    NO_IMPORT = {"__main__", "antigravity", "this", "__hello__", "__phello__", "idlelib", "tkinter", "turtle",
                 "turtledemo", "webbrowser", "pydoc", "site", "ensurepip", "venv", "pdb", "code"}
    SCALARS = (type(None), bool, int, str)

    def enc(x):
        t = type(x)
        if t in SCALARS:
            return x
        if t is float:
            return x if x - x == 0 else {"$": "float", "v": repr(x)}
        if t is list:
            return [enc(i) for i in x]
        if t in (tuple, set, frozenset):
            return {"$": t.__name__, "v": [enc(i) for i in x]}
        if t is dict:
            return {"$": "dict", "v": [[enc(k), enc(v)] for k, v in x.items()]}
        if t in (bytes, bytearray):
            return {"$": t.__name__, "v": x.hex()}
        if t is complex:
            return {"$": "complex", "v": [x.real, x.imag]}
        if t is range:
            return {"$": "range", "v": [x.start, x.stop, x.step]}
        if isinstance(x, RemoteClass):
            return {"$": "ref", "id": x._cid}
        if isinstance(x, (Proxy, Fn, Iter)):
            return {"$": "ref", "id": object.__getattribute__(x, "_id")}
        raise TypeError(f"cannot pass a {t.__name__} to the solution: calls cross a process boundary by value "
                        f"(plain data: None, bool, int, float, complex, str, bytes, list, tuple, dict, set, range)")

    # What a reply may hold, by where it comes from. VALUES: a function's result (plain data; a returned
    # function or iterator yields plain data too). OBJECTS: what a class builds, what an object's item or
    # iterator gives, and the exports: solution objects too. METHODS: an attribute, where a bound method
    # may return objects.
    VALUES, OBJECTS, METHODS = 0, 1, 2

    def dec(x, objects):
        t = type(x)
        if t in SCALARS or t is float:
            return x
        if t is list:
            return [dec(i, objects) for i in x]
        if t is not dict:
            raise SolutionError(f"a {t.__name__} in the reply")
        tag, v = x.get("$"), x.get("v")
        if tag == "ref":
            return proxy(x, objects)
        if tag == "dict":
            out = {}
            for pair in v:
                k, val = pair
                out[dec(k, objects)] = dec(val, objects)
            return out
        if tag in ("tuple", "set", "frozenset"):
            return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](dec(i, objects) for i in v)
        if tag in ("bytes", "bytearray"):
            return {"bytes": bytes, "bytearray": bytearray}[tag].fromhex(v)
        if tag == "float" and v in ("nan", "inf", "-inf"):
            return float(v)
        if tag == "complex" and all(type(i) in (int, float) for i in v):
            return complex(*v)
        if tag == "range" and all(type(i) is int for i in v):
            return range(*v)
        raise SolutionError(f"unknown value tag {tag!r} in the reply")

    def proxy(x, objects):
        k, i, name = x.get("k"), x.get("id"), str(x.get("t"))[:100]
        if type(i) is not int:
            raise SolutionError("a reference without an id")
        if k == "fn":
            return Fn(i, name, OBJECTS if objects == METHODS else VALUES)
        if k == "iter":
            return Iter(i, OBJECTS if objects else VALUES)
        if not objects:
            raise SolutionError(f"the solution returned a {name!r} object, not a plain value: results cross a "
                                f"process boundary by value (None, bool, int, float, str, list, tuple, dict, ...)")
        if k == "cls":
            return remote_class(i, name, x.get("exc"))
        if i not in proxies:
            cls = classes.get(x.get("c"))
            p = object.__new__(cls if isinstance(cls, RemoteClass) else Proxy)
            object.__setattr__(p, "_id", i)
            proxies[i] = p
        return proxies[i]

    def remote_class(i, name, exc):
        if i not in classes:
            base = getattr(builtins, exc, None) if exc else None
            if isinstance(base, type) and issubclass(base, Exception):
                # a solution-defined exception: a local class, so that `except TheirError` works
                classes[i] = type(name, (base,), {"__module__": "solution"})
            else:
                classes[i] = RemoteClass(name, (Proxy,), {"_cid": i, "__module__": "solution"})
        return classes[i]

    def call(i, op, args, kwargs, objects):
        stdin = sys.stdin.read() if sys.stdin is not devnull_in else None
        reply = ask({"op": op, "id": i, "args": [enc(a) for a in args],
                     "kwargs": [[str(k), enc(v)] for k, v in kwargs.items()], "stdin": stdin})
        if type(reply.get("out")) is str and reply["out"]:
            sys.stdout.write(reply["out"])
        if "raised" in reply:
            raise exception(reply["raised"])
        if "ok" not in reply:
            raise SolutionError("the solution's reply has neither a value nor an exception")
        try:
            value = dec(reply["ok"], objects)
            back = reply.get("back") or []
            for a, b in zip(list(args) + list(kwargs.values()), back):
                if b is None:
                    continue
                b = dec(b, objects)
                if type(a) is not type(b):
                    raise SolutionError("an argument came back as another type")
                if type(a) in (list, bytearray):
                    a[:] = b
                else:
                    a.clear()
                    a.update(b)
        except SolutionError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
            raise SolutionError(f"the solution's reply is malformed ({type(e).__name__}: {e})") from None
        return value

    def exception(info):
        info = info if type(info) is dict else {}
        msg = str(info.get("message", ""))[:1000]
        found = classes.get(info.get("cid"))
        names = info.get("types") if type(info.get("types")) is list else []
        candidates = [found] + [getattr(builtins, str(n), None) for n in names[:64]] + [SolutionError]
        for cls in candidates:
            if isinstance(cls, type) and issubclass(cls, Exception):
                try:
                    e = cls(msg)  # some builtin exceptions take other arguments: then the next base
                    break
                except Exception:
                    pass
        if hasattr(e, "add_note"):
            e.add_note(f"(raised in the solution process as {str(info.get('t'))[:100]})\n"
                       + str(info.get("traceback", ""))[-1500:])
        return e

    def refuse(*_):
        raise TypeError("a solution object is compared with something else: compare plain values "
                        "(attributes, or what its methods return)")

    class Proxy:
        """A solution object, reached only through calls; its comparisons are never asked of the solution."""
        __slots__ = ("_id",)
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return call(self._id, "getattr", (name,), {}, METHODS)
        def __setattr__(self, name, value):
            call(self._id, "setattr", (name, value), {}, VALUES)
        def __delattr__(self, name):
            call(self._id, "delattr", (name,), {}, VALUES)
        def __call__(self, *a, **k):
            return call(self._id, "call", a, k, VALUES)
        def __len__(self):
            return call(self._id, "len", (), {}, VALUES)
        def __bool__(self):
            return call(self._id, "bool", (), {}, VALUES)
        def __iter__(self):
            return call(self._id, "iter", (), {}, OBJECTS)
        def __contains__(self, k):
            return call(self._id, "contains", (k,), {}, VALUES)
        def __getitem__(self, k):
            return call(self._id, "getitem", (k,), {}, OBJECTS)
        def __setitem__(self, k, v):
            call(self._id, "setitem", (k, v), {}, VALUES)
        def __delitem__(self, k):
            call(self._id, "delitem", (k,), {}, VALUES)
        def __str__(self):
            return call(self._id, "str", (), {}, VALUES)
        def __repr__(self):
            return call(self._id, "repr", (), {}, VALUES)
        def __eq__(self, other):
            if isinstance(other, (Proxy, Fn, Iter, RemoteClass)):
                return self is other
            refuse()
        def __ne__(self, other):
            return not self.__eq__(other)
        __lt__ = __le__ = __gt__ = __ge__ = refuse
        __hash__ = object.__hash__

    class RemoteClass(type):
        """A solution class: calling it builds the object in the solution process."""
        def __call__(cls, *a, **k):
            return call(cls._cid, "call", a, k, OBJECTS)
        def __getattr__(cls, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return call(cls._cid, "getattr", (name,), {}, METHODS)
        def __repr__(cls):
            return f"<solution class {cls.__name__}>"

    class Fn:
        """A solution function: arguments go over by value, the result comes back by value."""
        __slots__ = ("_id", "__name__", "_objects")
        def __init__(self, i, name, objects):
            self._id, self.__name__, self._objects = i, name, objects
        def __call__(self, *a, **k):
            return call(self._id, "call", a, k, self._objects)
        def __repr__(self):
            return f"<solution function {self.__name__}>"

    class Iter:
        """A solution iterator (a generator, say): each next() is one call."""
        __slots__ = ("_id", "_objects")
        def __init__(self, i, objects):
            self._id, self._objects = i, objects
        def __iter__(self):
            return self
        def __next__(self):
            return call(self._id, "next", (), {}, self._objects)

    # -- load the solution, then run the tests against what it exports --
    try:
        reply = ask({"code": code, "limits": lim}, phase="solution")
        del code
        if "exit" in reply:
            report("exited_early", phase="solution", code=str(reply["exit"])[:100])
            leave(4)
        if "raised" in reply:
            e = reply["raised"] if type(reply["raised"]) is dict else {}
            report("solution_error", error=str(e.get("t"))[:100], message=str(e.get("message", ""))[:300],
                   traceback=str(e.get("traceback", ""))[-1500:])
            leave(3)
        exports = reply.get("loaded")
        if type(exports) is not dict:
            raise SolutionError("the solution's first reply is not its exports")
        # The tests run as this process's __main__ module, so that unittest.main() finds their TestCases.
        main = type(sys)("__main__")
        main.__builtins__ = builtins
        sys.modules["__main__"] = main
        sys.argv = ["tests.py"]  # not the channel's fd number, which unittest.main() would take for a test name
        ns = main.__dict__
        for name, x in exports.items():
            # A builtin's name keeps the builtin: `sorted = lambda xs: wrong` must not become the tests' sorted.
            if type(name) is not str or name.startswith("__") or hasattr(builtins, name):
                continue
            if type(x) is dict and x.get("$") == "module":
                # a module the solution imported: the tests get the real one, imported here (standard library only)
                top = str(x.get("v")).partition(".")[0]
                if top in getattr(sys, "stdlib_module_names", ()) and top not in NO_IMPORT:
                    try:
                        ns[name] = importlib.import_module(str(x["v"]))
                    except Exception:
                        pass
                continue
            ns[name] = dec(x, OBJECTS)
    except Ended as e:
        report(e.event, **e.info)
        leave(4)
    except Exception as e:
        report("solution_error", error="ProtocolError", message=f"{type(e).__name__}: {e}"[:300])
        leave(3)
    report("solution_done")
    try:
        exec(tests, ns)
    except Ended as e:
        report(e.event, **e.info)
        leave(5)
    except SystemExit as e:
        # Only the tests can raise it here (a solution's exception arrives as an Exception): it is their
        # verdict, as unittest.main() gives it -- 0 or None all passed.
        if e.code not in (0, None):
            report("test_failed", error="SystemExit", message=f"the tests exited with status {str(e.code)[:100]}")
            leave(1)
    except BaseException as e:
        import traceback  # here, not at start-up: passing runs never need it
        report("test_failed", error=type(e).__name__, message=str(e)[:300],
               traceback="".join(traceback.format_exception(e))[-1500:])
        leave(1)
    report("tests_passed")
    leave(0)
_main()
'''

# The sandbox's program: a short bootstrap (the long sources come on stdin and the pipe, so the command lines
# every sandboxed process can read in /proc stay short). It splits off the solution's process first, while
# it has read nothing of the job: that child keeps only /dev/null, stdout, stderr and its two call pipes,
# and waits for RUNNER on the pipe. Then the parent reads the job and becomes the tests' process (HARNESS).
BOOT_HARNESS = """import json, marshal, os, sys
req_r, req_w = os.pipe()
rep_r, rep_w = os.pipe()
pid = os.fork()
if pid == 0:
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd in [int(f) for f in os.listdir("/proc/self/fd")]:
        if fd > 2 and fd not in (req_r, rep_w):
            try:
                os.close(fd)
            except OSError:
                pass
    RD, WR = os.fdopen(req_r, "rb", buffering=1 << 16), rep_w
    sys.argv = ["-c"]
    line = RD.readline()
    if line:  # none when the tests need no solution process (stdin/stdout cases)
        m = json.loads(line)
        exec(marshal.loads(bytes.fromhex(m["bin"])) if "bin" in m else m["src"])
    os._exit(0)
os.close(req_r)
os.close(rep_w)
CALL = (req_w, rep_r, pid)
JOB = json.loads(sys.stdin.buffer.read())
# the host's compiled code when this interpreter reads the same bytecode, else the source
BIN, SRC = JOB.pop("harness_bin", None), JOB.pop("harness")
exec(marshal.loads(bytes.fromhex(BIN)) if BIN and JOB.get("tag") == sys.implementation.cache_tag else SRC)
"""
BOOT_PROGRAM = ("import os, sys; f = os.fdopen(int(sys.argv.pop(1)), 'rb'); src = f.read(); f.close(); "
                "exec(compile(src, 'solution.py', 'exec'), {'__name__': '__main__', '__builtins__': __builtins__})")
HARNESS = HARNESS.replace("BOOT_PROGRAM", repr(BOOT_PROGRAM))
# Compiled once here and sent as marshal data, used where the sandbox's interpreter has the same bytecode
# (its cache_tag): saves compiling ~25 kB of source in every sandbox.
_TAG = sys.implementation.cache_tag
_HARNESS_BIN, _RUNNER_BIN = (marshal.dumps(compile(src, name, "exec", dont_inherit=True)).hex()
                             for src, name in ((HARNESS, "<harness>"), (RUNNER, "<runner>")))


def extract_code(completion: str, block: str = "first") -> str:
    """The completion's ``first`` (or ``last``) fenced Python code block, or the whole completion."""
    blocks = _FENCE.findall(completion)
    if not blocks:
        return completion
    return blocks[0] if block == "first" else blocks[-1]


def reference_tests(reference) -> dict | str:
    """The job's test part from an item's reference -- ``{"tests": code}`` for Python test code, ``{"cases":
    [{"input", "output"}, ...]}`` for stdin/stdout cases -- or, as a string, why the reference is unusable."""
    if isinstance(reference, str) and reference.strip():
        return {"tests": reference}
    if isinstance(reference, list) and reference and all(
            isinstance(c, dict) and isinstance(c.get("input"), str) and isinstance(c.get("output"), str)
            for c in reference):
        return {"cases": [{"input": c["input"], "output": c["output"]} for c in reference]}
    return ("reference must be Python test code (e.g. asserts) as a string, or stdin/stdout cases: "
            "a non-empty list of {\"input\": str, \"output\": str}")


def verdict(run: sandbox.Run, nonce: str, limits: sandbox.Limits) -> tuple[str, dict]:
    """Status and details of one sandboxed run, from the harness's nonce-tagged reports and the exit."""
    events = []
    for line in run.channel.decode(errors="replace").splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict) and ev.get("nonce") == nonce:
            ev.pop("nonce")
            events.append(ev)
    names = [e.get("event") for e in events]
    details = {"exit_code": run.exit_code, "wall_s": round(run.wall_s, 3),
               "stdout": run.stdout[-2000:].decode(errors="replace"),
               "stderr": run.stderr[-2000:].decode(errors="replace"), "events": names}
    if run.notes:
        details["notes"] = run.notes
    last = events[-1] if events else {}
    for k in ("error", "message", "traceback", "phase", "code", "case"):
        if k in last:
            details[k] = last[k]
    if "tests_invalid" in names:
        return ERROR, {**details, "reason": "the reference's test code does not compile"}
    if "harness_error" in names:
        return INFRA_ERROR, {**details, "reason": "the test harness could not isolate itself: "
                                                  + str(last.get("message", ""))}
    if "start" not in names:
        if run.wall_timeout:
            return TIMEOUT, {**details, "reason": "wall-clock limit before the program started"}
        return INFRA_ERROR, {**details, "reason": "the sandbox did not start the program"}
    if run.output_exceeded:
        return RUNTIME_ERROR, {**details, "reason": f"output limit of {limits.output_bytes} bytes exceeded"}
    if "tests_passed" in names:
        return PASS, details
    if "test_failed" in names:
        return FAIL, {**details, "reason": "a test failed"}
    if run.memory_limit_hit:
        # Before the wall clock: the cgroup's OOM killer may take only some of the tree (a forked child)
        # and leave the rest sleeping into the wall-clock limit; the program still broke its memory limit.
        return RUNTIME_ERROR, {**details, "reason": "memory limit"}
    if run.wall_timeout:
        return TIMEOUT, {**details, "reason": f"wall-clock limit of {limits.wall_s:g} s"}
    died = next((e for e in events if e.get("event") == "solution_died"), None)
    if died is not None:
        details["signal"] = died.get("signal")
        if died.get("signal") in (24, 9):  # SIGXCPU at the soft CPU limit, SIGKILL at the hard one
            return TIMEOUT, {**details, "reason": f"CPU limit of {limits.cpu_s} s"}
        return RUNTIME_ERROR, {**details, "reason": f"the solution died of signal {died.get('signal')}"}
    if run.signal == 24:  # the tests' own process at its CPU limit (SIGXCPU; it never ignores it)
        return TIMEOUT, {**details, "reason": f"CPU limit of {limits.cpu_s} s"}
    if "output_exceeded" in names:
        return RUNTIME_ERROR, {**details, "reason": f"output limit of {limits.output_bytes} bytes exceeded"}
    if "exited_early" in names or "solution_error" in names:
        reason = "exited before the tests finished" if "exited_early" in names else "the solution raised"
        return RUNTIME_ERROR, {**details, "reason": reason}
    return RUNTIME_ERROR, {**details, "reason": "the program ended before the tests finished"
                                                 + (f" (signal {run.signal})" if run.signal else "")}


class PythonUnitTestScorer:
    """1.0 if the completion's code passes the reference's tests in the sandbox (see module docstring).

    Options: ``python`` (interpreter inside the sandbox), ``extra_ro`` (more read-only paths, e.g. a
    virtualenv with numpy), ``block`` ("first" | "last" fenced block), ``workers`` (sandboxes at once),
    ``max_code_chars``, ``reply_bytes`` (the longest reply the solution's process may send: its top-level
    data, or one call's result), and any field of :class:`rewards.sandbox.Limits` (``cpu_s``, ``wall_s``,
    ``memory_mb``, ...), which declares the limits and their defaults once for every sandboxed program.
    """

    name = "python_unit_tests"
    supports_deadline = True

    def __init__(self, python: str = "/usr/bin/python3", extra_ro: list | None = None, block: str = "first",
                 workers: int = 2, max_code_chars: int = 65536, reply_bytes: int = 4 << 20,
                 name: str = "python_unit_tests", **limits):
        if block not in ("first", "last"):
            raise ValueError(f"python_unit_tests option block={block!r}: use 'first' or 'last'")
        if workers < 1:
            raise ValueError("python_unit_tests option workers must be >= 1")
        self.python, self.extra_ro, self.block, self.workers = python, list(extra_ro or []), block, workers
        self.max_code_chars, self.reply_bytes, self.name = max_code_chars, reply_bytes, name
        self.limits = sandbox.Limits(**limits)  # an unknown option is a TypeError that names it
        self._slots = threading.BoundedSemaphore(self.workers)

    def score(self, items: list[Item], deadline: float | None = None) -> list[Result]:
        with ThreadPoolExecutor(max_workers=min(self.workers, max(1, len(items)))) as pool:
            return list(pool.map(lambda it: self._one(it, deadline), items))

    def _one(self, item: Item, deadline: float | None) -> Result:
        if not isinstance(item.completion, str):
            return Result(None, ERROR, {"reason": "completion is not a string"})
        tests = reference_tests(item.reference)
        if isinstance(tests, str):
            return Result(None, ERROR, {"reason": tests})
        code = extract_code(item.completion, self.block)
        if len(code) + sum(map(len, map(str, tests.values()))) > self.max_code_chars:
            return Result(None, ERROR, {"reason": f"code plus tests longer than max_code_chars={self.max_code_chars}"})
        with self._slots:
            if deadline is not None and time.monotonic() >= deadline - 0.05:
                return Result(None, TIMEOUT, {"reason": "deadline passed before the program could run"})
            nonce = secrets.token_hex(16)
            job = json.dumps({"nonce": nonce, "solution": code, **tests, "harness": HARNESS, "runner": RUNNER,
                              "harness_bin": _HARNESS_BIN, "runner_bin": _RUNNER_BIN, "tag": _TAG,
                              "limits": {"cpu_s": self.limits.cpu_s, "memory_mb": self.limits.memory_mb,
                                         "file_mb": self.limits.file_mb, "nofile": self.limits.nofile,
                                         "output_bytes": self.limits.output_bytes,
                                         "reply_bytes": self.reply_bytes}}).encode()
            try:
                run = sandbox.run([self.python, "-I", "-c", BOOT_HARNESS, "{channel_fd}"], job, self.limits,
                                  extra_ro=self.extra_ro, deadline=deadline)
            except sandbox.SandboxUnavailable as e:
                return Result(None, INFRA_ERROR, {"reason": f"sandbox unavailable, code not run: {e}"})
            except OSError as e:
                return Result(None, INFRA_ERROR, {"reason": f"sandbox failed to start, code not run: {e}"})
        status, details = verdict(run, nonce, self.limits)
        if status == TIMEOUT and deadline is not None and time.monotonic() >= deadline - 0.01 \
                and run.wall_s < self.limits.wall_s - 0.05:
            # cut short by the caller's deadline, not by the program's own wall limit: no verdict
            return Result(None, TIMEOUT, {**details, "reason": "request deadline reached while the program ran"})
        score = {PASS: 1.0, FAIL: 0.0, RUNTIME_ERROR: 0.0, TIMEOUT: 0.0}.get(status)
        return Result(score, status, details)
