#!/usr/bin/env python3
"""Before against after: the same training or export timed with two checkouts of keras_cnn, interleaved.

    git worktree add /tmp/before COMMIT
    python benchmarks/before_after.py train --before /tmp/before --models small deeper --steps 60 --repeats 3
    python benchmarks/before_after.py export --before /tmp/before --run RUN_DIR --repeats 3

Each sample is a new process whose `keras_cnn` comes from `--before` (put first on PYTHONPATH) or from this
checkout; the two alternate, so both see the same machine. `train` times `bench.keras_throughput` (sgd, batch
128, precision "auto", random images); `export` the wall time of `keras-cnn export RUN --out OUT`. Not a test.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = ("import json, sys; sys.path.insert(0, sys.argv[3]); import bench; "
          "speed, run = bench.keras_throughput(sys.argv[1], bench.random_data(128 * int(sys.argv[2])), "
          "batch_size=128, precision='auto'); print(json.dumps(speed))")


def _env(tree):
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "KERAS_BACKEND")}
    if tree:
        env["PYTHONPATH"] = tree
    return env


def train_sample(tree, model, steps):
    done = subprocess.run([sys.executable, "-c", SAMPLE, model, str(steps), HERE], env=_env(tree),
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def export_sample(tree, run):
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "keras_cnn.cli", "export", run, "--out", os.path.join(out, "e")],
                       env=_env(tree), capture_output=True, check=True)
        return time.perf_counter() - start


def compare(label, sample, repeats, before):
    samples = {"before": [], "after": []}
    for _ in range(repeats):
        for name, tree in (("before", before), ("after", None)):
            samples[name].append(sample(tree))
    b, a = statistics.median(samples["before"]), statistics.median(samples["after"])
    print(f"{label}: before {[round(x, 1) for x in samples['before']]}, after {[round(x, 1) for x in samples['after']]}"
          f", after / before (medians) {a / b:.3f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["train", "export"])
    parser.add_argument("--before", required=True, help="a checkout of the code before (e.g. a git worktree)")
    parser.add_argument("--models", nargs="+", default=["small", "deeper"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--run", help="the run folder `export` exports")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.what == "train":
        for model in args.models:
            compare(f"{model} img/s", lambda tree: train_sample(tree, model, args.steps), args.repeats, args.before)
    else:
        compare("export s", lambda tree: export_sample(tree, args.run), args.repeats, args.before)


if __name__ == "__main__":
    main()
