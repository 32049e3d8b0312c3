"""Validation of builder arguments and variant overrides (pure Python, no TensorFlow).

Every check raises `ValueError` ending in `Received: name=value`, the
keras.applications convention, before any layer is built.
"""
import numbers

ACTIVATIONS = ("relu", "leaky_relu", "gelu")
HEADS = ("flatten", "gap", "gmp")
DOWNSAMPLES = ("maxpool", "avgpool", "stride")
PADDINGS = ("valid", "same")
# the general presets, Keras's RandAugment and AugMix among them (the tuning spaces draw from these)
AUGMENT_PRESETS = ("none", "basic", "strong", "cutout", "randaugment", "augmix")
MORE_AUGMENT_PRESETS = ("flip_translate",)  # airbench's alternating flips and translations (`keras_cnn.models.augment`)
ALL_AUGMENT_PRESETS = AUGMENT_PRESETS + MORE_AUGMENT_PRESETS
TTA_LEVELS = ("none", "flip", "flip+translate")  # test-time augmentation (`keras_cnn.evaluation.evaluate`)
KERNEL_INITIALIZERS = ("he_normal", "glorot_uniform", "dirac")  # dirac: `keras_cnn.models.initializers.Dirac`
HEAD_INITS = ("glorot_uniform", "unit_uniform")  # of `predictions`; unit_uniform: uniform with std 1 (airbench94_muon)
POOLINGS = (None, "avg", "max")  # of a model without its top, as keras.applications names them
STRATEGIES = (None, "mirrored")  # of `keras_cnn.train`: one device, or data-parallel over the local ones
QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")  # TFLite variants of `keras_cnn.export`; a search ships one
OBJECTIVES = ("accuracy", "kb", "latency", "macs", "params")  # what `keras_cnn.tune(objectives=...)` can trade off
INTEGER_IO = ("uint8", "int8")  # input/output type of an exported int8 TFLite model (`keras_cnn.export`'s `io`)
TFLITE_CONVERTERS = ("saved_model", "keras")  # `keras_cnn.export`'s `converter`
CLIENTS = (None, "mediapipe")  # `keras_cnn.predict`'s `client`


def fail(message, name, value):
    raise ValueError(f"{message}. Received: {name}={value!r}")


def require(model, explicit, config, option, needed, reason):
    """Refuse an explicit `option` that would have no effect (never ignore an override silently)."""
    if option in explicit and not needed:
        fail(f"{model}: `{option}` has no effect {reason}", option, config[option])


def boolean(name, value):
    if not isinstance(value, bool):
        fail(f"`{name}` must be True or False", name, value)
    return value


def choice(options):
    def check(name, value):
        if value not in options:
            fail(f"`{name}` must be one of {', '.join(map(repr, options))}", name, value)
        return value

    return check


def fraction(name, value):
    """A probability p with 0 <= p < 1 (dropout rates)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        fail(f"`{name}` must be a number with 0 <= {name} < 1", name, value)
    return float(value)


def positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        fail(f"`{name}` must be an integer >= {minimum}", name, value)
    return int(value)


def positive_float(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        fail(f"`{name}` must be a number > 0", name, value)
    return float(value)


def int_tuple(name, value, minimum=1, allow_empty=False):
    """A list or tuple of integers, one per stage (or per dense layer)."""
    if not isinstance(value, (list, tuple)) or (not value and not allow_empty):
        fail(f"`{name}` must be a {'' if allow_empty else 'non-empty '}list of integers >= {minimum}", name, value)
    for item in value:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral) or item < minimum:
            fail(f"`{name}` must be a list of integers >= {minimum}", name, value)
    return tuple(int(item) for item in value)


def optional_activation(name, value):
    return None if value is None else choice(ACTIVATIONS)(name, value)


def input_shape(value):
    """(height, width, channels), each a positive integer."""
    name = "input_shape"
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        fail("`input_shape` must be (height, width, channels)", name, value)
    for item in value:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral) or item < 1:
            fail("`input_shape` must be three positive integers (height, width, channels)", name, value)
    return tuple(int(item) for item in value)


def num_classes(value):
    return positive_int("num_classes", value)


def classifier_activation(value):
    return None if value is None else choice(("softmax", "sigmoid"))("classifier_activation", value)


def top(include_top, pooling):
    """`include_top` True or False; `pooling` None, "avg" or "max", and only without the top (as keras.applications)."""
    boolean("include_top", include_top)
    choice(POOLINGS)("pooling", pooling)
    if include_top and pooling is not None:
        fail("`pooling` applies to a model without its top (include_top=False)", "pooling", pooling)


def scaled(filters, width):
    """Channel counts multiplied by `width`, at least 1 each."""
    return tuple(max(1, round(f * width)) for f in filters)


def stage_filters(config, explicit, name):
    """Reconcile `filters` and `stages` (None = one stage per filter count).

    `stages` alone truncates the default filters or extends them by doubling the
    last; explicit `filters` and `stages` must agree.
    """
    filters, stages = list(config["filters"]), config["stages"]
    if stages is None:
        return tuple(filters)
    if "filters" in explicit and len(filters) != stages:
        raise ValueError(
            f"{name}: `filters` has {len(filters)} values but `stages` is {stages}; give one value per stage. "
            f"Received: filters={tuple(filters)}, stages={stages}"
        )
    while len(filters) < stages:
        filters.append(filters[-1] * 2)
    return tuple(filters[:stages])


# Options every family understands; families add their own (see each models/ file).
COMMON = {
    "batchnorm": boolean,
    "dropout": fraction,
    "head": choice(HEADS),
    "activation": choice(ACTIVATIONS),
    "filters": int_tuple,
    "stages": positive_int,
    "width": positive_float,
    "kernel_size": positive_int,
    "downsample": choice(DOWNSAMPLES),
    "augment": choice(ALL_AUGMENT_PRESETS),
    "flip": boolean,
    # batch norm without a learned scale, its momentum and epsilon; a logit scale before `predictions`
    "bn_scale": boolean,
    "bn_momentum": fraction,
    "bn_epsilon": positive_float,
    "head_scale": positive_float,
    "head_bias": boolean,
    "head_init": choice(HEAD_INITS),
    "kernel_initializer": choice(KERNEL_INITIALIZERS),
}
