"""Transfer learning offline: pretrain on digits 0-5, reuse the backbone for 6-9 with 15 images per class.

Seed 003, section 7: freeze the pretrained backbone, put a new head on it, train the head (and then,
optionally, unfreeze the top stage at a smaller learning rate). With ImageNet weights in the Keras
cache the same code reads `keras_cnn.train("resnet50_transfer", data, weights="imagenet", ...)`.

    python examples/transfer_learning.py        # about a minute on 2 CPU cores
"""
import logging
import tempfile

import numpy as np
from sklearn.datasets import load_digits

import keras_cnn

logging.getLogger("keras_cnn").setLevel(logging.WARNING)
digits = load_digits()
x, y = (digits.images * (255 / 16)).astype("float32"), digits.target  # raw pixels [0, 255]
old, new = y < 6, y >= 6
folder = tempfile.mkdtemp(prefix="transfer-example-")
common = dict(width=0.25, batch_size=32, precision="float32", verbose=0, seed=0)

# 1. The "pretrained" network: the zoo's resnet18, trained on digits 0-5.
pretrained = keras_cnn.train("resnet18", (x[old], y[old]), epochs=6, out=f"{folder}/pretrain", **common)
print(f"resnet18 on digits 0-5: {pretrained.metrics.accuracy:.1%} test accuracy")

# 2. Digits 6-9 with only 15 training images per class (val 5%, the rest is the test set).
few = keras_cnn.load_data((x[new], y[new] - 6), class_names=["6", "7", "8", "9"], val_fraction=0.05,
                          test_fraction=1 - 0.05 - 60 / new.sum())

# 3. The same network from scratch, and the pretrained backbone (frozen) under a new head: same budget.
scratch = keras_cnn.train("resnet18", few, epochs=10, out=f"{folder}/scratch", **common)
transfer = keras_cnn.train("resnet18_transfer", few, epochs=10, weights=pretrained.path, dropout=0.0, batchnorm=True,
                           out=f"{folder}/transfer", **common)
print(f"digits 6-9 from {few.sizes['train']} images, 10 epochs, tested on {few.sizes['test']}:")
print(f"  from scratch          {scratch.metrics.accuracy:.1%}")
print(f"  transferred backbone  {transfer.metrics.accuracy:.1%}")
backbone = transfer.model.get_layer("backbone")
print(f"  ({np.sum([w.numpy().size for w in backbone.weights]):,} backbone weights reused and frozen, "
      f"{sum(w.numpy().size for w in transfer.model.trainable_weights):,} trained in the head)")
