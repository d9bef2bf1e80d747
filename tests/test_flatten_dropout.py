"""Flatten and Dropout: shapes, masks, train/eval behaviour and gradient checks."""
import numpy as np
import pytest

from minirate.layers.base import cache_nbytes
from minirate.layers.dropout import Dropout, dropout_backward, dropout_forward
from minirate.layers.flatten import Flatten
from tests.gradcheck import numerical_grad, rel_error

TOL = 1e-7


def test_flatten():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 4, 5))
    layer = Flatten()
    y, cache = layer.forward(x)
    assert y.shape == (3, 40) and cache.x_shape == (3, 2, 4, 5) and cache_nbytes(cache) == 0
    for n in range(3):  # row n is sample n in C order
        assert np.array_equal(y[n], [x[n, c, h, w] for c in range(2) for h in range(4) for w in range(5)])
    dy = rng.standard_normal(y.shape)
    num = numerical_grad(lambda: layer.forward(x)[0], x, dy)
    assert rel_error(layer.backward(dy, cache), num) < TOL


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_train_mask_scale_and_gradient(p):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 5, 5))
    layer = Dropout(p, rng=np.random.default_rng(42))
    y, cache = layer.forward(x)
    # the mask is the module generator's first draw
    mask = (np.random.default_rng(42).random(x.shape) >= p).astype(x.dtype)
    scale = 1 / (1 - p)
    assert np.array_equal(cache.mask, mask) and cache.mask.dtype == x.dtype
    assert cache.scale == pytest.approx(scale)
    assert np.allclose(y, x * mask * scale, rtol=1e-15, atol=0)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy, cache)
    assert np.allclose(dx, mask * scale * dy, rtol=1e-15, atol=0)
    # with the mask held fixed, dropout is linear in x: finite differences see the same graph
    num = numerical_grad(lambda: dropout_forward(x, mask, p)[0], x, dy)
    assert rel_error(dx, num) < TOL
    assert rel_error(mask * dy, num) > 1e-2  # forgetting the 1/(1-p) scale fails the check


def test_dropout_eval_and_edge_probabilities():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 7)).astype(np.float32)
    dy = rng.standard_normal((3, 7)).astype(np.float32)
    layer = Dropout(0.5, rng=0).eval()
    y, cache = layer.forward(x)
    assert y is x and cache.mask is None and cache_nbytes(cache) == 0
    assert layer.backward(dy, cache) is dy
    y, cache = Dropout(0.0).forward(x)  # p = 0 in training: identity as well
    assert y is x and cache.mask is None
    y, cache = Dropout(1.0).forward(x)  # p = 1: everything dropped, no inf/nan
    assert not y.any() and not dropout_backward(dy, cache).any()
    with pytest.raises(ValueError):
        Dropout(1.5)


def test_dropout_seed_dtype_and_rate():
    x = np.ones((200, 500), dtype=np.float32)
    layer = Dropout(0.3, rng=5)
    y1, c1 = layer.forward(x)
    y2, c2 = layer.forward(x)
    assert not np.array_equal(c1.mask, c2.mask)  # the generator advances
    layer.seed(np.random.default_rng(5))
    y3, c3 = layer.forward(x)
    assert np.array_equal(c1.mask, c3.mask)  # reseeding repeats the masks
    assert y1.dtype == c1.mask.dtype == np.float32
    assert abs(c1.mask.mean() - 0.7) < 0.01
    assert abs(y1.mean() - 1.0) < 0.02  # inverted dropout keeps the mean
