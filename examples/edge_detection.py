"""Seed 001's vertical-edge (Sobel) example: the NumPy reference and a Keras Conv2D, side by side.

    python examples/edge_detection.py [--out edges.png]
"""
import argparse

import keras
import numpy as np

from keras_cnn.analysis import reference, viz

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--out", default="edge_detection.png")
args = parser.parse_args()

image = np.array([[10, 10, 10, 100, 100, 100]] * 6, dtype=float)  # dark left, light right
sobel = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=float)

cross_correlation = reference.conv2d(image, sobel)  # what CNN layers compute
convolution = reference.conv2d(image, sobel, flip=True)  # the textbook definition flips the kernel

conv = keras.layers.Conv2D(1, 3, use_bias=False)
conv.build((None, 6, 6, 1))
conv.set_weights([sobel[:, :, None, None]])
keras_output = np.asarray(conv(image[None, :, :, None]))[0, :, :, 0]

print("cross-correlation (NumPy reference):\n", cross_correlation)
print("true convolution (kernel flipped):\n", convolution)
print("Keras Conv2D equals the cross-correlation:", np.allclose(keras_output, cross_correlation))

figure, axes = viz.subplots(1, 4, figsize=(13, 3.4))
panels = [(image, "input image"), (sobel, "Sobel filter"), (cross_correlation, "NumPy reference"),
          (keras_output, "Keras Conv2D")]
for axis, (data, title) in zip(axes, panels):
    shown = axis.imshow(data, cmap="gray")
    axis.set_title(title)
    axis.set_xticks([]), axis.set_yticks([])
    figure.colorbar(shown, ax=axis, fraction=0.046)
print("picture:", viz.save(figure, args.out))
