"""The batches `train` fits on: shuffled, augmented and mixed training batches, validation batches, and how many."""
import math
from typing import NamedTuple


class Batches(NamedTuple):
    train: object  # tf.data.Dataset of shuffled (augmented, mixed) training batches
    val: object  # the validation batches, or None when the data has no validation split
    steps: int  # training batches per epoch
    total: int  # training batches of phase 1 (fractional epochs end the last one early)


def batches(call, model, data):
    """The `Batches` of a `train` call (`call`: its arguments) for `model` on `data`."""
    image_shape = tuple(model.input_shape[1:])
    train_set = shuffled_batches(data, call.batch_size, image_shape, call.seed, call.mixup, call.cutmix, model)
    val_set = (labels_for(model, data.pipeline("val", batch_size=call.batch_size, image_shape=image_shape))
               if data.sizes["val"] else None)
    steps = math.ceil(data.sizes["train"] / call.batch_size)
    return Batches(train_set, val_set, steps, math.ceil(call.epochs * steps))


def labels_for(model, dataset):
    """One sigmoid unit trains on P(class 1): keep the second one-hot column."""
    if model.output_shape[-1] == 1:
        return dataset.map(lambda x, y: (x, y[:, 1:]))
    return dataset


def shuffled_batches(data, batch_size, image_shape, seed, mixup, cutmix, model):
    """Shuffled training batches, with MixUp or CutMix applied to (images, one-hot labels) batches."""
    import keras
    import tensorflow as tf

    dataset = data.pipeline("train", batch_size=batch_size, image_shape=image_shape, training=True, seed=seed)
    if mixup or cutmix:
        layer = keras.layers.MixUp(alpha=mixup, seed=seed) if mixup else keras.layers.CutMix(factor=cutmix,
                                                                                             seed=seed)

        def mix(images, labels):
            mixed = layer({"images": images, "labels": labels})
            return mixed["images"], mixed["labels"]

        dataset = dataset.map(mix, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    return labels_for(model, dataset)
