"""Evaluation: accuracy, top-5, loss, per-class precision/recall/F1 and the confusion matrix.

Predictions always come from `model.predict`, which runs the inference graph
(`training=False`: no augmentation, BatchNorm in inference mode). `tta="flip"`
(test-time augmentation) averages the probabilities of each image and its
mirror image, as the fast CIFAR-10 recipes (airbench) evaluate; only for data
whose classes survive a horizontal flip (not digits or text).
"""
import dataclasses

import numpy as np

TTA = (None, "flip")


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
    tta: str = None  # test-time augmentation: None or "flip"

    def to_dict(self):
        return dataclasses.asdict(self)

    def __str__(self):
        top5 = "" if self.top5_accuracy is None else f"  top-5 {self.top5_accuracy:.2%}"
        tta = f" (with {self.tta} test-time augmentation)" if self.tta else ""
        lines = [f"{self.split}: {self.num_examples} images{tta}  accuracy {self.accuracy:.2%}{top5}  "
                 f"loss {self.loss:.4f}",
                 "", f"{'class':<16} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}"]
        for row in self.per_class:
            lines.append(f"{row['class'][:16]:<16} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>6.3f} "
                         f"{row['support']:>8}")
        return "\n".join(lines)


def predict_probabilities(model, dataset, tta=None):
    """(probabilities, integer labels) over a batched dataset of (images, one-hot labels); with
    `tta="flip"`, each image's probabilities are averaged with its mirror image's."""
    import tensorflow as tf

    _check_tta(tta)
    probabilities = model.predict(dataset.map(lambda x, y: x), verbose=0)
    if tta == "flip":  # batches are (N, H, W, C): axis 2 is the width
        probabilities = (probabilities + model.predict(dataset.map(lambda x, y: tf.reverse(x, axis=[2])),
                                                       verbose=0)) / 2
    labels = np.concatenate([np.argmax(y, axis=-1) if y.shape[-1] > 1 else y[:, 0]
                             for _, y in dataset.as_numpy_iterator()])
    return np.asarray(probabilities, dtype=np.float64), labels.astype(np.int64)


def report(probabilities, labels, class_names, split="test", tta=None):
    """The metrics of predicted `probabilities` against integer `labels`."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

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
                  per_class, matrix, tta)


def evaluate(model_or_run, data=None, *, split="test", batch_size=256, out=None, tta=None):
    """Evaluate a model (or a run folder) on a data split; with a run folder, update its metrics.json.

    Args:
        model_or_run: a `keras.Model`, a run folder path, or a `keras_cnn.runs.Run` (what `train` returns).
        data: a data spec or `ImageData`; defaults to the run's own data.
        split: "test" (default), "val" or "train".
        out: a folder to write `metrics.json` and `confusion_matrix.png` to (default: the run folder,
            when evaluating on the run's own data without test-time augmentation).
        tta: None, or "flip" to average each image's prediction with its mirror image's.
    """
    from keras_cnn import io, runs, viz
    from keras_cnn.data import ImageData, load_data

    _check_tta(tta)  # before the slow part: loading the model and the data
    run = runs.as_run(model_or_run) if runs.is_run(model_or_run) else None
    model = run.model if run else model_or_run
    own_data = data is None and run is not None
    if data is None and run is None:
        raise ValueError("evaluating a bare model needs `data`. Received: data=None")
    if not isinstance(data, ImageData):
        data = run.load_data(data) if run else load_data(data)
    class_names = run.class_names if run else data.class_names
    check_compatible(model, data)
    dataset = data.pipeline(split, batch_size=batch_size, image_shape=tuple(model.input_shape[1:]))
    result = report(*predict_probabilities(model, dataset, tta), class_names, split, tta)
    # never overwrite the run's own metrics with other data or another evaluation protocol
    folder = out or (run.path if own_data and split == "test" and not tta else None)
    if folder:
        io.write_json(f"{folder}/metrics.json", result.to_dict())
        viz.save(viz.confusion_matrix(result.confusion_matrix, class_names), f"{folder}/confusion_matrix.png")
    return result


def _check_tta(tta):
    if tta not in TTA:
        raise ValueError(f"`tta` must be None or 'flip'. Received: tta={tta!r}")


def check_compatible(model, data):
    """A model's output units must fit the data's classes (one sigmoid unit for two classes)."""
    units = model.output_shape[-1]
    if units != data.num_classes and not (units == 1 and data.num_classes == 2):
        raise ValueError(f"the model predicts {units} classes but {data.name} has {data.num_classes} "
                         f"({', '.join(data.class_names[:5])}{', ...' if data.num_classes > 5 else ''}). "
                         f"Received: num_classes={units}")

