#!/usr/bin/env python3
"""The performance benchmark suite: speed, memory and time to accuracy, side by side with the PyTorch peer.

Every subcommand prints a table and, with --json, writes it with a description of the machine (CPU model,
cores, instruction-set flags, load average, library versions): numbers from shared, noisy machines only
mean something next to each other, so the peer runs in the same process tree, interleaved with ours, and
results are quoted as ratios. Not unit tests.

    python benchmarks/bench.py peak                                  # matmul GFLOP/s: the ceiling
    python benchmarks/bench.py activation --model airbench           # GELU: Keras's against keras_cnn's
    python benchmarks/bench.py train --models small deeper --peer ../shared/bench/torch_reference.py
    python benchmarks/bench.py train --models small --backends tensorflow jax  # Keras backends side by side
    python benchmarks/bench.py infer --model small                   # Keras, SavedModel, every TFLite variant
    python benchmarks/bench.py memory --model deeper --epochs 6      # RSS after each epoch
    python benchmarks/bench.py pipeline --data ~/.cache/cifar10-jpg  # folder vs in-memory arrays
    python benchmarks/bench.py time-to-accuracy --model airbench --recipe airbench --seeds 0 1 2
    python benchmarks/bench.py peer-time-to-accuracy --peer ../shared/bench/airbench94_cpu.py --seeds 0 1 2

`train` times what `keras-cnn train` does (keras_cnn.train: precision "auto", the sgd recipe, batch 128,
in-memory data) from outside, in a new process each time as the peer, with a Keras callback, on whole
epochs after the first, each as long as a CIFAR-10 epoch (391 steps), so that the per-epoch work
(checkpoint, backup, log) weighs what it weighs in real training; the peer is `torch_reference.py
throughput` over as many steps with channels_last on each of its paths, float32 and bf16 autocast, eager and
`torch.compile` (`--peer-paths`): which is fastest depends on the machine, and the ratio is ours over the
peer's best. Each repeat also records the share of CPU time the hypervisor stole while it ran.
`time-to-accuracy` and `peer-time-to-accuracy` are in time_to_accuracy.py.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import time_to_accuracy  # noqa: E402
from cifar import CIFAR, cifar_folder  # noqa: E402

import keras_cnn  # noqa: E402

FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def machine():
    """What the numbers were measured on."""
    info = {"cpu": platform.processor(), "cores": os.cpu_count(), "flags": [], "python": platform.python_version(),
            "load_average": os.getloadavg()}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            text = cpuinfo.read()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
        present = set(next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
        info["flags"] = [flag for flag in FLAGS if flag in present]
    except (OSError, StopIteration):
        pass
    import tensorflow as tf

    info.update(tensorflow=tf.__version__, keras=keras.__version__)
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def report(args, title, header, rows, extra=None):
    """Print `rows` under `header` and write the JSON file (machine included) when --json was given."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    print(f"\n{title}")
    for line in (header, *rows):
        print("  ".join(str(cell).rjust(width) for cell, width in zip(line, widths)))
    if args.json:
        from keras_cnn.utils.io import write_json

        write_json(args.json, {"benchmark": args.command, "arguments": {k: v for k, v in vars(args).items() if k != "function"}, "machine": machine(),
                               "rows": [dict(zip(header, row)) for row in rows], **(extra or {})})


# ---------------------------------------------------------------------------------------------------------
# peak: the matmul ceiling


def matmul_gflops(size=2048, dtype="float32", seconds=2.0):
    """Sustained GFLOP/s of a square TensorFlow matmul, the best this CPU does on dense float math."""
    import tensorflow as tf

    a = tf.random.uniform((size, size), dtype=dtype)
    multiply = tf.function(lambda: tf.reduce_sum(tf.linalg.matmul(a, a)))
    multiply()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        multiply().numpy()
        runs += 1
    return 2 * size ** 3 * runs / (time.perf_counter() - start) / 1e9


def peak(args):
    rows = [(dtype, f"{matmul_gflops(dtype=dtype):.1f}") for dtype in ("float32", "bfloat16")]
    report(args, "Matmul 2048x2048, GFLOP/s", ("dtype", "GFLOP/s"), rows)


