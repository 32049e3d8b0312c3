#!/usr/bin/env python3
"""Export trace: which of keras_cnn's modules the export of one run enters, in what order.

Trains a small run (`keras_cnn.train("small", "digits", epochs=1)`, or takes RUN_DIR), then runs
`keras_cnn.export(run_dir, out_dir=TMP, latency_runs=1, verbose=False)` (the default formats: SavedModel and TFLite
float32 and int8; `keras_cnn.exporting.pipeline.export`, or `keras_cnn.exporting.export` in the flat layout before
the subpackages) under `sys.setprofile`, and counts on the sequence of modules entered:

* the sequence: the module (`frame.f_globals["__name__"]`) of every Python function call event ("call", so
  generators resuming too; C functions are not seen) whose module is `keras_cnn` or below it, consecutive
  repeats collapsed into one. Four traces: `path`, only functions that keras_cnn code called through keras_cnn
  code alone since `export` began (every frame between them and `export` is keras_cnn's); `all`, also those that
  Keras or TensorFlow call back (custom layers run by a model, a traced `tf.function`'s lambda, the converter's
  calibration generator), which depend on the model rather than on the export's structure; `source`, only the
  calls the export's source flows into, wherever they are called from: one of the call's arguments (its
  `frame.f_locals` at the "call" event, before the body runs) is the run folder string given to `export`, or an
  object that holds a followed object as an attribute, dict value or list/tuple element, at most two levels down
  (the `Run` made from the folder, which holds it as `path`; the pipeline's `_Job`, which holds the `Run`). An
  object found holding one is followed from then on. Values computed from the source (the model file's path, the
  loaded model, the run's data) are not; and `derived`, which follows them too: also what the calls that
  `source`'s rule finds return ("return" events; a returned tuple's or list's elements too), but for values that
  have no identity of their own (None, booleans, numbers, classes, functions, modules) and strings that do not
  contain the folder's path (a literal such as "float32" is one object shared by all the code) (`_Follower`);
* modules: the distinct modules of the sequence;
* moves: consecutive pairs of the sequence (a return to the caller counts when the caller then enters another of
  its own functions, as in "exporting -> runs -> io -> runs -> exporting");
* moves up: moves to a module of a higher rank. A module's rank is (its subpackage's index in
  tests/test_imports.py's LAYERS, the root package and cli above them all; then, inside `exporting` and
  `artifacts` only, whose modules count as a layer each, its depth in the subpackage's own import
  graph: 0 for a module importing no module of its subpackage, else 1 + the deepest one it imports). Other
  subpackages are one rank each, so a move inside them is never up. Left out for a tree whose tests define no
  layered subpackages (the flat layout);
* moves up by level (`moves_up_level`), a rank that needs no layers and so works on any tree: a module's level is
  its depth in the package's own import graph, read with `ast` from the traced checkout (keras_cnn/ and
  tuning/, which installs as `keras_cnn.tuning`; imports inside functions count): 0 for a module importing no
  keras_cnn module, else 1 + the highest level of those it imports, an import back to a module still being
  resolved (a cycle) ignored. A move up goes to a module of a higher level;
* exporting<->prediction: moves between the `prediction` module (`keras_cnn.artifacts.prediction`, or
  `keras_cnn.prediction`) and `keras_cnn.exporting` or a module of it.

    python benchmarks/export_trace.py [RUN_DIR] [--sequence] [--source-sequence] [--source-calls]

Run it with the checkout to measure first on the import path (`PYTHONPATH=TREE python benchmarks/...`): it says
on stderr which keras_cnn it traced. The last line is JSON. Figures before and after the export pipeline was made
straight: docs/architecture.md.
"""
import argparse
import json
import os
import sys
import tempfile
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEPARATE = ("exporting", "artifacts")  # subpackages whose modules are each a layer of their own
DEPTH = 2  # how far down an argument's attributes and elements the source is looked for

sys.path.insert(0, os.path.join(REPO, "tests"))
from test_imports import LAYERS, import_graph  # noqa: E402  the layer order the tests enforce; any checkout's imports


