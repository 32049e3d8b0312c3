"""The file that ships, measured after every trained trial: converted as `keras_cnn.export` converts, run in LiteRT.

A trial's trained model goes through `keras_cnn.exporting.pipeline.tflite_bytes` (the float32 inference rebuild, the
mobile model taking RGB, TensorFlow's converter from a SavedModel with built-in ops only, the MediaPipe
metadata), in the variant the search ships (int8 by default, calibrated on training images as export
calibrates). The bytes are written to a temporary file and measured by `keras_cnn.exporting.verification.measure`,
the export report's own row: the file's size, its top-1 accuracy on the validation split in LiteRT,
its agreement with the Keras model, and its batch-1 latency (median of `latency_runs` calls, LiteRT's
default CPU delegate and thread count). The size is the size of the file `export` writes for the same
weights, byte for byte.
"""
import dataclasses
import json
import os
import tempfile

import numpy as np

from keras_cnn.models.options import QUANTIZATIONS, positive_int

LATENCY_RUNS = 50  # export's default
CALIBRATION_SAMPLES = 300  # export's default
MAX_VAL_IMAGES = 2000  # export verifies on at most as many test images
METRICS = ("ship_accuracy", "ship_kb", "ship_latency_ms", "ship_agreement_pct")


@dataclasses.dataclass
class Shipping:
    """How a search ships its models: the variant, int8's calibration images and the validation images."""

    variant: str
    latency_runs: int
    class_names: list
    x: np.ndarray
    y: np.ndarray
    calibration: np.ndarray = None

    def images_for(self, shape):
        """The validation and calibration images adapted to `shape`, a model's input that can differ from the
        data's (a transfer proposal's `input_size`), as the data pipeline adapts them."""
        if tuple(self.x.shape[1:]) == tuple(shape):
            return self.x, self.calibration
        import tensorflow as tf

        from keras_cnn.data.loading import adapt

        def resize(images):  # to the size of `shape`, keeping the images' channels (calibration's are RGB)
            return None if images is None else adapt(tf.constant(images), (*shape[:2], images.shape[-1])).numpy()

        return adapt(tf.constant(self.x), shape).numpy(), resize(self.calibration)

    @property
    def threads(self):
        """How the latency is timed: LiteRT's interpreter with its default thread count, on this many CPUs."""
        return {"latency_threads": "LiteRT default", "cpus": os.cpu_count()}


def check(variant, latency_runs, image_data=None):
    """ValueError, one line, for a variant or run count that cannot be measured (int8 with no training images)."""
    if variant not in QUANTIZATIONS:
        raise ValueError(f"`ship` must be one of {', '.join(QUANTIZATIONS)}. Received: ship={variant!r}")
    positive_int("latency_runs", latency_runs, minimum=0)
    if image_data is not None and variant == "int8" and not image_data.sizes["train"]:
        raise ValueError(f"an int8 file is calibrated on training images and {image_data.name} has none; ship "
                         "float32, float16 or dynamic. Received: ship='int8'")


def prepare(image_data, variant, latency_runs):
    """The `Shipping` of a search on `image_data`: its validation images, and int8's calibration images."""
    from keras_cnn.exporting.pipeline import calibration_images

    check(variant, latency_runs, image_data)
    x, y = image_data.arrays("val", limit=MAX_VAL_IMAGES)
    calibration = calibration_images(image_data, image_data.image_shape, CALIBRATION_SAMPLES) \
        if variant == "int8" else None
    return Shipping(variant, latency_runs, list(image_data.class_names), x, y, calibration)


def measure(model, shipping):
    """{ship_accuracy (0-1), ship_kb, ship_latency_ms, ship_agreement_pct} of `model` converted as it ships."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return _measure_on_tensorflow(model, shipping)
    from keras_cnn.artifacts.prediction import keras_artifact, load_artifact
    from keras_cnn.exporting.pipeline import inference_model, tflite_bytes
    from keras_cnn.exporting.tflite import mobile_model
    from keras_cnn.exporting.verification import TestSet, rgb_expected
    from keras_cnn.exporting.verification import measure as measure_artifact

    x, calibration = shipping.images_for(tuple(model.input_shape[1:]))
    model_bytes = tflite_bytes(model, shipping.variant, calibration, class_names=shipping.class_names)
    gray = model.input_shape[-1] == 1
    test = TestSet(x, shipping.y, keras_artifact(model).probabilities(x), shipping.latency_runs,
                   rgb_expected(mobile_model(inference_model(model)), x) if gray else None)
    with tempfile.TemporaryDirectory(prefix=".ship-") as folder:
        path = os.path.join(folder, f"{model.name}_{shipping.variant}.tflite")
        with open(path, "wb") as handle:
            handle.write(model_bytes)
        row = measure_artifact(load_artifact(path), "tflite", shipping.variant, test, path,
                               timed=shipping.latency_runs > 0)
    return {"ship_accuracy": round(row["accuracy_pct"] / 100, 5), "ship_kb": row["size_kb"],
            "ship_latency_ms": row["latency_ms"], "ship_agreement_pct": row["agreement_pct"]}


def _measure_on_tensorflow(model, shipping):
    """`measure` in a TensorFlow process, for a search on another backend: Keras keeps one backend per process,
    and the converter takes TensorFlow models. The trial's model (a `.keras` file, which loads on any backend)
    and the `Shipping` (its arrays as raw numbers, the rest as JSON) go through a private temporary folder."""
    import subprocess
    import sys

    from keras_cnn.utils.io import MODEL_FILE, write_json

    with tempfile.TemporaryDirectory(prefix=".ship-") as folder:
        model.save(os.path.join(folder, MODEL_FILE))
        arrays = {name: getattr(shipping, name) for name in ("x", "y", "calibration")}
        layouts = {name: _write_raw(os.path.join(folder, name), array) for name, array in arrays.items()
                   if array is not None}
        settings = {field.name: getattr(shipping, field.name) for field in dataclasses.fields(shipping)
                    if field.name not in arrays}
        write_json(os.path.join(folder, "shipping.json"), {"settings": settings, "arrays": layouts})
        done = subprocess.run([sys.executable, "-m", "keras_cnn.tuning.shipping", folder], capture_output=True,
                              env={**os.environ, "KERAS_BACKEND": "tensorflow"}, text=True)
        if done.returncode:
            raise ValueError(f"measuring the shipped file in a TensorFlow process failed: "
                             f"{(done.stderr.strip().splitlines() or ['no message'])[-1]}")
        with open(os.path.join(folder, "measured.json")) as handle:
            return json.load(handle)


def _write_raw(path, array):
    """Write `array`'s numbers alone (nothing that could hold code) and return its dtype and shape."""
    array.tofile(path)
    return {"dtype": array.dtype.str, "shape": list(array.shape)}


def _measure_saved(folder):
    """The TensorFlow side of `_measure_on_tensorflow`: measure the model saved in `folder`, write measured.json."""
    from keras_cnn.utils.io import MODEL_FILE, load_model, write_json

    with open(os.path.join(folder, "shipping.json")) as handle:
        saved = json.load(handle)
    arrays = {name: np.fromfile(os.path.join(folder, name), dtype=layout["dtype"]).reshape(layout["shape"])
              for name, layout in saved["arrays"].items()}
    shipping = Shipping(**saved["settings"], **arrays)
    write_json(os.path.join(folder, "measured.json"), measure(load_model(os.path.join(folder, MODEL_FILE)), shipping))


if __name__ == "__main__":
    import sys

    _measure_saved(sys.argv[1])