def activation(args):
    """Forward and backward time of the activation layers alone, over the maps of `args.model`'s activations,
    each kind interleaved with the others."""
    import tensorflow as tf

    from keras_cnn.models.layers import GELU
    from keras_cnn.training.precision import resolve_precision

    keras.mixed_precision.set_global_policy(resolve_precision(args.precision))
    policy = keras.mixed_precision.global_policy()
    model = keras_cnn.build(args.model, activation="gelu")
    shapes = [(args.batch_size, *layer.input.shape[1:]) for layer in model.layers if isinstance(layer, GELU)]
    maps = [tf.Variable(tf.cast(tf.random.normal(shape), policy.compute_dtype)) for shape in shapes]
    kinds = {"relu (Keras)": lambda: keras.layers.Activation("relu"),
             "gelu (Keras)": lambda: keras.layers.Activation("gelu"), "gelu (keras_cnn)": GELU}
    steps = {name: _activation_step([make() for _ in maps], maps) for name, make in kinds.items()}
    seconds = {name: [] for name in kinds}
    for _ in range(args.repeats + 1):  # the first round traces and compiles
        for name, step in steps.items():
            start = time.perf_counter()
            [gradient.numpy() for gradient in step()]
            seconds[name].append(time.perf_counter() - start)
    rows = [(name, f"{1000 * statistics.median(times[1:]):.0f}") for name, times in seconds.items()]
    report(args, f"{args.model}'s {len(maps)} activation maps at batch {args.batch_size} ({policy.name}): forward "
                 f"+ backward, ms, median of {args.repeats}", ("layer", "ms"), rows, {"shapes": shapes})


def _activation_step(layers, maps):
    """A compiled step: each layer on its map in training, then the gradient of the outputs' sum."""
    import tensorflow as tf

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            outputs = [tf.reduce_sum(tf.cast(layer(x, training=True), "float32")) for layer, x in zip(layers, maps)]
            total = tf.add_n(outputs)
        return tape.gradient(total, maps)
    return step


# ---------------------------------------------------------------------------------------------------------
# train: images/second of the default training path, beside the PyTorch peer


class EpochTimer(keras.callbacks.Callback):
    """Seconds of each training epoch, timed from outside keras_cnn.train as any user can."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def random_data(count, shape=(32, 32, 3), classes=10, seed=0):
    """`count` random training images in [0, 255] with labels, as an ImageData with no validation split."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (count + classes * 2, *shape)).astype("float32")
    y = np.arange(len(x)) % classes
    return keras_cnn.load_data((x, y), val_fraction=0, test_fraction=classes * 2 / len(x), seed=seed)


def keras_throughput(model, data, epochs=3, batch_size=128, **options):
    """Training images/second of keras_cnn.train on `data`: median over the epochs after the first."""
    timer = EpochTimer()
    with tempfile.TemporaryDirectory(prefix="bench-") as out:
        run = keras_cnn.train(model, data, epochs=epochs, batch_size=batch_size, recipe="sgd", out=out,
                              callbacks=[timer], verbose=0, **options)
    steps = -(-data.sizes["train"] // batch_size)
    return steps * batch_size / statistics.median(timer.seconds[1:]), run


def _fresh_keras_throughput(model, count, batch_size, precision, options):
    speed, run = keras_throughput(model, random_data(count), batch_size=batch_size, precision=precision, **options)
    return speed, run.config["precision"]


def fresh_keras_throughput(model, count, batch_size, precision, options=None, backend="tensorflow"):
    """keras_throughput on `count` random images in a new process on Keras's `backend`, as the peer runs: in one
    long process, each further keras_cnn.train of the same model ran slower (`small`: 5,751, 5,495, 5,302 img/s)."""
    import multiprocessing

    saved = os.environ.get("KERAS_BACKEND")
    os.environ["KERAS_BACKEND"] = backend  # the spawned process imports Keras with it
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(_fresh_keras_throughput, (model, count, batch_size, precision, options or {}))
    finally:
        if saved is None:
            del os.environ["KERAS_BACKEND"]
        else:
            os.environ["KERAS_BACKEND"] = saved


# PyTorch's CPU allocator hands each large activation back to glibc, which returns it to the OS (mmap) and
# page-faults it in again next step: measured here, that made the peer's `small` step 1.6-2x slower in some
# processes and not others. Keeping freed memory in the heap gives the peer its best, steady speed.
PEER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(16 << 30),
               "MALLOC_TOP_PAD_": str(1 << 30)}


