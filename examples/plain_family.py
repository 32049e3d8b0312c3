"""The seeds' plain CNNs by name: build each, compare sizes, and try the variant knobs.

    python examples/plain_family.py
"""
import keras_cnn

print(f"{'model':<10} {'input':<9} {'parameters':>11} {'MACs/image':>13}")
for name in ("lenet", "mnist_cnn", "simple", "small", "deeper", "compact"):
    summary = keras_cnn.describe(name)
    shape = "x".join(map(str, summary.input_shape))
    print(f"{name:<10} {shape:<9} {summary.total_params:>11,} {summary.total_macs:>13,}")

# Variants are keyword overrides: a global-average-pooling head removes SmallCNN's big dense layer.
flatten, gap = keras_cnn.build("small"), keras_cnn.build("small", head="gap", dense=[])
print(f"\nsmall with a flatten head: {flatten.count_params():,} parameters; with GAP: {gap.count_params():,}")

# The same network for 28x28 grayscale digits, with strided convolutions instead of pooling.
digits = keras_cnn.build("small", input_shape=(28, 28, 1), downsample="stride", batchnorm=False, dropout=0.5)
print(keras_cnn.describe(digits))
