"""The zoo's trained weights: checkpoints shipped inside the package, looked up by (model, data set) as
keras.applications' `weights="imagenet"` or timm's `pretrained=True`; and weights from a file, an
`https://` URL (Keras's `get_file` and cache) or the Hugging Face Hub (`hf://org/name`, the convention of
`keras.saving.load_model`).

`weights/manifest.json` beside this file lists each shipped checkpoint: its `.weights.h5` file (float16
where that changes none of its test figures, else float32; loaded into float32 variables), sha256, class
names, input shape, preprocessing contract, the model options it was trained with, the command that trains
it again, its training time and machine, and its test accuracy.
`weights/results.csv` is the measured table (`benchmarks/zoo.py results` writes it; docs/zoo.md shows it).
This module is pure Python until a weights file is written or downloaded.
"""
import csv
import dataclasses
import functools
import hashlib
import json
import os
import re

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
MANIFEST_FILE = os.path.join(WEIGHTS_DIR, "manifest.json")
RESULTS_FILE = os.path.join(WEIGHTS_DIR, "results.csv")
HEAD_LAYER = "predictions"  # the one layer whose weights depend on the number of classes
HF_WEIGHTS_FILE = "model.weights.h5"  # what `keras.saving.save_model("hf://...")` puts in a repository
HF_HOST = "huggingface.co"
DOWNLOAD_TIMEOUT = 10  # seconds without an answer before a download counts as offline
_SPEC = re.compile(r"([a-z][a-z0-9_]*):([a-z][a-z0-9_]*)")  # "model:dataset"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One shipped checkpoint, as the manifest describes it."""

    model: str
    dataset: str
    file: str  # inside WEIGHTS_DIR
    sha256: str
    class_names: tuple
    input_shape: tuple
    options: dict  # the model overrides it was trained with (a recipe's network options included)
    data: str  # a data spec that gives its test split offline ("digits"), or "" when the data is not bundled
    recipe: str
    command: str  # trains it again from scratch (CIFAR10 stands for the data set's folder)
    accuracy: float  # top-1 on the test split, without test-time augmentation
    accuracy_tta: dict  # {"flip": ..., "flip+translate": ...}, the levels measured
    train_minutes: float
    machine: str
    storage: str  # the dtype of the stored weights
    license: str  # the data set's
    preprocessing: str  # what the model takes (the model contract: raw pixels, rescaled inside)

    @property
    def path(self):
        return os.path.join(WEIGHTS_DIR, self.file)

    @property
    def spec(self):
        return f"{self.model}:{self.dataset}"


@functools.lru_cache(maxsize=1)
def manifest():
    """{model: {dataset: Checkpoint}} of every shipped checkpoint."""
    if not os.path.isfile(MANIFEST_FILE):
        return {}
    with open(MANIFEST_FILE) as handle:
        entries = json.load(handle)
    table = {}
    for entry in entries:
        entry = {**entry, "class_names": tuple(entry["class_names"]), "input_shape": tuple(entry["input_shape"])}
        table.setdefault(entry["model"], {})[entry["dataset"]] = Checkpoint(**entry)
    return table


def available(model):
    """{dataset: Checkpoint} of `model` (empty when it has none)."""
    return dict(manifest().get(model, {}))


def is_dataset_name(weights):
    """Whether `weights` names a data set ("cifar10") rather than a file, folder or URL."""
    return (isinstance(weights, str) and re.fullmatch(r"[a-z][a-z0-9_]*", weights) is not None
            and not os.path.exists(weights))


def find(model, dataset):
    """The Checkpoint of `model` trained on `dataset`; ValueError listing what exists."""
    checkpoints = available(model)
    if dataset in checkpoints:
        return checkpoints[dataset]
    if checkpoints:
        have = f"it has weights for: {', '.join(sorted(checkpoints))}"
    else:
        have = (f"it has no trained weights (train it yourself: `keras-cnn train {model}`); models with weights: "
                f"{', '.join(sorted(manifest())) or 'none'}")
    raise ValueError(f"{model} has no {dataset!r} weights: {have}. Received: weights={dataset!r}")


