"""NumPy reference for the arithmetic the seeds derive by hand (no TensorFlow).

The tutorials compute convolutions, pooling and output sizes on paper; this
module is the executable version, vectorized with `sliding_window_view` and
`einsum`, in float64 and NHWC layout with Keras's kernel layout
(kh, kw, c_in, c_out). The tests check it against the seeds' worked examples
and against the Keras layers, so it doubles as a spec of Keras's conventions
("same" padding, pooling windows, gradients).

Every argument error is a `ValueError` ending in `Received: name=value`.
"""
import numbers

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

_CONV_PADDINGS = ("valid", "same", "full")
_POOL_PADDINGS = ("valid", "same")


def _fail(message, name, value):
    raise ValueError(f"{message}. Received: {name}={value!r}")


def _is_int(value, minimum):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def _pair(value, name, minimum=1, message=None):
    """An int or a pair of ints, each >= `minimum`, as a (height, width) tuple."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(_is_int(v, minimum) for v in pair):
        kind = "positive" if minimum > 0 else "non-negative"
        _fail(message or f"{name} must be a {kind} int or a pair of them", name, value)
    return int(pair[0]), int(pair[1])


def _as_nhwc(x):
    """x as float64 (N, H, W, C); a 2-D (H, W) image becomes (1, H, W, 1)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim not in (2, 4):
        _fail("x must be 2-D (H, W) or 4-D (N, H, W, C)", "x.shape", x.shape)
    return (x[None, :, :, None], True) if x.ndim == 2 else (x, False)


def _unwrap(y, was_2d):
    """Undo `_as_nhwc` on a result: drop the batch and channel axes added for a 2-D x."""
    return y[0, ..., 0] if was_2d else y


