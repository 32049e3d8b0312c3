"""Time to accuracy on CIFAR-10: keras-cnn's recipe over several seeds, the airbench94 peer beside it, one picture.

    python benchmarks/bench.py time-to-accuracy --model airbench --recipe airbench --seeds 0 1 2 --json ours.json
    python benchmarks/bench.py peer-time-to-accuracy --peer ../shared/bench/airbench94_cpu.py --seeds 0 1 2 \\
        --json peer.json                                   # add --compile / --bf16 for the peer's other paths
    python benchmarks/bench.py plot-time-to-accuracy ours.json peer.json --out docs/images/time_to_accuracy.png

`time-to-accuracy` trains with `keras_cnn.train` (the recipe's epochs, batch size and augmentation unless given),
times the training epochs from a callback (test passes not counted), measures the test accuracy after every epoch
on the weights evaluation uses (the moving average where the recipe keeps one), and at the end without test-time
augmentation, with `flip` and with `flip+translate`; it reports each seed and the mean and standard deviation.
`peer-time-to-accuracy` runs `airbench94_cpu.py SEED` in a child process per seed and reads its epoch times and
accuracies from its output. Not unit tests: these take hours on a 2-core CPU.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import keras

import keras_cnn

LEVELS = ("none", "flip", "flip+translate")
# airbench94's published figures (A100 GPU, n=1000 runs): the reference line of the picture.
AIRBENCH_GPU = {"accuracy": 0.9401, "epochs": 9.9, "seconds": 3.83}


class AccuracyClock(keras.callbacks.Callback):
    """Test accuracy after each epoch against training time (test passes not counted), and at the end at every
    test-time augmentation level; stops training before an epoch that would end past `minutes`."""

    def __init__(self, test_set, minutes):
        super().__init__()
        self.test_set, self.budget = test_set, minutes * 60
        self.seconds, self.curve, self.final = [], [], {}

    def accuracies(self, tta=None):
        """{level: accuracy} up to `tta`, on the weights evaluation uses (the moving average, if kept)."""
        from keras_cnn.evaluation.evaluate import predict_levels
        from keras_cnn.training.callbacks import averaged_weights

        with averaged_weights(self.model):
            levels, labels = predict_levels(self.model, self.test_set, tta)
        return {LEVELS[i]: float((p.argmax(1) == labels).mean()) for i, p in enumerate(levels.values())}

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)
        training = sum(self.seconds)
        accuracy = self.accuracies()["none"]
        self.curve.append({"epoch": epoch + 1, "seconds": training, "accuracy": accuracy})
        print(f"epoch {epoch + 1}: {training / 60:.1f} min, test {accuracy:.2%}", flush=True)
        if training + self.seconds[-1] > self.budget:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.final = self.accuracies("flip+translate")
        print("final: " + ", ".join(f"{level} {value:.2%}" for level, value in self.final.items()), flush=True)


def mean_and_spread(values):
    """'mean +- standard deviation' in percent (the spread of one value is 0)."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} +- {100 * spread:.2f}"


def first_reaching(curve, target, key="accuracy"):
    """Training minutes of the first epoch at or above `target`, or None."""
    return next((point["seconds"] / 60 for point in curve if point[key] >= target), None)


def time_to_accuracy(args, report):
    if len(args.seeds) < 3:
        print(f"note: {len(args.seeds)} seed(s); a mean and spread want at least 3", file=sys.stderr)
    data = keras_cnn.load_data(f"folder:{args.data}", seed=0, val_fraction=0)
    options = json.loads(args.options) if args.options else {}
    if args.augment:
        options["augment"] = args.augment
    rows, runs = [], []
    for seed in args.seeds:
        clock = AccuracyClock(data.pipeline("test", batch_size=500), args.minutes)
        out = os.path.join(args.out, f"seed{seed}") if args.out else tempfile.mkdtemp(prefix="bench-tta-")
        keras_cnn.train(args.model, data, epochs=args.epochs, batch_size=args.batch_size, recipe=args.recipe,
                        seed=seed, out=out, callbacks=[clock], verbose=0, tta=None, **options)
        runs.append({"seed": seed, "curve": clock.curve, "final": clock.final, "seconds": sum(clock.seconds)})
        reached = first_reaching(clock.curve, args.target)
        rows.append([seed, len(clock.curve), f"{sum(clock.seconds) / 60:.1f}",
                     *(f"{100 * clock.final[level]:.2f}" for level in LEVELS),
                     "-" if reached is None else f"{reached:.1f}"])
    minutes = [run["seconds"] / 60 for run in runs]
    rows.append(["mean +- sd", "", f"{statistics.mean(minutes):.1f}",
                 *(mean_and_spread([run["final"][level] for run in runs]) for level in LEVELS), ""])
    report(args, f"{args.model}, recipe {args.recipe}, on CIFAR-10 ({args.data}): test accuracy (%) after training, "
                 f"by test-time augmentation level; minutes of training, and to {args.target:.2%} without TTA",
           ("seed", "epochs", "train min", *LEVELS, f"min to {args.target:.2%}"), rows,
           {"runs": runs, "who": "keras-cnn"})


