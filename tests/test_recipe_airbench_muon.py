"""airbench94_muon's recipe: the Muon optimizer (orthogonalised momentum for convolution kernels, Nesterov SGD
for the rest), its roles and schedules, the bias-free unit-std head, the learned stem offset, and the recipe's
defaults end to end."""
import json
import subprocess
import sys

import numpy as np
import pytest

import keras_cnn
from keras_cnn.training import recipes

TINY = dict(width=0.125, precision="float32", verbose=0)


def _newton_schulz(matrix, steps=3):
    """NumPy reference of Muon's iteration (Keller Jordan's zeropower_via_newtonschulz5)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = matrix / (np.linalg.norm(matrix) + 1e-7)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


@pytest.mark.parametrize("shape", [(12, 4), (4, 12)])
def test_orthogonalize_keeps_singular_vectors_and_pulls_values_towards_one(shape):
    from keras_cnn.training.optimizers import orthogonalize

    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(shape[0], 4)))
    v, _ = np.linalg.qr(rng.normal(size=(shape[1], 4)))
    matrix = (u * np.array([5.0, 2.0, 1.0, 0.5])) @ v.T  # rank 4, singular values 5 to 0.5
    result = np.asarray(orthogonalize(matrix.astype("float32")))
    np.testing.assert_allclose(result, _newton_schulz(matrix), rtol=1e-4, atol=1e-5)
    in_basis = u.T @ result @ v  # diagonal: the singular vectors are kept
    assert np.abs(in_basis - np.diag(np.diag(in_basis))).max() < 1e-4
    assert 0.6 < np.diag(in_basis).min() and np.diag(in_basis).max() < 1.25  # from 0.5..5 to about 1


def _layers():
    """A conv (kernel: Muon; bias: "other"), a `predictions` Dense and a `stem_offset`, built."""
    import keras

    from keras_cnn.models.layers import Offset

    conv = keras.layers.Conv2D(3, 2, name="conv")
    conv.build((None, 4, 4, 2))
    head = keras.layers.Dense(2, use_bias=False, name="predictions")
    head.build((None, 3))
    offset = Offset(name="stem_offset")
    offset.build((None, 4, 4, 2))
    return conv.kernel, conv.bias, head.kernel, offset.offset


def test_muon_step_matches_a_numpy_reference():
    """Kernels: normalised to norm sqrt(filters), Nesterov momentum, orthogonalised, lr; the rest: Nesterov SGD with
    coupled L2 at the rate times its role's scale; the stem offset's rate falls to zero at `stem_offset_steps`."""
    from keras_cnn.training.optimizers import Muon

    kernel, bias, head, offset = _layers()
    variables = [kernel, bias, head, offset]
    scales, l2 = {"other": 0.5, "predictions": 2.0, "stem_offset": 3.0}, {"other": 0.1, "predictions": 0.01}
    opt = Muon(0.1, momentum=0.6, sgd_momentum=0.85, rate_scales=scales, l2=l2, stem_offset_steps=2)
    rng = np.random.default_rng(1)
    expected = [v.numpy().astype("float64") for v in variables]
    buffers = [np.zeros_like(w) for w in expected]
    roles = ("kernel", "other", "predictions", "stem_offset")
    for step in range(3):
        grads = [rng.normal(size=v.shape).astype("float32") for v in variables]
        opt.apply(grads, variables)
        for i, (role, grad) in enumerate(zip(roles, grads)):
            w, buf = expected[i], buffers[i]
            if role == "kernel":
                w = w * np.sqrt(3) / np.linalg.norm(w)
                buf[:] = 0.6 * buf + grad
                update = _newton_schulz((grad + 0.6 * buf).reshape(-1, 3)).reshape(w.shape)
                expected[i] = w - 0.1 * update
                continue
            rate = 0.1 * scales[role] * (max(0.0, 1 - step / 2) if role == "stem_offset" else 1.0)
            g = grad + l2.get(role, 0.0) * w
            buf[:] = 0.85 * buf + g
            expected[i] = w - rate * (g + 0.85 * buf)
        if step == 1:
            after_two = offset.numpy().copy()
    for variable, want in zip(variables, expected):
        np.testing.assert_allclose(variable.numpy(), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(offset.numpy(), after_two)  # step 3: the offset no longer learns


def test_unknown_role_is_one_line():
    from keras_cnn.training.optimizers import Muon

    with pytest.raises(ValueError, match=r"roles predictions, stem_offset, other\. Received: rate_scales=\{'head'"):
        Muon(rate_scales={"head": 2.0})


def test_recipe_network_roles_and_head():
    """`--recipe airbench_muon` on airbench: the six stage convs go to Muon, the bias-free unit-std head, the stem
    offset and the batch-norm offsets to SGD; the frozen whitening stem to neither."""
    from keras_cnn.training.config import TrainConfig
    from keras_cnn.training.optimizers import Muon

    config = TrainConfig("airbench", recipe="airbench_muon").overrides
    assert {key: config[key] for key in ("head_bias", "head_init", "stem_offset")} == {
        "head_bias": False, "head_init": "unit_uniform", "stem_offset": True}
    assert config["head_scale"] == pytest.approx(1 / 256)
    model = keras_cnn.build("airbench", **config)
    roles = {v.path: Muon.role(v) for v in model.trainable_variables}
    assert sorted(path for path, role in roles.items() if role == "kernel") == sorted(
        f"stage{i}_conv{j}/kernel" for i in (1, 2, 3) for j in (1, 2))
    assert [path for path, role in roles.items() if role == "predictions"] == ["predictions/kernel"]
    assert [path for path, role in roles.items() if role == "stem_offset"] == ["stem_offset/offset"]
    assert all(path.endswith("beta") for path, role in roles.items() if role == "other")
    assert model.get_layer("stem_offset").input.dtype == "float32"
    assert np.std(model.get_layer("predictions").kernel.numpy()) == pytest.approx(1.0, abs=0.05)


def test_hidden_weight_matrices_go_to_muon_and_the_head_to_sgd():
    from keras_cnn.training.optimizers import Muon

    model = keras_cnn.build("small", input_shape=(8, 8, 1), num_classes=3)
    roles = {v.path: Muon.role(v) for v in model.trainable_variables}
    assert roles["head_dense1/kernel"] == "kernel" and roles["head_dense1/bias"] == "other"
    assert roles["predictions/kernel"] == roles["predictions/bias"] == "predictions"


def test_stem_offset_needs_the_whitening_stem():
    with pytest.raises(ValueError, match=r"trainable stem learns its own bias\)\. Received: stem_offset=True"):
        keras_cnn.build("airbench", stem_offset=True)


def test_recipe_optimizer_and_defaults():
    """airbench94_muon's settings: kernels at 0.24 falling linearly to 0; SGD rates and L2 per example of its summed
    loss; the stem offset learning for 30% of the steps; no moving average unless asked; batch 2,000, 10 epochs."""
    opt = recipes.optimizer("airbench_muon", total_steps=250, batch_size=2000)
    schedule = opt._learning_rate
    assert float(schedule(0)) == pytest.approx(0.24) and float(schedule(125)) == pytest.approx(0.12)
    assert float(schedule(250)) == pytest.approx(0.0, abs=1e-7)
    assert opt.rate_scales["other"] * 0.24 == pytest.approx(0.053 * 2000)
    assert opt.rate_scales["predictions"] * 0.24 == pytest.approx(0.67 * 2000)
    assert opt.l2["predictions"] == pytest.approx(2e-6 / 0.67)
    assert (opt.stem_offset_steps, opt.use_ema) == (75, False)
    assert recipes.optimizer("airbench_muon", total_steps=10, ema=0.9).use_ema
    assert recipes.defaults("airbench_muon", epochs=None, batch_size=None, label_smoothing=None, tta=None,
                            ema=None) == {"epochs": 10, "batch_size": 2000, "label_smoothing": 0.2,
                                          "tta": "flip+translate", "ema": None}


def test_cli_takes_the_recipe():
    from keras_cnn.cli_parser import parser

    args = parser().parse_args(["train", "airbench", "--recipe", "airbench_muon"])
    assert (args.recipe, args.epochs) == ("airbench_muon", None)


def test_trains_saves_and_loads_in_a_new_process(tmp_path):
    """A short run with the recipe learns (the kernels keep norm sqrt(filters), the stem offset moved), and its
    model, which names `keras_cnn>Offset`, loads in a fresh process with the same predictions."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(256, 12, 12, 3)).astype("uint8")
    run = keras_cnn.train("airbench", (x, np.arange(256) % 3), recipe="airbench_muon", epochs=2, batch_size=64,
                          out=tmp_path / "run", **TINY)
    model = keras_cnn.load(run.path).model
    assert np.abs(model.get_layer("stem_offset").offset.numpy()).max() > 0
    kernel = model.get_layer("stage2_conv1").kernel.numpy()
    assert np.linalg.norm(kernel) == pytest.approx(np.sqrt(kernel.shape[-1]), rel=0.2)
    expected = model.predict(x[:4], verbose=0)
    code = (f"import json, numpy as np, keras_cnn; m = keras_cnn.load({str(run.path)!r}).model; "
            f"print(json.dumps(m.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0).tolist()))")
    np.save(tmp_path / "x.npy", x[:4])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-500:]
    np.testing.assert_allclose(json.loads(result.stdout.strip().splitlines()[-1]), expected, rtol=1e-5, atol=1e-6)
