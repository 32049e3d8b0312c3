"""The package's modules import each other without cycles, counting imports inside functions too.

A cycle works in Python only as long as nothing on it is used at import time, and it makes the
modules on it one unit that cannot be read, tested or moved apart; this reads every import with
`ast` rather than importing anything.
"""
import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("keras_cnn", "keras_cnn.tuning")
FOLDERS = {"keras_cnn": "keras_cnn", "tuning": "keras_cnn.tuning"}  # tuning/ installs as keras_cnn.tuning


def module_files(root=REPO):
    """{module name: file} of every module in the packages of the checkout `root` (a package is its __init__.py)."""
    modules = {}
    for top, package in FOLDERS.items():
        for folder, _, files in os.walk(os.path.join(root, top)):
            for name in files:
                if name.endswith(".py"):
                    parts = os.path.relpath(os.path.join(folder, name), os.path.join(root, top))[:-3].split(os.sep)
                    parts = [package] + (parts[:-1] if parts[-1] == "__init__" else parts)
                    modules[".".join(parts)] = os.path.join(folder, name)
    return modules


def imported(tree, module, known):
    """The package modules that `tree` (module `module`'s source) imports, wherever the import statement is.

    `from package import name` counts as importing the submodule `package.name` when there is one, else the
    package; the parent packages Python also initialises on the way are not counted (their __init__ files
    re-export their submodules, which every package does and which is no cycle between modules)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package
                package = module.split(".")[: len(module.split(".")) - node.level + (module in PACKAGES)]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {name for name in found if name in known and name != module}


def find_cycle(graph):
    """One import cycle as [a, b, ..., a], or None."""
    state = {}  # module -> "open" while on the current path, "done" once all it reaches is explored

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target, path + [target])
                if cycle:
                    return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [module])
            if cycle:
                return cycle
    return None


def import_graph(root=REPO):
    """{module: the package modules it imports} of the checkout `root` (benchmarks/export_trace.py reads older ones)."""
    files = module_files(root)
    return {module: imported(ast.parse(open(path).read(), path), module, files) for module, path in files.items()}


def test_the_package_modules_import_each_other_without_cycles():
    graph = import_graph()
    assert {"keras_cnn.training.trainer", "keras_cnn.artifacts.runs", "keras_cnn.models.transfer"} <= set(graph)
    assert "keras_cnn.models.registry" in graph["keras_cnn.models.transfer"]  # imports are seen (top-level ones)
    assert "keras_cnn.evaluation.evaluate" in graph["keras_cnn.training.trainer"]  # and those inside functions
    assert "keras_cnn.tuning.results" in graph["keras_cnn.tuning.search"]  # and the tuning/ folder's, by its name
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_a_cycle_through_a_function_level_import_is_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    tree = ast.parse("def f():\n    from keras_cnn.utils import io\n")
    assert imported(tree, "keras_cnn.x", {"keras_cnn", "keras_cnn.utils.io", "keras_cnn.x"}) == {"keras_cnn.utils.io"}


# The subpackages from the bottom up: each may import those before it, never one after it (docs/architecture.md).
# The package root (the public functions, imported lazily, and the registration of Keras objects) and the
# command line sit above them all; the root may be imported from anywhere for `__version__` and the public API.
LAYERS = ("utils", "models", "data", "analysis", "artifacts", "evaluation", "training", "exporting", "tuning")


def layer(module):
    """The index in LAYERS of `module`'s subpackage; None for the root package and the top-level modules."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None


def upward_imports(graph):
    """["a -> b", ...]: imports from a subpackage into one above it in LAYERS."""
    return sorted(f"{source} -> {target}" for source, targets in graph.items() for target in targets
                  if layer(source) is not None and layer(target) is not None and layer(target) > layer(source))


def test_every_module_lives_in_a_layered_subpackage_and_imports_only_downward():
    graph = import_graph()
    top_level = sorted(m for m in graph if m.count(".") == 1 and layer(m) is None)
    assert top_level == ["keras_cnn.cli", "keras_cnn.cli_parser"], top_level
    assert upward_imports(graph) == []


def test_an_upward_import_between_subpackages_is_found():
    graph = {"keras_cnn.models.registry": {"keras_cnn.training.runs", "keras_cnn.utils.io"},
             "keras_cnn": {"keras_cnn.models.registry"}}
    assert upward_imports(graph) == ["keras_cnn.models.registry -> keras_cnn.training.runs"]
