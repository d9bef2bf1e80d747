"""Conv2d: forward against a direct loop convolution, float64 gradient checks, cache contents."""
import numpy as np
import pytest

from minirate.backend import get_array_module, to_numpy
from minirate.layers import conv as conv_module
from minirate.layers.base import cache_nbytes
from minirate.layers.conv import Conv2d, col2im, conv2d_backward, conv2d_forward, im2col
from tests.gradcheck import numerical_grad, rel_error

TOL = 1e-7


def naive_conv(x, W, b, stride, padding):
    """Direct convolution: loops over n, o, output row, output column and the two kernel offsets."""
    N, C, H, Wd = x.shape
    O, _, k, _ = W.shape
    x_pad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    Ho = (H + 2 * padding - k) // stride + 1
    Wo = (Wd + 2 * padding - k) // stride + 1
    y = np.zeros((N, O, Ho, Wo), dtype=np.float64)
    for n in range(N):
        for o in range(O):
            for i in range(Ho):
                for j in range(Wo):
                    for p in range(k):
                        for q in range(k):
                            # sum over input channels at this kernel offset
                            y[n, o, i, j] += np.dot(x_pad[n, :, stride * i + p, stride * j + q],
                                                    W[o, :, p, q])
                    if b is not None:
                        y[n, o, i, j] += b[o]
    return y


def _grad_check(x, W, b, stride, padding, rng):
    y, cache = conv2d_forward(x, W, b, stride, padding)
    dy = get_array_module(x).asarray(rng.standard_normal(y.shape))
    dx, dW, db = conv2d_backward(dy, cache)

    def f():
        return conv2d_forward(x, W, b, stride, padding)[0]

    errs = {"x": rel_error(dx, numerical_grad(f, x, dy)),
            "W": rel_error(dW, numerical_grad(f, W, dy))}
    if b is not None:
        errs["b"] = rel_error(db, numerical_grad(f, b, dy))
    else:
        assert db is None
    return errs


@pytest.fixture(params=["samples first", "samples last"])
def column_order(request, monkeypatch):
    """Run a test under each im2col column order (stride-1 maps of any width for samples last)."""
    width = 0 if request.param == "samples first" else 10**6
    monkeypatch.setattr(conv_module, "SAMPLES_LAST_MAX_WIDTH", width)
    return request.param


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("C,O", [(2, 3), (3, 2)])   # backward from the windows of x, or of dy
def test_forward_and_gradients(stride, padding, k, bias, C, O, column_order, xp):
    rng = np.random.default_rng(100 * stride + 10 * padding + k)
    x = rng.standard_normal((2, C, 7, 9))  # non-square, odd sizes: ragged strides
    W = rng.standard_normal((O, C, k, k))
    b = rng.standard_normal(O) if bias else None
    ref = naive_conv(x, W, b, stride, padding)
    x, W, b = xp.asarray(x), xp.asarray(W), None if b is None else xp.asarray(b)
    y, _ = conv2d_forward(x, W, b, stride, padding)
    assert y.shape == ref.shape and y.flags.c_contiguous
    assert np.allclose(to_numpy(y), ref, rtol=1e-12, atol=1e-12)
    errs = _grad_check(x, W, b, stride, padding, rng)
    assert max(errs.values()) < TOL, errs


