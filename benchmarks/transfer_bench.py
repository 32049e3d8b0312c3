"""Transfer learning, offline: pretrain a backbone on some classes, transfer it to the others, and compare
with the same network trained from scratch at the same small budget. Not a unit test.

No ImageNet weights can be downloaded here, so the "pretrained backbone" is made on the spot: the zoo's
resnet18 (a narrow one, `--width`) is trained on six CIFAR-10 classes (airplane, automobile, bird, cat,
deer, dog), and its weights go into `resnet18_transfer` for the four others (frog, horse, ship, truck),
with only `--target-per-class` training images each. Every model trains through `keras_cnn.train`, as
`keras-cnn train` does (sgd recipe, `basic` augmentation), and is tested on the full CIFAR-10 test
images of the target classes. The columns:

  scratch              resnet18, all layers trained from random weights for `--epochs` epochs
  transfer             resnet18_transfer from the pretrained run: frozen backbone, new head (BatchNorm on
                       the pooled features, then the classifier), `--epochs`
  transfer+fine-tune   the same, `--epochs` minus `--fine-tune-epochs` on the head, then the top
                       `--unfreeze` stage(s) unfrozen at 1/100 of the rate: the same number of epochs

    python benchmarks/transfer_bench.py                      # CIFAR subset, about 10-15 min on 2 CPU cores
    python benchmarks/transfer_bench.py --data digits        # digits 0-5 -> 6-9, about 2 min
    python benchmarks/transfer_bench.py --seeds 0 1 2 --target-per-class 100 --pretrain-epochs 20
"""
import argparse
import json
import os
import tempfile
import time

CIFAR = os.path.expanduser("~/.cache/cifar10-jpg")
SOURCE_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog")
TARGET_CLASSES = ("frog", "horse", "ship", "truck")


def cifar_folder(root, classes, per_class, seed, into):
    """`into/train/<class>/` with `per_class` of the class's training images (symlinks), `into/test/<class>/` all."""
    import numpy as np

    if not os.path.isdir(os.path.join(root, "train")):
        raise SystemExit(f"no CIFAR-10 JPEG copy at {root} (train/<class>/*.jpg, test/<class>/*.jpg): pass "
                         f"--cifar-dir, or --data digits")
    rng = np.random.default_rng(seed)
    for name in classes:
        files = sorted(os.listdir(os.path.join(root, "train", name)))
        chosen = sorted(rng.permutation(len(files))[:per_class]) if per_class else range(len(files))
        os.makedirs(os.path.join(into, "train", name))
        for i in chosen:
            os.symlink(os.path.join(root, "train", name, files[i]), os.path.join(into, "train", name, files[i]))
        os.makedirs(os.path.join(into, "test"), exist_ok=True)
        os.symlink(os.path.join(root, "test", name), os.path.join(into, "test", name))
    return f"folder:{into}"