# torch_reference.py's airbench is airbench94's network (GELU, a max-pool head scaled by 1/9): ours is built the
# same way beside it.
PEER_NETWORK = {"airbench": {"activation": "gelu", "head": "gmp", "head_scale": 1 / 9}}

# The peer's paths: name -> torch_reference.py flags. `bench.py train` compares against the fastest.
PEER_PATHS = {"fp32": [], "bf16": ["--bf16"], "fp32_compiled": ["--compile"], "bf16_compiled": ["--bf16", "--compile"]}


def peer_throughput(peer, model, batch_size=128, steps=40, path="bf16"):
    """Images/second of torch_reference.py's training steps (channels_last) on one of PEER_PATHS, run as a
    child process."""
    command = [sys.executable, peer, "throughput", "--model", model, "--batch-size", str(batch_size),
               "--steps", str(steps), "--channels-last", *PEER_PATHS[path]]
    output = subprocess.run(command, check=True, capture_output=True, text=True,
                            env={**os.environ, **PEER_MALLOC}).stdout
    return json.loads(output.strip().splitlines()[-1])["images_per_second"]


def cpu_jiffies():
    """(stolen, total) CPU time of all cores since boot, from /proc/stat (Linux; (0, 0) elsewhere). Stolen is
    time the hypervisor gave other guests while this machine wanted to run: on a shared virtual machine it
    slows whatever runs, whichever framework."""
    try:
        with open("/proc/stat") as stat:
            values = [int(value) for value in stat.readline().split()[1:]]
    except OSError:
        return 0, 0
    return values[7], sum(values)


def with_steal(measure, *args):
    """`measure(*args)` and the share of CPU time stolen while it ran."""
    stolen, total = cpu_jiffies()
    result = measure(*args)
    stolen_after, total_after = cpu_jiffies()
    return result, (stolen_after - stolen) / max(1, total_after - total)


def train_flops_per_image(model_name, shape=(32, 32, 3)):
    """Forward + backward FLOPs per training image: 3 passes of 2 FLOPs per multiply-accumulate."""
    return 6 * keras_cnn.describe(model_name, input_shape=shape, num_classes=10).total_macs


def _ours(backend):
    """The sample key of keras-cnn on `backend` ("keras" on TensorFlow, as earlier result files name it)."""
    return "keras" if backend == "tensorflow" else f"keras_{backend}"


def train(args):
    ceilings = {dtype: matmul_gflops(dtype=dtype) for dtype in ("float32", "bfloat16")}
    rows, raw = [], {}
    for name in args.models:
        samples = {**{_ours(backend): [] for backend in args.backends},
                   **{f"peer_{path}": [] for path in (args.peer_paths if args.peer else ())}}
        steal, precisions = {key: [] for key in samples}, {}
        for repeat in range(args.repeats):  # interleaved, so all see the same machine
            for backend in args.backends:
                (speed, precisions[backend]), stolen = with_steal(
                    fresh_keras_throughput, name, args.batch_size * args.steps, args.batch_size, args.precision,
                    PEER_NETWORK.get(name) if args.peer else None, backend)
                samples[_ours(backend)].append(speed)
                steal[_ours(backend)].append(stolen)
            for path in args.peer_paths if args.peer else ():
                speed, stolen = with_steal(peer_throughput, args.peer, name, args.batch_size, args.steps, path)
                samples[f"peer_{path}"].append(speed)
                steal[f"peer_{path}"].append(stolen)
            print(f"{name} repeat {repeat + 1}: " + ", ".join(f"{key} {values[-1]:.0f} (steal {steal[key][-1]:.0%})"
                                                              for key, values in samples.items()), flush=True)
        first = args.backends[0]
        ours = statistics.median(samples[_ours(first)])
        gflops = ours * train_flops_per_image(name) / 1e9
        ceiling = ceilings["bfloat16" if "bfloat16" in precisions[first] else "float32"]
        row = [name, precisions[first], f"{ours:.0f}", f"{gflops:.1f}", f"{gflops / ceiling:.0%}"]
        for backend in args.backends[1:]:
            other = statistics.median(samples[_ours(backend)])
            row += [precisions[backend], f"{other:.0f}", f"{other / ours:.2f}x"]
        if args.peer:
            peers = {key: statistics.median(values) for key, values in samples.items() if key.startswith("peer_")}
            best = max(peers, key=peers.get)
            row += [f"{value:.0f}" for value in peers.values()] + [best[5:], f"{ours / peers[best]:.2f}x"]
        rows.append(row)
        raw[name] = {"images_per_second": samples, "steal": steal, "precision": precisions}
    header = ["model", f"{args.backends[0]} precision", "img/s", "GFLOP/s", "of peak"]
    for backend in args.backends[1:]:
        header += [f"{backend} precision", f"{backend} img/s", f"{backend} / {args.backends[0]}"]
    if args.peer:
        header += [f"peer {path} img/s" for path in args.peer_paths] + ["peer best", "ours / peer best"]
    peaks = ", ".join(f"{dtype} {value:.0f}" for dtype, value in ceilings.items())
    report(args, f"Training throughput, batch {args.batch_size}, median of {args.repeats}; 'of peak' is against "
                 f"the matmul peak of the precision's compute type (GFLOP/s: {peaks})", header, rows,
           {"samples": raw, "matmul_gflops": ceilings})