@pytest.mark.parametrize("k,stride,padding", [(1, 2, 0), (3, 1, 1), (3, 2, 1)])
def test_float32_main_cases(k, stride, padding):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 8, 8)).astype(np.float32)
    W = rng.standard_normal((5, 4, k, k)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    y, cache = conv2d_forward(x, W, b, stride, padding)
    assert y.dtype == np.float32
    assert np.allclose(y, naive_conv(x.astype(np.float64), W.astype(np.float64), b, stride, padding),
                       rtol=1e-5, atol=1e-5)
    dx, dW, db = conv2d_backward(np.ones_like(y), cache)
    assert dx.dtype == dW.dtype == db.dtype == np.float32
    assert dx.shape == x.shape and dW.shape == W.shape and db.shape == (5,)


@pytest.mark.parametrize("stride", [1, 2])
def test_im2col_layout(stride, column_order):
    # cols[(c, p, q), column] == x_pad[n, c, s*i + p, s*j + q], written out as loops, with
    # column = (n, i, j) or, for stride 1 with samples last, (i, j, n)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 6, 7))
    k, s, pad = 3, stride, 1
    Ho, Wo = (6 + 2 * pad - k) // s + 1, (7 + 2 * pad - k) // s + 1
    cols = im2col(x, k, s, pad)
    assert cols.shape == (3 * 9, 2 * Ho * Wo)
    x_pad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    last = column_order == "samples last" and stride == 1
    assert conv_module.samples_last(stride, Wo) == last
    for n in range(2):
        for c in range(3):
            for p in range(k):
                for q in range(k):
                    for i in range(Ho):
                        for j in range(Wo):
                            col = (i * Wo + j) * 2 + n if last else (n * Ho + i) * Wo + j
                            assert cols[(c * k + p) * k + q, col] == \
                                x_pad[n, c, s * i + p, s * j + q]


@pytest.mark.parametrize("k,stride,padding", [(3, 2, 1), (3, 1, 1), (5, 2, 2), (1, 2, 0), (1, 1, 0)])
def test_im2col_col2im_are_adjoint(k, stride, padding, column_order):
    # <im2col(x), c> == <x, col2im(c)>: col2im is the exact transpose of im2col
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 6, 7))
    cols = im2col(x, k, stride, padding)
    c = rng.standard_normal(cols.shape)
    assert np.isclose(np.sum(cols * c), np.sum(x * col2im(c, x.shape, k, stride, padding)),
                      rtol=1e-12)


@pytest.mark.parametrize("per_chunk", [1, 2])
@pytest.mark.parametrize("k,stride,padding", [(3, 1, 1), (3, 2, 1), (1, 2, 0), (1, 1, 0)])
def test_chunked_batch_matches_whole_batch(monkeypatch, k, stride, padding, per_chunk,
                                           column_order):
    # a batch of five through chunks of 1 or 2 samples (two temporaries a sample: backward with
    # col2im) and 2 or 4 (one: forward), so every pass takes several chunks and a ragged last one
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 4, 8, 8))
    W = rng.standard_normal((3, 4, k, k))
    b = rng.standard_normal(3)
    y, cache = conv2d_forward(x, W, b, stride, padding)
    dy = rng.standard_normal(y.shape)
    dx, dW, db = conv2d_backward(dy, cache)
    HW = y.shape[2] * y.shape[3]
    sample_bytes = 4 * k * k * HW * x.itemsize  # one sample's cols
    monkeypatch.setattr(conv_module, "CHUNK_BYTES", 2 * per_chunk * sample_bytes)
    monkeypatch.setattr(conv_module, "MIN_COLS", 1)
    assert len(conv_module._chunks(np, 0, 5, HW, 2 * sample_bytes)) == [5, 3][per_chunk - 1]  # bwd
    assert len(conv_module._chunks(np, 0, 5, HW, sample_bytes)) == [3, 2][per_chunk - 1]      # fwd
    y_c, cache_c = conv2d_forward(x, W, b, stride, padding)
    dx_c, dW_c, db_c = conv2d_backward(dy, cache_c)
    assert np.allclose(y_c, naive_conv(x, W, b, stride, padding), rtol=1e-12, atol=1e-12)
    for got, want in [(y_c, y), (dx_c, dx), (dW_c, dW), (db_c, db)]:
        assert np.allclose(got, want, rtol=1e-12, atol=1e-12)


