"""`ExportConfig`: the settings of one `keras_cnn.export`, checked once, when they are made.

Every check needs no model and no data, and raises a one-line `ValueError` ending in `Received: name=value`
(`ExportError` for a format whose packages are missing); the checks that need the source are the pipeline's."""
import dataclasses
import importlib.util
import math
import numbers

from keras_cnn.exporting.tflite import ExportError
from keras_cnn.models import options

FORMATS = ("saved_model", "tflite", "onnx")
MAX_TEST_IMAGES = 2000


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Every argument of `keras_cnn.export` but its source (its docstring says what each means), checked;
    `formats` and `quantize` as tuples, however they were given."""

    out_dir: str = None
    formats: tuple = ("saved_model", "tflite")
    quantize: tuple = ("float32", "int8")
    data: object = None  # an ImageData, a load_data spec or an (x, y) tuple: kept as given, never copied
    io: str = "uint8"
    max_accuracy_drop: float = 1.0
    rescue: bool = False
    calibration_samples: int = 300
    test_samples: int = MAX_TEST_IMAGES
    latency_runs: int = 50
    class_names: list = None
    author: str = None
    license: str = None
    converter: str = "saved_model"
    verbose: bool = True

    def __post_init__(self):
        object.__setattr__(self, "formats", _choices("formats", self.formats, FORMATS))
        object.__setattr__(self, "quantize", _choices("quantize", self.quantize, options.QUANTIZATIONS))
        if self.io not in options.INTEGER_IO:
            raise ValueError(f"io must be one of {options.INTEGER_IO}. Received: io={self.io!r}")
        if self.converter not in options.TFLITE_CONVERTERS:
            raise ValueError(f"converter must be one of {options.TFLITE_CONVERTERS}. "
                             f"Received: converter={self.converter!r}")
        _in_range("calibration_samples", self.calibration_samples, 100, 500)
        _in_range("test_samples", self.test_samples, 1, MAX_TEST_IMAGES)
        options.positive_int("latency_runs", self.latency_runs)
        drop = self.max_accuracy_drop  # below 0 asks a quantized model to gain accuracy
        if isinstance(drop, bool) or not isinstance(drop, numbers.Real) or math.isnan(drop):
            options.fail("`max_accuracy_drop` must be a number of top-1 accuracy points", "max_accuracy_drop", drop)
        if "onnx" in self.formats:
            _require_onnx()


def _choices(name, values, allowed):
    values = tuple(v.strip() for v in values.split(",")) if isinstance(values, str) else tuple(values)
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        raise ValueError(f"{name} must be one or more of {', '.join(allowed)}. Received: {name}={values!r}")
    return tuple(dict.fromkeys(values))


def _in_range(name, value, low, high):
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}]. Received: {name}={value!r}")


def _require_onnx():
    missing = [module for module in ("tf2onnx", "onnx", "onnxruntime") if importlib.util.find_spec(module) is None]
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}, which are not installed: "
                          f'pip install -e ".[onnx]". Received: formats=onnx')
