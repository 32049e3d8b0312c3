"""Pictures: training curves and confusion matrices, rendered headless to PNG.

Figures are matplotlib `Figure` objects drawn on their own Agg canvas (`new_figure`, `subplots`), the way
matplotlib's documentation draws on servers: no display is needed and pyplot's process-wide backend and
figure list are left alone, so importing this module changes nothing for a program that uses pyplot itself.
"""
import math
import sys

import matplotlib.ticker
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(**kwargs):
    """A `matplotlib.figure.Figure(**kwargs)` (figsize, layout, ...) on an Agg canvas of its own."""
    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def subplots(rows=1, columns=1, *, figsize=None, layout=None, **kwargs):
    """(figure, axes) as `pyplot.subplots` gives them, the figure made by `new_figure`; `kwargs` go to
    `Figure.subplots` (squeeze, sharey, ...)."""
    figure = new_figure(figsize=figsize, layout=layout)
    return figure, figure.subplots(rows, columns, **kwargs)


def save(figure, path, dpi=100):
    """Write `figure` to `path` atomically; a pyplot figure is closed too."""
    from keras_cnn.utils.io import atomic_path

    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=dpi, format="png")  # figsize x dpi pixels exactly
    pyplot = sys.modules.get("matplotlib.pyplot")  # loaded only by a caller that drew with it
    if pyplot is not None:
        pyplot.close(figure)
    return path


def curves(history):
    """Loss and accuracy per epoch, train and validation, from a Keras history dict (or history.csv rows)."""
    figure, axes = subplots(1, 2, figsize=(10, 4))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for axis, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + metric)
            if values is not None and len(values):
                axis.plot(epochs, values, style, marker="o", markersize=3,
                          label=("validation " if prefix else "train ") + metric)
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return figure


