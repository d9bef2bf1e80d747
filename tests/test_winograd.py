"""Winograd convolution: its transforms, float64 gradient checks, agreement with im2col, the
per-layer choice of algorithm, and a whole network trained one step either way."""
import numpy as np
import pytest

from minirate.backend import to_numpy
from minirate.layers import winograd
from minirate.layers.conv import Conv2d, Conv2dCache, conv2d_backward, conv2d_forward
from minirate.layers.winograd import (WinogradCache, set_conv_algo, transforms,
                                      winograd_backward, winograd_forward)
from minirate.methods import make_method
from minirate.optim import SGD
from tests.gradcheck import numerical_grad, rel_error
from tests.nets import random_upstream_loss, tiny_resnet
from tests.test_conv import naive_conv

# float32 against float64 direct convolution, worst entry relative to the largest (measured on
# these shapes: m = 2 about 5e-7, m = 4 about 1e-5; im2col itself about 5e-7)
F32_TOL = {2: 3e-6, 4: 6e-5}


@pytest.mark.parametrize("m", [2, 4])
def test_transforms_give_the_1d_correlation(m):
    # y_i = sum_k g_k d_{i+k} == A^T ((G g) ⊙ (B^T d)), and B^T has integer entries
    BT, G, AT = transforms(m)
    assert BT.shape == (m + 2, m + 2) and G.shape == (m + 2, 3) and AT.shape == (m, m + 2)
    assert np.array_equal(BT, np.round(BT))
    rng = np.random.default_rng(m)
    for _ in range(5):
        d, g = rng.standard_normal(m + 2), rng.standard_normal(3)
        direct = [sum(g[k] * d[i + k] for k in range(3)) for i in range(m)]
        assert np.allclose(AT @ ((G @ g) * (BT @ d)), direct, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("padding", [0, 1, 2, 3])
def test_gradients(padding, m, xp):
    rng = np.random.default_rng(10 * padding + m)
    x = xp.asarray(rng.standard_normal((2, 2, 5, 7)))       # odd sizes: partial tiles
    W = xp.asarray(rng.standard_normal((3, 2, 3, 3)))
    b = xp.asarray(rng.standard_normal(3))
    y, cache = winograd_forward(x, W, b, padding, m=m)
    assert np.allclose(to_numpy(y), naive_conv(to_numpy(x), to_numpy(W), to_numpy(b), 1, padding),
                       rtol=1e-12, atol=1e-12)
    dy = xp.asarray(rng.standard_normal(y.shape))
    dx, dW, db = winograd_backward(dy, cache)

    def f():
        return winograd_forward(x, W, b, padding, m=m)[0]

    errs = {"x": rel_error(dx, numerical_grad(f, x, dy)),
            "W": rel_error(dW, numerical_grad(f, W, dy)),
            "b": rel_error(db, numerical_grad(f, b, dy))}
    assert max(errs.values()) < 1e-7, errs


SHAPES = [(2, 3, 4, 8, 8, 1), (3, 5, 2, 7, 9, 1), (2, 4, 6, 6, 5, 0), (1, 2, 3, 3, 3, 2),
          (4, 3, 3, 10, 13, 1)]                              # (N, C, O, H, W, padding)


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_im2col(shape, m, xp):
    N, C, O, H, Wd, pad = shape
    rng = np.random.default_rng(sum(shape))
    x, W = rng.standard_normal((N, C, H, Wd)), rng.standard_normal((O, C, 3, 3))
    b = rng.standard_normal(O)
    y_ref, cache_ref = conv2d_forward(x, W, b, 1, pad)
    dy = rng.standard_normal(y_ref.shape)
    ref = (y_ref,) + conv2d_backward(dy, cache_ref)
    for dtype, tol in [(np.float64, 1e-12), (np.float32, F32_TOL[m])]:
        args = [xp.asarray(a.astype(dtype)) for a in (x, W, b, dy)]
        y, cache = winograd_forward(*args[:3], pad, m=m)
        got = (y,) + winograd_backward(args[3], cache)
        for name, g, r in zip(("y", "dx", "dW", "db"), got, ref):
            assert g.dtype == dtype and g.shape == r.shape, name
            assert rel_error(g, r) < tol, (name, dtype, rel_error(g, r))
        dx, dW, db = winograd_backward(args[3], cache, need_dx=False)
        assert dx is None and np.array_equal(to_numpy(dW), to_numpy(got[2]))


def test_chunks_and_threads_do_not_change_the_result(monkeypatch):
    # one sample per chunk against the whole batch in one chunk
    rng = np.random.default_rng(3)
    x, W = rng.standard_normal((5, 3, 9, 9)), rng.standard_normal((4, 3, 3, 3))
    y, cache = winograd_forward(x, W, None, 1)
    dy = rng.standard_normal(y.shape)
    grads = winograd_backward(dy, cache)
    monkeypatch.setattr(winograd, "CHUNK_BYTES", 1)
    monkeypatch.setattr(winograd, "MIN_TILES", 1)
    monkeypatch.setattr(winograd, "MIN_TILES_DW", 1)
    monkeypatch.setattr("minirate.backend.MIN_THREAD_BYTES", 1)
    assert sum(len(c[0]) for c in winograd._sample_chunks(np, 5, 10**6, 9)) == 5
    y1, cache1 = winograd_forward(x, W, None, 1)
    assert np.allclose(y1, y, rtol=1e-13, atol=1e-13)
    for g1, g in zip(winograd_backward(dy, cache1), grads):
        assert g is None and g1 is None or np.allclose(g1, g, rtol=1e-13, atol=1e-13)


def test_wrong_padding_of_dy_fails():
    # the input gradient needs dy padded by 2 - p: a forward run at another padding is caught
    rng = np.random.default_rng(4)
    x, W = rng.standard_normal((1, 2, 6, 6)), rng.standard_normal((2, 2, 3, 3))
    y, cache = winograd_forward(x, W, None, 1)
    dy = rng.standard_normal(y.shape)
    num = numerical_grad(lambda: winograd_forward(x, W, None, 1)[0], x, dy)
    assert rel_error(winograd_backward(dy, cache)[0], num) < 1e-7
    wrong = winograd_backward(dy, cache._replace(W=W[:, :, ::-1, ::-1]))[0]   # kernel not flipped
    assert rel_error(wrong, num) > 1e-2


def test_auto_choice_is_measured_once_per_shape(monkeypatch):
    calls, lines = [], []
    fake = {"im2col": (2.0, 1.0), "winograd": (1.0, 2.0)}     # (forward, backward) seconds

    def measure(algo, x, W, b, padding, stride=1):
        calls.append((algo, x.shape))
        if x.shape[2] == 8:                                    # 8x8: winograd forward faster
            return fake[algo]
        return (1.5, 1.5) if algo == "im2col" else (3.0, 3.0)  # 4x4: im2col both ways

    monkeypatch.setattr(winograd, "choices", {})
    monkeypatch.setattr(winograd, "measure", measure)
    monkeypatch.setattr(winograd, "log", lines.append)
    W = np.zeros((4, 3, 3, 3), np.float32)
    x8, x4 = np.zeros((2, 3, 8, 8), np.float32), np.zeros((2, 3, 4, 4), np.float32)
    for _ in range(3):
        assert winograd.choose("auto", x8, W, None, 1, 1) == ("winograd", "im2col")
        assert winograd.choose("auto", x4, W, None, 1, 1) == ("im2col", "im2col")
    runs = 2 * 2 * (1 + winograd.AUTO_ROUNDS)     # two shapes, two algorithms, warm-up + rounds
    assert len(calls) == runs and len(lines) == 2              # each shape measured, logged once
    assert "forward winograd, backward im2col" in lines[0]
    assert "forward im2col, backward im2col" in lines[1]
    assert not any("\n" in line for line in lines)
    # 1x1 kernels and stride 2 stay im2col without any measurement; winograd is forced elsewhere
    assert winograd.choose("auto", x8, np.zeros((4, 3, 1, 1)), None, 1, 0) == ("im2col",) * 2
    assert winograd.choose("winograd", x8, W, None, 2, 1) == ("im2col",) * 2
    assert winograd.choose("winograd", x4, W, None, 1, 1) == ("winograd",) * 2
    assert winograd.choose("im2col", x4, W, None, 1, 1) == ("im2col",) * 2
    assert len(calls) == runs
    with pytest.raises(ValueError):
        winograd.choose("fft", x8, W, None, 1, 1)


def test_auto_choice_keeps_the_best_run_of_each_pass(monkeypatch):
    """A noisy series: im2col has one fast forward among slow ones, winograd is steady in
    between. The minima decide, per pass, not the mean, the last run or the untimed warm-up
    (winograd's is the fastest run of all); the log line gives every minimum."""
    monkeypatch.setattr(winograd, "AUTO_ROUNDS", 3)
    series = {"im2col": [(9.0, 1.0), (5.0, 3.0), (1.0, 4.0), (5.0, 3.0)],   # warm-up first
              "winograd": [(0.1, 0.1), (2.0, 2.5), (2.0, 2.0), (2.0, 2.5)]}
    order, lines = [], []

    def measure(algo, x, W, b, padding, stride=1):
        order.append(algo)
        return series[algo].pop(0)

    monkeypatch.setattr(winograd, "choices", {})
    monkeypatch.setattr(winograd, "measure", measure)
    monkeypatch.setattr(winograd, "log", lines.append)
    W, x = np.zeros((4, 3, 3, 3), np.float32), np.zeros((2, 3, 8, 8), np.float32)
    # forward: im2col's best 1.0 beats 2.0; backward: winograd's best 2.0 beats 3.0 (the
    # warm-up's 1.0 does not count)
    assert winograd.choose("auto", x, W, None, 1, 1) == ("im2col", "winograd")
    assert series == {"im2col": [], "winograd": []}               # 1 + AUTO_ROUNDS runs each
    # warm-ups, then rounds in alternating order: a burst of load reaches both algorithms
    assert order == ["im2col", "winograd", "im2col", "winograd", "winograd", "im2col",
                     "im2col", "winograd"]
    assert len(lines) == 1
    assert ("forward: im2col 1000.00 ms, winograd 2000.00 ms; backward: im2col 3000.00 ms, "
            "winograd 2000.00 ms; best of 3") in lines[0]
    assert winograd.choose("auto", x, W, None, 1, 1) == ("im2col", "winograd")
    assert len(order) == 8


def test_measure_times_forward_and_backward_apart():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    W = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    for algo in ("im2col", "winograd"):
        times = winograd.measure(algo, x, W, None, 1)
        assert len(times) == 2 and all(0 < t < 10 for t in times)


@pytest.mark.parametrize("fwd, bwd", [("winograd", "im2col"), ("im2col", "winograd")])
def test_one_algorithm_forward_the_other_backward(monkeypatch, fwd, bwd):
    """A layer may run its forward by one algorithm and its backward by the other: the output is
    the forward algorithm's to the bit, every gradient the backward algorithm's to the bit."""
    rng = np.random.default_rng(8)
    conv = Conv2d(3, 4, 3, 1, 1, rng=rng)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    W, b = conv.params["weight"], conv.params["bias"]
    monkeypatch.setattr(winograd, "choose", lambda *args: (fwd, bwd))
    conv.algo = "auto"
    y, cache = conv.forward(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = conv.backward(dy, cache)
    runs = {"im2col": (lambda: conv2d_forward(x, W, b, 1, 1), conv2d_backward),
            "winograd": (lambda: winograd_forward(x, W, b, 1), winograd_backward)}
    y_ref = runs[fwd][0]()[0]
    dx_ref, dW_ref, db_ref = runs[bwd][1](dy, runs[bwd][0]()[1])
    assert np.array_equal(y, y_ref)
    assert isinstance(cache, WinogradCache if bwd == "winograd" else Conv2dCache)
    assert np.array_equal(dx, dx_ref)
    assert np.array_equal(conv.grads["weight"], dW_ref)
    assert np.array_equal(conv.grads["bias"], db_ref)


def test_conv2d_module_runs_the_chosen_algorithm():
    rng = np.random.default_rng(5)
    convs = [Conv2d(3, 4, 3, 1, 1, rng=rng), Conv2d(3, 4, 3, 2, 1, rng=rng),
             Conv2d(3, 4, 1, 1, 0, rng=rng)]
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    for conv, kind in zip(convs, [WinogradCache, Conv2dCache, Conv2dCache]):
        conv.algo = "winograd"
        y, cache = conv.forward(x)
        assert isinstance(cache, kind)
        y_ref, cache_ref = conv2d_forward(x, conv.params["weight"], conv.params["bias"],
                                          conv.stride, conv.padding)
        assert rel_error(y, y_ref) < F32_TOL[winograd.TILE]
        dy = rng.standard_normal(y.shape).astype(np.float32)
        assert conv.backward(dy, cache, need_dx=False) is None
        assert rel_error(conv.grads["weight"], conv2d_backward(dy, cache_ref)[1]) < 1e-4


def test_network_step_winograd_equals_im2col(xp):
    rng = np.random.default_rng(6)
    x = xp.asarray(rng.normal(0.5, 1.0, size=(2, 3, 6, 6)))
    y = xp.asarray([1, 3])
    loss = random_upstream_loss(xp.asarray(rng.normal(size=(2, 5))))
    nets, params, ran = [], [], []
    original = winograd.winograd_forward

    def counted(*args, **kw):
        ran.append(1)
        return original(*args, **kw)

    for algo in ("im2col", "winograd"):
        net = set_conv_algo(tiny_resnet(0, xp=xp, surrogate="sigmoid", alpha=2.0), algo)
        opt = SGD(list(net.parameters()), lr=0.1, momentum=0.9)
        winograd.winograd_forward = counted
        try:
            net.zero_grad()
            out = make_method("bptt", net, 3).step(x, y, loss)
            opt.step()
        finally:
            winograd.winograd_forward = original
        nets.append(out)
        params.append({name: to_numpy(p) for name, p, _, _ in net.parameters()})
    assert len(ran) == 4      # the four 3x3 stride-1 convs, once each (multi-step: T*B samples)
    assert abs(nets[0][0] - nets[1][0]) < 1e-12 * abs(nets[0][0])
    assert rel_error(nets[0][1], nets[1][1]) < 1e-12
    for name in params[0]:
        assert rel_error(params[0][name], params[1][name]) < 1e-12, name
