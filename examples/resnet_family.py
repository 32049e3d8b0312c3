"""CIFAR-style ResNets: how the receptive field grows while the feature map shrinks.

    python examples/resnet_family.py
"""
import keras_cnn

summary = keras_cnn.describe("resnet18")
print(f"resnet18: {summary.total_params:,} parameters, {summary.total_macs / 1e6:,.0f} M MACs per 32x32 image\n")
print(f"{'stage output':<20} {'feature map':<12} {'receptive field':>15}")
for row in summary.rows:
    if row.name == "stem_act" or row.name.endswith("_out") and "block1" in row.name:
        print(f"{row.name:<20} {'x'.join(map(str, row.output_shape)):<12} {row.receptive_field:>15}")

# A narrower, shallower variant that downsamples with max pooling, for small devices.
tiny = keras_cnn.build("resnet18", width=0.25, stages=3, downsample="maxpool", num_classes=5)
print(f"\nresnet18 at width 0.25, 3 stages, max-pool downsampling: {tiny.count_params():,} parameters")
