"""A 20-trial search on a 10,000-image CIFAR-10 subset against the default `small`, and the same under 100 KB.

1. Loads the CIFAR-10 JPEG copy (train/<class>/*.jpg, test/<class>/*.jpg) and keeps a random subset of
   its training images (10,000 by default), split 70/10/20 into train/val/test by `keras_cnn.load_data`.
2. Trains the default `small` (float32, the default recipe) for --epochs on that split: the baseline.
3. Runs a random search of --trials trials of the `cnn` space, --epochs each, on the same split.
4. Runs the same search with max_tflite_kb=100 and checks the winner really exports under 100 KB
   (`keras_cnn.export`, float32 TFLite).

Both searches run with retrain=False, so every number compares like with like: the same train split,
the same epochs, the best validation epoch's weights, the same test split. Not a unit test.

    python benchmarks/tune_cifar.py --epochs 5 --out saved_models/tune-cifar-bench
    python benchmarks/tune_cifar.py --epochs 5 --searches budget   # one search per process: both cores
"""
import argparse
import json
import os
import tempfile
import time

from cifar import CIFAR


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=CIFAR)
    parser.add_argument("--subset", type=int, default=10_000, help="training images kept (default 10,000)")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the baseline and of every trial")
    parser.add_argument("--max-tflite-kb", type=float, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="saved_models/tune-cifar-bench", help="folder for the three runs")
    parser.add_argument("--searches", nargs="+", choices=("free", "budget"), default=["free", "budget"],
                        help="which searches to run (run them as two processes to use both cores)")
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args()

    import keras_cnn
    from keras_cnn.io import write_json
    from keras_cnn.tuning import search

    started = time.perf_counter()
    cifar = keras_cnn.load_data(f"folder:{args.data}", seed=args.seed)
    x, y = cifar.arrays("train", limit=args.subset)  # train is stored in a seeded random order: a random sample
    subset = (x.astype("uint8"), y.astype("int32"))
    split = dict(val_fraction=0.1, test_fraction=0.2, class_names=cifar.class_names)
    data = keras_cnn.load_data(subset, seed=args.seed, **split)
    print(f"CIFAR-10 subset: {data.sizes} images of {data.image_shape} ({time.perf_counter() - started:.0f} s)")

    common = dict(space="cnn", tuner="random", max_trials=args.trials, epochs=args.epochs, seed=args.seed,
                  data_options=split, retrain=False, verbose=1)  # the same split as the baseline's
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
            exported = keras_cnn.export(budget.best_model, out_dir=folder, formats="tflite", quantize="float32",
                                        class_names=cifar.class_names, verbose=False).rows[-1]["size_kb"] \
                if budget.best_model is not None else None
        summary[f"search_max_tflite_kb_{args.max_tflite_kb:g}"] = {**_best(budget), "exported_tflite_kb": exported}
        print(f"best under {args.max_tflite_kb:g} KB: {_accuracy(budget)} ({exported} KB exported)")
        if exported is not None and exported > args.max_tflite_kb:
            raise SystemExit(f"the budget search's winner exports to {exported} KB, over {args.max_tflite_kb:g} KB")
    summary["minutes"] = round((time.perf_counter() - started) / 60, 1)
    for title, result in results.items():
        print(f"\n== {title} ({result.path})\n{result.table()}")
    print("\n" + json.dumps(summary, indent=2))
    if args.json:
        write_json(args.json, summary)


def _best(result):
    row = result.best_trial or {}
    return {"trial": row.get("trial"), "val_accuracy": row.get("val_accuracy"),
            "test_accuracy": result.best_trial_test_accuracy, "params": row.get("params"),
            "tflite_kb": row.get("tflite_kb"), "hyperparameters": result.best_hyperparameters,
            "rejected": sum(r["status"] != "COMPLETED" for r in result.trials)}


def _accuracy(result):
    return "no trial met the budget" if result.best_trial is None else f"{result.best_trial_test_accuracy:.2%}"


if __name__ == "__main__":
    main()
