"""BatchNorm1d / BatchNorm2d: forward against per-channel loops, running statistics as PyTorch,
float64 gradient checks (train, eval, straight-through statistics)."""
import numpy as np
import pytest

from minirate.layers.base import cache_nbytes
from minirate.layers.batchnorm import BatchNorm1d, BatchNorm2d, batchnorm_stats
from tests.gradcheck import numerical_grad, rel_error

TOL = 1e-7
SHAPES = {BatchNorm1d: (6, 3), BatchNorm2d: (3, 2, 3, 4)}


def make(cls, seed=0, dtype=np.float64, xp=np):
    """Layer with random γ, β and running stats, plus an input with per-channel offsets, on
    array module xp."""
    rng = np.random.default_rng(seed)
    shape = SHAPES[cls]
    C = shape[1]
    layer = cls(C).to(np, dtype)
    layer.params["weight"][...] = rng.uniform(0.5, 2.0, C)
    layer.params["bias"][...] = rng.normal(size=C)
    layer.buffers["running_mean"][...] = rng.normal(size=C)
    layer.buffers["running_var"][...] = rng.uniform(0.5, 2.0, C)
    offsets = rng.normal(size=C).reshape((1, C) + (1,) * (len(shape) - 2))
    x = (rng.normal(size=shape) * 1.5 + offsets).astype(dtype)
    return layer.to(xp), xp.asarray(x), rng


def channel_values(x, c):
    """All values of channel c, by plain loops over every non-channel index."""
    vals = []
    for idx in np.ndindex(*x.shape):
        if idx[1] == c:
            vals.append(x[idx])
    return vals


def naive_bn(x, gamma, beta, mean, var, eps):
    y = np.empty_like(x)
    for idx in np.ndindex(*x.shape):
        c = idx[1]
        y[idx] = gamma[c] * (x[idx] - mean[c]) / np.sqrt(var[c] + eps) + beta[c]
    return y


def naive_stats(x):
    C = x.shape[1]
    mean, var = np.zeros(C), np.zeros(C)
    for c in range(C):
        v = channel_values(x, c)
        mean[c] = sum(v) / len(v)
        var[c] = sum((a - mean[c]) ** 2 for a in v) / len(v)
    return mean, var


# -- forward and running statistics ------------------------------------------------------------
@pytest.mark.parametrize("cls", [BatchNorm1d, BatchNorm2d])
def test_train_forward_matches_loops(cls):
    layer, x, _ = make(cls)
    y, cache = layer.forward(x)
    mean, var = naive_stats(x)
    g, b = layer.params["weight"], layer.params["bias"]
    assert np.allclose(y, naive_bn(x, g, b, mean, var, layer.eps), atol=1e-12)
    bm, bv = layer.batch_stats(x)
    assert bm.shape == bv.shape == (x.shape[1],)
    assert np.allclose(bm, mean, atol=1e-12) and np.allclose(bv, var, atol=1e-12)
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    assert np.allclose(cache.x_centred * cache.inv_std.reshape(bshape), (y - b.reshape(bshape)) / g.reshape(bshape))
    assert np.allclose(cache.inv_std, 1 / np.sqrt(var + layer.eps))
    assert cache.batch_stats is True and cache.x_hat_mean is None


@pytest.mark.parametrize("cls", [BatchNorm1d, BatchNorm2d])
def test_running_stats_as_pytorch(cls):
    layer, x1, rng = make(cls)
    layer.buffers["running_mean"][...] = 0
    layer.buffers["running_var"][...] = 1
    x2 = rng.normal(size=x1.shape) * 3 - 1
    n = x1.size // x1.shape[1]
    rm, rv = np.zeros(x1.shape[1]), np.ones(x1.shape[1])
    for x in (x1, x2):
        layer.forward(x)
        mean, var = naive_stats(x)
        rm = 0.9 * rm + 0.1 * mean
        rv = 0.9 * rv + 0.1 * var * n / (n - 1)
    assert np.allclose(layer.buffers["running_mean"], rm, atol=1e-12)
    assert np.allclose(layer.buffers["running_var"], rv, atol=1e-12)
    nbt = layer.buffers["num_batches_tracked"]
    assert nbt.shape == () and nbt.dtype == np.int64 and int(nbt) == 2


