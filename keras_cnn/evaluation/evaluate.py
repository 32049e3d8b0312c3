"""Evaluation: accuracy, top-5, loss, per-class precision/recall/F1, the confusion matrix and calibration.

Every report holds the calibration metrics of `keras_cnn.evaluation.calibration` (ECE, NLL, Brier score);
`calibrate=True` first fits temperature scaling on the validation split and stores it in the model.
`corruptions=True` adds the accuracy under CIFAR-10-C-style corruptions (`keras_cnn.evaluation.corruptions`), of the
Keras model or of an exported `artifact` such as an int8 TFLite file.

Predictions always come from `model.predict`, which runs the inference graph
(`training=False`: no augmentation, BatchNorm in inference mode). Test-time augmentation (`tta`, only for
data whose classes survive a horizontal flip: not digits or text) averages the probabilities of several views
of each image, as airbench evaluates: "flip" the image and its mirror image (1/2 each); "flip+translate"
(airbench's level 2) gives those two 1/4 each and 1/8 each to the image shifted one pixel down and right, one
pixel up and left (reflection-padded), and their mirror images (`TTA_VIEWS`). The report keeps the accuracy
of every level up to the one asked for (`tta_accuracy`), so the plain figure is never lost.
"""
import dataclasses

import numpy as np

from keras_cnn.models.options import TTA_LEVELS
from keras_cnn.utils.io import MODEL_FILE
from keras_cnn.utils.progress import Progress

TTA = (None, "flip", "flip+translate")
# level -> (view, weight): a view is (horizontal flip, shift in pixels down and right)
TTA_VIEWS = {
    None: (((False, 0), 1.0),),
    "flip": (((False, 0), 0.5), ((True, 0), 0.5)),
    "flip+translate": (((False, 0), 0.25), ((True, 0), 0.25), ((False, 1), 0.125), ((True, 1), 0.125),
                       ((False, -1), 0.125), ((True, -1), 0.125)),
}


@dataclasses.dataclass
class Report:
    """What `evaluate` returns; `to_dict()` is what `metrics.json` holds."""

    split: str
    num_examples: int
    accuracy: float
    loss: float
    top5_accuracy: float
    class_names: list
    per_class: list  # [{"class", "precision", "recall", "f1", "support"}, ...]
    confusion_matrix: list  # rows: true class, columns: predicted class
    tta: str = None  # test-time augmentation: None, "flip" or "flip+translate"
    calibration: dict = None  # keras_cnn.evaluation.calibration.metrics, plus temperature and "before" when calibrated
    corruptions: dict = None  # artifact name -> keras_cnn.evaluation.corruptions.Robustness.to_dict()
    tta_accuracy: dict = None  # {"none": ..., "flip": ...}: the accuracy at each level up to `tta`

    def to_dict(self):
        return dataclasses.asdict(self)

    def __str__(self):
        top5 = "" if self.top5_accuracy is None else f"  top-5 {self.top5_accuracy:.2%}"
        tta = f" (with {self.tta} test-time augmentation)" if self.tta else ""
        if self.tta_accuracy and len(self.tta_accuracy) > 1:
            tta += " [" + ", ".join(f"{level} {value:.2%}" for level, value in self.tta_accuracy.items()) + "]"
        lines = [f"{self.split}: {self.num_examples} images{tta}  accuracy {self.accuracy:.2%}{top5}  "
                 f"loss {self.loss:.4f}",
                 "", f"{'class':<16} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}"]
        for row in self.per_class:
            lines.append(f"{row['class'][:16]:<16} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>6.3f} "
                         f"{row['support']:>8}")
        if self.calibration:
            lines[1:1] = [_calibration_line(self.calibration)]
        from keras_cnn.evaluation.corruptions import Robustness

        for robustness in (self.corruptions or {}).values():
            lines += ["", str(Robustness(**robustness))]
        return "\n".join(lines)