def levels(graph):
    """{module: its depth in `graph`}: 0 importing nothing, else 1 + the highest it imports; back edges ignored."""
    level, resolving = {}, set()

    def visit(module):
        if module not in level:
            resolving.add(module)
            below = [visit(target) for target in sorted(graph[module]) if target not in resolving]
            resolving.discard(module)
            level[module] = 1 + max(below) if below else 0
        return level[module]

    for module in sorted(graph):
        visit(module)
    return level


def ranks(graph):
    """{module: (subpackage index, depth inside the subpackage)} for every module of the package (needs LAYERS)."""
    def subpackage(module):
        parts = module.split(".")
        return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None

    def depth(module, seen=()):
        inside = [t for t in graph[module] if subpackage(t) == subpackage(module) and t not in seen]
        return 1 + max(depth(t, (*seen, module)) for t in inside) if inside else 0

    return {module: (LAYERS.index(subpackage(module)) if subpackage(module) else len(LAYERS),
                     depth(module) if subpackage(module) in SEPARATE else 0) for module in graph}


def _arguments(frame):
    """The values of a call's arguments: at its "call" event, before its body runs, its first locals."""
    code = frame.f_code
    count = code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & 0x04) + bool(code.co_flags & 0x08)
    values = frame.f_locals
    return [values[name] for name in code.co_varnames[:count] if name in values]


def _parts(value):
    """What `value` holds: a dict's values, a list's or tuple's elements, an object's attributes."""
    try:
        if isinstance(value, dict):
            return list(value.values())
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, (str, bytes, int, float, type)) or value is None:
            return []
        attributes = object.__getattribute__(value, "__dict__")
        return list(attributes.values()) if isinstance(attributes, dict) else []
    except Exception:  # no __dict__ (slots, C objects): holds nothing we follow
        return []


class _Follower:
    """The keras_cnn calls that `source` flows into: the sequence of their modules (consecutive repeats collapsed).

    A call is one when one of its arguments is a followed object or holds one (as an attribute, dict value or list
    or tuple element, at most DEPTH levels down); such an argument is followed from then on. `returns`: also follow
    what those calls return (and a returned tuple's or list's elements), but for values without an identity of
    their own (None, booleans, numbers, classes, functions, modules) and strings that do not contain the source
    path (a literal such as "float32" is one object shared by all the code)."""

    def __init__(self, source, returns):
        self.source, self.returns = source, returns
        self.tracked = {id(source): source}  # id -> object, kept alive so that its id stays its own
        self.sequence, self.open = [], set()  # open: the frames of counted calls not yet returned
        self.calls = []  # "module:function" of every call counted, for --source-calls

    def holds(self, value, depth=DEPTH):
        return id(value) in self.tracked or depth > 0 and any(self.holds(part, depth - 1) for part in _parts(value))

    def call(self, frame, module):
        found = False
        for value in _arguments(frame):
            if self.holds(value):
                self.tracked.setdefault(id(value), value)
                found = True
        if found:
            _add(self.sequence, module)
            self.calls.append(f"{module.removeprefix('keras_cnn.')}:{getattr(frame.f_code, 'co_qualname', '?')}")
            if self.returns:
                self.open.add(id(frame))

    def returned(self, frame, value):
        if id(frame) not in self.open:
            return
        self.open.discard(id(frame))
        for part in [value, *(value if isinstance(value, (tuple, list)) else ())]:
            if self._identifiable(part):
                self.tracked.setdefault(id(part), part)

    def _identifiable(self, value):
        if isinstance(value, (str, bytes)):
            return isinstance(value, str) and isinstance(self.source, str) and self.source in value
        return not (value is None or isinstance(value, (bool, int, float, complex, type, types.ModuleType,
                                                        types.FunctionType, types.BuiltinFunctionType,
                                                        types.MethodType)))


def _add(sequence, module):
    if not sequence or sequence[-1] != module:
        sequence.append(module)