# ---------------------------------------------------------------------------------------------------------
# infer: batch-1 latency and batch throughput of every runtime


def infer(args):
    import numpy as np

    from keras_cnn.artifacts.prediction import keras_artifact, load_artifact, median_ms

    if args.run:
        model, data = keras_cnn.load(args.run).model, None
    else:  # speed does not depend on the weights
        model, data = keras_cnn.build(args.model, input_shape=(32, 32, 3), num_classes=10), random_data(1000)
    batch = np.random.default_rng(0).uniform(0, 255, (args.batch_size, *model.input_shape[1:])).astype("float32")
    with tempfile.TemporaryDirectory(prefix="bench-infer-") as out:
        exported = keras_cnn.export(args.run or model, out, formats=("saved_model", "tflite"),
                                    quantize=("float32", "float16", "dynamic", "int8"), data=data,
                                    latency_runs=2, verbose=False)
        rows = []
        for row in exported.rows:
            keras_row = row["format"] == "keras"
            artifact = keras_artifact(model) if keras_row else load_artifact(os.path.join(out, row["artifact"]))
            single = median_ms(lambda: artifact.run(batch[:1]), args.runs)
            many = median_ms(lambda: artifact.probabilities(batch), max(3, args.runs // 20))
            size = "" if row["size_kb"] is None else f"{row['size_kb']:.0f}"
            rows.append((row["format"], row["quantization"], size, f"{single:.2f}",
                         f"{args.batch_size / many * 1000:.0f}"))
    report(args, f"Inference of {exported.model}: batch-1 latency (median of {args.runs}) and "
                 f"batch-{args.batch_size} throughput", ("format", "quantization", "KB", "batch-1 ms", "img/s"), rows)


# ---------------------------------------------------------------------------------------------------------
# memory: resident set size after each epoch


def rss_mb():
    """(current, peak) resident set size of this process in MB, from /proc (Linux)."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return values["VmRSS"], values["VmHWM"]


class MemoryProbe(keras.callbacks.Callback):
    """RSS and peak RSS after each epoch."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def on_epoch_end(self, epoch, logs=None):
        current, peak = rss_mb()
        self.rows.append((epoch + 1, f"{current:.0f}", f"{peak:.0f}"))
        print(f"epoch {epoch + 1}: RSS {current:.0f} MB, peak {peak:.0f} MB", flush=True)


def memory(args):
    data = (keras_cnn.load_data(f"folder:{args.data}", seed=0) if args.data
            else random_data(args.batch_size * args.steps))
    probe = MemoryProbe()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as out:
        keras_cnn.train(args.model, data, epochs=args.epochs, batch_size=args.batch_size, recipe="sgd", out=out,
                        callbacks=[probe], verbose=0)
    from_second = [float(row[1]) for row in probe.rows[1:]]
    growth = from_second[-1] - from_second[0]
    report(args, f"{args.model}, batch {args.batch_size}: RSS after each epoch (MB); epoch 2 -> "
                 f"{args.epochs}: {growth:+.0f} MB", ("epoch", "RSS MB", "peak RSS MB"), probe.rows,
           {"growth_from_epoch_2_mb": growth})


# ---------------------------------------------------------------------------------------------------------
# pipeline: is the input pipeline ever the bottleneck?


def pipeline(args):
    spec = (cifar_folder(args.data, None, args.limit // 10, 0, tempfile.mkdtemp(prefix="bench-folder-"))
            if args.limit else f"folder:{args.data}")
    folder = keras_cnn.load_data(spec, seed=0, val_fraction=0)
    x, y = folder.arrays("train")  # the very same training images, decoded into memory
    arrays = keras_cnn.load_data((x, y), val_fraction=0, test_fraction=0.02, seed=0, class_names=folder.class_names)
    samples = {"folder": [], "arrays": []}
    for repeat in range(args.repeats):
        for label, data in (("folder", folder), ("arrays", arrays)):
            speed, _ = keras_throughput(args.model, data, epochs=args.epochs, augment="basic")
            samples[label].append(speed)
        print(f"repeat {repeat + 1}: folder {samples['folder'][-1]:.0f}, arrays {samples['arrays'][-1]:.0f} img/s",
              flush=True)
    ratio = statistics.median(f / a for f, a in zip(samples["folder"], samples["arrays"]))
    rows = [(label, f"{statistics.median(values):.0f}") for label, values in samples.items()]
    report(args, f"{args.model} with `basic` augmentation, images/second after the first epoch: folder / "
                 f"arrays = {ratio:.2f}", ("source", "img/s"), rows, {"samples": samples, "ratio": ratio})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, function, help):
        sub = commands.add_parser(name, help=help)
        sub.set_defaults(function=function)
        sub.add_argument("--json", help="also write the results, with the machine description, to this file")
        return sub

    command("peak", peak, "matmul GFLOP/s in float32 and bfloat16")
    sub = command("activation", activation, "forward + backward time of Keras's GELU and keras_cnn's, and ReLU")
    sub.add_argument("--model", default="airbench")
    sub.add_argument("--batch-size", type=int, default=1024)
    sub.add_argument("--repeats", type=int, default=5)
    sub.add_argument("--precision", default="auto")
    sub = command("train", train, "training images/second beside the PyTorch peer")
    sub.add_argument("--models", nargs="+", default=["small", "deeper"])
    sub.add_argument("--backends", nargs="+", choices=["tensorflow", "jax", "torch"], default=["tensorflow"],
                     help="Keras backends to train on, each in its own process; ratios are against the first")
    sub.add_argument("--peer", help="path to torch_reference.py (needs torch installed)")
    sub.add_argument("--batch-size", type=int, default=128)
    sub.add_argument("--steps", type=int, default=391,
                     help="steps per epoch and per peer measurement (391: one CIFAR-10 epoch at batch 128)")
    sub.add_argument("--repeats", type=int, default=3)
    sub.add_argument("--peer-paths", nargs="+", choices=list(PEER_PATHS), default=list(PEER_PATHS),
                     help="the peer's paths to time (default: all four; the ratio is against the fastest)")
    sub.add_argument("--precision", default="auto")
    sub = command("infer", infer, "latency and throughput of Keras, SavedModel and each TFLite variant")
    sub.add_argument("--run", help="a run folder (default: --model with random weights)")
    sub.add_argument("--model", default="small")
    sub.add_argument("--batch-size", type=int, default=128)
    sub.add_argument("--runs", type=int, default=200, help="batch-1 calls whose median is the latency")
    sub = command("memory", memory, "resident memory after each training epoch")
    sub.add_argument("--model", default="deeper")
    sub.add_argument("--epochs", type=int, default=6)
    sub.add_argument("--batch-size", type=int, default=128)
    sub.add_argument("--steps", type=int, default=60, help="steps per epoch on random data")
    sub.add_argument("--data", help="a CIFAR-10-style folder instead of random data")
    sub = command("pipeline", pipeline, "training from an image folder vs from in-memory arrays")
    sub.add_argument("--data", default=CIFAR)
    sub.add_argument("--model", default="small")
    sub.add_argument("--limit", type=int, default=10_000, help="training images (0: all)")
    sub.add_argument("--epochs", type=int, default=3)
    sub.add_argument("--repeats", type=int, default=2)
    time_to_accuracy.add_commands(command, report)
    args = parser.parse_args(argv)
    args.function(args)


if __name__ == "__main__":
    main()