def _calibration_line(calibration):
    line = (f"calibration: ECE {calibration['ece_pct']:.2f}% ({calibration['bins']} bins)  NLL {calibration['nll']:.4f}"
            f"  Brier {calibration['brier']:.4f}")
    if calibration.get("temperature"):
        line += f"  temperature {calibration['temperature']:.3f}"
    before = calibration.get("before")
    if before:
        line += f" (before it: ECE {before['ece_pct']:.2f}%  NLL {before['nll']:.4f}  Brier {before['brier']:.4f})"
    return line


def view(images, flip, shift):
    """One test-time view of a batch (N, H, W, C): shifted `shift` pixels down and right (negative: up and
    left) with reflection padding, then mirrored if `flip`."""
    import tensorflow as tf

    if shift:
        pad = abs(shift)
        padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        start = pad - shift
        images = padded[:, start:start + images.shape[1], start:start + images.shape[2], :]
    return tf.reverse(images, axis=[2]) if flip else images


def predict_levels(model, dataset, tta=None):
    """({level: probabilities} for every test-time augmentation level up to `tta`, integer labels); each view
    is predicted once and shared by the levels that use it."""
    tta = _check_tta(tta)
    levels = TTA[:TTA.index(tta) + 1]
    predicted = {}
    views = sorted({v for level in levels for v, _ in TTA_VIEWS[level]})
    progress = Progress(len(views), f"test-time augmentation {tta}: {len(views)} views") if len(views) > 1 else None
    for flip, shift in views:
        images = dataset.map(lambda x, y, flip=flip, shift=shift: view(x, flip, shift))
        predicted[flip, shift] = np.asarray(model.predict(images, verbose=0), dtype=np.float64)
        if progress:
            progress.step(f"flip={flip} shift={shift}")
    averaged = {level: sum(weight * predicted[v] for v, weight in TTA_VIEWS[level]) for level in levels}
    labels = np.concatenate([np.argmax(y, axis=-1) if y.shape[-1] > 1 else y[:, 0]
                             for _, y in dataset.as_numpy_iterator()])
    return averaged, labels.astype(np.int64)


def predict_probabilities(model, dataset, tta=None):
    """(probabilities, integer labels) over a batched dataset of (images, one-hot labels), averaged over the
    views of test-time augmentation level `tta` (`TTA_VIEWS`)."""
    averaged, labels = predict_levels(model, dataset, tta)
    return averaged[_check_tta(tta)], labels


