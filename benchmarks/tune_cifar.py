"""Searches on a 10,000-image CIFAR-10 subset: against the default `small`, under 100 KB, and Pareto fronts.

1. Loads the CIFAR-10 JPEG copy (train/<class>/*.jpg, test/<class>/*.jpg) and keeps a random subset of
   its training images (10,000 by default), split 70/10/20 into train/val/test by `keras_cnn.load_data`.
2. "free": trains the default `small` (float32, the default recipe) for --epochs on that split, the
   baseline, and runs a random search of --trials trials of the `cnn` space, --epochs each.
3. "budget": the same search with max_tflite_kb=100 (on the shipped --ship file), and checks the winner
   really exports under 100 KB (`keras_cnn.export`).
4. "pareto-cnn", "pareto-fast": a --tuner search of --trials trials of the `cnn` (or `fast`) space with
   --objectives (accuracy,kb,latency by default) on the --ship file, every front model exported and
   verified; the default `small` and `deeper` are trained for --epochs on the same split, converted and
   measured the same way, and drawn on the same axes (front_with_baselines.png in the search folder).

The searches run with retrain=False, so every number compares like with like: the same train split,
the same epochs, the same validation and test splits. Not a unit test.

    python benchmarks/tune_cifar.py --epochs 5 --out saved_models/tune-cifar-bench
    python benchmarks/tune_cifar.py --epochs 5 --searches budget   # one search per process: both cores
    python benchmarks/tune_cifar.py --epochs 5 --searches pareto-cnn --json pareto-cnn.json
"""
import argparse
import json
import os
import tempfile
import time

from cifar import CIFAR

PARETO = {"pareto-cnn": "cnn", "pareto-fast": "fast"}  # search name -> space


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=CIFAR)
    parser.add_argument("--subset", type=int, default=10_000, help="training images kept (default 10,000)")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the baseline and of every trial")
    parser.add_argument("--max-tflite-kb", type=float, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="saved_models/tune-cifar-bench", help="folder for the three runs")
    parser.add_argument("--searches", nargs="+", choices=("free", "budget", *PARETO), default=["free", "budget"],
                        help="which searches to run (run them as separate processes to use both cores)")
    parser.add_argument("--objectives", default="accuracy,kb,latency", help="of the pareto searches")
    parser.add_argument("--tuner", choices=("random", "bayesian"), default="random", help="of the pareto searches")
    parser.add_argument("--ship", default="int8", help="the TFLite variant every trial is measured as")
    parser.add_argument("--reference", default="0.1,2000,5",
                        help="the pareto searches' hypervolume reference: one worst value per objective (accuracy "
                        "0.1 is chance on CIFAR-10, 2000 KB, 5 ms), the same for every search compared")
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args()

    import keras_cnn
    from keras_cnn.tuning import search
    from keras_cnn.utils.io import write_json

    started = time.perf_counter()
    cifar = keras_cnn.load_data(f"folder:{args.data}", seed=args.seed)
    x, y = cifar.arrays("train", limit=args.subset)  # train is stored in a seeded random order: a random sample
    subset = (x.astype("uint8"), y.astype("int32"))
    split = dict(val_fraction=0.1, test_fraction=0.2, class_names=cifar.class_names)
    data = keras_cnn.load_data(subset, seed=args.seed, **split)
    print(f"CIFAR-10 subset: {data.sizes} images of {data.image_shape} ({time.perf_counter() - started:.0f} s)")

    common = dict(space="cnn", tuner="random", max_trials=args.trials, epochs=args.epochs, seed=args.seed,
                  data_options=split, retrain=False, verbose=1, ship=args.ship)  # the same split as the baseline's
    summary, results = {"subset": data.sizes, "epochs": args.epochs, "trials": args.trials}, {}
    if "free" in args.searches:
        baseline = keras_cnn.train("small", data, epochs=args.epochs, precision="float32", seed=args.seed,
                                   verbose=2, out=os.path.join(args.out, "baseline-small"))
        results["search"] = search(subset, out=os.path.join(args.out, "search"), **common)
        summary["baseline_small"] = {"val_accuracy": max(baseline.history["val_accuracy"]),
                                     "test_accuracy": baseline.metrics.accuracy,
                                     "params": baseline.model.count_params()}
        summary["search"] = _best(results["search"])
        print(f"default small: {summary['baseline_small']['val_accuracy']:.2%} best validation accuracy, "
              f"{baseline.metrics.accuracy:.2%} test; best of {args.trials} trials: "
              f"{_accuracy(results['search'])}")
    if "budget" in args.searches:
        title = f"search, max_tflite_kb={args.max_tflite_kb:g}"
        budget = results[title] = search(subset, out=os.path.join(args.out, f"search-{args.max_tflite_kb:g}kb"),
                                         max_tflite_kb=args.max_tflite_kb, **common)
        with tempfile.TemporaryDirectory() as folder:
            exported = keras_cnn.export(budget.best_model, out_dir=folder, formats="tflite", quantize=args.ship,
                                        data=data, class_names=cifar.class_names, verbose=False).rows[-1]["size_kb"] \
                if budget.best_model is not None else None
        summary[f"search_max_tflite_kb_{args.max_tflite_kb:g}"] = {**_best(budget), "exported_tflite_kb": exported}
        print(f"best under {args.max_tflite_kb:g} KB: {_accuracy(budget)} ({exported} KB exported)")
        if exported is not None and exported > args.max_tflite_kb:
            raise SystemExit(f"the budget search's winner exports to {exported} KB, over {args.max_tflite_kb:g} KB")
    for name in [name for name in args.searches if name in PARETO]:
        result = results[name] = search(subset, out=os.path.join(args.out, f"search-{name}-{args.tuner}"),
                                        **{**common, "space": PARETO[name], "tuner": args.tuner},
                                        objectives=args.objectives, export_front=True)
        summary[name] = _front(result, _baselines(data, args, f"{name}-{args.tuner}"),
                               [float(v) for v in args.reference.split(",")])
        print(f"\n== {name}: Pareto front of {args.objectives} ({result.path}/front.txt)\n{result.front_table()}")
    summary["minutes"] = round((time.perf_counter() - started) / 60, 1)
    for title, result in results.items():
        print(f"\n== {title} ({result.path})\n{result.table()}")
    print("\n" + json.dumps(summary, indent=2))
    if args.json:
        write_json(args.json, summary)


