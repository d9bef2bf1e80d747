"""Pooling: forward against loops, float64 gradient checks, tie handling, cache contents."""
import numpy as np
import pytest

from minirate.backend import to_numpy
from minirate.layers.base import cache_nbytes
from minirate.layers.pool import (AdaptiveAvgPool2d, AvgPool2d, MaxPool2d, adaptive_avg_pool2d_backward,
                                  adaptive_avg_pool2d_forward, avg_pool2d_backward, avg_pool2d_forward,
                                  max_pool2d_backward, max_pool2d_forward)
from tests.gradcheck import numerical_grad, rel_error

TOL = 1e-7

# (kernel, stride, padding, input H, W): non-overlapping (reshape path, with and without a ragged
# edge), overlapping, and padded windows (general path)
CASES = [(2, None, 0, 8, 6), (2, None, 0, 7, 9), (3, None, 0, 7, 9), (3, 3, 1, 7, 9),
         (2, 1, 0, 7, 9), (3, 1, 1, 7, 9), (3, 2, 1, 7, 9), (4, 2, 2, 7, 9)]


def _windows(H, W, k, s, p):
    """Yield (i, j, rows, cols) of every window in padded coordinates."""
    s = k if s is None else s
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    for i in range(Ho):
        for j in range(Wo):
            yield i, j, range(s * i, s * i + k), range(s * j, s * j + k)


def naive_avg(x, k, s, p):
    s = k if s is None else s
    N, C, H, W = x.shape
    x_pad = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))  # zeros count in the mean
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    y = np.zeros((N, C, Ho, Wo))
    for n in range(N):
        for c in range(C):
            for i, j, rows, cols in _windows(H, W, k, s, p):
                total = 0.0
                for r in rows:
                    for q in cols:
                        total += x_pad[n, c, r, q]
                y[n, c, i, j] = total / (k * k)
    return y


def naive_max(x, dy, k, s, p):
    """Forward max and the backward that routes dy to the first maximum (row-major in the window)."""
    s = k if s is None else s
    N, C, H, W = x.shape
    x_pad = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    y = np.zeros((N, C, Ho, Wo))
    dx_pad = np.zeros(x_pad.shape)
    for n in range(N):
        for c in range(C):
            for i, j, rows, cols in _windows(H, W, k, s, p):
                best, where = -np.inf, None
                for r in rows:
                    for q in cols:
                        if where is None or x_pad[n, c, r, q] > best:
                            best, where = x_pad[n, c, r, q], (r, q)
                y[n, c, i, j] = best
                dx_pad[n, c, where[0], where[1]] += dy[n, c, i, j]
    return y, dx_pad[:, :, p:p + H, p:p + W]


def naive_adaptive(x, oh, ow):
    N, C, H, W = x.shape
    y = np.zeros((N, C, oh, ow))
    for i in range(oh):
        r0, r1 = int(np.floor(i * H / oh)), int(np.ceil((i + 1) * H / oh))
        for j in range(ow):
            c0, c1 = int(np.floor(j * W / ow)), int(np.ceil((j + 1) * W / ow))
            for n in range(N):
                for c in range(C):
                    y[n, c, i, j] = x[n, c, r0:r1, c0:c1].mean()
    return y


def _distinct(rng, shape):
    # well separated values: finite differences never cross a max-pool tie
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 + rng.uniform(0, 0.01, shape)


@pytest.mark.parametrize("k,s,p,H,W", CASES)
def test_avg_pool(k, s, p, H, W, xp):
    rng = np.random.default_rng(k * 100 + p * 10 + H)
    x = rng.standard_normal((2, 3, H, W))
    ref = naive_avg(x, k, s, p)
    x = xp.asarray(x)
    y, cache = avg_pool2d_forward(x, k, s, p)
    assert np.allclose(to_numpy(y), ref, rtol=1e-12, atol=1e-12)
    assert cache_nbytes(cache) == 0  # only shapes and settings
    dy = xp.asarray(rng.standard_normal(y.shape))
    num = numerical_grad(lambda: avg_pool2d_forward(x, k, s, p)[0], x, dy)
    assert rel_error(avg_pool2d_backward(dy, cache), num) < TOL


