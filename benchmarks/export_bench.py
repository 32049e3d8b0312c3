#!/usr/bin/env python3
"""Export benchmark: is a trained run ready to ship? Checks the issue's "done" targets on one run folder.

Exports RUN_DIR (float32 and int8 TFLite, verified on up to 2,000 test images by keras_cnn.export)
and prints, against the targets:

  int8 size / float32 size               <= 0.27
  int8 top-1 - Keras top-1               within 0.5 points
  float32 TFLite top-1 agreement         100 %
  batch-1 latency: int8 TFLite vs Keras (the model in a `tf.function`, and `model.predict`) vs the PyTorch
  peer's eager model (when torch is importable and --torch-reference points at torch_reference.py)

The PyTorch latency times the seeds' architecture from torch_reference.py with random weights in
eval mode under `torch.no_grad()` (speed does not depend on the weights). The last line is JSON.

    python benchmarks/export_bench.py saved_models/small-cifar10 \\
        --torch-reference ../shared/bench/torch_reference.py
"""
import argparse
import importlib.util
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from keras_cnn import export, load  # noqa: E402
from keras_cnn.prediction import median_ms  # noqa: E402

TARGETS = {"size_ratio": 0.27, "accuracy_delta_pts": 0.5, "float32_agreement_pct": 100.0}
TORCH_NAMES = {"small": "small", "deeper": "deeper", "lenet": "lenet", "mnist_cnn": "mnist", "simple": "simple"}


def main(argv=None):
    args = parse(argv)
    with tempfile.TemporaryDirectory(prefix="export-bench-") as scratch:
        report = export(args.run_dir, args.out or scratch, formats="tflite", quantize=("float32", "int8"),
                        latency_runs=args.runs)
    rows = {row["quantization"] if row["format"] == "tflite" else row["format"]: row for row in report.rows}
    run = load(args.run_dir)
    results = {
        "model": report.model,
        "test_images": report.test_images,
        "size_ratio": rows["int8"]["size_kb"] / rows["float32"]["size_kb"],
        "accuracy_delta_pts": rows["int8"]["accuracy_pct"] - rows["keras"]["accuracy_pct"],
        "float32_agreement_pct": rows["float32"]["agreement_pct"],
        "latency_ms": {
            "tflite_int8": rows["int8"]["latency_ms"],
            "tflite_float32": rows["float32"]["latency_ms"],
            "keras_tf_function": rows["keras"]["latency_ms"],
            "keras_predict": keras_predict_ms(run.model, args.runs),
            "torch_eager": torch_eager_ms(args.torch_reference, run, args.runs),
        },
    }
    print_summary(results)
    print(json.dumps(results))
    return 0 if all(passed(results).values()) else 1


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a trained run folder (model.keras, config.json, labels.txt)")
    p.add_argument("--torch-reference", help="path of shared/bench/torch_reference.py, for the PyTorch latency")
    p.add_argument("--runs", type=int, default=200, help="batch-1 runs per latency median (default 200)")
    p.add_argument("--out", help="where the artifacts go (default: a temporary folder, not RUN_DIR/export)")
    return p.parse_args(argv)


def keras_predict_ms(model, runs):
    """Median ms of `model.predict` on one image (the call most tutorials use)."""
    image = np.zeros((1, *model.input_shape[1:]), np.float32)
    return median_ms(lambda: model.predict(image, verbose=0), runs)


def torch_eager_ms(reference_path, run, runs):
    """Median ms of the PyTorch peer's model on one image, or None without torch or its script."""
    name = run.config.get("model")
    if not reference_path or name not in TORCH_NAMES or importlib.util.find_spec("torch") is None:
        return None
    import torch

    spec = importlib.util.spec_from_file_location("torch_reference", reference_path)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    height, _, channels = run.model.input_shape[1:]
    model, _, _ = reference.make(TORCH_NAMES[name], channels, height, num_classes=len(run.class_names))
    model.eval()
    image = torch.zeros(1, channels, height, height)
    with torch.no_grad():
        return median_ms(lambda: model(image), runs)


def passed(results):
    return {
        "size_ratio": results["size_ratio"] <= TARGETS["size_ratio"],
        "accuracy_delta_pts": abs(results["accuracy_delta_pts"]) <= TARGETS["accuracy_delta_pts"],
        "float32_agreement_pct": results["float32_agreement_pct"] >= TARGETS["float32_agreement_pct"],
    }


def print_summary(results):
    checks = passed(results)
    print(f"\n{results['model']}: {results['test_images']} test images")
    print(f"  int8 / float32 size        {results['size_ratio']:.3f}   (target <= {TARGETS['size_ratio']})  "
          f"{'ok' if checks['size_ratio'] else 'MISSED'}")
    print(f"  int8 - Keras top-1         {results['accuracy_delta_pts']:+.2f} pts   (target within "
          f"{TARGETS['accuracy_delta_pts']})  {'ok' if checks['accuracy_delta_pts'] else 'MISSED'}")
    print(f"  float32 TFLite agreement   {results['float32_agreement_pct']:.2f} %   (target 100)  "
          f"{'ok' if checks['float32_agreement_pct'] else 'MISSED'}")
    latency = results["latency_ms"]
    int8 = latency["tflite_int8"]
    for label, key in (("TFLite int8", "tflite_int8"), ("TFLite float32", "tflite_float32"),
                       ("Keras tf.function call", "keras_tf_function"), ("Keras predict", "keras_predict"),
                       ("PyTorch eager", "torch_eager")):
        value = latency[key]
        shown = "n/a (needs torch and --torch-reference)" if value is None else \
            f"{value:8.3f} ms  ({value / int8:6.1f}x TFLite int8)"
        print(f"  batch-1 {label:<24}{shown}")


if __name__ == "__main__":
    sys.exit(main())
