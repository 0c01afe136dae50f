"""The import rules of the layout: losses imports nothing of ours, datasets neither models nor losses, models not
the engine, no module imports itself back through others (imports inside functions included), and inside
detection/ each subpackage imports only its own layer and the layers below it (``DETECTION_LAYERS``)."""
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

# detection/'s rooms, lowest first: a module may import its own layer and those below, never one above. The
# package itself (detection/__init__.py: the datasets-name check and the load_model shortcut) is outside the
# order: every module's import of a sibling passes through it.
DETECTION_LAYERS = (
    ("runtime",),  # dist, batch / autocast, stop signals
    ("config",),  # loader, validation, schema
    ("builders",),  # data, model, weighting, optimizer, schedule from a config
    ("evaluation",),  # VOC / COCO metrics, bootstrap, the evaluation runner
    ("checkpoint",),  # files, the state of a run, resume, init_from, convert, recovery
    ("training",),  # trainer, guard, hooks, evaluation hook, work dir
    ("tools",),  # inference, predict, pictures, data checks, pretraining, TensorBoard
    ("engine", "cli"),  # train / evaluate entry points; the command lines' shared helpers
    ("experiments",),  # paper tables, comparisons, plots
)


def detection_layer(module):
    """The layer index of a module of detection/ (None for the package itself)."""
    parts = module.split(".")
    if parts[0] != "detection" or len(parts) == 1:
        return None
    for i, names in enumerate(DETECTION_LAYERS):
        if parts[1] in names:
            return i
    raise AssertionError(f"{module} is in no layer of DETECTION_LAYERS: add its room there")


def upward_imports(graph):
    """{module of detection/: the modules of a higher layer it imports}."""
    bad = {}
    for m, targets in graph.items():
        own = detection_layer(m)
        if own is None:
            continue
        up = sorted(t for t in targets if (detection_layer(t) or 0) > own)
        if up:
            bad[m] = up
    return bad


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


def test_every_detection_module_has_a_layer_and_none_imports_upward():
    rooms = {m.split(".")[1] for m in GRAPH if m.startswith("detection.")}
    assert {"runtime", "config", "checkpoint", "training", "evaluation", "tools"} <= rooms
    assert all(detection_layer(m) is not None for m in GRAPH if m.startswith("detection."))
    assert not upward_imports(GRAPH), f"imports of a higher layer: {upward_imports(GRAPH)}"


def test_the_top_level_of_detection_holds_only_the_engine_the_builders_and_the_cli():
    top = {os.path.splitext(f)[0] for f in os.listdir(os.path.join(REPO, "detection")) if f.endswith(".py")}
    assert top == {"__init__", "engine", "builders", "cli"}


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
    layered = {"detection.runtime.dist": {"detection.training.trainer"}, "detection.training.trainer":
               {"detection.runtime.dist", "detection"}, "detection.engine": {"detection.tools.predict"}}
    assert upward_imports(layered) == {"detection.runtime.dist": ["detection.training.trainer"]}