def trace(call, source):
    """{"path", "all", "source", "derived": sequence} of the keras_cnn modules entered while `call()` runs; `source`
    is the object whose flow into calls the last two follow (`derived` also through what those calls return)."""
    path, every = [], []
    followers = {"source": _Follower(source, returns=False), "derived": _Follower(source, returns=True)}

    def keras_cnn_frame(frame):
        name = frame.f_globals.get("__name__", "")
        return name if name == "keras_cnn" or name.startswith("keras_cnn.") else None

    def only_keras_cnn_above(frame):
        while frame is not None and keras_cnn_frame(frame) is not None:
            frame = frame.f_back
        return frame is not None and frame.f_back is top  # the first other frame is `call` itself

    def profile(frame, event, arg):
        if event not in ("call", "return"):
            return
        module = keras_cnn_frame(frame)
        if module is None:
            return
        if event == "return":
            followers["derived"].returned(frame, arg)
            return
        _add(every, module)
        if only_keras_cnn_above(frame.f_back):
            _add(path, module)
        for follower in followers.values():
            follower.call(frame, module)

    top = sys._getframe()
    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    trace.calls = {name: follower.calls for name, follower in followers.items()}
    return {"path": path, "all": every, **{name: follower.sequence for name, follower in followers.items()}}


def counts(sequence, rank, level):
    moves = list(zip(sequence, sequence[1:]))

    def exporting(module):
        return module == "keras_cnn.exporting" or module.startswith("keras_cnn.exporting.")

    prediction = {"keras_cnn.artifacts.prediction", "keras_cnn.prediction"}
    figures = {"modules": len(set(sequence)), "moves": len(moves)}
    if rank is not None:
        bottom = (len(LAYERS), 0)
        figures["moves_up"] = sum(rank.get(b, bottom) > rank.get(a, bottom) for a, b in moves)
    figures["moves_up_level"] = sum(level.get(b, 0) > level.get(a, 0) for a, b in moves)
    figures["exporting_prediction"] = sum(({a, b} & prediction != set()) and (exporting(a) or exporting(b))
                                          for a, b in moves)
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", help="a run folder; default: train small on digits for one epoch")
    parser.add_argument("--sequence", action="store_true", help="print the path sequence, one module a line")
    parser.add_argument("--source-sequence", action="store_true",
                        help="print the source and derived sequences, each module with its level")
    parser.add_argument("--source-calls", action="store_true",
                        help="print the functions the source and derived traces count, in order")
    args = parser.parse_args()

    import keras_cnn

    tree = os.path.dirname(os.path.dirname(os.path.abspath(keras_cnn.__file__)))
    print(f"tracing the checkout {tree}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="export-trace-") as folder:
        run_dir = args.run_dir or keras_cnn.train("small", "digits", epochs=1, out=os.path.join(folder, "run"),
                                                  verbose=0).path
        run_dir = os.path.abspath(run_dir)
        export = keras_cnn.export  # resolved (and its module imported) before the trace starts
        sequences = trace(lambda: export(run_dir, out_dir=os.path.join(folder, "export"), latency_runs=1,
                                         verbose=False), run_dir)
    graph = import_graph(tree)
    layered = all(f"keras_cnn.{name}" in graph for name in LAYERS)  # every subpackage is there: not the flat layout
    rank, level = (ranks(graph) if layered else None), levels(graph)
    if args.sequence:
        print("\n".join(f"{module.removeprefix('keras_cnn.')} {rank.get(module) if rank else level.get(module)}"
                        for module in sequences["path"]))
    for name in ("source", "derived") if args.source_sequence else ():
        print(f"{name}: " + " -> ".join(f"{module.removeprefix('keras_cnn.')} ({level.get(module)})"
                                        for module in sequences[name]))
    for name in ("source", "derived") if args.source_calls else ():
        print(f"{name} calls: " + " ".join(trace.calls[name]))
    result = {name: counts(sequence, rank, level) for name, sequence in sequences.items()}
    for name, figures in result.items():
        print(f"{name:7} " + ", ".join(f"{key} {value}" for key, value in figures.items()))
    result["sequences"] = {name: [module.removeprefix("keras_cnn.") for module in sequences[name]]
                           for name in ("source", "derived")}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