def confusion_matrix(matrix, class_names):
    """A labelled confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    matrix = np.asarray(matrix)
    size = max(4, 0.5 * len(class_names) + 2)
    figure, axis = subplots(figsize=(size + 1, size))
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046)
    ticks = np.arange(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=45, ha="right")
    axis.set_yticks(ticks, class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if len(class_names) <= 20:
        threshold = matrix.max() / 2 if matrix.size else 0
        for (row, column), count in np.ndenumerate(matrix):
            axis.text(column, row, str(count), ha="center", va="center", fontsize=8,
                      color="white" if count > threshold else "black")
    figure.tight_layout()
    return figure


MAX_CHANNELS = 32  # feature-map grids show at most this many channels, with a note


def conv_and_pool_layers(model):
    """Names of the model's own conv and pooling layers, in order (the stages people look at)."""
    import keras

    kinds = (keras.layers.Conv2D, keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
    return [layer.name for layer in model.layers if isinstance(layer, kinds)]


def _grid(count):
    columns = min(8, count)
    return math.ceil(count / columns), columns


def feature_maps(model, image, layers=None, max_channels=MAX_CHANNELS):
    """Feature maps of `image` (a path or an array in raw pixels) at `layers` (default: every conv/pool).

    Maps come from the inference graph (`training=False`: no augmentation, BatchNorm
    in inference mode). One block per layer, each channel labelled with its index.
    """
    import keras

    from keras_cnn.data.loading import read_image

    layers = list(layers or conv_and_pool_layers(model))
    if not layers:
        raise ValueError(f"{model.name} has no conv or pooling layers to show. Received: layers={layers}")
    known = {layer.name for layer in model.layers}
    for name in layers:
        if name not in known:
            raise ValueError(f"{model.name} has no layer {name!r}; conv/pool layers: "
                             f"{', '.join(conv_and_pool_layers(model))}. Received: layers={layers}")
    x = read_image(image, tuple(model.input_shape[1:]))[np.newaxis]
    probe = keras.Model(model.input, [model.get_layer(name).output for name in layers])
    outputs = probe(x, training=False)
    outputs = [np.asarray(o, dtype=np.float32)[0] for o in (outputs if isinstance(outputs, list) else [outputs])]
    blocks = [(name, maps, min(maps.shape[-1], max_channels)) for name, maps in zip(layers, outputs)]
    rows = [_grid(shown)[0] for _, _, shown in blocks]
    figure = new_figure(figsize=(12, 1.6 * sum(rows) + 0.6 * len(blocks)), layout="constrained")
    parts = figure.subfigures(len(blocks), 1, height_ratios=[r + 0.4 for r in rows]) if len(blocks) > 1 else [figure]
    for part, (name, maps, shown) in zip(parts, blocks):
        height, width, channels = maps.shape
        note = f" (first {shown} of {channels} channels)" if shown < channels else ""
        part.suptitle(f"{name}: {channels} maps of {height}x{width}{note}", fontsize=10)
        grid_rows, grid_columns = _grid(shown)
        axes = np.atleast_1d(part.subplots(grid_rows, grid_columns)).ravel()
        for index, axis in enumerate(axes):
            axis.axis("off")
            if index < shown:
                axis.imshow(maps[..., index], cmap="viridis")
                axis.set_title(f"#{index}", fontsize=7)
    return figure


def filters(model, layer=None):
    """The kernels of a conv layer (default: the first) as small images, one per output channel."""
    import keras

    convs = [lay.name for lay in model.layers if isinstance(lay, keras.layers.Conv2D)]
    if not convs:
        raise ValueError(f"{model.name} has no Conv2D layer. Received: layer={layer!r}")
    layer = layer or convs[0]
    if layer not in convs:
        raise ValueError(f"{layer!r} is not a Conv2D layer of {model.name}; its convs: {', '.join(convs)}. "
                         f"Received: layer={layer!r}")
    kernel = np.asarray(model.get_layer(layer).kernel, dtype=np.float32)  # (kh, kw, in, out)
    count = min(kernel.shape[-1], 64)
    grid_rows, grid_columns = _grid(count)
    figure, axes = subplots(grid_rows, grid_columns, figsize=(1.4 * grid_columns, 1.5 * grid_rows + 0.5),
                            squeeze=False)
    for index, axis in enumerate(axes.ravel()):
        axis.axis("off")
        if index >= count:
            continue
        weights = kernel[..., index]
        if weights.shape[-1] == 3:  # an RGB filter, scaled to [0, 1] per filter
            span = weights.max() - weights.min()
            axis.imshow((weights - weights.min()) / (span if span else 1.0), interpolation="nearest")
        else:
            axis.imshow(weights.mean(axis=-1), cmap="gray", interpolation="nearest")
        axis.set_title(f"#{index}", fontsize=7)
    kh, kw, channels_in, channels_out = kernel.shape
    more = f", first {count} of {channels_out}" if count < channels_out else ""
    figure.suptitle(f"{model.name} {layer}: {channels_out} filters of {kh}x{kw}x{channels_in}{more}"
                    + (" (averaged over input channels)" if channels_in != 3 else ""), fontsize=10)
    figure.tight_layout()
    return figure


def receptive_field(model_or_name, input_shape=None, **overrides):
    """Receptive field and feature-map size per conv/pool layer (seed 003, section 12), one chart."""
    from keras_cnn.analysis.architecture import describe

    summary = describe(model_or_name, input_shape=input_shape, **overrides)
    rows = [r for r in summary.rows if r.kernel is not None and r.receptive_field is not None]
    if not rows:
        raise ValueError(f"{summary.model} has no conv or pooling layers to chart")
    steps = np.arange(1, len(rows) + 1)
    figure, axis = subplots(figsize=(max(6, 0.45 * len(rows) + 3), 4.5))
    axis.plot(steps, [r.receptive_field for r in rows], "o-", label="receptive field (pixels)")
    axis.plot(steps, [r.output_shape[0] for r in rows], "s--", label="feature-map size (pixels)")
    axis.set_xticks(steps, [r.name for r in rows], rotation=60, ha="right", fontsize=8)
    axis.set_ylabel("pixels")
    axis.set_title(f"{summary.model}: receptive field vs. spatial resolution "
                   f"(input {'x'.join(map(str, summary.input_shape))})")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    return figure


def cam_overlay(images, heatmaps, titles):
    """Images (N, H, W, C) in [0, 255] with their Grad-CAM heat maps (N, H, W) in [0, 1] laid over them."""
    count = len(images)
    figure, axes = subplots(1, count, figsize=(3.2 * count, 3.6), squeeze=False)
    for axis, image, heatmap, title in zip(axes[0], images, heatmaps, titles):
        image = np.asarray(image, dtype=np.float32) / 255.0
        if image.shape[-1] == 1:
            axis.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
        else:
            axis.imshow(np.clip(image, 0, 1))
        axis.imshow(heatmap, cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
        axis.set_title(title, fontsize=10)
        axis.axis("off")
    figure.tight_layout()
    return figure


def reliability_diagram(panels):
    """Accuracy against confidence per bin, one panel per {label: (lower edges, mean confidence, accuracy, counts,
    ECE)} as `keras_cnn.evaluation.calibration.reliability_panel` gives them, the ECE in the title."""
    figure, axes = subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for axis, (label, (lower, confidence, accuracy, counts, ece)) in zip(axes[0], panels.items()):
        width = 1.0 / len(lower)
        filled = counts > 0
        axis.bar(lower[filled], accuracy[filled], width=width, align="edge", edgecolor="black",
                 label="accuracy")
        axis.bar(lower[filled], np.abs(confidence - accuracy)[filled], bottom=np.minimum(confidence, accuracy)[filled],
                 width=width, align="edge", facecolor="none", edgecolor="red", hatch="//", linewidth=0.8,
                 label="gap to mean confidence")
        axis.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        axis.set_title(f"{label}: ECE {100 * ece:.2f}%", fontsize=10)
        axis.set_xlabel("confidence (top probability)")
        axis.set_ylabel("accuracy")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return figure


def corruption_accuracy(results):
    """Accuracy against severity per corruption, one panel per `keras_cnn.evaluation.corruptions.Robustness`."""
    import os

    figure, axes = subplots(1, len(results), figsize=(5.5 * len(results), 4.2), squeeze=False, sharey=True)
    for axis, result in zip(axes[0], results):
        for name, row in result.accuracy_pct.items():
            axis.plot(range(0, len(row) + 1), [result.clean_accuracy_pct, *row], marker="o", markersize=3,
                      label=name)
        axis.set_title(f"{os.path.basename(result.artifact)}: mean corruption accuracy "
                       f"{result.mean_corruption_accuracy_pct:.1f}%", fontsize=9)
        axis.set_xlabel("severity (0: clean)")
        axis.set_ylabel("accuracy (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def pareto_front(points, front, *, ship="int8", references=()):
    """Accuracy against file size of a search's trials (dicts with ship_kb, ship_accuracy, ship_latency_ms),
    latency as colour, the Pareto front `front` (some of `points`) circled, and the best accuracy within each
    size drawn as steps (a front of three objectives also holds points that win on latency alone);
    `references` are labelled extra points (models outside the search), drawn as black stars."""
    figure, axis = subplots(figsize=(8, 5))
    everything = [*points, *references]
    latencies = [p.get("ship_latency_ms") for p in everything if p.get("ship_latency_ms") is not None]
    scale = dict(cmap="viridis", vmin=min(latencies), vmax=max(latencies)) if latencies else {}

    def colours(group):
        return [p.get("ship_latency_ms") if latencies else 0.0 for p in group]

    dots = axis.scatter([p["ship_kb"] for p in points], [p["ship_accuracy"] for p in points], c=colours(points),
                        s=30, label="trials", **scale)
    joined = sorted(front, key=lambda p: p["ship_kb"])
    steps = [p for i, p in enumerate(joined) if all(p["ship_accuracy"] > q["ship_accuracy"] for q in joined[:i])]
    axis.plot([p["ship_kb"] for p in steps], [p["ship_accuracy"] for p in steps], color="crimson", lw=1,
              drawstyle="steps-post", label="best accuracy within a size")
    axis.scatter([p["ship_kb"] for p in joined], [p["ship_accuracy"] for p in joined], s=110, facecolors="none",
                 edgecolors="crimson", label="Pareto front")
    for reference in references:
        axis.scatter([reference["ship_kb"]], [reference["ship_accuracy"]], c=colours([reference]), marker="*",
                     s=220, edgecolors="black", **scale)
        axis.annotate(reference["label"], (reference["ship_kb"], reference["ship_accuracy"]),
                      textcoords="offset points", xytext=(6, 6))
    if latencies:
        figure.colorbar(dots, ax=axis, label=f"{ship} batch-1 latency (ms)")
    axis.set_xscale("log")
    axis.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
    axis.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))  # 300 rather than 3 x 10^2
    axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_xlabel(f"{ship} TFLite file (KB, log scale)")
    axis.set_ylabel(f"{ship} top-1 accuracy (validation, LiteRT)")
    axis.grid(alpha=0.3)
    axis.legend(loc="best")
    figure.tight_layout()
    return figure
