"""What `keras_cnn.exporting.pipeline` writes about its artifacts: the report (a table and `export_report.json`) and
the JSON sidecar next to each artifact."""
import dataclasses
import os

from keras_cnn.artifacts import metadata as tflite_metadata
from keras_cnn.artifacts.artifact import SIGNATURE
from keras_cnn.utils.io import LABELS_FILE
from keras_cnn.utils.tables import format_table


@dataclasses.dataclass
class ExportReport:
    """What was exported and how each artifact measured against the Keras model; print it for a table."""

    model: str
    source: str  # the run folder, or None for a model object
    out_dir: str
    precision: str  # dtype policy the source model was trained under
    source_agreement_pct: float  # top-1 agreement of the float32 rebuild with the source model
    test_data: str
    test_images: int
    calibration_images: int
    max_accuracy_drop: float
    rows: list
    int8_layers: list = None  # each quantized layer's int8 error, worst first (`tflite_export.layer_errors`)
    rescued_float_layers: list = None  # layers a rescue kept in float

    def to_dict(self):
        return dataclasses.asdict(self)

    def table(self, color=False):
        """The rows as a text table; flagged rows in red when `color`."""
        header = ("artifact", "format", "quant", "size KB", "top-1 %", "agree %", "max |dp|", "ms (b=1)", "client",
                  "")
        lines = [(row["artifact"], row["format"], row["quantization"], _fixed(row["size_kb"], 1),
                  _fixed(row["accuracy_pct"], 2), _fixed(row["agreement_pct"], 2), f"{row['max_abs_diff']:.1e}",
                  _fixed(row["latency_ms"], 2), _client_cell(row.get("client")),
                  f"FLAG: top-1 -{row['accuracy_drop_pts']:.2f} pts" if row["flagged"] else "")
                 for row in self.rows]
        flagged = [i for i, row in enumerate(self.rows) if row["flagged"]] if color else ()
        text = [format_table(header, lines, right=range(3, 8), red_rows=flagged)]
        text.append(f"{self.test_images} {self.test_data}; agreement and max |dp| against the float32 Keras "
                    f"rebuild of {self.model}, which agrees with the {self.precision} source model on "
                    f"{self.source_agreement_pct:.2f}% of them; client: MediaPipe ImageClassifier's top-1 "
                    "agreement with LiteRT, from the .tflite file alone.")
        if self.int8_layers:
            worst = ", ".join(f"{row['tensor']} {row['rmse_per_scale']:.2f}" for row in self.int8_layers[:3])
            text.append(f"int8 error per layer (RMSE in quantization steps), worst: {worst}.")
        if self.rescued_float_layers is not None:
            text.append(f"rescued int8: kept in float: {', '.join(self.rescued_float_layers)}.")
        return "\n".join(text)

    def __str__(self):
        return self.table()


def _fixed(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def _client_cell(client):
    if client is None:
        return ""
    if client["status"] != "ok":
        return client["status"].split(":")[0]
    return f"{client['agreement_pct']:.2f}%" + ("" if client["names_match"] else " names differ")


def sidecar(artifact, final, fmt, quantization, report, class_names):
    """Everything an app needs to feed the artifact and read its output, without keras_cnn."""
    from keras_cnn import __version__

    return {
        "artifact": os.path.basename(final),
        "format": fmt,
        "quantization": quantization,
        "model": report.model,
        "input": {**artifact.tensors["input"], "layout": "NHWC", "value_range": [0, 255],
                  "preprocessing": "RGB or grayscale to match the channels, resized to the input height and width; "
                                   "raw pixel values (the model rescales them); quantized inputs take "
                                   "round(pixel / scale + zero_point)"},
        "output": {**artifact.tensors["output"], "meaning": "class probabilities (softmax), in the order of "
                                                            "class_names; quantized: scale * (q - zero_point)"},
        "class_names": class_names,
        "labels": LABELS_FILE,
        "signature": SIGNATURE if fmt in ("saved_model", "tflite") else None,
        "source": {"run": report.source, "model": report.model, "precision": report.precision},
        "metadata": metadata_summary(artifact.path) if fmt == "tflite" else None,
        "keras_cnn_version": __version__,
    }


def metadata_summary(path):
    """What the `.tflite` file's own metadata says, read back from it, so that sidecar and file cannot disagree."""
    if not tflite_metadata.available():
        return None
    with open(path, "rb") as handle:
        metadata, files = tflite_metadata.read_metadata(handle.read())
    image = metadata["subgraph_metadata"][0]["input_tensor_metadata"][0]
    options = image["process_units"][0]["options"]
    size = image["content"]["content_properties"].get("default_size", {})
    return {"name": metadata["name"], "version": metadata.get("version"), "color_space": "RGB",
            "image_size": [size.get("height"), size.get("width")],
            "normalization": {"mean": options["mean"], "std": options["std"]},
            "score": "probabilities in [0, 1]", "packed_files": sorted(files),
            "min_parser_version": metadata.get("min_parser_version")}
