"""Train a small CNN on digits, export it for phones (TFLite float32 + int8) and predict with the int8 file.

    python examples/export_tflite.py [--epochs 10] [--out saved_models/digits-tflite]
"""
import argparse

import keras_cnn

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--out", help="run folder (default: a new one under saved_models/)")
args = parser.parse_args()

run = keras_cnn.train("small", data="digits", epochs=args.epochs, out=args.out, verbose=0)
print(f"trained: test accuracy {run.metrics.accuracy:.2%}")

# Every artifact is reloaded in its own runtime and checked against the Keras model on the test split.
report = keras_cnn.export(run.path, formats=("tflite",), quantize=("float32", "int8"), verbose=False)
print(report)

data = keras_cnn.load_data("digits")
images, labels = data.arrays("test", limit=5)
int8 = f"{report.out_dir}/small_int8.tflite"
for prediction, label in zip(keras_cnn.predict(int8, list(images), top=2), labels):
    print(f"true {label}: {prediction}")
