"""Scaled weight standardization layers, the Scale layer and the vgg11_ws architecture."""
import numpy as np
import pytest

from minirate.layers.lif import LIF
from minirate.layers.scale import Scale
from minirate.layers.scaled_ws import ScaledWSConv2d, ScaledWSLinear, standardize_weight
from minirate.models import build_model
from tests.gradcheck import numerical_grad, rel_error


def _reference_standardize(W, gain, eps=1e-4):
    """Ŵ row by row with plain loops: mean, unbiased variance, fan-in N."""
    O = W.shape[0]
    rows = W.reshape(O, -1)
    N = rows.shape[1]
    out = np.zeros_like(rows)
    for i in range(O):
        m = sum(rows[i]) / N
        v = sum((w - m) ** 2 for w in rows[i]) / (N - 1)
        for j in range(N):
            out[i, j] = gain.reshape(-1)[i] * (rows[i, j] - m) / np.sqrt(N * v + eps)
    return out.reshape(W.shape)


def _random_layer(layer, rng):
    layer.to(np, np.float64)
    layer.params["gain"][...] = rng.uniform(0.5, 1.5, layer.params["gain"].shape)
    return layer


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_forward_matches_loops(kind):
    rng = np.random.default_rng(0)
    if kind == "conv":
        layer = _random_layer(ScaledWSConv2d(3, 4, 3, 1, 1, rng=rng), rng)
    else:
        layer = _random_layer(ScaledWSLinear(5, 3, rng=rng), rng)
    W, gain = layer.params["weight"], layer.params["gain"]
    W_hat, _ = standardize_weight(W, gain)
    assert np.allclose(W_hat, _reference_standardize(W, gain), rtol=1e-12, atol=1e-14)
    assert gain.shape == ((4, 1, 1, 1) if kind == "conv" else (3, 1))


@pytest.mark.parametrize("kind", ["conv", "conv_stride2", "linear"])
def test_gradients_against_finite_differences(kind, xp):
    rng = np.random.default_rng(1)
    if kind == "linear":
        layer = _random_layer(ScaledWSLinear(6, 4, rng=rng), rng)
        x = rng.normal(size=(3, 6))
    else:
        stride = 2 if kind == "conv_stride2" else 1
        layer = _random_layer(ScaledWSConv2d(3, 4, 3, stride, 1, rng=rng), rng)
        x = rng.normal(size=(2, 3, 5, 5))
    layer.to(xp)
    x = xp.asarray(x)
    y, cache = layer.forward(x)
    G = xp.asarray(rng.normal(size=y.shape))
    layer.zero_grad()
    dx = layer.backward(G, cache)

    def f():
        return layer.forward(x)[0]
    assert rel_error(dx, numerical_grad(f, x, G)) < 1e-7
    assert set(layer.params) == {"weight", "bias", "gain"}
    for name, p in layer.params.items():
        num = numerical_grad(f, p, G)
        assert float(abs(num).max()) > 0
        assert rel_error(layer.grads[name], num) < 1e-7, name


def test_scale_layer():
    rng = np.random.default_rng(2)
    layer = Scale(2.74)
    x = rng.normal(size=(2, 3, 4))
    y, cache = layer.forward(x)
    assert np.array_equal(y, x * 2.74)
    G = rng.normal(size=y.shape)
    assert rel_error(layer.backward(G, cache), numerical_grad(lambda: layer.forward(x)[0], x, G)) < 1e-9


def test_vgg11_ws_layout():
    model = build_model("vgg11_ws", 10, 0.125, neuron=dict(decay=0.5))
    feature = list(model.children["feature"].children.values())
    convs = [m for m in feature if isinstance(m, ScaledWSConv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 32, 64, 64, 64, 64]
    for i, m in enumerate(feature):           # every sWS conv: LIF, then x2.74
        if isinstance(m, ScaledWSConv2d):
            assert isinstance(feature[i + 1], LIF) and isinstance(feature[i + 2], Scale)
            assert feature[i + 2].factor == 2.74 and "bias" in m.params
    assert "classifier.0.weight" in model.state_dict()
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)

    def run(layer, h):
        return layer.forward(h, 1)[0] if isinstance(layer, LIF) else layer.forward(h)[0]
    assert model.forward(x, run).shape == (2, 10)
