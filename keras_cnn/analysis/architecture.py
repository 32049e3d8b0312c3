"""Architecture analysis: per-layer shapes, parameters, MACs, receptive field and jump.

The receptive field r and jump j (effective stride) follow the usual recurrence
r_out = r_in + (k - 1) * d * j_in and j_out = j_in * s along every path; where
paths merge (a residual add) the larger field is kept. Layers after a global
pooling or flatten see the whole image, so their field is not reported.
"""
import dataclasses
import json

import keras

_GLOBAL = (keras.layers.Flatten, keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)
_POOL = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
_CONV = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


@dataclasses.dataclass
class LayerRow:
    name: str
    type: str
    output_shape: tuple
    params: int
    macs: int
    kernel: tuple = None
    stride: tuple = None
    padding: str = None
    dilation: tuple = None
    receptive_field: int = None
    jump: int = None
    note: str = ""


@dataclasses.dataclass
class Summary:
    """What `describe` returns: printable, and `to_dict()` for JSON."""

    model: str
    input_shape: tuple
    rows: list
    total_params: int
    trainable_params: int
    total_macs: int

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self):
        from keras_cnn.utils.tables import format_table

        header = ("layer", "type", "output", "kernel/stride", "params", "MACs", "RF", "jump", "note")
        lines = []
        for r in self.rows:
            geometry = f"{_pair(r.kernel)}/{_pair(r.stride)} {r.padding}" if r.kernel else ""
            if r.dilation and r.dilation != (1, 1):
                geometry += f" d{_pair(r.dilation)}"
            lines.append((r.name, r.type, "x".join(map(str, r.output_shape)), geometry, f"{r.params:,}",
                          f"{r.macs:,}", _blank(r.receptive_field), _blank(r.jump), r.note))
        text = [format_table(header, lines, rule=True)]
        text.append(f"{self.model}: input {'x'.join(map(str, self.input_shape))}, {self.total_params:,} parameters "
                    f"({self.trainable_params:,} trainable), {self.total_macs:,} multiply-accumulates per image")
        return "\n".join(text)


def _pair(value):
    return str(value[0]) if value[0] == value[1] else f"{value[0]}x{value[1]}"


def _blank(value):
    return "-" if value is None else str(value)


def _spatial(layer):
    """(kernel, stride, dilation, padding) of a conv or pooling layer, else None."""
    if isinstance(layer, _CONV):
        return tuple(layer.kernel_size), tuple(layer.strides), tuple(layer.dilation_rate), layer.padding
    if isinstance(layer, _POOL):
        return tuple(layer.pool_size), tuple(layer.strides), (1, 1), layer.padding
    return None


def _macs(layer, input_shape, output_shape):
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return _product(output_shape) * layer.kernel_size[0] * layer.kernel_size[1]
    if isinstance(layer, keras.layers.Conv2D):
        fan_in = layer.kernel_size[0] * layer.kernel_size[1] * input_shape[-1] // layer.groups
        return _product(output_shape) * fan_in
    if isinstance(layer, keras.layers.Dense):
        return _product(output_shape) * input_shape[-1]
    return 0


def model_macs(model):
    """Multiply-accumulates per image over every layer, nested models (a transfer backbone) included."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += model_macs(layer)
        elif isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.Conv2D, keras.layers.Dense)):
            total += _macs(layer, tuple(_inputs(layer)[0].shape[1:]), tuple(layer.output.shape[1:]))
    return total


def _product(shape):
    result = 1
    for size in shape:
        result *= size
    return result


def _dropped(size, kernel, stride, dilation):
    """Pixels a 'valid' window never reaches: the remainder of (n - d(k-1) - 1) / s (seed 004)."""
    return (size - dilation * (kernel - 1) - 1) % stride if size >= dilation * (kernel - 1) + 1 else 0


def _inputs(layer):
    return keras.tree.flatten(layer.input)


def describe(model_or_name, input_shape=None, **overrides):
    """Per-layer table of a model (or of a zoo model built by name with `overrides`)."""
    if isinstance(model_or_name, str):
        from keras_cnn.models.registry import build

        model = build(model_or_name, input_shape=input_shape, **overrides)
    else:
        model = model_or_name
    # id(tensor) -> (receptive field, jump); None once the field is global
    fields = {id(tensor): (1, 1) for tensor in model.inputs}
    rows = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        inputs = _inputs(layer)
        known = [fields.get(id(t)) for t in inputs]
        field = None if any(f is None for f in known) else max(known)
        in_shape = tuple(inputs[0].shape[1:])
        out_shape = tuple(keras.tree.flatten(layer.output)[0].shape[1:])
        row = LayerRow(layer.name, type(layer).__name__, out_shape, layer.count_params(),
                       _macs(layer, in_shape, out_shape))
        geometry = _spatial(layer)
        if geometry and field:
            (kernel, stride, dilation, padding), (rf, jump) = geometry, field
            row.kernel, row.stride, row.dilation, row.padding = kernel, stride, dilation, padding
            field = (rf + (kernel[0] - 1) * dilation[0] * jump, jump * stride[0])
            if padding == "valid":
                lost = [_dropped(in_shape[a], kernel[a], stride[a], dilation[a]) for a in (0, 1)]
                if any(lost):
                    row.note = (f"stride {_pair(stride)} does not divide evenly: the last {lost[0]} row(s) and "
                                f"{lost[1]} column(s) are never seen")
        elif isinstance(layer, _GLOBAL) or (isinstance(layer, keras.Model) and out_shape != in_shape):
            field = None  # a nested backbone is not traced; a shape-keeping one (augment) is a no-op
        if field:
            row.receptive_field, row.jump = field
        fields[id(layer.output)] = field
        rows.append(row)
    trainable = sum(_product(w.shape) for w in model.trainable_weights)
    return Summary(model.name, tuple(model.input_shape[1:]), rows, model.count_params(), trainable,
                   sum(r.macs for r in rows))
