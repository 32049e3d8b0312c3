"""The zoo's shipped checkpoints: train them from scratch, pack them into the package, measure the results table.

    python benchmarks/zoo.py train airbench:cifar10 --cifar10 ~/.cache/cifar10-jpg   # the checkpoint's command
    python benchmarks/zoo.py pack RUN_DIR airbench:cifar10 --cifar10 ~/.cache/cifar10-jpg
    python benchmarks/zoo.py results --cifar10 ~/.cache/cifar10-jpg                   # weights/results.csv
    python benchmarks/zoo.py finetune small:cifar10 --classes cat dog --per-class 250   # beside from scratch
    python benchmarks/zoo.py docs                                                     # docs/zoo.md's tables

`train` runs the checkpoint's command (COMMANDS below; the manifest keeps the one each shipped file was made
with) into saved_models/zoo/<model>-<dataset>/. `pack` stores a run's weights in keras_cnn/models/weights/,
as float16 where that leaves every test figure of the float32 weights unchanged (the whole test split, plain
and at every test-time augmentation level), else as float32, and writes its manifest entry. `results`
measures every shipped checkpoint: top-1 plain and with its best TTA, parameters, MACs, float32 and int8
TFLite sizes, int8 top-1 and batch-1 latency (the export's own verification on up to 2,000 test images).
`finetune` trains from a checkpoint beside from scratch; `docs` writes the tables into docs/zoo.md. Not a
unit test.
"""
import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import tempfile

CIFAR10 = "CIFAR10"  # stands for the CIFAR-10 folder (train/<class>/, test/<class>/) in the commands
CIFAR_SGD = "--epochs 15 --augment basic --recipe sgd --val-fraction 0 --seed 0"
COMMANDS = {
    "airbench:cifar10": f"keras-cnn train airbench --recipe airbench_muon --data folder:{CIFAR10} --seed 0",
    "small:cifar10": f"keras-cnn train small --data folder:{CIFAR10} {CIFAR_SGD}",
    "compact:cifar10": f"keras-cnn train compact --data folder:{CIFAR10} {CIFAR_SGD}",
    # seed 002 trains LeNet with Adam at 1e-3
    "lenet:cifar10": f"keras-cnn train lenet --data folder:{CIFAR10} --epochs 30 --augment basic --recipe adam "
                     "--val-fraction 0 --seed 0",
    "deeper:cifar10": f"keras-cnn train deeper --data folder:{CIFAR10} {CIFAR_SGD}",
    **{f"{model}:digits": f"keras-cnn train {model} --data digits --seed 0"
       for model in ("small", "lenet", "mnist_cnn", "compact", "deeper", "simple")},
}
LICENSES = {
    "cifar10": "CIFAR-10 (Krizhevsky, 2009), distributed for research without a stated licence; JPEG copy",
    "digits": "scikit-learn's copy of the UCI optical digits (CC BY 4.0)",
}
TTA_LEVELS = ("flip", "flip+translate")
RESULT_COLUMNS = ("checkpoint", "dataset", "top1", "top1_tta", "tta", "params", "macs", "float32_kb", "int8_kb",
                  "int8_top1", "float32_tflite_top1", "int8_latency_ms", "verified_images", "train_minutes",
                  "machine")


def data_spec(dataset, cifar10):
    return f"folder:{cifar10}" if dataset == "cifar10" else dataset


def command_for(spec, cifar10):
    from keras_cnn.models import checkpoints

    model, dataset = spec.split(":")
    shipped = checkpoints.available(model).get(dataset)
    command = shipped.command if shipped else COMMANDS[spec]
    return command.replace(f"folder:{CIFAR10}", f"folder:{cifar10}")


def cmd_train(args):
    out = os.path.join("saved_models", "zoo", args.spec.replace(":", "-"))
    argv = shlex.split(command_for(args.spec, args.cifar10))[1:] + ["--out", out]
    print(" ".join(["keras-cnn", *argv]), flush=True)
    subprocess.run([sys.executable, "-m", "keras_cnn.cli", *argv], check=True)
    print(f"trained: {out}; pack it with `python benchmarks/zoo.py pack {out} {args.spec}`")


