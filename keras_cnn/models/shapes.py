"""Feature-map size arithmetic, checked before any layer is built (pure Python).

Each model family lists the spatial operations along its main path as `Op`s;
`check` walks an input size through them and names the first layer whose
output would vanish, together with the smallest input that works.
"""
import math
from typing import NamedTuple

LARGEST_SIDE = 4096  # search bound for the smallest valid input


class Op(NamedTuple):
    name: str
    kernel: int
    stride: int
    padding: str  # "valid" or "same", as in Keras


def output_size(size, op):
    """Keras's rule: valid = floor((n - k) / s) + 1 (0 when k > n), same = ceil(n / s)."""
    if op.padding == "same":
        return math.ceil(size / op.stride)
    return (size - op.kernel) // op.stride + 1 if size >= op.kernel else 0


def collapses(side, ops):
    """The first op that shrinks a square input of `side` pixels to nothing, or None."""
    for op in ops:
        side = output_size(side, op)
        if side < 1:
            return op
    return None


def smallest_side(ops):
    """The smallest square input side for which every op outputs at least 1x1."""
    for side in range(1, LARGEST_SIDE + 1):
        if collapses(side, ops) is None:
            return side
    raise ValueError(f"no input up to {LARGEST_SIDE}x{LARGEST_SIDE} fits these layers. Received: ops={ops}")


def check(model_name, ops, input_shape):
    """Raise ValueError if `input_shape` (H, W, C) shrinks to 0 somewhere along `ops`."""
    height, width = input_shape[0], input_shape[1]
    for op in ops:
        out_h, out_w = output_size(height, op), output_size(width, op)
        if min(out_h, out_w) < 1:
            side = smallest_side(ops)
            raise ValueError(
                f"{model_name}: {op.name} would output {out_h}x{out_w} from {height}x{width} with a "
                f"{op.kernel}x{op.kernel} kernel and stride {op.stride}; the smallest input is {side}x{side}. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        height, width = out_h, out_w