def test_eval_uses_running_stats_and_leaves_them():
    layer, x, _ = make(BatchNorm2d)
    layer.eval()
    before = {k: v.copy() for k, v in layer.buffers.items()}
    y, cache = layer.forward(x)
    ref = naive_bn(x, layer.params["weight"], layer.params["bias"],
                   before["running_mean"], before["running_var"], layer.eps)
    assert np.allclose(y, ref, atol=1e-12)
    assert cache.batch_stats is False
    for k in before:
        assert np.array_equal(layer.buffers[k], before[k])


def test_momentum_none_is_cumulative_average():
    layer, x1, rng = make(BatchNorm1d)
    layer.momentum = None
    x2 = rng.normal(size=x1.shape)
    layer.forward(x1)
    layer.forward(x2)
    n = x1.shape[0]
    means = [naive_stats(x)[0] for x in (x1, x2)]
    vars_ = [naive_stats(x)[1] * n / (n - 1) for x in (x1, x2)]
    assert np.allclose(layer.buffers["running_mean"], (means[0] + means[1]) / 2)
    assert np.allclose(layer.buffers["running_var"], (vars_[0] + vars_[1]) / 2)


def test_names_order_and_init():
    layer = BatchNorm2d(4)
    assert list(layer.state_dict()) == ["weight", "bias", "running_mean", "running_var",
                                        "num_batches_tracked"]
    assert np.all(layer.params["weight"] == 1) and np.all(layer.params["bias"] == 0)
    assert np.all(layer.buffers["running_mean"] == 0) and np.all(layer.buffers["running_var"] == 1)
    assert layer.no_decay == {"weight", "bias"}
    assert all(not decay for _, _, _, decay in layer.parameters())


def test_float32_keeps_dtype_and_two_pass_variance():
    rng = np.random.default_rng(1)
    # a large offset: E[x²] − E[x]² would lose all digits in float32 here
    x = (1000 + 0.01 * rng.normal(size=(16, 3, 8, 8))).astype(np.float32)
    mean, var = batchnorm_stats(x)
    ref = x.astype(np.float64).var(axis=(0, 2, 3))
    assert mean.dtype == var.dtype == np.float32
    assert np.max(np.abs(var - ref) / ref) < 1e-3
    layer = BatchNorm2d(3)
    y, cache = layer.forward(x)
    assert y.dtype == np.float32 and cache.x_centred.dtype == np.float32
    dx = layer.backward(rng.normal(size=x.shape).astype(np.float32), cache)
    assert dx.dtype == np.float32 and layer.grads["weight"].dtype == np.float32
    # kept for backward: x̂ (like x) and three (C,) vectors (s, γ by reference, nothing else)
    assert cache_nbytes(cache) == x.nbytes + 2 * 3 * 4


def test_rejects_bad_shapes_and_single_values():
    with pytest.raises(ValueError):
        BatchNorm2d(3).forward(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError):
        BatchNorm1d(3).forward(np.zeros((2, 4)))
    with pytest.raises(ValueError):  # one value per channel: no unbiased variance (as PyTorch)
        BatchNorm1d(3).forward(np.zeros((1, 3)))


def test_backward_accumulates():
    layer, x, rng = make(BatchNorm2d)
    y, cache = layer.forward(x)
    dy = rng.normal(size=y.shape)
    layer.backward(dy, cache)
    g1 = {k: v.copy() for k, v in layer.grads.items()}
    layer.backward(dy, cache)
    for k in g1:
        assert np.allclose(layer.grads[k], 2 * g1[k])


# -- gradient checks -----------------------------------------------------------------------------
def check_grads(layer, x, f, dy, dx, grads):
    worst = {"x": rel_error(dx, numerical_grad(f, x, dy))}
    for name in ("weight", "bias"):
        worst[name] = rel_error(grads[name], numerical_grad(f, layer.params[name], dy))
    assert max(worst.values()) < TOL, worst


@pytest.mark.parametrize("cls", [BatchNorm1d, BatchNorm2d])
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck(cls, training, xp):
    layer, x, rng = make(cls, xp=xp)
    layer.train(training)
    y, cache = layer.forward(x)
    dy = xp.asarray(rng.normal(size=y.shape))
    layer.zero_grad()
    dx = layer.backward(dy, cache)
    grads = {k: v.copy() for k, v in layer.grads.items()}
    # train: the output ignores the running stats that each call updates; eval: nothing updates
    check_grads(layer, x, lambda: layer.forward(x)[0], dy, dx, grads)


