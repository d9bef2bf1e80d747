"""Linear: forward against loops, float64 gradient checks, accumulation and initialisation."""
import numpy as np
import pytest

from minirate.backend import to_numpy
from minirate.layers.linear import Linear, linear_backward, linear_forward
from tests.gradcheck import numerical_grad, rel_error

TOL = 1e-7


def naive_linear(x, W, b):
    N, I = x.shape
    O = W.shape[0]
    y = np.zeros((N, O))
    for n in range(N):
        for o in range(O):
            for i in range(I):
                y[n, o] += x[n, i] * W[o, i]
            if b is not None:
                y[n, o] += b[o]
    return y


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_shape", [(4, 5), (2, 3, 5)])
def test_forward_and_gradients(x_shape, bias, xp):
    rng = np.random.default_rng(len(x_shape) + 10 * bias)
    x = rng.standard_normal(x_shape)
    W = rng.standard_normal((6, 5))
    b = rng.standard_normal(6) if bias else None
    ref = naive_linear(x.reshape(-1, 5), W, b)
    x, W, b = xp.asarray(x), xp.asarray(W), None if b is None else xp.asarray(b)
    y, cache = linear_forward(x, W, b)
    assert y.shape == x_shape[:-1] + (6,)
    assert np.allclose(to_numpy(y).reshape(-1, 6), ref, rtol=1e-12, atol=1e-12)
    dy = xp.asarray(rng.standard_normal(y.shape))
    dx, dW, db = linear_backward(dy, cache)

    def f():
        return linear_forward(x, W, b)[0]

    assert rel_error(dx, numerical_grad(f, x, dy)) < TOL
    assert rel_error(dW, numerical_grad(f, W, dy)) < TOL
    if bias:
        assert rel_error(db, numerical_grad(f, b, dy)) < TOL
    else:
        assert db is None


def test_wrong_backward_fails_the_check():
    # A plausible bug: the bias gradient of the first sample only, not the batch sum.
    rng = np.random.default_rng(1)
    x, W, b = rng.standard_normal((4, 5)), rng.standard_normal((3, 5)), rng.standard_normal(3)
    y, cache = linear_forward(x, W, b)
    dy = rng.standard_normal(y.shape)
    num = numerical_grad(lambda: linear_forward(x, W, b)[0], b, dy)
    assert rel_error(linear_backward(dy, cache)[2], num) < TOL
    assert rel_error(dy[0], num) > 1e-2


def test_module_accumulates_gradients_and_init():
    rng = np.random.default_rng(2)
    lin = Linear(5, 3, rng=rng)
    bound = 1 / np.sqrt(5)
    for p in lin.params.values():
        assert p.dtype == np.float32 and np.abs(p).max() <= bound
    assert lin.params["weight"].shape == (3, 5) and lin.no_decay == {"bias"}
    lin.to(np, np.float64)
    x = rng.standard_normal((4, 5))
    y, cache = lin.forward(x)
    dy = rng.standard_normal(y.shape)
    lin.backward(dy, cache)
    g1 = {k: v.copy() for k, v in lin.grads.items()}
    lin.backward(dy, cache)
    for k in g1:
        assert np.allclose(lin.grads[k], 2 * g1[k], rtol=1e-14, atol=0)
    assert list(Linear(5, 3, bias=False, rng=rng).params) == ["weight"]
