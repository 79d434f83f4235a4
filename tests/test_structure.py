"""The shape of the code base: no import cycle between our modules.

A cycle (a imports b, b imports a, perhaps through others) makes the import order matter, hides
behind imports moved into functions, and means neither module can be read or changed alone. The
graph counts every import our modules write -- at the top, under ``TYPE_CHECKING`` and inside
functions alike -- since a lazy import is the usual way a cycle gets hidden rather than broken.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The packages the project installs (pyproject.toml, [tool.setuptools.packages.find]).
PACKAGES = ("config", "cluster", "actors", "rewards", "learners", "pipelines", "tinymodels", "runlog",
            "tasks", "datapipe", "evalpanel", "llm_continual", "classic_rl", "continual", "bench", "envs")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def our_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules[module_name(path)] = path
    return modules


def imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ours that ``node`` (an import statement inside ``module``) names.

    ``from a.b import c`` names ``a.b.c`` when that is a module of ours, else ``a.b``; a relative import
    is resolved against ``module``'s package. Importing a submodule runs its packages' ``__init__`` too,
    but those edges are left out: a package that re-exports its submodules would otherwise form a
    "cycle" with every submodule that imports a sibling, which Python handles without trouble."""
    targets: list[str] = []
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            targets.append(sub if sub in known else base)
    found = set()
    for target in targets:
        # `import a.b.c` with only `a.b` ours still names a.b (the longest prefix that is a module of ours).
        parts = target.split(".")
        while parts and ".".join(parts) not in known:
            parts.pop()
        if parts:
            found.add(".".join(parts))
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = our_modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= imported(node, name, path.name == "__init__.py", known)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_graph_sees_real_imports():
    # The check below could pass by reading nothing; these edges are known to exist.
    graph = import_graph()
    assert "continual.hooks" in graph["continual.loop"]
    assert "continual.learner" in graph["continual.hooks"]
    assert len(graph) > 100


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    found = cycles(import_graph())
    assert found == [], "import cycles between our modules (break each by moving what both sides need " \
                        "to a module both can import):\n" + "\n".join(" <-> ".join(c) for c in found)


def test_environments_stand_on_config_and_rewards_only():
    """DESIGN.md: envs/ (multi-turn environments, tools) may import rewards (the sandbox) and config, nothing else of
    ours -- the rollout role imports it, so it must not reach back into actors, learners or pipelines."""
    graph = import_graph()
    envs = {m: deps for m, deps in graph.items() if m == "envs" or m.startswith("envs.")}
    assert "envs.registry" in envs
    bad = {m: sorted(d for d in deps if d.split(".")[0] not in ("envs", "config", "rewards")) for m, deps in envs.items()}
    assert not any(bad.values()), bad