def digits_data(target, per_class, seed):
    """Digits 0-5 (all, as the source) or 6-9 (`per_class` training images each, the rest for testing)."""
    import numpy as np
    from sklearn.datasets import load_digits

    import keras_cnn

    data = load_digits()
    x, y = (data.images * (255 / 16)).astype("float32"), data.target
    if not target:
        keep = y < 6
        return keras_cnn.load_data((x[keep], y[keep]), seed=seed, class_names=[str(d) for d in range(6)])
    keep = y >= 6
    x, y = x[keep], y[keep] - 6
    val_fraction = 0.05
    test_fraction = 1 - val_fraction - per_class * 4 / len(y)  # stratified: about `per_class` left per class
    return keras_cnn.load_data((x, y), seed=seed, class_names=["6", "7", "8", "9"], val_fraction=val_fraction,
                               test_fraction=test_fraction)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("cifar", "digits"), default="cifar")
    parser.add_argument("--cifar-dir", default=CIFAR, help=f"the CIFAR-10 JPEG copy (default {CIFAR})")
    parser.add_argument("--backbone", choices=("resnet18", "resnet34"), default="resnet18")
    parser.add_argument("--width", type=float, default=0.25, help="channel multiplier of the backbone")
    parser.add_argument("--pretrain-per-class", type=int, default=1000, help="source training images per class")
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--target-per-class", type=int, default=50, help="target training images per class")
    parser.add_argument("--epochs", type=int, default=15, help="the budget of every target model")
    parser.add_argument("--fine-tune-epochs", type=int, default=5, help="of --epochs, 0 = no fine-tuning column")
    parser.add_argument("--unfreeze", type=int, default=1, help="backbone stages unfrozen for fine-tuning")
    parser.add_argument("--no-head-bn", action="store_true", help="no BatchNorm on the transfer head's features")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--out", help="keep the run folders here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if not 0 <= args.fine_tune_epochs < args.epochs:
        parser.error("--fine-tune-epochs must be below --epochs (they are part of its budget)")

    import keras_cnn

    started = time.perf_counter()
    work = args.out or tempfile.mkdtemp(prefix="transfer-bench-")
    common = dict(width=args.width, batch_size=args.batch_size, precision=args.precision, verbose=2)
    if args.data == "cifar":
        common.update(augment="basic")
    rows = []
    for seed in args.seeds:
        folder = os.path.join(work, f"seed{seed}")
        if args.data == "cifar":
            source = cifar_folder(args.cifar_dir, SOURCE_CLASSES, args.pretrain_per_class, seed,
                                  os.path.join(folder, "source-data"))
            target = cifar_folder(args.cifar_dir, TARGET_CLASSES, args.target_per_class, seed,
                                  os.path.join(folder, "target-data"))
            target = keras_cnn.load_data(target, seed=seed, val_fraction=0.1)
        else:
            source, target = digits_data(False, 0, seed), digits_data(True, args.target_per_class, seed)
        print(f"seed {seed}: pretraining {args.backbone} (width {args.width}) for {args.pretrain_epochs} epochs",
              flush=True)
        clock = time.perf_counter()
        pretrained = keras_cnn.train(args.backbone, source, epochs=args.pretrain_epochs, seed=seed,
                                     out=os.path.join(folder, "pretrain"), **common)
        row = {"seed": seed, "pretrain_accuracy": pretrained.metrics.accuracy,
               "pretrain_seconds": round(time.perf_counter() - clock), "target_train_images": target.sizes["train"],
               "target_test_images": target.sizes["test"]}
        head = {"weights": pretrained.path, "batchnorm": not args.no_head_bn, "dropout": 0.0}
        runs = {"scratch": (args.backbone, {}), "transfer": (f"{args.backbone}_transfer", head)}
        if args.fine_tune_epochs:
            runs["transfer+fine-tune"] = (f"{args.backbone}_transfer", {
                **head, "epochs": args.epochs - args.fine_tune_epochs,
                "fine_tune_epochs": args.fine_tune_epochs, "unfreeze": args.unfreeze})
        for label, (model, extra) in runs.items():
            print(f"seed {seed}: {label} ({model}) on {target.sizes['train']} target images", flush=True)
            clock = time.perf_counter()
            run = keras_cnn.train(model, target, **{"epochs": args.epochs, "seed": seed, **common, **extra},
                                  out=os.path.join(folder, label))
            row[label] = run.metrics.accuracy
            row[f"{label}_seconds"] = round(time.perf_counter() - clock)
        rows.append(row)

    labels = [label for label in ("scratch", "transfer", "transfer+fine-tune") if label in rows[0]]
    source_names, target_names = (SOURCE_CLASSES, TARGET_CLASSES) if args.data == "cifar" else (["0-5"], ["6-9"])
    print(f"\n{args.backbone} (width {args.width}), {args.data}: {', '.join(source_names)} -> "
          f"{', '.join(target_names)}, {args.target_per_class} training images per target class, {args.epochs} "
          f"epochs each; test accuracy on {rows[0]['target_test_images']} target test images")
    print("seed  pretrain  " + "  ".join(f"{label:>18}" for label in labels))
    for row in rows:
        print(f"{row['seed']:>4}  {row['pretrain_accuracy']:>8.1%}  "
              + "  ".join(f"{row[label]:>18.1%}" for label in labels))
    if len(rows) > 1:
        print("mean            " + "  ".join(f"{sum(r[label] for r in rows) / len(rows):>18.1%}" for label in labels))
    print(f"total {time.perf_counter() - started:.0f} s; run folders in {work}")
    if args.json:
        from keras_cnn.io import write_json

        write_json(args.json, {"arguments": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
