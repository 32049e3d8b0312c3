"""Convolution and pooling by hand with keras_cnn.analysis.reference, next to the Keras layers (seeds 001-003).

    python examples/manual_convolution.py
"""
import keras
import numpy as np

from keras_cnn.analysis import reference

# Seed 001: a 2x2 filter on a 3x3 image; the top-left output is 1*1 + 5*0 + 8*1 + 1*0 = 9.
image = np.array([[1, 5, 2], [8, 1, 6], [3, 4, 7]], dtype=float)
kernel = np.array([[1, 0], [1, 0]], dtype=float)
print("2x2 filter on a 3x3 image:\n", reference.conv2d(image, kernel))

# Seed 002: padding 1 keeps a 5x5 input at 5x5.
x = np.array([[1, 2, 3, 0, 0], [4, 5, 6, 0, 0], [7, 8, 9, 0, 0], [0] * 5, [0] * 5], dtype=float)
k = np.array([[1, 0, -1]] * 3, dtype=float)
ours = reference.conv2d(x, k, padding=1)
layer = keras.layers.Conv2D(1, 3, padding="same", use_bias=False)
layer.build((None, 5, 5, 1))
layer.set_weights([k[:, :, None, None]])
theirs = np.asarray(layer(x[None, :, :, None]))[0, :, :, 0]
print("\nseed 002's padded convolution, NumPy reference:\n", ours)
print("Keras Conv2D agrees:", np.allclose(ours, theirs))

# Seed 001: 2x2 max pooling keeps the strongest value of each window.
grid = np.array([[12, 20, 30, 0], [8, 12, 2, 0], [34, 70, 37, 4], [112, 100, 25, 12]], dtype=float)
print("\n2x2 max pooling of the 4x4 grid:\n", reference.max_pool2d(grid))
print("average pooling:\n", reference.avg_pool2d(grid))

# Seed 003: output size floor((H + 2p - d(k-1) - 1) / s) + 1.
for size, k_, s, p in [(32, 3, 1, 1), (32, 5, 1, 0), (7, 3, 2, 0), (7, 3, 5, 0)]:
    print(f"H={size}, k={k_}, s={s}, p={p} -> {reference.output_size(size, k_, stride=s, padding=p)}")