def _baselines(data, args, search_name):
    """The default `small` and `deeper`, trained for --epochs on the search's split, measured as a trial is
    (trained once per search, so that searches run as separate processes do not share a run folder)."""
    import keras_cnn
    from keras_cnn.tuning import shipping

    ships = shipping.prepare(data, args.ship, shipping.LATENCY_RUNS)
    points = []
    for model in ("small", "deeper"):
        folder = os.path.join(args.out, f"baseline-{model}-for-{search_name}")
        trained = keras_cnn.load(folder).model if os.path.isdir(folder) else keras_cnn.train(
            model, data, epochs=args.epochs, precision="float32", seed=args.seed, verbose=2, out=folder).model
        points.append({"label": f"default {model}", "params": trained.count_params(),
                       **shipping.measure(trained, ships)})
    return points


def _front(result, baselines, reference):
    """The front's rows, its two ends (the most accurate, the smallest) and its hypervolume under `reference`
    (larger is better: compare random and bayesian with it); the picture redrawn with the baselines."""
    from keras_cnn.tuning import front, pareto

    front.picture(result.trials, result.front, os.path.join(result.path, "front_with_baselines.png"), result.ship,
                  references=baselines)
    keys = ("trial", "ship_accuracy", "ship_kb", "ship_latency_ms", "macs", "params", "val_accuracy", "export",
            "hyperparameters")
    rows = [{key: row.get(key) for key in keys} for row in result.front]
    ends = {"most_accurate": rows[0], "smallest": min(rows, key=lambda row: row["ship_kb"])} if rows else {}
    vectors = [pareto.vector(row, result.objectives) for row in result.front]
    volume = pareto.hypervolume(vectors, pareto.directions(result.objectives), reference) \
        if len(reference) == len(result.objectives) else None
    return {"path": result.path, "front": rows, "ends": ends, "baselines": baselines, "reference": reference,
            "hypervolume": volume, "completed": sum(row["status"] == "COMPLETED" for row in result.trials)}


def _best(result):
    row = result.best_trial or {}
    return {"trial": row.get("trial"), "val_accuracy": row.get("val_accuracy"),
            "test_accuracy": result.best_trial_test_accuracy, "params": row.get("params"),
            "ship_kb": row.get("ship_kb"), "ship_accuracy": row.get("ship_accuracy"),
            "ship_latency_ms": row.get("ship_latency_ms"), "hyperparameters": result.best_hyperparameters,
            "rejected": sum(r["status"] != "COMPLETED" for r in result.trials)}


def _accuracy(result):
    return "no trial met the budget" if result.best_trial is None else f"{result.best_trial_test_accuracy:.2%}"


if __name__ == "__main__":
    main()