def _peer_table(output):
    """(epochs [{epoch, seconds, accuracy}], final {none, flip+translate}, training seconds) from airbench94_cpu.py's
    output: its '[cpu] epoch N: ... S s' lines and its '| run | epoch | ... |' table."""
    seconds, curve, final = [], [], {}
    for line in output.splitlines():
        if line.strip().startswith("[cpu] epoch"):
            seconds.append(float(line.split(",")[1].split()[0]))
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if len(cells) == 7 and cells[1] not in ("epoch", ""):
            if cells[1] == "eval":
                final = {"none": float(curve[-1]["accuracy"]), "flip+translate": float(cells[5])}
            elif cells[4]:
                curve.append({"epoch": int(cells[1]) + 1, "seconds": sum(seconds), "accuracy": float(cells[4])})
    return curve, final, sum(seconds)


def peer_time_to_accuracy(args, report):
    """airbench94_cpu.py SEED for each seed, in a child process (its own clock: training epochs only)."""
    env = {**os.environ, "AB_COMPILE": "1" if args.compile else "0", "AB_BF16": "1" if args.bf16 else "0"}
    rows, runs = [], []
    for seed in args.seeds:
        output = subprocess.run([sys.executable, args.peer, str(seed)], check=True, capture_output=True, text=True,
                                env=env).stdout
        curve, final, seconds = _peer_table(output)
        runs.append({"seed": seed, "curve": curve, "final": final, "seconds": seconds})
        print(f"peer seed {seed}: {seconds:.0f} s, {final}", flush=True)
        rows.append([seed, len(curve), f"{seconds / 60:.1f}", f"{100 * final['none']:.2f}",
                     f"{100 * final['flip+translate']:.2f}"])
    rows.append(["mean +- sd", "", "", mean_and_spread([run["final"]["none"] for run in runs]),
                 mean_and_spread([run["final"]["flip+translate"] for run in runs])])
    path = "+".join(name for name, on in (("compile", args.compile), ("bf16", args.bf16)) if on) or "float32 eager"
    report(args, f"airbench94_cpu.py ({path}): test accuracy (%) after 9.9 epochs", ("seed", "epochs", "train min",
           "none", "flip+translate"), rows, {"runs": runs, "who": f"airbench94 peer ({path})"})


def plot(args, report):
    """Accuracy against epochs and against training minutes, one line per run of each JSON file, with airbench's
    published GPU accuracy as the reference line."""
    from keras_cnn.analysis import viz

    figure, (by_epoch, by_minute) = viz.subplots(1, 2, figsize=(11, 4.2))
    for path, colour in zip(args.results, ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        with open(path) as handle:
            result = json.load(handle)
        recipe = result["arguments"].get("recipe")
        who = f"{result['who']}, recipe {recipe}" if recipe else result["who"]
        for i, run in enumerate(result["runs"]):
            label = who if i == 0 else None
            epochs = [point["epoch"] for point in run["curve"]]
            accuracy = [100 * point["accuracy"] for point in run["curve"]]
            by_epoch.plot(epochs, accuracy, color=colour, alpha=0.8, marker=".", label=label)
            by_minute.plot([point["seconds"] / 60 for point in run["curve"]], accuracy, color=colour, alpha=0.8,
                           marker=".")
    for axis, xlabel in ((by_epoch, "epochs"), (by_minute, "training minutes")):
        axis.axhline(100 * AIRBENCH_GPU["accuracy"], color="grey", linestyle="--", linewidth=1,
                     label=None if axis is by_minute else "airbench94 published (A100, lossless CIFAR-10)")
        axis.set_xlabel(xlabel)
        axis.set_ylabel("test accuracy without TTA (%)")
        axis.grid(alpha=0.3)
    by_epoch.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    print(viz.save(figure, args.out))


def add_commands(command, report):
    """Register the three subcommands on bench.py's `command(name, function, help)`; they print through `report`."""
    import functools

    from cifar import CIFAR

    time_to_accuracy_, peer_, plot_ = (functools.partial(f, report=report)
                                       for f in (time_to_accuracy, peer_time_to_accuracy, plot))
    sub = command("time-to-accuracy", time_to_accuracy_, "CIFAR-10 test accuracy against training time, over seeds")
    sub.add_argument("--data", default=CIFAR)
    sub.add_argument("--model", default="airbench")
    sub.add_argument("--recipe", default="airbench")
    sub.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run each (at least 3)")
    sub.add_argument("--minutes", type=float, default=600, help="stop a run before an epoch past this")
    sub.add_argument("--epochs", type=float, help="default: the recipe's (airbench 9.9, airbench_muon 10)")
    sub.add_argument("--batch-size", type=int, help="default: the recipe's (airbench 1024, airbench_muon 2000)")
    sub.add_argument("--augment", help="default: the recipe's (airbench flip_translate)")
    sub.add_argument("--target", type=float, default=0.8975, help="accuracy whose time is reported (no TTA)")
    sub.add_argument("--options", help='more keras_cnn.train keywords as JSON, e.g. \'{"ema": 0.99}\'')
    sub.add_argument("--out", help="keep the run folders here (OUT/seedN)")
    sub = command("peer-time-to-accuracy", peer_, "airbench94_cpu.py, one run per seed")
    sub.add_argument("--peer", required=True, help="path to airbench94_cpu.py (needs torch)")
    sub.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    sub.add_argument("--compile", action="store_true", help="the peer's AB_COMPILE=1 path")
    sub.add_argument("--bf16", action="store_true", help="the peer's AB_BF16=1 path")
    sub = command("plot-time-to-accuracy", plot_, "one picture from time-to-accuracy JSON files (--json of the above)")
    sub.add_argument("results", nargs="+", help="JSON files written by time-to-accuracy / peer-time-to-accuracy")
    sub.add_argument("--out", default="time_to_accuracy.png")