def _pads(padding, size, window, stride, dilation, allowed):
    """(before, after) zero padding per spatial axis; "same" follows TF (extra at the end)."""
    spans = [d * (k - 1) + 1 for k, d in zip(window, dilation)]
    if isinstance(padding, str) and padding in allowed:
        if padding == "valid":
            return [(0, 0), (0, 0)]
        if padding == "full":
            return [(e - 1, e - 1) for e in spans]
        # TF's "same": ceil(n / s) outputs, padded as needed with the odd pixel at the end.
        totals = [max((-(-n // s) - 1) * s + e - n, 0) for n, s, e in zip(size, stride, spans)]
        return [(t // 2, t - t // 2) for t in totals]
    if allowed == _POOL_PADDINGS:
        _fail("padding must be 'valid' or 'same'", "padding", padding)
    message = "padding must be 'valid', 'same', 'full' or a non-negative int (or a pair of them)"
    return [(p, p) for p in _pair(padding, "padding", minimum=0, message=message)]


def _windows(x, window, stride, dilation, pads, fill=0.0):
    """The receptive fields of x (N, H, W, C) as a view (N, H_out, W_out, C, kh, kw)."""
    size = x.shape[1:3]
    x = np.pad(x, ((0, 0), *pads, (0, 0)), constant_values=fill)
    spans = tuple(d * (k - 1) + 1 for k, d in zip(window, dilation))
    if spans[0] > x.shape[1] or spans[1] > x.shape[2]:
        _fail(f"the {spans[0]}x{spans[1]} window (dilation included) is larger than the input "
              f"padded to {x.shape[1]}x{x.shape[2]}", "(H, W)", size)
    (sh, sw), (dh, dw) = stride, dilation
    return sliding_window_view(x, spans, axis=(1, 2))[:, ::sh, ::sw, :, ::dh, ::dw]


def _conv_inputs(x, kernel, stride, padding, dilation):
    """Validate conv2d's arguments: x as NHWC, the kernel as 4-D, stride, dilation, pads, 2-D flag."""
    x, was_2d = _as_nhwc(x)
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != (2 if was_2d else 4):
        layout = "2-D (kh, kw) for a 2-D x" if was_2d else "4-D (kh, kw, c_in, c_out) for a 4-D x"
        _fail(f"kernel must be {layout}", "kernel.shape", kernel.shape)
    kernel = kernel[:, :, None, None] if was_2d else kernel
    if kernel.shape[2] != x.shape[3]:
        _fail(f"kernel's c_in must equal x's {x.shape[3]} channels", "kernel.shape", kernel.shape)
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    pads = _pads(padding, x.shape[1:3], kernel.shape[:2], stride, dilation, _CONV_PADDINGS)
    return x, kernel, stride, dilation, pads, was_2d


def output_size(size, kernel, stride=1, padding=0, dilation=1):
    """Seed 003's rule: floor((size + 2p - d(k - 1) - 1) / s) + 1 (Keras "valid" is p=0)."""
    for name, value, minimum in (("size", size, 1), ("kernel", kernel, 1), ("stride", stride, 1),
                                 ("padding", padding, 0), ("dilation", dilation, 1)):
        if not _is_int(value, minimum):
            _fail(f"{name} must be an int >= {minimum}", name, value)
    span = dilation * (kernel - 1) + 1
    if span > size + 2 * padding:
        _fail(f"the dilated kernel spans {span} > padded size {size + 2 * padding}", "kernel", kernel)
    return (size + 2 * padding - span) // stride + 1


def conv2d(x, kernel, bias=None, *, stride=1, padding="valid", dilation=1, flip=False):
    """Cross-correlation as in keras.layers.Conv2D; `flip=True` gives true convolution.

    x is (N, H, W, C) with kernel (kh, kw, c_in, c_out), or a 2-D image with a
    2-D kernel (the seeds' examples), which returns a 2-D map. padding is
    "valid", "same" (TF's convention), "full" (every overlap) or explicit ints.
    """
    x, kernel, stride, dilation, pads, was_2d = _conv_inputs(x, kernel, stride, padding, dilation)
    if flip:  # true convolution: rotate the kernel by 180 degrees
        kernel = kernel[::-1, ::-1]
    windows = _windows(x, kernel.shape[:2], stride, dilation, pads)
    y = np.einsum("nhwcij,ijco->nhwo", windows, kernel, optimize=True)
    if bias is not None:
        bias = np.asarray(bias, dtype=np.float64)
        if bias.shape not in ((), (kernel.shape[3],)):
            _fail(f"bias must be a scalar or have shape ({kernel.shape[3]},)", "bias.shape", bias.shape)
        y = y + bias
    return _unwrap(y, was_2d)


def conv2d_backward(x, kernel, grad_out, *, stride=1, padding="valid", dilation=1):
    """Gradients (grad_x, grad_kernel, grad_bias) of sum(conv2d(x, kernel, bias) * grad_out).

    This is what backprop computes for a Conv2D layer: the kernel gradient
    correlates the input windows with grad_out, and the input gradient is a
    transposed convolution (grad_out spread out by the stride, convolved with
    the kernel with its channel axes swapped).
    """
    x, kernel, stride, dilation, pads, was_2d = _conv_inputs(x, kernel, stride, padding, dilation)
    windows = _windows(x, kernel.shape[:2], stride, dilation, pads)
    out_shape = windows.shape[:3] + kernel.shape[3:]
    grad_out = np.asarray(grad_out, dtype=np.float64)
    if grad_out.shape != (out_shape[1:3] if was_2d else out_shape):
        _fail("grad_out must have the shape of conv2d's output", "grad_out.shape", grad_out.shape)
    grad_out = grad_out.reshape(out_shape)
    grad_kernel = np.einsum("nhwcij,nhwo->ijco", windows, grad_out, optimize=True)
    grad_bias = grad_out.sum(axis=(0, 1, 2))
    (sh, sw), (n, h_out, w_out, c_out) = stride, grad_out.shape
    spread = np.zeros((n, (h_out - 1) * sh + 1, (w_out - 1) * sw + 1, c_out))
    spread[:, ::sh, ::sw] = grad_out
    grad_padded = conv2d(spread, kernel.transpose(0, 1, 3, 2), padding="full", dilation=dilation, flip=True)
    # Trailing rows/columns that no window reached (stride left them out) get zero gradient.
    (top, bottom), (left, right) = pads
    height, width = x.shape[1] + top + bottom, x.shape[2] + left + right
    grad_padded = np.pad(grad_padded, ((0, 0), (0, height - grad_padded.shape[1]),
                                       (0, width - grad_padded.shape[2]), (0, 0)))
    grad_x = grad_padded[:, top:top + x.shape[1], left:left + x.shape[2]]
    if was_2d:
        return grad_x[0, :, :, 0], grad_kernel[:, :, 0, 0], grad_bias[0]
    return grad_x, grad_kernel, grad_bias


def _pool(x, pool_size, stride, padding, fill):
    """Windows of x for Keras-style pooling (stride defaults to pool_size), 2-D flag."""
    x, was_2d = _as_nhwc(x)
    window = _pair(pool_size, "pool_size")
    stride = window if stride is None else _pair(stride, "stride")
    pads = _pads(padding, x.shape[1:3], window, stride, (1, 1), _POOL_PADDINGS)
    return _windows(x, window, stride, (1, 1), pads, fill), was_2d


def max_pool2d(x, pool_size=2, stride=None, padding="valid"):
    """keras.layers.MaxPooling2D: the largest value per window; padding never wins."""
    windows, was_2d = _pool(x, pool_size, stride, padding, fill=-np.inf)
    return _unwrap(windows.max(axis=(-2, -1)), was_2d)


def avg_pool2d(x, pool_size=2, stride=None, padding="valid"):
    """keras.layers.AveragePooling2D: with "same", TF averages over the real pixels only."""
    sums, was_2d = _pool(x, pool_size, stride, padding, fill=0.0)
    counts, _ = _pool(np.ones_like(np.asarray(x, dtype=np.float64)), pool_size, stride, padding, fill=0.0)
    return _unwrap(sums.sum(axis=(-2, -1)) / counts.sum(axis=(-2, -1)), was_2d)


def global_avg_pool2d(x):
    """keras.layers.GlobalAveragePooling2D: (N, H, W, C) -> (N, C); a 2-D image -> its mean."""
    x, was_2d = _as_nhwc(x)
    return _unwrap(x.mean(axis=(1, 2)), was_2d)


def global_max_pool2d(x):
    """keras.layers.GlobalMaxPooling2D: (N, H, W, C) -> (N, C); a 2-D image -> its max."""
    x, was_2d = _as_nhwc(x)
    return _unwrap(x.max(axis=(1, 2)), was_2d)
