"""The CIFAR-10 JPEG copy the benchmarks read (`train/<class>/*.jpg`, `test/<class>/*.jpg`), and subsets of it."""
import os

CIFAR = os.path.expanduser("~/.cache/cifar10-jpg")


def cifar_folder(root, classes, per_class, seed, into):
    """`into/train/<class>/`: `per_class` random training images of each class (symlinks); `into/test/<class>/`:
    all its test images. `classes=None` takes every class. Returns the `folder:` data spec."""
    import numpy as np

    if not os.path.isdir(os.path.join(root, "train")):
        raise SystemExit(f"no CIFAR-10 JPEG copy at {root} (train/<class>/*.jpg, test/<class>/*.jpg)")
    rng = np.random.default_rng(seed)
    for name in classes or sorted(os.listdir(os.path.join(root, "train"))):
        files = sorted(os.listdir(os.path.join(root, "train", name)))
        chosen = sorted(rng.permutation(len(files))[:per_class])
        os.makedirs(os.path.join(into, "train", name))
        for i in chosen:
            os.symlink(os.path.join(root, "train", name, files[i]), os.path.join(into, "train", name, files[i]))
        os.makedirs(os.path.join(into, "test"), exist_ok=True)
        os.symlink(os.path.join(root, "test", name), os.path.join(into, "test", name))
    return f"folder:{into}"