def report(probabilities, labels, class_names, split="test", tta=None):
    """The metrics of predicted `probabilities` against integer `labels`."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from keras_cnn.evaluation import calibration

    if probabilities.shape[1] == 1:  # one sigmoid unit: P(class 1)
        probabilities = np.concatenate([1 - probabilities, probabilities], axis=1)
    classes = list(range(len(class_names)))
    predicted = probabilities.argmax(axis=1)
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(probabilities[np.arange(len(labels)), labels], eps, 1))))
    top5 = None
    if len(classes) > 5:
        top = np.argsort(-probabilities, axis=1)[:, :5]
        top5 = float(np.mean([label in row for label, row in zip(labels, top)]))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=classes,
                                                                     zero_division=0)
    per_class = [{"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                 for name, p, r, f, s in zip(class_names, precision, recall, f1, support)]
    matrix = confusion_matrix(labels, predicted, labels=classes).tolist()
    return Report(split, int(len(labels)), float(np.mean(predicted == labels)), loss, top5, list(class_names),
                  per_class, matrix, tta, calibration.metrics(probabilities, labels))


def _with_tta_and_temperature(result, model, levels, labels):
    """`result` with the accuracy of every test-time augmentation level predicted, and the temperature of a model
    calibrated now or before."""
    if len(levels) > 1:  # levels up to a test-time augmentation
        result.tta_accuracy = {TTA_LEVELS[TTA.index(level)]: _accuracy(p, labels) for level, p in levels.items()}
    if "temperature" in [layer.name for layer in model.layers]:
        result.calibration["temperature"] = model.get_layer("temperature").temperature
    return result


def evaluate(model_or_run, data=None, *, split="test", batch_size=256, out=None, tta=None, calibrate=False,
             corruptions=None, severities=None, artifact=None, seed=0):
    """Evaluate a model (or a run folder) on a data split; with a run folder, update its metrics.json.

    Args:
        model_or_run: a `keras.Model`, a run folder path, or a `keras_cnn.artifacts.runs.Run` (what `train` returns).
        data: a data spec or `ImageData`; defaults to the run's own data.
        split: "test" (default), "val" or "train".
        out: a folder to write `metrics.json` and `confusion_matrix.png` to (default: the run folder,
            when evaluating on the run's own data without test-time augmentation).
        tta: "none", "flip" to average each image's prediction with its mirror image's, or "flip+translate"
            to add 1-pixel shifts (`TTA_VIEWS`); the report's `tta_accuracy` has every level. None: a run's own
            level (`train`'s `tta`), else "none".
        calibrate: fit a temperature on the validation split and store it in the model (a run folder's
            model.keras is replaced; the first original is kept as model_uncalibrated.keras).
        corruptions: None, True (all of `keras_cnn.evaluation.corruptions.CORRUPTIONS`) or a list of their names:
            also measure the accuracy on the split corrupted at `severities` (default 1-5), noise seeded
            by `seed`, of the Keras model or of `artifact` (an exported file, e.g. an int8 .tflite).
    """
    from keras_cnn.artifacts import runs
    from keras_cnn.data.loading import ImageData, load_data

    _check_tta(tta)  # before the slow part: loading the model and the data
    corruptions, severities = _check_corruptions(corruptions, severities, artifact)
    run = runs.as_run(model_or_run) if runs.is_run(model_or_run) else None
    model = run.model if run else model_or_run
    own_data = data is None and run is not None
    trained_tta = _check_tta((run.config.get("arguments") or {}).get("tta")) if run else None
    tta = trained_tta if tta is None else tta  # a run is evaluated as it was trained unless told otherwise
    if data is None and run is None:
        raise ValueError("evaluating a bare model needs `data`. Received: data=None")
    if not isinstance(data, ImageData):
        data = run.load_data(data) if run else load_data(data)
    data.report_skipped()  # once per data set: training's own evaluation adds no second line
    class_names = run.class_names if run else data.class_names
    data.check_fits(model)
    tta = _check_tta(tta)
    dataset = data.pipeline(split, batch_size=batch_size, image_shape=tuple(model.input_shape[1:]))
    levels, labels = predict_levels(model, dataset, tta)
    probabilities = levels[tta]
    curves = {split: (probabilities, labels)}
    if calibrate:
        before = report(probabilities, labels, class_names, split, tta).calibration
        model = _calibrate(run, model, data, batch_size)
        probabilities, labels = predict_probabilities(model, dataset, tta)
    result = _with_tta_and_temperature(report(probabilities, labels, class_names, split, tta), model, levels, labels)
    if calibrate:
        temperature = result.calibration["temperature"]
        result.calibration["before"] = before
        curves = {"before temperature scaling": curves[split],
                  f"after (T = {temperature:.2f})": (probabilities, labels)}
    # never overwrite the run's own metrics with other data or another test-time augmentation than training's
    folder = out or (run.out_folder if own_data and split == "test" and tta == trained_tta else None)
    if corruptions:
        _evaluate_corruptions(result, model, class_names, data, split, corruptions, severities, artifact, seed)
    if folder:
        _write(folder, result, curves, run if own_data else None, data)
    return result


def _check_corruptions(corruptions, severities, artifact):
    """(corruption names or None, severities), or a one-line error before anything slow happens."""
    from keras_cnn.evaluation.corruptions import CORRUPTIONS, SEVERITIES, check

    if not corruptions:
        if severities is not None or artifact is not None:
            raise ValueError("severities and artifact are options of the corruption evaluation; pass corruptions="
                             f"True as well. Received: corruptions={corruptions!r}")
        return None, None
    names = CORRUPTIONS if corruptions is True else tuple(corruptions)
    severities = SEVERITIES if severities is None else tuple(severities)
    for name in names:
        for severity in severities:
            check(name, severity)
    return names, severities


def _calibrate(run, model, data, batch_size):
    """`model` with a temperature fitted on the validation split; saved into the run folder for a run."""
    import os

    from keras_cnn.evaluation import calibration
    from keras_cnn.utils import io

    val = data.pipeline("val", batch_size=batch_size, image_shape=tuple(model.input_shape[1:]))
    calibrated = calibration.with_temperature(model, calibration.fit_temperature(*predict_probabilities(model, val)))
    if run is not None:
        original = run.file("model_uncalibrated.keras")
        if not os.path.exists(original):
            io.save_model(model, original)
        io.save_model(calibrated, run.model_path)
        run.model = calibrated
    return calibrated


def _evaluate_corruptions(result, model, class_names, data, split, corruptions, severities, artifact, seed):
    import os

    from keras_cnn.artifacts.prediction import keras_artifact, load_artifact
    from keras_cnn.evaluation import corruptions as corrupting

    target = load_artifact(artifact) if artifact else keras_artifact(model, class_names, MODEL_FILE)
    x, y = data.arrays(split, image_shape=target.input_shape)
    robustness = corrupting.robustness(target, x, y, corruptions, severities, seed)
    robustness.artifact = os.path.basename(os.path.normpath(str(target.path)))
    result.corruptions = {robustness.artifact: robustness.to_dict()}


def _write(folder, result, curves, run, data):
    """metrics.json (keeping the corruption results of other artifacts), the pictures and, for a run's own
    folder, its model card."""
    import json
    import os

    from keras_cnn.analysis import viz
    from keras_cnn.artifacts import runs
    from keras_cnn.evaluation import calibration
    from keras_cnn.evaluation.corruptions import Robustness
    from keras_cnn.utils import io

    path = os.path.join(folder, "metrics.json")
    earlier = {}
    if os.path.isfile(path):
        with open(path) as handle:
            earlier = json.load(handle).get("corruptions") or {}
    if earlier or result.corruptions:
        result.corruptions = {**earlier, **(result.corruptions or {})}
    io.write_json(path, result.to_dict())
    viz.save(viz.confusion_matrix(result.confusion_matrix, result.class_names), f"{folder}/confusion_matrix.png")
    panels = {label: calibration.reliability_panel(*curve) for label, curve in curves.items()}
    viz.save(viz.reliability_diagram(panels), os.path.join(folder, "reliability.png"))
    if result.corruptions:
        tables = [Robustness(**table) for table in result.corruptions.values()]
        viz.save(viz.corruption_accuracy(tables), os.path.join(folder, "corruptions.png"))
    if run is not None and os.path.isfile(run.file(runs.CARD_FILE)):  # the card `train` wrote when it finished
        from keras_cnn.artifacts.card import model_card

        io.write_text(run.file(runs.CARD_FILE), model_card(run.config, result, data))


def _accuracy(probabilities, labels):
    predicted = probabilities[:, 0] > 0.5 if probabilities.shape[1] == 1 else probabilities.argmax(axis=1)
    return float(np.mean(predicted == labels))


def _check_tta(tta):
    """`tta` as a key of TTA_VIEWS ("none" is None), or ValueError."""
    if tta == "none":
        return None
    if tta not in TTA:
        raise ValueError(f"`tta` must be one of {', '.join(TTA_LEVELS)} (or None). Received: tta={tta!r}")
    return tta
