#!/usr/bin/env python3
"""Export benchmark: is a trained run ready to ship? Checks the mobile targets on one run folder.

Exports RUN_DIR (float32, float16, dynamic and int8 TFLite, verified on up to 2,000 test images by
keras_cnn.export, each also loaded by MediaPipe's ImageClassifier) and prints, against the targets:

  int8 size / float32 size               <= 0.27
  int8 top-1 - Keras top-1               within 0.5 points
  float32 TFLite top-1 agreement         100 %
  int8 / float32 batch-1 latency         <= 0.5
  MediaPipe agreement with LiteRT        >= 99.5 % (float32), >= 98 % (int8)
  batch-1 latency: int8 TFLite vs Keras (the model in a `tf.function`, and `model.predict`) vs the PyTorch
  peer's eager model (when torch is importable and --torch-reference points at torch_reference.py)

With --converters it also compares TensorFlow's converter on the SavedModel (keras_cnn's default), Keras's
own exporter given the same settings (`converter="keras"`), and Keras's exporter as it comes
(`model.export(path, format="litert")`, float32): the ops in each file, Flex ops, size, latency, agreement.

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
from keras_cnn.artifacts.prediction import median_ms  # noqa: E402
from keras_cnn.models.options import QUANTIZATIONS  # noqa: E402

TARGETS = {"size_ratio": 0.27, "accuracy_delta_pts": 0.5, "float32_agreement_pct": 100.0, "latency_ratio": 0.5}
TORCH_NAMES = {"small": "small", "deeper": "deeper", "lenet": "lenet", "mnist_cnn": "mnist", "simple": "simple"}


def main(argv=None):
    args = parse(argv)
    with tempfile.TemporaryDirectory(prefix="export-bench-") as scratch:
        report = export(args.run_dir, args.out or scratch, formats="tflite", quantize=QUANTIZATIONS,
                        latency_runs=args.runs)
        converters = compare_converters(args.run_dir, scratch, args.runs) if args.converters else None
    rows = {row["quantization"] if row["format"] == "tflite" else row["format"]: row for row in report.rows}
    run = load(args.run_dir)
    results = {
        "model": report.model,
        "test_images": report.test_images,
        "size_ratio": rows["int8"]["size_kb"] / rows["float32"]["size_kb"],
        "accuracy_delta_pts": rows["int8"]["accuracy_pct"] - rows["keras"]["accuracy_pct"],
        "float32_agreement_pct": rows["float32"]["agreement_pct"],
        "latency_ratio": rows["int8"]["latency_ms"] / rows["float32"]["latency_ms"],
        "client": {q: rows[q]["client"] for q in QUANTIZATIONS},
        "converters": converters,
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
    p.add_argument("--converters", action="store_true", help="also compare the TFLite converters (see above)")
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
        "latency_ratio": results["latency_ratio"] <= TARGETS["latency_ratio"],
        "client": all(client.get("agreement_pct", 0) >= (98.0 if q == "int8" else 99.5) and client["names_match"]
                      for q, client in results["client"].items()),
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
    print(f"  int8 / float32 latency     {results['latency_ratio']:.3f}   (target <= {TARGETS['latency_ratio']})  "
          f"{'ok' if checks['latency_ratio'] else 'MISSED'}")
    print("  MediaPipe agreement        " + ", ".join(f"{q} {c.get('agreement_pct', c['status'])}"
                                                       for q, c in results["client"].items()) +
          f"  {'ok' if checks['client'] else 'MISSED'}")
    for name, row in (results["converters"] or {}).items():
        measured = (f"{row['latency_ms']:7.3f} ms  agree {row['agreement_pct']:.2f} %" if "error" not in row
                    else f"not loadable: {row['error'][:80]}")
        print(f"  converter {name:<22} {row['size_kb']:8.1f} KB {measured}  flex {row['flex_ops'] or '-'}  "
              f"ops {row['ops']}")
    latency = results["latency_ms"]
    int8 = latency["tflite_int8"]
    for label, key in (("TFLite int8", "tflite_int8"), ("TFLite float32", "tflite_float32"),
                       ("Keras tf.function call", "keras_tf_function"), ("Keras predict", "keras_predict"),
                       ("PyTorch eager", "torch_eager")):
        value = latency[key]
        shown = "n/a (needs torch and --torch-reference)" if value is None else \
            f"{value:8.3f} ms  ({value / int8:6.1f}x TFLite int8)"
        print(f"  batch-1 {label:<24}{shown}")


def compare_converters(run_dir, scratch, runs):
    """{converter: size, latency, agreement with the Keras model, ops and Flex ops} of the float32 files."""
    from keras_cnn.artifacts.prediction import keras_artifact
    from keras_cnn.exporting.pipeline import _run_data, inference_model
    from keras_cnn.exporting.tflite import mobile_model

    run = load(run_dir)
    model = mobile_model(inference_model(run.model))
    x, _ = _run_data(run).arrays("test", image_shape=run.model.input_shape[1:], limit=2000)
    x = np.repeat(x, 3 // x.shape[-1], axis=-1)
    expected = keras_artifact(model).probabilities(x)
    results = {}
    for name in ("saved_model", "keras"):
        out = os.path.join(scratch, name)
        export(run_dir, out, formats="tflite", quantize="float32", converter=name, latency_runs=2, verbose=False)
        results[name] = describe_tflite(os.path.join(out, f"{run.config['model']}_float32.tflite"), x, expected,
                                        runs)
    plain = os.path.join(scratch, "keras_default.tflite")
    model.export(plain, format="litert", verbose=False)  # Keras as it comes: Flex allowed, no metadata
    results["keras_default"] = describe_tflite(plain, x, expected, runs)
    trained = os.path.join(scratch, "keras_default_trained.tflite")
    run.model.export(trained, format="litert", verbose=False)  # what a user gets from the run's model.keras
    try:
        results["keras_default_trained"] = describe_tflite(trained, x, expected, runs)
    except ValueError as error:  # LiteRT without the Flex delegate cannot load it
        results["keras_default_trained"] = {"size_kb": round(os.path.getsize(trained) / 1024, 1),
                                            "ops": tflite_ops(trained), "error": str(error)}
        results["keras_default_trained"]["flex_ops"] = sorted(op for op in results["keras_default_trained"]["ops"]
                                                              if op.startswith("Flex"))
    return results


def describe_tflite(path, x, expected, runs):
    from keras_cnn.artifacts.prediction import latency_ms, load_artifact

    artifact = load_artifact(path)
    ops = tflite_ops(path)
    probabilities = artifact.probabilities(x)
    return {"size_kb": round(os.path.getsize(path) / 1024, 1),
            "latency_ms": round(latency_ms(artifact, x[0], runs), 4),
            "agreement_pct": round(float(np.mean(probabilities.argmax(1) == expected.argmax(1)) * 100), 2),
            "max_abs_diff": float(np.abs(probabilities - expected).max()),
            "ops": ops, "flex_ops": sorted(op for op in ops if op.startswith("Flex"))}


def tflite_ops(path):
    """{op name: count} of a .tflite file, read with TensorFlow's generated flatbuffer schema."""
    from tensorflow.lite.python import schema_py_generated as schema

    with open(path, "rb") as handle:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(handle.read(), 0))
    names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    counts = {}
    for subgraph in model.subgraphs:
        for operator in subgraph.operators:
            code = model.operatorCodes[operator.opcodeIndex]
            name = code.customCode.decode() if code.customCode else names[max(code.builtinCode,
                                                                              code.deprecatedBuiltinCode)]
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


if __name__ == "__main__":
    sys.exit(main())