def is_checkpoint_spec(source):
    """Whether `source` is "model:dataset" (a shipped checkpoint) rather than a path."""
    return isinstance(source, str) and _SPEC.fullmatch(source) is not None and not os.path.exists(source)


def from_spec(spec):
    """The Checkpoint of "model:dataset"; ValueError for an unknown model or data set."""
    import difflib

    model, dataset = _SPEC.fullmatch(spec).groups()
    if model not in manifest():
        close = difflib.get_close_matches(spec, [c.spec for d in manifest().values() for c in d.values()], n=2)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"no shipped checkpoint {spec!r}: {model!r} has no trained weights.{hint} `keras-cnn list "
                         f"--pretrained` shows those that do. Received: source={spec!r}")
    return find(model, dataset)


def verified_path(checkpoint):
    """The checkpoint's file once its sha256 matches the manifest's; ValueError saying how to restore it."""
    restore = (f"reinstall keras-cnn (`pip install --force-reinstall keras-cnn`) or train it again: "
               f"{checkpoint.command}")
    if not os.path.isfile(checkpoint.path):
        raise FileNotFoundError(f"the {checkpoint.spec} weights file {checkpoint.path} is missing: {restore}. "
                                f"Received: weights={checkpoint.dataset!r}")
    if sha256(checkpoint.path) != checkpoint.sha256:
        raise ValueError(f"{checkpoint.path} does not match its sha256 in the manifest (damaged or changed): "
                         f"{restore}. Received: weights={checkpoint.dataset!r}")
    return checkpoint.path


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def local_file(weights):
    """A local weights file for `weights`: a path as given, or a URL / hf:// repository downloaded first."""
    weights = str(weights)
    if weights.startswith("hf://"):
        return _from_hub(weights)
    if weights.startswith(("https://", "http://")):
        return _from_url(weights)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"weights file not found: {weights} (weights takes None, a data set name such as "
                                f"'cifar10', a .weights.h5 path, an https:// URL or hf://org/name). "
                                f"Received: weights={weights!r}")
    return weights


def _from_url(url):
    """Download `url` into Keras's cache (`keras.utils.get_file`, checked against a `#sha256=HEX` fragment)."""
    import urllib.parse

    from keras_cnn.utils import network
    from keras_cnn.utils.io import first_line, keras_home

    address, _, fragment = url.partition("#")
    file_hash = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
    reason = network.unreachable(address, DOWNLOAD_TIMEOUT)
    if reason:
        raise OSError(f"cannot download weights from {address}: {reason}. Download the file on a connected machine "
                      f"and pass its path. Received: weights={url!r}")
    import keras

    name = os.path.basename(urllib.parse.urlsplit(address).path) or "weights.weights.h5"
    os.makedirs(keras_home(), exist_ok=True)  # get_file falls back to /tmp/.keras for a folder not there yet
    try:
        return keras.utils.get_file(name, address, file_hash=file_hash, hash_algorithm="sha256",
                                    cache_dir=keras_home(), cache_subdir=os.path.join("models", "keras_cnn"))
    except Exception as error:  # get_file raises a bare Exception for URL, HTTP and hash failures
        raise OSError(f"cannot download weights from {address}: {first_line(error)}. Received: weights={url!r}") \
            from error


def _from_hub(path):
    """`hf://org/name[/file]`: the repository's file (default model.weights.h5, as Keras saves to the Hub)."""
    from keras_cnn.utils import network
    from keras_cnn.utils.io import first_line

    parts = path[len("hf://"):].split("/", 2)
    if len(parts) < 2 or not all(parts[:2]):
        raise ValueError(f"a Hugging Face checkpoint is hf://org/name or hf://org/name/file.weights.h5. "
                         f"Received: weights={path!r}")
    repo_id, filename = "/".join(parts[:2]), parts[2] if len(parts) == 3 else HF_WEIGHTS_FILE
    try:
        import huggingface_hub
    except ImportError as error:
        raise ImportError(f"hf:// weights need huggingface_hub: pip install huggingface_hub. "
                          f"Received: weights={path!r}") from error
    reason = None if os.environ.get("HF_HUB_OFFLINE") else network.unreachable(HF_HOST, DOWNLOAD_TIMEOUT)
    if reason:
        raise OSError(f"cannot download {filename} from the Hugging Face Hub ({repo_id}): {reason}. Received: "
                      f"weights={path!r}")
    try:
        return huggingface_hub.hf_hub_download(repo_id=repo_id, filename=filename, library_name="keras-cnn")
    except Exception as error:  # hub errors (missing repository or file, offline cache miss) differ by version
        raise OSError(f"cannot download {filename} from the Hugging Face Hub ({repo_id}): {first_line(error)}. "
                      f"Received: weights={path!r}") from error


