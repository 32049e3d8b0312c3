"""Seed-003 recipe on the CIFAR-10 JPEG copy: test accuracy and wall time, beside the PyTorch peer.

Trains a zoo model with `basic` augmentation (pad-4 crop + flip) and the `sgd`
recipe through `keras_cnn.train`, exactly what `keras-cnn train` does, then
(with --peer) runs `torch_reference.py accuracy` with the same recipe in the
same process tree, one after the other, and prints both. Not a unit test.

    python benchmarks/cifar_accuracy.py --model small --epochs 15 \
        --data ~/.cache/cifar10-jpg --peer ../shared/bench/torch_reference.py

Accuracy within a time budget (e.g. resnet18 in 30 minutes) is `bench.py time-to-accuracy`.
"""
import argparse
import json
import subprocess
import sys

from cifar import CIFAR


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small")
    parser.add_argument("--data", default=CIFAR)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="share of train held out for validation (default 0: all 50,000 images, as the peer)")
    parser.add_argument("--peer", help="path to torch_reference.py to run the PyTorch peer in the same run")
    parser.add_argument("--peer-bf16", action="store_true", help="run the peer with bf16 autocast")
    parser.add_argument("--out", help="run folder (default: a new one under saved_models/)")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()

    import keras_cnn

    run = keras_cnn.train(args.model, f"folder:{args.data}", epochs=args.epochs, augment="basic", recipe="sgd",
                          precision=args.precision, out=args.out, verbose=2,
                          data_options={"val_fraction": args.val_fraction})
    result = {"model": args.model, "epochs_planned": args.epochs, "epochs_run": run.config["epochs_run"],
              "precision": run.config["precision"], "train_seconds": run.config["train_seconds"],
              "test_accuracy": round(run.metrics.accuracy, 4), "run": run.path}
    print("keras-cnn:", json.dumps(result), flush=True)
    if args.peer:
        command = [sys.executable, args.peer, "accuracy", "--model", args.model, "--data", args.data,
                   "--epochs", str(args.epochs)] + (["--bf16"] if args.peer_bf16 else [])
        peer = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        result["peer"] = peer
        print("pytorch peer:", json.dumps(peer))
        print(f"accuracy {result['test_accuracy']:.2%} vs {peer['test_accuracy']:.2%}; training time ratio "
              f"(peer / keras-cnn) {peer['train_seconds'] / result['train_seconds']:.2f}x")
    if args.json:
        from keras_cnn.utils.io import write_json

        write_json(args.json, result)


if __name__ == "__main__":
    main()