def test_chunks_keep_gemms_wide():
    # a 4x4 output (16 columns a sample) and temporaries far over CHUNK_BYTES: MIN_COLS decides
    chunks = conv_module._chunks(np, 0, 100, 16, 10**9)
    assert chunks[0] == (0, -(-conv_module.MIN_COLS // 16)) and chunks[-1][1] == 100


def test_wrong_backward_fails_the_check():
    # A classic bug: input gradient with the kernel not flipped (plain correlation with W).
    rng = np.random.default_rng(3)
    x, W = rng.standard_normal((2, 2, 6, 6)), rng.standard_normal((3, 2, 3, 3))
    y, cache = conv2d_forward(x, W, None, 1, 1)
    dy = rng.standard_normal(y.shape)
    num = numerical_grad(lambda: conv2d_forward(x, W, None, 1, 1)[0], x, dy)
    right = conv2d_backward(dy, cache)[0]
    wrong = conv2d_backward(dy, cache._replace(W=W[:, :, ::-1, ::-1]))[0]
    assert rel_error(right, num) < TOL
    assert rel_error(wrong, num) > 1e-2


def test_cache_keeps_input_not_im2col():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    conv = Conv2d(3, 4, 3, padding=1, rng=rng)
    _, cache = conv.forward(x)
    assert cache.x is x and cache.stride == 1 and cache.padding == 1 and cache.has_bias
    # the input and a reference to the weight; nothing of im2col's k*k-fold size
    assert cache_nbytes(cache) == x.nbytes + conv.params["weight"].nbytes


def test_module_accumulates_gradients():
    rng = np.random.default_rng(5)
    conv = Conv2d(2, 3, 3, stride=2, padding=1, rng=rng).to(np, np.float64)
    x = rng.standard_normal((2, 2, 5, 5))
    y, cache = conv.forward(x)
    dy = rng.standard_normal(y.shape)
    dx1 = conv.backward(dy, cache)
    g1 = {k: v.copy() for k, v in conv.grads.items()}
    dx2 = conv.backward(dy, cache)
    assert np.array_equal(dx1, dx2)
    for k in g1:
        assert np.allclose(conv.grads[k], 2 * g1[k], rtol=1e-14, atol=0)
    _, dW, db = conv2d_backward(dy, cache)
    assert np.allclose(g1["weight"], dW) and np.allclose(g1["bias"], db)
    conv.zero_grad()
    assert not conv.grads["weight"].any()


def test_init_matches_pytorch_default():
    conv = Conv2d(16, 32, 3, rng=np.random.default_rng(6))
    W, b = conv.params["weight"], conv.params["bias"]
    bound = 1 / np.sqrt(16 * 9)
    assert W.shape == (32, 16, 3, 3) and b.shape == (32,)
    assert W.dtype == b.dtype == np.float32
    assert np.abs(W).max() <= bound and np.abs(W).max() > 0.9 * bound
    assert np.abs(b).max() <= bound
    assert abs(W.std() - bound / np.sqrt(3)) < 0.05 * bound  # std of U(-a, a) is a/sqrt(3)
    assert conv.no_decay == {"bias"}
    nobias = Conv2d(16, 32, 1, stride=2, bias=False, rng=np.random.default_rng(6))
    assert list(nobias.params) == ["weight"]
    y, _ = nobias.forward(np.zeros((1, 16, 8, 8), np.float32))
    assert y.shape == (1, 32, 4, 4)


@pytest.mark.parametrize("C,O,stride,path", [(3, 2, 1, "_backward_stride1"),
                                             (2, 2, 1, "_backward_stride1"),
                                             (2, 3, 1, "_backward_strided"),
                                             (3, 2, 2, "_backward_strided")])
def test_backward_builds_the_smaller_windows(C, O, stride, path, monkeypatch):
    """Stride-1 backward builds the windows of dy (O·k·k rows) only when O <= C; with more
    outputs than inputs (a network's stem) those of x (C·k·k rows) are the smaller."""
    rng = np.random.default_rng(9)
    x, W = rng.standard_normal((2, C, 6, 6)), rng.standard_normal((O, C, 3, 3))
    y, cache = conv2d_forward(x, W, None, stride, 1)
    ran = []
    for name in ("_backward_stride1", "_backward_strided"):
        original = getattr(conv_module, name)
        monkeypatch.setattr(conv_module, name,
                            lambda *a, _f=original, _n=name, **kw: ran.append(_n) or _f(*a, **kw))
    conv2d_backward(rng.standard_normal(y.shape), cache)
    assert ran == [path]
