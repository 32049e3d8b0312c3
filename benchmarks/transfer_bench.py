"""Transfer learning, offline: pretrain a backbone on some classes, transfer it to the others, and compare
with the same network trained from scratch at the same small budget. Not a unit test.

No ImageNet weights can be downloaded here, so the pretrained backbone is made on the spot: the zoo's
resnet18 (narrow, `--width`) is trained once on six CIFAR-10 classes (airplane, automobile, bird, cat,
deer, dog) and its run folder is the `weights` of `resnet18_transfer` for the four others (frog, horse,
ship, truck), with only `--target-per-class` training images each. Every model trains through
`keras_cnn.train`, as `keras-cnn train` does (sgd recipe), and is tested on all CIFAR-10 test images of
the target classes. Each `--seeds` value draws another target training sample and initialisation.

  scratch              resnet18, every layer trained from random weights, `--epochs` epochs
  transfer             resnet18_transfer: the pretrained backbone frozen, a new head (BatchNorm on the
                       pooled features, then the classifier) trained for `--epochs` epochs
  transfer+fine-tune   the same, but the last `--fine-tune-epochs` of the `--epochs` with the top
                       `--unfreeze` stage(s) unfrozen at 1/100 of the learning rate

The target runs hold out no validation images (there are too few): each keeps its best epoch by
training accuracy. The target models use `basic` augmentation; the short pretraining uses none.

    python benchmarks/transfer_bench.py                # CIFAR subset: about 10-15 min on 2 busy CPU cores
    python benchmarks/transfer_bench.py --data digits  # digits 0-5 -> 6-9 (15 images per class): 3 min
    python benchmarks/transfer_bench.py --pretrain-per-class 5000 --pretrain-epochs 15 --seeds 0 1 2 3 4
"""
import argparse
import os
import statistics
import tempfile
import time

from cifar import CIFAR, cifar_folder

SOURCE_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog")
TARGET_CLASSES = ("frog", "horse", "ship", "truck")
LABELS = ("scratch", "transfer", "transfer+fine-tune")