@pytest.mark.parametrize("k,s,p,H,W", CASES)
def test_max_pool(k, s, p, H, W, xp):
    rng = np.random.default_rng(k * 100 + p * 10 + H)
    x = _distinct(rng, (2, 3, H, W))
    y, cache = max_pool2d_forward(xp.asarray(x), k, s, p)
    dy = rng.standard_normal(y.shape)
    y_ref, dx_ref = naive_max(x, dy, k, s, p)
    assert np.array_equal(to_numpy(y), y_ref)
    assert cache.argmax.dtype == np.uint8 and cache.argmax.shape == y.shape
    x, dy = xp.asarray(x), xp.asarray(dy)
    dx = max_pool2d_backward(dy, cache)
    assert np.allclose(to_numpy(dx), dx_ref, rtol=1e-14, atol=1e-14)
    num = numerical_grad(lambda: max_pool2d_forward(x, k, s, p)[0], x, dy)
    assert rel_error(dx, num) < TOL


@pytest.mark.parametrize("k,s,p,H,W", CASES)
def test_max_pool_ties_go_to_first_maximum(k, s, p, H, W):
    rng = np.random.default_rng(7)
    x = rng.integers(0, 2, (2, 2, H, W)).astype(np.float64)  # many ties; all-zero windows too
    y, cache = max_pool2d_forward(x, k, s, p)
    dy = rng.standard_normal(y.shape)
    y_ref, dx_ref = naive_max(x, dy, k, s, p)
    assert np.array_equal(y, y_ref)
    assert np.allclose(max_pool2d_backward(dy, cache), dx_ref, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("in_hw,out_hw", [((7, 9), (3, 4)), ((7, 9), 1), ((8, 6), (4, 3)),
                                          ((5, 5), 3), ((6, 6), (2, 1)), ((3, 4), (5, 6))])
def test_adaptive_avg_pool(in_hw, out_hw, xp):
    rng = np.random.default_rng(sum(in_hw))
    x = rng.standard_normal((2, 3) + in_hw)
    oh, ow = (out_hw, out_hw) if np.isscalar(out_hw) else out_hw
    ref = naive_adaptive(x, oh, ow)
    x = xp.asarray(x)
    y, cache = adaptive_avg_pool2d_forward(x, out_hw)
    assert np.allclose(to_numpy(y), ref, rtol=1e-12, atol=1e-12)
    assert cache.output_size == (oh, ow) and cache_nbytes(cache) == 0
    dy = xp.asarray(rng.standard_normal(y.shape))
    num = numerical_grad(lambda: adaptive_avg_pool2d_forward(x, out_hw)[0], x, dy)
    assert rel_error(adaptive_avg_pool2d_backward(dy, cache), num) < TOL


def test_wrong_backward_fails_the_check():
    # A plausible bug: the backward of count_include_pad=False (divide by the real pixels only)
    # paired with the count_include_pad=True forward. Wrong only on border windows.
    k, s, p = 3, 2, 1
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 2, 7, 9))
    y, cache = avg_pool2d_forward(x, k, s, p)
    dy = rng.standard_normal(y.shape)
    wrong = np.zeros((1, 2, 7 + 2 * p, 9 + 2 * p))
    for i, j, rows, cols in _windows(7, 9, k, s, p):
        real = [(r, q) for r in rows for q in cols if p <= r < 7 + p and p <= q < 9 + p]
        for r, q in real:
            wrong[:, :, r, q] += dy[:, :, i, j] / len(real)
    wrong = wrong[:, :, p:-p, p:-p]
    num = numerical_grad(lambda: avg_pool2d_forward(x, k, s, p)[0], x, dy)
    assert rel_error(avg_pool2d_backward(dy, cache), num) < TOL
    assert rel_error(wrong, num) > 1e-2


def test_modules_float32():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    for layer, shape in [(MaxPool2d(3, 2, 1), (2, 4, 4, 4)), (MaxPool2d(2), (2, 4, 4, 4)),
                         (AvgPool2d(2), (2, 4, 4, 4)), (AvgPool2d(3, 1, 1), (2, 4, 8, 8)),
                         (AdaptiveAvgPool2d(1), (2, 4, 1, 1)), (AdaptiveAvgPool2d((3, 5)), (2, 4, 3, 5))]:
        y, cache = layer.forward(x)
        assert y.shape == shape and y.dtype == np.float32, layer
        dx = layer.backward(np.ones_like(y), cache)
        assert dx.shape == x.shape and dx.dtype == np.float32, layer
    assert MaxPool2d(2).stride == 2 and AvgPool2d(3).stride == 3
    with pytest.raises(ValueError):
        MaxPool2d(2, padding=2)
