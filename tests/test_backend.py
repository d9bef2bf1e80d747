"""CPU threads: ranges, the thread map, and layers that split their work giving the same numbers."""
import numpy as np
import pytest

from minirate import backend
from minirate.layers.batchnorm import BatchNorm2d
from minirate.layers.conv import conv2d_backward, conv2d_forward
from minirate.layers.lif import LIFParams, lif_backward, lif_forward, lif_forward_rate


@pytest.fixture
def threads(monkeypatch):
    """Three threads, and ranges of any size: every call below really splits its work."""
    if backend.ThreadpoolController is None:
        pytest.skip("threadpoolctl is not installed: work is never split")
    old = backend.cpu_threads()
    monkeypatch.setattr(backend, "MIN_THREAD_BYTES", 1)
    backend.set_cpu_threads(3)
    yield 3
    backend.set_cpu_threads(old)


def test_ranges_cover_everything_once(monkeypatch):
    monkeypatch.setattr(backend, "cpu_threads", lambda: 3)
    monkeypatch.setattr(backend, "MIN_THREAD_BYTES", 100)
    assert backend.cpu_ranges(np, 7, 100) == [(0, 2), (2, 4), (4, 7)]
    assert backend.cpu_ranges(np, 2, 100) == [(0, 1), (1, 2)]        # never more than items
    assert backend.cpu_ranges(np, 7, 20) == [(0, 7)]                 # 140 bytes: one range
    assert backend.cpu_ranges(np, 7, 30) == [(0, 3), (3, 7)]         # 210 bytes: two
    assert backend.cpu_ranges(object(), 7, 100) == [(0, 7)]          # a GPU: the whole batch


def test_map_runs_on_threads_in_order(threads):
    import threading
    names = backend.cpu_map(lambda a, b: (a, b, threading.current_thread().name),
                            [(0, 1), (1, 2), (2, 3)])
    assert [n[:2] for n in names] == [(0, 1), (1, 2), (2, 3)]
    assert all(n[2].startswith("minirate-cpu") for n in names)


def test_thread_count_from_environment(monkeypatch, capsys):
    if backend.ThreadpoolController is None:
        pytest.skip("threadpoolctl is not installed")
    old = backend.cpu_threads()
    try:
        monkeypatch.setenv("MINIRATE_NUM_THREADS", "5")
        backend._cpu["threads"] = None
        assert backend.cpu_threads() == 5
        monkeypatch.setenv("MINIRATE_NUM_THREADS", "zero")      # not a count: the core count
        backend._cpu["threads"] = None
        assert backend.cpu_threads() == backend._available_cores()
        assert "MINIRATE_NUM_THREADS='zero' is not a positive integer" in capsys.readouterr().err
    finally:
        backend.set_cpu_threads(old)
    with pytest.raises(ValueError):
        backend.set_cpu_threads(0)


@pytest.mark.parametrize("env, expected", [("", 4), ("3", 3), ("0", 4), ("many", 4)])
def test_ranks_on_one_node_share_its_cores(monkeypatch, env, expected):
    """Two ranks on 8 cores take 4 threads each, unless MINIRATE_NUM_THREADS names a positive
    count; a value that is not one shares the cores too (not 8 threads in every rank)."""
    if backend.ThreadpoolController is None:
        pytest.skip("threadpoolctl is not installed")
    old = backend.cpu_threads()
    monkeypatch.setattr(backend, "_available_cores", lambda: 8)
    monkeypatch.setenv("MINIRATE_NUM_THREADS", env)
    try:
        backend._cpu["threads"] = None
        backend.share_cores(2)
        assert backend.cpu_threads() == expected
    finally:
        backend.set_cpu_threads(old)

@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0)])
def test_conv_split_over_threads_matches_one_thread(threads, stride, padding):
    rng = np.random.default_rng(0)
    x, W, b = rng.normal(size=(5, 3, 9, 9)), rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
    backend.set_cpu_threads(1)
    y1, cache = conv2d_forward(x, W, b, stride, padding)
    dy = rng.normal(size=y1.shape)
    grads1 = conv2d_backward(dy, cache)
    backend.set_cpu_threads(threads)
    y3, cache = conv2d_forward(x, W, b, stride, padding)
    grads3 = conv2d_backward(dy, cache)
    assert np.allclose(y3, y1, rtol=1e-12, atol=1e-12)
    for g3, g1 in zip(grads3, grads1):
        assert np.allclose(g3, g1, rtol=1e-12, atol=1e-12)


def test_lif_split_over_threads_matches_one_thread(threads):
    rng = np.random.default_rng(1)
    T, p = 4, LIFParams(0.5, 1.0, "hard", 0.0, False, "sigmoid", 4.0, False)
    I = rng.normal(1.0, 1.0, size=(T * 2, 3, 5))
    ds = rng.normal(size=I.shape)
    backend.set_cpu_threads(1)
    s1, c1 = lif_forward(I, T, p)
    dI1 = lif_backward(ds, c1, p)
    backend.set_cpu_threads(threads)
    s3, c3 = lif_forward(I, T, p)
    dI3 = lif_backward(ds, c3, p)
    assert np.array_equal(s3, s1) and np.array_equal(c3.u, c1.u)
    assert np.allclose(dI3, dI1, rtol=1e-12, atol=1e-14)


def test_lif_rate_pass_split_over_threads_matches_one_thread(threads):
    rng = np.random.default_rng(2)
    T, p = 3, LIFParams(0.2, 1.0, "soft", 0.0, False, "atan", 2.0, False)
    I = rng.normal(1.0, 1.0, size=(T * 2, 4, 3))
    backend.set_cpu_threads(1)
    one = lif_forward_rate(I, T, p)
    backend.set_cpu_threads(threads)
    three = lif_forward_rate(I, T, p)
    assert one[1].shape == one[2].shape == (2, 4, 3)
    for a, b in zip(three, one):
        assert np.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_batchnorm_split_over_threads_matches_one_thread(threads):
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 3.0, size=(5, 4, 3, 3))
    dy = rng.normal(size=x.shape)
    results = []
    for n in (1, threads):
        backend.set_cpu_threads(n)
        layer = BatchNorm2d(4).to(np, np.float64)
        y, cache = layer.forward(x)                                   # batch statistics
        dx = layer.backward(dy, cache)
        y_st, c_st = layer.forward_fixed_stats(x, np.full(4, 1.5), np.full(4, 2.0))
        dx_st = layer.backward_fixed_stats(dy, c_st)
        results.append([y, dx, y_st, dx_st, layer.grads["weight"].copy(),
                        layer.grads["bias"].copy(), layer.buffers["running_var"].copy()])
    for a, b in zip(*results):
        assert np.allclose(a, b, rtol=1e-12, atol=1e-13)