def digits_data(target, per_class, seed):
    """Digits 0-5 (the source: all of them) or 6-9 (about `per_class` training images each, the rest for testing)."""
    from sklearn.datasets import load_digits

    import keras_cnn

    data = load_digits()
    x, y = (data.images * (255 / 16)).astype("float32"), data.target
    if not target:
        keep = y < 6
        return keras_cnn.load_data((x[keep], y[keep]), seed=seed, class_names=[str(d) for d in range(6)])
    keep = y >= 6
    test_fraction = 1 - per_class * 4 / keep.sum()  # stratified per class
    return keras_cnn.load_data((x[keep], y[keep] - 6), seed=seed, class_names=["6", "7", "8", "9"], val_fraction=0,
                               test_fraction=test_fraction)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("cifar", "digits"), default="cifar")
    parser.add_argument("--cifar-dir", default=CIFAR, help=f"the CIFAR-10 JPEG copy (default {CIFAR})")
    parser.add_argument("--backbone", choices=("resnet18", "resnet34"), default="resnet18")
    parser.add_argument("--width", type=float, default=0.25, help="channel multiplier of the backbone")
    parser.add_argument("--pretrain-per-class", type=int, default=1000, help="CIFAR source training images per class")
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--target-per-class", type=int, help="target training images per class (cifar 50, digits 15)")
    parser.add_argument("--epochs", type=int, help="the budget of every target model (cifar 15, digits 5)")
    parser.add_argument("--fine-tune-epochs", type=int, help="of --epochs (cifar 5, digits 2); 0 = no such column")
    parser.add_argument("--unfreeze", type=int, default=1, help="backbone stages unfrozen for fine-tuning")
    parser.add_argument("--no-head-bn", action="store_true", help="no BatchNorm on the transfer head's features")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="target samples and initialisations")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--out", help="keep the run folders here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    cifar = args.data == "cifar"
    per_class = args.target_per_class or (50 if cifar else 15)
    epochs = args.epochs or (15 if cifar else 5)
    fine_tune = (5 if cifar else 2) if args.fine_tune_epochs is None else args.fine_tune_epochs
    if not 0 <= fine_tune < epochs:
        parser.error("--fine-tune-epochs must be below --epochs (they are part of its budget)")

    import keras_cnn

    started = time.perf_counter()
    work = args.out or tempfile.mkdtemp(prefix="transfer-bench-")
    common = dict(width=args.width, precision=args.precision, verbose=2)
    print(f"pretraining {args.backbone} (width {args.width}) for {args.pretrain_epochs} epochs", flush=True)
    source = (cifar_folder(args.cifar_dir, SOURCE_CLASSES, args.pretrain_per_class, 0, os.path.join(work, "source"))
              if cifar else digits_data(False, 0, 0))
    pretrained = keras_cnn.train(args.backbone, source, epochs=args.pretrain_epochs, batch_size=128 if cifar else 32,
                                 out=os.path.join(work, "pretrain"), **common)
    pretrain_seconds = time.perf_counter() - started

    head = {"weights": pretrained.path, "batchnorm": not args.no_head_bn, "dropout": 0.0}
    runs = {"scratch": (args.backbone, {}), "transfer": (f"{args.backbone}_transfer", head)}
    if fine_tune:
        runs["transfer+fine-tune"] = (f"{args.backbone}_transfer", {
            **head, "epochs": epochs - fine_tune, "fine_tune_epochs": fine_tune, "unfreeze": args.unfreeze})
    target_options = dict(batch_size=64 if cifar else 32, **({"augment": "basic"} if cifar else {}), **common)
    rows = []
    for seed in args.seeds:
        folder = os.path.join(work, f"seed{seed}")
        target = (keras_cnn.load_data(cifar_folder(args.cifar_dir, TARGET_CLASSES, per_class, seed,
                                                   os.path.join(folder, "data")), seed=seed, val_fraction=0)
                  if cifar else digits_data(True, per_class, seed))
        row = {"seed": seed, "train_images": target.sizes["train"], "test_images": target.sizes["test"]}
        for label, (model, extra) in runs.items():
            print(f"seed {seed}: {label} ({model}) on {target.sizes['train']} target images", flush=True)
            clock = time.perf_counter()
            run = keras_cnn.train(model, target, **{"epochs": epochs, "seed": seed, **target_options, **extra},
                                  out=os.path.join(folder, label))
            row[label] = run.metrics.accuracy
            row[f"{label}_seconds"] = round(time.perf_counter() - clock)
        rows.append(row)

    labels = [label for label in LABELS if label in rows[0]]
    names = (", ".join(SOURCE_CLASSES), ", ".join(TARGET_CLASSES)) if cifar else ("digits 0-5", "6-9")
    print(f"\n{args.backbone} (width {args.width}) pretrained on {names[0]}: {pretrained.metrics.accuracy:.1%} test "
          f"accuracy ({pretrain_seconds:.0f} s).\nTransferred to {names[1]}: {rows[0]['train_images']} training "
          f"images, {epochs} epochs{f' ({fine_tune} of them fine-tuning)' if fine_tune else ''}, test accuracy on "
          f"{rows[0]['test_images']} images:")
    print("seed  " + "  ".join(f"{label:>18}" for label in labels))
    for row in rows:
        print(f"{row['seed']:>4}  " + "  ".join(f"{row[label]:>18.1%}" for label in labels))
    if len(rows) > 1:
        print("mean  " + "  ".join(f"{statistics.mean(r[label] for r in rows):>18.1%}" for label in labels))
    print(f"total {time.perf_counter() - started:.0f} s; run folders in {work}")
    if args.json:
        from keras_cnn.utils.io import write_json

        write_json(args.json, {"arguments": vars(args), "pretrain_accuracy": pretrained.metrics.accuracy,
                               "pretrain_seconds": round(pretrain_seconds), "rows": rows})


if __name__ == "__main__":
    main()