def copy_weights(trained, model, checkpoint, changed, *, new_head=False):
    """Copy the weights of `trained` (built as the checkpoint was) into `model`, layer by name.

    Every layer of `model` with weights must exist in `trained` with the same shapes, except the
    classification head with `new_head`; else ValueError naming the arguments in `changed` ({name: value}:
    the overrides and input shape the caller changed), the likely cause."""
    names = {layer.name for layer in trained.layers}
    for layer in model.layers:
        if not layer.weights or (new_head and layer.name == HEAD_LAYER):
            continue
        values = trained.get_layer(layer.name).get_weights() if layer.name in names else None
        if values is None or [v.shape for v in values] != [tuple(w.shape) for w in layer.weights]:
            received = ", ".join(f"{key}={value!r}" for key, value in changed.items()) or "nothing"
            raise ValueError(f"the {checkpoint.spec} weights do not fit layer {layer.name!r} of this model: a "
                             f"checkpoint loads only into the architecture it was trained as (options that keep "
                             f"the weights' shapes, such as dropout, are fine). Received: {received}")
        layer.set_weights(values)


def save_weights(model, path, storage="float16"):
    """`model`'s weights, without optimizer state, as a .weights.h5 file whose float32 arrays are stored as
    `storage` ("float16" or "float32"); written atomically."""
    import tempfile

    import h5py
    import numpy as np

    from keras_cnn.utils.io import atomic_path

    with atomic_path(path) as temporary, tempfile.TemporaryDirectory() as folder:
        full = os.path.join(folder, "model.weights.h5")  # Keras insists on the suffix
        model.save_weights(full)
        with h5py.File(full, "r") as source, h5py.File(temporary, "w") as target:
            target.attrs.update(source.attrs)
            for name in source:
                if name != "optimizer":  # a compiled model saves its optimizer's slots too
                    _copy(source[name], target, name, np.dtype(storage), h5py, np)


def _copy(item, parent, name, storage, h5py, np):
    """Copy group or dataset `item` into `parent` under `name`, float32 arrays as `storage`."""
    if isinstance(item, h5py.Group):
        group = parent.create_group(name)
        group.attrs.update(item.attrs)
        for child in item:
            _copy(item[child], group, child, storage, h5py, np)
        return
    data = item[()]
    if getattr(data, "dtype", None) == np.float32:
        data = data.astype(storage)
    parent.create_dataset(name, data=data).attrs.update(item.attrs)


def results():
    """The results table as a list of {column: text} rows (empty without one)."""
    if not os.path.isfile(RESULTS_FILE):
        return []
    with open(RESULTS_FILE, newline="") as handle:
        return list(csv.DictReader(handle))


RESULT_HEADER = {"checkpoint": "checkpoint", "top1": "top-1 %", "top1_tta": "best TTA %", "tta": "TTA",
                 "params": "params", "macs": "MACs", "float32_kb": "float32 KB", "int8_kb": "int8 KB",
                 "int8_top1": "int8 top-1 %", "float32_tflite_top1": "float32 TFLite top-1 %",
                 "int8_latency_ms": "int8 ms (batch 1)", "train_minutes": "train min"}


def results_table(models=None, markdown=False):
    """The results table (of `models` only, if given) as aligned text or Markdown, one row per checkpoint."""
    from keras_cnn.utils.tables import format_table

    rows = [[row[key] for key in RESULT_HEADER] for row in results()
            if models is None or row["checkpoint"].split(":")[0] in models]
    header = list(RESULT_HEADER.values())
    if not markdown:
        return format_table(header, rows, right=range(1, len(header)), rule=True)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(f"`{row[0]}`" if i == 0 else row[i] for i in range(len(row))) + " |"
                              for row in rows])
