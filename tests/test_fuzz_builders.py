"""Fuzzed builders: hypothesis draws a model, an input shape and overrides, valid or not.

Every draw either builds a model whose output shape and parameter count are what `describe` reports for
the same arguments (and whose input fits the smallest input `model_info` promises), or raises the
documented one-line ValueError before the family's builder has made a single layer. Never another error
type, so never a TensorFlow error from deep inside. The transfer models and resnet34 are left out: their
builds are the slow part, and their options are checked by the same validators.
"""
import dataclasses
from unittest import mock

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import keras_cnn
from keras_cnn.models import options, registry

MODELS = [name for name in keras_cnn.list_models() if not name.endswith("_transfer") and name != "resnet34"]
# Values no option accepts, or only some: wrong types, zero, negatives, empty lists.
BAD = st.sampled_from([None, "3", -1, 0, 1.0, 2.5, [], [0], "bogus"])
VALUES = {  # per option: valid values, edges included; small widths, since the builds are the slow part
    "batchnorm": st.booleans(),
    "bn_after_activation": st.booleans(),
    "pool_last": st.booleans(),
    "flip": st.booleans(),
    "dropout": st.floats(0, 0.99),
    "width": st.floats(0.05, 0.5),
    "head": st.sampled_from(options.HEADS),
    "activation": st.sampled_from(options.ACTIVATIONS),
    "dense_activation": st.sampled_from((None, *options.ACTIVATIONS)),
    "downsample": st.sampled_from(options.DOWNSAMPLES),
    "augment": st.sampled_from(options.AUGMENT_PRESETS),
    "padding": st.sampled_from(options.PADDINGS),
    "filters": st.lists(st.integers(1, 24), min_size=1, max_size=4),
    "dense": st.lists(st.integers(1, 24), max_size=2),
    "blocks": st.lists(st.integers(1, 2), min_size=1, max_size=4),
    "stages": st.integers(1, 4),
    "stem": st.integers(0, 16),
    "kernel_size": st.integers(1, 7),
}
SHAPE = st.tuples(st.integers(1, 40), st.integers(1, 40), st.integers(1, 4))
BAD_SHAPE = st.one_of(st.tuples(st.integers(-2, 0), st.integers(1, 40), st.integers(1, 3)),
                      st.tuples(st.integers(8, 40), st.integers(8, 40), st.integers(-1, 0)),
                      st.lists(st.integers(1, 32), min_size=2, max_size=5).filter(lambda dims: len(dims) != 3)
                      .map(tuple), st.sampled_from(["32x32x3", (8.0, 8, 1), (8, 8, True)]))


def sometimes(draw, good, bad):
    """Draw from `good` nine times in ten, else from `bad`."""
    return draw(bad if draw(st.integers(0, 9)) == 0 else good)


@st.composite
def draws(draw):
    """(model name, input shape, overrides): a few options of the model, sometimes an unknown one or a bad value."""
    name = draw(st.sampled_from(MODELS))
    keys = draw(st.lists(st.sampled_from([*sorted(registry.valid_options(name)), "bogus"]), unique=True, max_size=4))
    overrides = {key: sometimes(draw, VALUES.get(key, BAD), BAD) for key in keys}
    return name, sometimes(draw, SHAPE, BAD_SHAPE), overrides


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(draws())
def test_every_draw_builds_as_described_or_fails_before_building(draw):
    name, shape, overrides = draw
    family = registry.family_of(name)
    family_build = mock.Mock(wraps=family.build)
    with mock.patch.object(registry, "_family", return_value=dataclasses.replace(family, build=family_build)):
        try:
            model = keras_cnn.build(name, input_shape=shape, **overrides)
        except Exception as error:  # noqa: BLE001 - the type is what is checked
            assert type(error) is ValueError, f"{type(error).__module__}.{type(error).__name__}: {error}"
            assert not family_build.called, f"raised after layers were built: {error}"
            message = str(error)
            assert "\n" not in message and "Received: " in message
            if "would output" in message:  # the input collapses: below the smallest input model_info gives
                assert min(shape[:2]) < keras_cnn.model_info(name, **overrides)["smallest_input"][0]
            event("refused before building")
            return
    event("built")
    summary = keras_cnn.describe(name, input_shape=shape, **overrides)
    assert summary.total_params == model.count_params() == sum(row.params for row in summary.rows)
    assert (None, *summary.rows[-1].output_shape) == model.output_shape == (None, 10)
    assert summary.input_shape == tuple(shape) == model.input_shape[1:]
    assert min(shape[:2]) >= keras_cnn.model_info(name, **overrides)["smallest_input"][0]