def given_stats(x, rng):
    """Statistics that are not x's own (as if from another pass)."""
    mean, var = naive_stats(x)
    return mean + rng.normal(size=mean.shape), var * rng.uniform(0.3, 3.0, var.shape)


@pytest.mark.parametrize("cls", [BatchNorm1d, BatchNorm2d])
def test_straight_through_gradcheck(cls):
    layer, x, rng = make(cls)
    mean_g, var_g = given_stats(x, rng)
    y, cache = layer.forward_fixed_stats(x, mean_g, var_g)
    assert np.allclose(y, layer.normalize(x, mean_g, var_g), atol=1e-12)
    assert np.allclose(y, naive_bn(x, layer.params["weight"], layer.params["bias"],
                                   mean_g, var_g, layer.eps), atol=1e-12)
    # the pass that produced the statistics owns the running update, not this one
    assert int(layer.buffers["num_batches_tracked"]) == 0
    dy = rng.normal(size=y.shape)
    layer.zero_grad()
    dx = layer.backward_fixed_stats(dy, cache)
    grads = {k: v.copy() for k, v in layer.grads.items()}

    x0 = x.copy()
    m0, v0 = naive_stats(x0)
    b = (1, -1) + (1,) * (x.ndim - 2)

    def g():
        # g(x) = γ (x − (μ_g + m(x) − m(x0))) / √(σ²_g + v(x) − v(x0) + ε) + β
        m, v = batchnorm_stats(x)
        mt, vt = mean_g + m - m0, var_g + v - v0
        return (layer.params["weight"].reshape(b) * (x - mt.reshape(b))
                / np.sqrt(vt.reshape(b) + layer.eps) + layer.params["bias"].reshape(b))

    check_grads(layer, x, g, dy, dx, grads)

    # the check can fail: the ordinary batch-statistics backward is not this derivative
    dx_plain = layer.backward(dy, cache._replace(x_hat_mean=None))
    assert rel_error(dx_plain, numerical_grad(g, x, dy)) > 1e-3


@pytest.mark.parametrize("cls", [BatchNorm1d, BatchNorm2d])
def test_straight_through_with_own_stats_is_ordinary(cls):
    layer, x, rng = make(cls)
    dy = rng.normal(size=x.shape)
    mean, var = layer.batch_stats(x)
    y1, c1 = layer.forward_fixed_stats(x, mean, var)
    layer.zero_grad()
    dx1 = layer.backward_fixed_stats(dy, c1)
    g1 = {k: v.copy() for k, v in layer.grads.items()}
    y2, c2 = layer.forward(x)
    layer.zero_grad()
    dx2 = layer.backward(dy, c2)
    assert np.allclose(c1.x_hat_mean, 0, atol=1e-12)
    assert rel_error(y1, y2) < 1e-12 and rel_error(dx1, dx2) < 1e-10
    for k in g1:
        assert rel_error(g1[k], layer.grads[k]) < 1e-12


def test_backward_fixed_stats_needs_its_cache():
    layer, x, _ = make(BatchNorm1d)
    _, cache = layer.forward(x)
    with pytest.raises(ValueError):
        layer.backward_fixed_stats(np.ones_like(x), cache)


@pytest.mark.parametrize("shape", [(5, 3, 4, 6), (7, 3)])
def test_elementwise_passes_in_pieces_change_no_bit(shape, monkeypatch):
    """The affine map and backward's dx run in pieces of samples: from one sample per piece
    (a tiny PIECE_BYTES) to the whole range, the same bytes."""
    from minirate.layers import batchnorm as bn
    rng = np.random.default_rng(12)
    x = rng.normal(0.3, 2.0, size=shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    gamma, beta = rng.normal(size=3).astype(np.float32), rng.normal(size=3).astype(np.float32)
    outs = []
    for piece_bytes in (1, 10**9):
        monkeypatch.setattr(bn, "PIECE_BYTES", piece_bytes)
        mean, var = bn.batchnorm_stats(x)
        y, cache = bn.batchnorm_forward(x, gamma, beta, mean, var, 1e-5, batch_stats=True)
        dx, dgamma, dbeta = bn.batchnorm_backward(dy, cache)
        y_fixed = bn.batchnorm_normalize(x, gamma, beta, mean, var, 1e-5)
        outs.append([a.tobytes() for a in (y, dx, dgamma, dbeta, y_fixed)])
    assert outs[0] == outs[1]
