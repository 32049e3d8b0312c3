"""Calibration: how far a model's confidence is from its accuracy, and temperature scaling to fix it.

Metrics (Guo et al., 2017, "On Calibration of Modern Neural Networks"): the expected calibration error
(ECE: predictions binned by their top probability into 15 equal-width bins; the mean |accuracy -
confidence| of the bins, weighted by their share of the predictions), the negative log-likelihood of the
true class and the Brier score (mean squared distance of the probability vector from the one-hot label,
summed over the classes).

Temperature scaling divides the logits by one number T > 0 fitted on the validation split by minimising
the NLL: it changes the confidence, never the predicted class. The logits are recovered as the log of the
probabilities (softmax is unchanged by adding a constant to all logits), so fitting needs only the model's
output. `with_temperature` stores T in the model: `predictions` is rebuilt as logits -> `TemperatureScaling`
-> softmax, which SavedModel and TFLite export as ordinary ops.
"""
import numpy as np

from keras_cnn.utils import compat

BINS = 15
_EPS = 1e-12  # probabilities are clipped here before a log (a float32 softmax can round to 0)


def _two_columns(probabilities):
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim == 2 and probabilities.shape[1] == 1:  # one sigmoid unit: P(class 1)
        probabilities = np.concatenate([1 - probabilities, probabilities], axis=1)
    return probabilities


def expected_calibration_error(probabilities, labels, bins=BINS):
    """ECE in [0, 1] over `bins` equal-width confidence bins (see the module docstring)."""
    confidence, correct, _ = _confidence(probabilities, labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def reliability_panel(probabilities, labels, bins=BINS):
    """What a reliability diagram draws of one model: `reliability_bins` and the ECE."""
    return (*reliability_bins(probabilities, labels, bins), expected_calibration_error(probabilities, labels, bins))


def reliability_bins(probabilities, labels, bins=BINS):
    """Per bin (lower edge, mean confidence, accuracy, count), for the reliability diagram; empty bins: NaN."""
    confidence, correct, _ = _confidence(probabilities, labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(which, confidence, bins) / counts
        accuracy = np.bincount(which, correct, bins) / counts
    return edges[:-1], mean_confidence, accuracy, counts


def negative_log_likelihood(probabilities, labels):
    probabilities = _two_columns(probabilities)
    labels = np.asarray(labels, dtype=np.int64)
    return float(-np.mean(np.log(np.clip(probabilities[np.arange(len(labels)), labels], _EPS, 1.0))))


def brier_score(probabilities, labels):
    probabilities = _two_columns(probabilities)
    one_hot = np.eye(probabilities.shape[1])[np.asarray(labels, dtype=np.int64)]
    return float(np.mean(np.sum((probabilities - one_hot) ** 2, axis=1)))


def metrics(probabilities, labels):
    """{"ece_pct", "nll", "brier", "bins"}: what evaluation reports and metrics.json holds."""
    return {"ece_pct": round(100 * expected_calibration_error(probabilities, labels), 3),
            "nll": round(negative_log_likelihood(probabilities, labels), 5),
            "brier": round(brier_score(probabilities, labels), 5), "bins": BINS}


def _confidence(probabilities, labels):
    probabilities = _two_columns(probabilities)
    predicted = probabilities.argmax(axis=1)
    return probabilities.max(axis=1), (predicted == np.asarray(labels)).astype(np.float64), predicted


def scale(probabilities, temperature):
    """The probabilities the model gives with its logits divided by `temperature`."""
    probabilities = _two_columns(probabilities)
    logits = np.log(np.clip(probabilities, _EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def fit_temperature(probabilities, labels):
    """The temperature T in [0.05, 20] that minimises the NLL of `scale(probabilities, T)` (scipy, on log T)."""
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise ValueError("fitting a temperature needs labelled images; the split is empty. Received: labels=[]")
    result = minimize_scalar(lambda log_t: negative_log_likelihood(scale(probabilities, np.exp(log_t)), labels),
                             bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def with_temperature(model, temperature):
    """`model` with its `predictions` layer rebuilt as logits -> TemperatureScaling -> the same activation.

    `predictions` must be a Dense or Activation layer with a softmax or sigmoid activation (every zoo model's
    is). A model already holding a temperature gets the product of both, applied to its logits.
    """
    import keras

    from keras_cnn.models.layers import TemperatureScaling

    last = model.get_layer("predictions") if "predictions" in [lay.name for lay in model.layers] else None
    activation = getattr(last, "activation", None)
    name = getattr(activation, "__name__", "")
    if last is None or name not in ("softmax", "sigmoid") or not isinstance(last, (keras.layers.Dense,
                                                                                   keras.layers.Activation)):
        raise ValueError(f"temperature scaling needs a final Dense or Activation layer named 'predictions' with a "
                         f"softmax or sigmoid activation; {model.name} has none. Received: model={model.name!r}")
    features = last.input
    if isinstance(last, keras.layers.Dense):
        dense = last.__class__.from_config({**last.get_config(), "activation": None, "name": "logits"})
        logits = dense(features)
        dense.set_weights(last.get_weights())
    else:
        logits = features
    previous = compat.producer(logits)
    if isinstance(previous, TemperatureScaling):  # calibrated before: replace, keeping the product
        temperature *= previous.temperature
        logits = previous.input
    scaled = TemperatureScaling(temperature, dtype="float32", name="temperature")(logits)
    outputs = keras.layers.Activation(name, dtype="float32", name="predictions")(scaled)
    return keras.Model(model.inputs, outputs, name=model.name)