def cmd_pack(args):
    import keras_cnn
    from keras_cnn.models import checkpoints

    model_name, dataset = args.spec.split(":")
    run = keras_cnn.load(args.run)
    options = dict(run.config["arguments"].get("overrides") or {})
    path = os.path.join(checkpoints.WEIGHTS_DIR, f"{model_name}-{dataset}.weights.h5")
    data = run.load_data(data_spec(dataset, args.cifar10))  # the run's own split

    def figures(storage):  # test accuracy at every TTA level of the stored weights, in float32 as `build` gives
        checkpoints.save_weights(run.model, path, storage)
        model = keras_cnn.build(model_name, input_shape=run.config["input_shape"],
                                num_classes=run.config["num_classes"], weights=path, **options)
        return keras_cnn.evaluate(model, data, tta="flip+translate").tta_accuracy

    exact = figures("float32")
    packed = figures("float16")
    storage = "float16" if packed == exact else "float32"  # float16 only where it changes no test figure
    print(f"test accuracy, float32 weights: {exact}; float16 weights: {packed}; storing {storage}")
    if storage == "float32":
        packed = figures("float32")
    entry = {"model": model_name, "dataset": dataset, "file": os.path.basename(path),
             "sha256": checkpoints.sha256(path), "class_names": run.class_names,
             "input_shape": run.config["input_shape"],
             "options": options, "data": "" if dataset == "cifar10" else dataset,
             "recipe": run.config["arguments"]["recipe"], "command": COMMANDS[args.spec],
             "accuracy": round(packed["none"], 4),
             "accuracy_tta": {level: round(value, 4) for level, value in packed.items() if level != "none"},
             "train_minutes": round(run.config["train_seconds"] / 60, 1), "machine": run.config["machine"]["cpu"],
             "storage": storage, "license": LICENSES[dataset],
             "preprocessing": preprocessing(run.config["input_shape"])}
    write_manifest(entry)
    print(f"packed {path} ({os.path.getsize(path) / 1024:.0f} KB)")


def preprocessing(input_shape):
    """The model contract for one checkpoint, in words."""
    height, width, channels = input_shape
    pixels = "RGB" if channels == 3 else "grayscale"
    return (f"raw {pixels} pixels in [0, 255], float32, {height}x{width}x{channels} channels last (other sizes "
            "resized, gray and RGB converted, as keras-cnn's data pipeline and predict do); the model's "
            "`preprocess` layer rescales them; softmax `predictions` in the order of class_names")


def write_manifest(entry):
    from keras_cnn.models import checkpoints
    from keras_cnn.utils.io import write_json

    entries = []
    if os.path.isfile(checkpoints.MANIFEST_FILE):
        with open(checkpoints.MANIFEST_FILE) as handle:
            entries = json.load(handle)
    entries = [e for e in entries if (e["model"], e["dataset"]) != (entry["model"], entry["dataset"])] + [entry]
    write_json(checkpoints.MANIFEST_FILE, sorted(entries, key=lambda e: (e["dataset"], e["model"])))


