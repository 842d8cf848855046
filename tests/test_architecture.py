"""The house's rules, checked on the source: imports go down the floors and never in a circle, the
readable layers know nothing of the fast path, and no room is too big to read in one sitting."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "npcnn"
MAX_LINES = 400


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name):
    """The npcnn modules ``name`` imports, anywhere in its file (function-level imports included):
    ``from .. import kernels`` counts as importing npcnn.kernels, not the package above."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "npcnn")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = ".".join(base[:len(base) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.split(".")[0] != "npcnn":
                continue
            for a in node.names:               # `from pkg import submodule` imports the submodule
                sub = f"{target}.{a.name}"
                found.add(sub if sub in MODULES else target)
    # importing a.b.c runs a and a.b first; those are the package doors, not arrows between rooms
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def find_cycle(graph):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_walker_sees_imports_and_cycles():
    assert "npcnn.kernels" in GRAPH["npcnn.nn.conv"]          # `from .. import kernels`
    assert "npcnn.nn.module" in GRAPH["npcnn.nn.conv"]        # `from .module import ...`
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_modules():
    # A module runs its parent packages' __init__ first whatever it imports, so an edge from a module to
    # one of its own parent packages is not an arrow between rooms; every other edge counts, the package
    # doors (npcnn/fast/__init__.py holds FastSequential) included.
    def parents(name):
        parts = name.split(".")
        return {".".join(parts[:k]) for k in range(1, len(parts))}

    graph = {m: {d for d in deps if d not in parents(m)} for m, deps in GRAPH.items()}
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_readable_layers_know_nothing_of_the_fast_path():
    for name, deps in GRAPH.items():
        if name.startswith("npcnn.nn"):
            assert not any(d.startswith("npcnn.fast") for d in deps), (name, deps)


def test_the_pipeline_does_not_go_through_the_command_line():
    assert not any(d.startswith("npcnn.cli") for d in GRAPH["npcnn.pipeline"]), GRAPH["npcnn.pipeline"]


def test_only_the_kernels_and_their_threading_import_numba():
    allowed = ("npcnn.kernels", "npcnn.blas", "npcnn.parallel")
    users = [name for name, path in MODULES.items()
             if any(isinstance(n, (ast.Import, ast.ImportFrom)) and
                    ("numba" in [a.name.split(".")[0] for a in n.names] if isinstance(n, ast.Import)
                     else (n.module or "").split(".")[0] == "numba")
                    for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))))]
    assert [u for u in users if not u.startswith(allowed)] == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_room_too_big_to_read(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines (at most {MAX_LINES})"
