"""Train SmallCNN (seed 003) on the offline digits data and plot accuracy per epoch.

    python examples/train_digits.py [--epochs 30] [--out saved_models/small-digits]
"""
import argparse

import keras_cnn
from keras_cnn.analysis import viz

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--epochs", type=int, default=30)
parser.add_argument("--out", help="run folder (default: a new one under saved_models/)")
args = parser.parse_args()

run = keras_cnn.train("small", data="digits", epochs=args.epochs, out=args.out, verbose=0)
print(run.metrics)
print("accuracy per epoch (train / validation):")
for epoch, (train, val) in enumerate(zip(run.history["accuracy"], run.history["val_accuracy"]), start=1):
    print(f"  {epoch:>3}  {train:.3f} / {val:.3f}")
print("curves:", viz.save(viz.curves(run.history), f"{run.path}/curves.png"))
