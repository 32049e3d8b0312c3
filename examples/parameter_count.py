"""Why convolutions: parameter counts of dense layers vs conv layers (seeds 001 and 004).

    python examples/parameter_count.py
"""
import keras

import keras_cnn

# Seed 001: a 28x28 grayscale image flattened into a 128-unit dense layer.
dense = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(128, use_bias=False)])
print(f"dense layer, 784 inputs -> 128 units: {dense.count_params():,} weights (seed 001: 100,352)")

# Seed 004: ten 5x5 filters over a 32x32x3 image, stride 1, padding 2.
conv = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(10, 5, padding="same", name="conv")])
row = keras_cnn.describe(conv).rows[0]
print(f"conv layer, ten 5x5x3 filters + bias: {row.params} parameters (seed 004: 760), "
      f"output {'x'.join(map(str, row.output_shape))}")

# The same comparison for a whole network: the MNIST CNN of seed 001 against a dense network of similar size.
summary = keras_cnn.describe("mnist_cnn")
print(f"\nmnist_cnn: {summary.total_params:,} parameters, of which the 1600 -> 128 dense layer holds "
      f"{[r.params for r in summary.rows if r.name == 'head_dense1'][0]:,}")
for name in ("stage1_conv", "stage1_pool", "stage2_conv", "stage2_pool", "head_flatten"):
    row = [r for r in summary.rows if r.name == name][0]
    print(f"  {name:<13} {'x'.join(map(str, row.output_shape)):>9}  {row.params:>7,} parameters")