def cmd_results(args):
    from keras_cnn.models import checkpoints

    rows = []
    for model_name, by_dataset in sorted(checkpoints.manifest().items()):
        for dataset, checkpoint in sorted(by_dataset.items()):
            if args.only and checkpoint.spec not in args.only:
                continue
            print(f"measuring {checkpoint.spec}", flush=True)
            rows.append(measure(checkpoint, args.cifar10))
    kept = [row for row in checkpoints.results() if args.only and row["checkpoint"] not in args.only]
    rows = sorted(kept + rows, key=lambda row: (row["dataset"], row["checkpoint"]))
    with open(checkpoints.RESULTS_FILE, "w", newline="") as handle:
        writer = csv.DictWriter(handle, RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {checkpoints.RESULTS_FILE}")


def measure(checkpoint, cifar10):
    import keras_cnn

    model = keras_cnn.build(checkpoint.model, weights=checkpoint.dataset)
    summary = keras_cnn.describe(model)
    best_level = max(checkpoint.accuracy_tta, key=checkpoint.accuracy_tta.get)
    with tempfile.TemporaryDirectory() as out:
        report = keras_cnn.export(checkpoint.spec, out, formats="tflite", quantize=("float32", "int8"),
                                  data=data_spec(checkpoint.dataset, cifar10), latency_runs=200, verbose=False)
    rows = {row["quantization"]: row for row in report.rows if row["format"] == "tflite"}
    return {"checkpoint": checkpoint.spec, "dataset": checkpoint.dataset, "top1": pct(checkpoint.accuracy),
            "top1_tta": pct(checkpoint.accuracy_tta[best_level]), "tta": best_level,
            "params": summary.total_params, "macs": summary.total_macs,
            "float32_kb": rows["float32"]["size_kb"], "int8_kb": rows["int8"]["size_kb"],
            "int8_top1": rows["int8"]["accuracy_pct"], "float32_tflite_top1": rows["float32"]["accuracy_pct"],
            "int8_latency_ms": rows["int8"]["latency_ms"], "verified_images": report.test_images,
            "train_minutes": checkpoint.train_minutes, "machine": checkpoint.machine}


def cmd_docs(args):
    """Write the results table and the commands of the shipped checkpoints into docs/zoo.md."""
    import re

    from keras_cnn.models import checkpoints

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "zoo.md")
    shipped = sorted((c for by_dataset in checkpoints.manifest().values() for c in by_dataset.values()),
                     key=lambda c: (c.dataset, c.model))
    commands = "\n".join(["| checkpoint | command (CIFAR10: the folder with train/ and test/) | recipe | stored as |",
                          "|---|---|---|---|"] + [f"| `{c.spec}` | `{c.command}` | {c.recipe} | {c.storage} |"
                                                  for c in shipped])
    page = open(path).read()
    for name, text in (("results", checkpoints.results_table(markdown=True)), ("commands", commands)):
        page = re.sub(rf"<!-- {name}:start -->\n.*?<!-- {name}:end -->",
                      lambda _: f"<!-- {name}:start -->\n{text}\n<!-- {name}:end -->", page, flags=re.S)
    with open(path, "w") as handle:
        handle.write(page)
    print(f"wrote {path}")


def cmd_finetune(args):
    """Fine-tune a checkpoint on a small two-class CIFAR-10 folder, beside training from scratch (same data,
    epochs, recipe and seed), and print both test accuracies."""
    from cifar import cifar_folder

    import keras_cnn

    model_name, dataset = args.spec.split(":")
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        data = cifar_folder(args.cifar10, args.classes, args.per_class, 0, os.path.join(folder, "data"))
        for weights in (dataset, None):
            run = keras_cnn.train(model_name, data, weights=weights, epochs=args.epochs, augment="basic",
                                  recipe="sgd", learning_rate=args.lr, seed=0, out=os.path.join(folder, str(weights)),
                                  verbose=0, data_options={"val_fraction": 0.0})
            results["from " + (args.spec if weights else "scratch")] = {
                "test_accuracy": round(run.metrics.accuracy, 4), "train_seconds": run.config["train_seconds"]}
    print(json.dumps({"classes": args.classes, "train_images": args.per_class * len(args.classes),
                      "epochs": args.epochs, "lr": args.lr, **results}, indent=2))


def pct(fraction):
    return round(100 * fraction, 2)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--cifar10", default=os.path.expanduser("~/.cache/cifar10-jpg"),
                      help="the CIFAR-10 JPEG folder (train/<class>/, test/<class>/)")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("train", parents=[data], help="train a checkpoint from scratch with its command")
    s.add_argument("spec", choices=sorted(COMMANDS), metavar="MODEL:DATASET")
    s = sub.add_parser("pack", parents=[data], help="store a run's weights as a shipped checkpoint")
    s.add_argument("run")
    s.add_argument("spec", choices=sorted(COMMANDS), metavar="MODEL:DATASET")
    s = sub.add_parser("results", parents=[data], help="measure the shipped checkpoints into weights/results.csv")
    s.add_argument("--only", nargs="*", metavar="MODEL:DATASET", help="measure these again, keep the other rows")
    s = sub.add_parser("finetune", parents=[data], help="fine-tuning from a checkpoint against training from scratch")
    s.add_argument("spec", nargs="?", default="small:cifar10", metavar="MODEL:DATASET")
    s.add_argument("--classes", nargs="+", default=["cat", "dog"])
    s.add_argument("--per-class", type=int, default=250, help="training images of each class (default 250)")
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--lr", type=float, default=0.01, help="peak learning rate of both runs (default 0.01)")
    sub.add_parser("docs", help="write the results table and the commands into docs/zoo.md")
    args = parser.parse_args()
    handlers = {"train": cmd_train, "pack": cmd_pack, "results": cmd_results, "finetune": cmd_finetune,
                "docs": cmd_docs}
    handlers[args.command](args)


if __name__ == "__main__":
    main()
