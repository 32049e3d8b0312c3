#!/usr/bin/env python3
"""Export trace: which of keras_cnn's modules the export of one run enters, in what order (issue 37, item 2).

Trains a small run (`keras_cnn.train("small", "digits", epochs=1)`, or takes RUN_DIR), then runs
`keras_cnn.exporting.pipeline.export(run, out_dir=TMP, latency_runs=1, verbose=False)` (the default formats:
SavedModel and TFLite float32 and int8) under `sys.setprofile`, and counts on the sequence of modules entered:

* the sequence: the module (`frame.f_globals["__name__"]`) of every Python function call event ("call", so
  generators resuming too; C functions are not seen) whose module is `keras_cnn` or below it, consecutive
  repeats collapsed into one. Two traces: `path`, only functions that keras_cnn code called through keras_cnn code
  alone since `export` began (every frame between them and `export` is keras_cnn's), and `all`, also those that
  Keras or TensorFlow call back (custom layers run by a model, a traced `tf.function`'s lambda, the converter's
  calibration generator), which depend on the model rather than on the export's structure;
* modules: the distinct modules of the sequence;
* moves: consecutive pairs of the sequence (a return to the caller counts when the caller then enters another of
  its own functions, as in the issue's "exporting -> runs -> io -> runs -> exporting");
* moves up: moves to a module of a higher rank. A module's rank is (its subpackage's index in
  tests/test_imports.py's LAYERS, the root package and cli above them all; then, inside `exporting` and
  `artifacts` only, where the issue counted each module as its own layer, its depth in the subpackage's own import
  graph: 0 for a module importing no module of its subpackage, else 1 + the deepest one it imports). Other
  subpackages are one rank each, so a move inside them is never up;
* exporting<->prediction: moves between `keras_cnn.artifacts.prediction` and a module of `keras_cnn.exporting`.

    python benchmarks/export_trace.py [RUN_DIR] [--sequence]

The last line is JSON. Figures before and after the export pipeline was made straight: docs/architecture.md.
"""
import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

from test_imports import LAYERS, import_graph  # noqa: E402  the layer order the tests enforce

SEPARATE = ("exporting", "artifacts")  # subpackages whose modules are each a layer of their own


def ranks():
    """{module: (subpackage index, depth inside the subpackage)} for every module of the package."""
    graph = import_graph()

    def subpackage(module):
        parts = module.split(".")
        return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None

    def depth(module, seen=()):
        inside = [t for t in graph[module] if subpackage(t) == subpackage(module) and t not in seen]
        return 1 + max(depth(t, (*seen, module)) for t in inside) if inside else 0

    return {module: (LAYERS.index(subpackage(module)) if subpackage(module) else len(LAYERS),
                     depth(module) if subpackage(module) in SEPARATE else 0) for module in graph}


def trace(call):
    """(path sequence, all sequence) of the keras_cnn modules entered while `call()` runs."""
    path, every = [], []

    def keras_cnn_frame(frame):
        name = frame.f_globals.get("__name__", "")
        return name if name == "keras_cnn" or name.startswith("keras_cnn.") else None

    def only_keras_cnn_above(frame):
        while frame is not None and keras_cnn_frame(frame) is not None:
            frame = frame.f_back
        return frame is not None and frame.f_back is top  # the first other frame is `call` itself

    def profile(frame, event, arg):
        if event != "call":
            return
        module = keras_cnn_frame(frame)
        if module is None:
            return
        if not every or every[-1] != module:
            every.append(module)
        if only_keras_cnn_above(frame.f_back) and (not path or path[-1] != module):
            path.append(module)

    top = sys._getframe()
    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return path, every


def counts(sequence, rank):
    moves = list(zip(sequence, sequence[1:]))
    exporting = "keras_cnn.exporting."
    return {"modules": len(set(sequence)), "moves": len(moves),
            "moves_up": sum(rank.get(b, (len(LAYERS), 0)) > rank.get(a, (len(LAYERS), 0)) for a, b in moves),
            "exporting_prediction": sum({a, b} & {"keras_cnn.artifacts.prediction"} != set()
                                        and (a.startswith(exporting) or b.startswith(exporting)) for a, b in moves)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", help="a run folder; default: train small on digits for one epoch")
    parser.add_argument("--sequence", action="store_true", help="print the path sequence, one module a line")
    args = parser.parse_args()

    import keras_cnn
    from keras_cnn.exporting.pipeline import export

    with tempfile.TemporaryDirectory(prefix="export-trace-") as folder:
        run_dir = args.run_dir or keras_cnn.train("small", "digits", epochs=1, out=os.path.join(folder, "run"),
                                                  verbose=0).path
        path, every = trace(lambda: export(run_dir, out_dir=os.path.join(folder, "export"), latency_runs=1,
                                           verbose=False))
    rank = ranks()
    if args.sequence:
        print("\n".join(f"{module.removeprefix('keras_cnn.')} {rank.get(module)}" for module in path))
    result = {"path": counts(path, rank), "all": counts(every, rank)}
    for name, figures in result.items():
        print(f"{name:5} " + ", ".join(f"{key} {value}" for key, value in figures.items()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
