"""A small hyperparameter search on digits: filters, kernel size and downsampling with keras-tuner.

    python examples/tuning_search.py [--trials 6] [--out saved_models/tune-digits-example]
"""
import argparse

from keras_cnn.tuning import search

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--trials", type=int, default=6)
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--out", help="search folder (default: a new one under saved_models/)")
args = parser.parse_args()

# Proposals that would shrink the 8x8 digits below 1x1 are rejected before building; the table shows them.
result = search(data="digits", space="cnn", tuner="random", max_trials=args.trials, epochs=args.epochs,
                out=args.out, verbose=0)
print(result.table())
if result.best_trial is not None:
    print(f"best hyperparameters: {result.best_hyperparameters}")
    print(f"retrained best: {result.run_dir}, test accuracy {result.test_accuracy:.2%}")
