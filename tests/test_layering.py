"""The import rules of the layout: losses imports nothing of ours, datasets neither models nor losses, models not
the engine, and no module imports itself back through others (imports inside functions included)."""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("losses", "models", "datasets", "detection")
# package -> our packages it must not import
FORBIDDEN = {"losses": {"models", "datasets", "detection"}, "datasets": {"models", "losses", "detection"},
             "models": {"detection", "datasets"}}


def _module_name(path):
    rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _modules():
    found = {}
    for pkg in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO, pkg)):
            for f in files:
                if f.endswith(".py"):
                    found[_module_name(os.path.join(folder, f))] = os.path.join(folder, f)
    return found


MODULES = _modules()


def _imports(name, path):
    """Our modules that ``name`` imports anywhere in its file (a package import counts as its __init__)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:  # "from a.b import C": the module a.b
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_the_layout_is_found():
    assert {"losses.weighting.alwa", "models.head_loss", "models.contract", "detection.engine",
            "detection.experiments.compare", "datasets.voc"} <= set(GRAPH)


def violations(graph, pkg):
    """{module of ``pkg``: the forbidden modules it imports}."""
    bad = {m: sorted(t for t in targets if t.split(".")[0] in FORBIDDEN[pkg])
           for m, targets in graph.items() if m.split(".")[0] == pkg}
    return {m: t for m, t in bad.items() if t}


def find_cycles(graph):
    """Cycles of a {module: imported modules} graph, each as the list of modules round it."""
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return cycles


@pytest.mark.parametrize("pkg", sorted(FORBIDDEN))
def test_forbidden_imports(pkg):
    assert not violations(GRAPH, pkg), f"{pkg} must not import {sorted(FORBIDDEN[pkg])}"


def test_no_import_cycles():
    # a package's __init__ re-exporting its submodules, and those importing siblings through it, is not a cycle
    graph = {m: {t for t in ts if not (MODULES[t].endswith("__init__.py") and m.startswith(t + "."))
                 and not (MODULES[m].endswith("__init__.py") and t.startswith(m + "."))}
             for m, ts in GRAPH.items()}
    assert not find_cycles(graph), f"import cycles: {find_cycles(graph)}"


def test_the_checks_catch_violations_on_a_hand_made_graph():
    graph = {"losses.x": {"models.y"}, "models.y": {"models.z"}, "models.z": {"models.y"}, "datasets.a": set()}
    assert violations(graph, "losses") == {"losses.x": ["models.y"]}
    assert violations(graph, "datasets") == {}
    assert find_cycles(graph) == [["models.y", "models.z", "models.y"]]
