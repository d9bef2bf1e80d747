"""The fused GPU kernels, proven without a GPU: every source compiles with NVRTC, and the same
source compiled for the host (tests/host_cuda.py) gives what the NumPy path gives.

The host runs go through the layers' own dispatch: `get_array_module` of the layer modules is
made to answer a NumPy module that has `RawKernel` = HostKernel, so `fused.fusable` says yes,
the layer builds its kernel arguments as on a GPU, and the kernel runs on the CPU. The reference
is the unchanged NumPy path on NumPy arrays.

Tolerances, relative to the largest value of each output (max|a − b| / max|b|):
float64 1e-12; float32 8 ulp (8 · 2⁻²³ ≈ 9.5e-7). Both paths round every operation alike
(no fused multiply-add, the same expression order), so they differ only where the math library
does: NumPy's own SIMD exp and arctan against the C library's (a few ulp), and what that
difference becomes after a few steps of the recursion (the smooth spike feeds it back into u).
With the Heaviside spike u, s and r are bitwise equal.
"""
import itertools
import os
import re

import numpy as np
import pytest

from minirate import fused
from minirate.layers import batchnorm as bn
from minirate.layers import surrogate
from minirate.layers.lif import (LIFParams, lif_backward, lif_forward,
                                 lif_forward_rate, lif_rate_step, lif_step, lif_step_backward,
                                 lif_step_traced, loops, neuron, rate)
from tests.host_cuda import HostKernel, host_module

KERNELS = [  # (source, kernel name)
    (neuron.LIF_STEP_CUDA, "lif_step"), (neuron.LIF_STEP_BACKWARD_CUDA, "lif_step_backward"),
    (loops.LIF_FORWARD_CUDA, "lif_forward"), (loops.LIF_BACKWARD_CUDA, "lif_backward"),
    (rate.LIF_RATE_STEP_CUDA, "lif_rate_step"),
    (rate.LIF_FORWARD_RATE_CUDA, "lif_forward_rate"),
    (bn.CENTRE_CUDA, "batchnorm_centre"), (bn.AFFINE_CUDA, "batchnorm_affine"),
    (bn.BACKWARD_DX_CUDA, "batchnorm_backward_dx")]
DTYPES = [np.float64, np.float32]
TOL = {np.float64: 1e-12, np.float32: 8 * float(np.finfo(np.float32).eps)}
ALPHAS = {"sigmoid": (4.0, 2.5), "atan": (2.0, 3.0), "triangle": (1.0, 0.7),
          "rectangle": (1.0, 1.3)}


def all_params():
    """Every reset × detach × surrogate × smooth, with the default α and another, and λ, θ and
    v_reset varied."""
    out = []
    for i, (reset, detach, sg, smooth) in enumerate(itertools.product(
            ("soft", "hard"), (True, False), tuple(ALPHAS), (False, True))):
        out.append(LIFParams(decay=(0.2, 0.5, 0.9)[i % 3], threshold=(1.0, 0.7)[i % 2],
                             reset=reset, v_reset=(0.0, -0.3)[(i // 2) % 2],
                             detach_reset=detach, surrogate=sg, alpha=ALPHAS[sg][(i // 4) % 2],
                             smooth=smooth))
    return out


PARAMS = all_params()


def rel_err(a, b):
    """max|a − b| / max|b| (max|a − b| where b is all zero)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    if a.size == 0:
        return 0.0
    scale = np.abs(b).max()
    diff = np.abs(a - b).max()
    return float(diff / scale) if scale > 0 else float(diff)


def check_close(got, want, dtype, what):
    for name, a, b in zip(want._fields if hasattr(want, "_fields") else range(len(want)),
                          got, want):
        if a is None or b is None or isinstance(b, (int, float)):
            assert a == b, (what, name)
            continue
        assert a.dtype == b.dtype, (what, name, a.dtype, b.dtype)
        err = rel_err(a, b)
        assert err <= TOL[dtype], f"{what}: {name} differs by {err:.3g} (tolerance {TOL[dtype]:.3g})"


# -- the host array module, through the layers' own dispatch ----------------------------------
@pytest.fixture
def host(monkeypatch):
    """Route the LIF and batchnorm modules to the host module; returns the list of kernels
    launched (so a test can tell that the fused path really ran)."""
    hx = host_module()
    monkeypatch.delenv("MINIRATE_FUSED", raising=False)
    for mod in (neuron, loops, rate, bn, surrogate):
        monkeypatch.setattr(mod, "get_array_module", lambda x, hx=hx: hx)
    launched = []
    real_launch = fused.launch

    def launch(xp, code, name, n, dtype, *args):
        launched.append(name)
        return real_launch(xp, code, name, n, dtype, *args)

    monkeypatch.setattr(fused, "launch", launch)
    return launched


def inputs(rng, T, dtype, p, B=3, shape=(7, 37)):
    """(T*B, *shape) currents; B·7·37 = 777 neurons per step (not a multiple of the block of
    256). Neurons 0–9 fire at every step, 10–19 never, 20–29 start exactly at θ."""
    I = rng.normal(0.6 * p.threshold, p.threshold, size=(T, B * int(np.prod(shape))))
    I[:, :10] = 4.0 * p.threshold + 2.0 * abs(p.v_reset)
    I[:, 10:20] = -4.0 * p.threshold
    I[0, 20:30] = p.threshold
    return I.reshape(T * B, *shape).astype(dtype)


def numpy_path(fn, *args):
    """fn on the NumPy path (MINIRATE_FUSED=0): the reference."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv("MINIRATE_FUSED", "0")
        return fn(*args)


# -- NVRTC -----------------------------------------------------------------------------------
def nvrtc_module():
    """CuPy's NVRTC binding; skip without it, unless MINIRATE_REQUIRE_NVRTC=1 (then fail)."""
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
        return nvrtc
    except Exception as e:    # no CuPy, or no NVRTC library
        if os.environ.get("MINIRATE_REQUIRE_NVRTC") == "1":
            pytest.fail(f"MINIRATE_REQUIRE_NVRTC=1 but NVRTC cannot be loaded: {e}")
        pytest.skip(f"NVRTC cannot be loaded: {e}")


def nvrtc_compile(nvrtc, code, name, arch):
    """PTX of `code` (with fused.py's options), or RuntimeError carrying NVRTC's log."""
    prog = nvrtc.createProgram(code, f"{name}.cu", [], [])
    try:
        nvrtc.compileProgram(prog, [f"-arch={arch}", *fused.OPTIONS])
    except nvrtc.NVRTCError:
        raise RuntimeError(nvrtc.getProgramLog(prog)) from None
    ptx = nvrtc.getPTX(prog)
    return ptx.decode() if isinstance(ptx, bytes) else ptx


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_every_kernel_compiles_with_nvrtc(arch, dtype):
    nvrtc = nvrtc_module()
    for code, name in KERNELS:
        ptx = nvrtc_compile(nvrtc, fused.source(code, dtype), name, arch)
        assert re.search(rf"\.entry\s+{name}\s*\(", ptx), name
        assert ("f64" in ptx) == (dtype == np.float64 or name.startswith("lif_")), name


def test_a_broken_source_is_reported_with_its_line():
    nvrtc = nvrtc_module()
    good = "u_post = after_reset(u_t, s_t, p);"
    code = fused.source(loops.LIF_FORWARD_CUDA.replace(good, "u_post = after_reset(u_t, s_t);"),
                        np.float32)
    line = next(i + 1 for i, text in enumerate(code.splitlines()) if "after_reset(u_t, s_t);" in text)
    with pytest.raises(RuntimeError) as info:
        nvrtc_compile(nvrtc, code, "lif_forward", "compute_90")
    assert f"lif_forward.cu({line}): error" in str(info.value)


# -- the host harness itself -----------------------------------------------------------------
def test_host_kernel_checks_its_arguments():
    code = fused.source(bn.CENTRE_CUDA, np.float32)
    k = HostKernel(code, "batchnorm_centre")
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    mean, xc = np.array([1, 2, 3], np.float32), np.empty_like(x)
    ints = (np.int32(24), np.int32(3), np.int32(4))
    k((1,), (256,), (x, mean, xc, *ints))
    np.testing.assert_array_equal(xc, x - mean[:, None])
    bad = [((x.astype(np.float64), mean, xc, *ints), "dtype float32"),
           ((x, mean, xc, 24, np.int32(3), np.int32(4)), "needs int32"),
           ((x, mean, xc, np.int64(24), np.int32(3), np.int32(4)), "needs int32"),
           ((x.transpose(), mean, xc, *ints), "C-contiguous"),
           ((x, mean, xc, *ints[:2]), "takes 6 arguments"),
           ((x, np.float32(1), xc, *ints), "needs an array")]
    for args, message in bad:
        with pytest.raises(TypeError, match=message):
            k((1,), (256,), args)
    k64 = HostKernel(fused.source(rate.LIF_FORWARD_RATE_CUDA, np.float64), "lif_forward_rate")
    I = np.zeros((2, 5))
    good = (I, np.empty_like(I), np.empty(5), np.empty(5), np.int32(2), np.int32(5),
            *neuron.kernel_params(LIFParams()))
    k64(1, 32, good)
    with pytest.raises(TypeError, match="needs float64"):          # a double: np.float64 only
        k64(1, 32, good[:6] + (np.float32(0.2),) + good[7:])


def test_use_fused_only_on_a_module_with_raw_kernels(monkeypatch):
    hx = host_module()
    monkeypatch.delenv("MINIRATE_FUSED", raising=False)
    assert not fused.use_fused(np) and fused.use_fused(hx)
    monkeypatch.setenv("MINIRATE_FUSED", "0")
    assert not fused.use_fused(hx)
    monkeypatch.setenv("MINIRATE_FUSED", "1")
    x = np.zeros(3)
    assert fused.fusable(hx, x, None, x) and not fused.fusable(hx, x, x.astype(np.float32))
    assert not fused.fusable(hx, x.astype(np.float16))


def test_minirate_never_imports_the_test_harness():
    """minirate/ imports nothing from tests/, and fused.py no GPU library (backend.py does)."""
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "minirate")
    for folder, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                text = open(os.path.join(folder, f)).read()
                assert not re.search(r"^\s*(from|import)\s+tests\b", text, re.M), f
    assert "import cupy" not in open(os.path.join(root, "fused.py")).read()


# -- LIF: the host-compiled kernels against the NumPy path ------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("T", [1, 4])
def test_lif_forward_and_backward(host, T, dtype):
    rng = np.random.default_rng(T)
    for i, p in enumerate(PARAMS):
        I = inputs(rng, T, dtype, p)
        u0 = rng.normal(0, 0.5, (3, 7, 37)).astype(dtype) if i % 2 else None
        s, cache = numpy_path(lif_forward, I, T, p, u0)
        if not p.smooth:                                  # the chosen neurons do what they say
            flat = s.reshape(T, -1)
            assert flat[:, :10].all() and not flat[:, 10:20].any()
            assert u0 is not None or flat[0, 20:30].all()
        got_s, got_cache = lif_forward(I, T, p, u0)
        check_close((got_s, got_cache.u), (s, cache.u), dtype, f"lif_forward {p}")
        ds = rng.normal(size=I.shape).astype(dtype)
        check_close((lif_backward(ds, cache, p),), (numpy_path(lif_backward, ds, cache, p),),
                    dtype, f"lif_backward {p}")
    assert host.count("lif_forward") == len(PARAMS) and host.count("lif_backward") == len(PARAMS)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("T", [1, 4])
def test_lif_forward_rate(host, T, dtype):
    rng = np.random.default_rng(10 + T)
    for p in PARAMS:
        I = inputs(rng, T, dtype, p)
        check_close(lif_forward_rate(I, T, p), numpy_path(lif_forward_rate, I, T, p), dtype,
                    f"lif_forward_rate {p}")
    assert host.count("lif_forward_rate") == len(PARAMS)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("T", [1, 4])
def test_lif_rate_step(host, T, dtype):
    rng = np.random.default_rng(20 + T)
    for p in PARAMS:
        I = inputs(rng, T, dtype, p).reshape(T, 3, 7, 37)
        state = want = None
        for t in range(T):
            s, state = lif_rate_step(I[t], state, p)
            s_ref, want = numpy_path(lif_rate_step, I[t], want, p)
            check_close((s,), (s_ref,), dtype, f"lif_rate_step s, t={t} {p}")
            check_close(state, want, dtype, f"lif_rate_step state, t={t} {p}")
            assert isinstance(state.eps, float) == isinstance(want.eps, float)
    assert host.count("lif_rate_step") == T * len(PARAMS)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("T", [1, 4])
def test_lif_step_traced_and_its_backward(host, T, dtype):
    """The per-step neuron as single-step BPTT, SLTT and OTTT run it, step by step."""
    rng = np.random.default_rng(30 + T)
    for p in PARAMS:
        I = inputs(rng, T, dtype, p).reshape(T, 3, 7, 37)
        u = a = u_ref = a_ref = None
        caches, caches_ref = [], []
        for t in range(T):
            s, u, cache, a = lif_step_traced(I[t], u, a, p)
            s_r, u_ref, cache_ref, a_ref = numpy_path(lif_step_traced, I[t], u_ref, a_ref, p)
            check_close((s, u, cache.u, a), (s_r, u_ref, cache_ref.u, a_ref), dtype,
                        f"lif_step_traced t={t} {p}")
            if t == 0:
                assert a is s                                 # â_1 = s_1 itself, as before
            caches.append(cache)
            caches_ref.append(cache_ref)
        s, u_post, cache = lif_step(I[0], u, p)                  # untraced, from a state
        s_r, u_post_r, cache_r = numpy_path(lif_step, I[0], u_ref, p)
        check_close((s, u_post, cache.u), (s_r, u_post_r, cache_r.u), dtype, f"lif_step {p}")
        du_post = du_ref = None
        for t in reversed(range(T)):
            ds = rng.normal(size=I[t].shape).astype(dtype)
            dI, du_post = lif_step_backward(ds, du_post, caches_ref[t], p)
            dI_ref, du_ref = numpy_path(lif_step_backward, ds, du_ref, caches_ref[t], p)
            check_close((dI, du_post), (dI_ref, du_ref), dtype, f"lif_step_backward t={t} {p}")
    assert host.count("lif_step_backward") == T * len(PARAMS)
    assert host.count("lif_step") == T * len(PARAMS) + len(PARAMS)


def test_a_small_grid_loops_over_every_neuron(host, monkeypatch):
    """Grid-stride: two blocks of 256 threads cover 777 neurons."""
    monkeypatch.setattr(fused, "MAX_GRID", 2)
    rng = np.random.default_rng(5)
    p = LIFParams(reset="hard", detach_reset=False)
    I = inputs(rng, 3, np.float64, p)
    check_close(lif_forward_rate(I, 3, p), numpy_path(lif_forward_rate, I, 3, p), np.float64,
                "lif_forward_rate on 2 blocks")
    x = rng.normal(size=(5, 4, 9, 11))
    check_close((bn._centre(x, x.mean(axis=(0, 2, 3))),),
                (numpy_path(bn._centre, x, x.mean(axis=(0, 2, 3))),), np.float64, "centre")


def test_ottt_state_unchanged_by_the_traced_step(host):
    """OTTT's trace: â_t = λ â_{t−1} + s_t from the fused step equals the NumPy expression."""
    rng = np.random.default_rng(7)
    p = LIFParams(decay=0.5)
    I = rng.normal(0.8, 1, (2, 4, 300))
    s1, u1, _, a1 = lif_step_traced(I[0], None, None, p)
    s2, _, _, a2 = lif_step_traced(I[1], u1, a1, p)
    np.testing.assert_array_equal(a2, 0.5 * s1 + s2)


# -- batchnorm -------------------------------------------------------------------------------
SHAPES = [(9, 5), (6, 3, 17), (4, 3, 7, 9)]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d", "4d"])
def test_batchnorm_kernels(host, shape, dtype):
    rng = np.random.default_rng(len(shape))
    C = shape[1]
    x = (rng.normal(size=shape) * 2 + 0.5).astype(dtype)
    gamma, beta = rng.normal(size=C).astype(np.float32), rng.normal(size=C).astype(np.float32)
    mean, var = rng.normal(size=C).astype(np.float32), rng.uniform(0.5, 2, C).astype(np.float32)
    dy = rng.normal(size=shape).astype(dtype)

    got = bn._centred_stats(x)
    want = numpy_path(bn._centred_stats, x)
    check_close(got[:3], want[:3], dtype, "centred stats")
    assert got[3] == want[3]
    check_close((bn.batchnorm_normalize(x, gamma, beta, mean, var, 1e-5),),
                (numpy_path(bn.batchnorm_normalize, x, gamma, beta, mean, var, 1e-5),), dtype,
                "normalize")
    for batch_stats in (True, False):
        y, cache = bn.batchnorm_forward(x, gamma, beta, mean, var, 1e-5, batch_stats)
        y_ref, cache_ref = numpy_path(bn.batchnorm_forward, x, gamma, beta, mean, var, 1e-5,
                                      batch_stats)
        check_close((y, cache.x_centred), (y_ref, cache_ref.x_centred), dtype, "forward")
        check_close(bn.batchnorm_backward(dy, cache_ref),
                    numpy_path(bn.batchnorm_backward, dy, cache_ref), dtype,
                    f"backward, batch_stats={batch_stats}")
    y, cache = bn.batchnorm_fixed_stats_forward(x, gamma, beta, mean, var, 1e-5)
    y_ref, cache_ref = numpy_path(bn.batchnorm_fixed_stats_forward, x, gamma, beta, mean, var,
                                  1e-5)
    check_close((y, cache.x_hat_mean), (y_ref, cache_ref.x_hat_mean), dtype, "fixed forward")
    check_close(bn.batchnorm_backward(dy, cache_ref),
                numpy_path(bn.batchnorm_backward, dy, cache_ref), dtype, "fixed backward")
    for name in ("batchnorm_centre", "batchnorm_affine", "batchnorm_backward_dx"):
        assert name in host


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_batchnorm_layer_through_the_kernels(host, dtype):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 6, 5, 5)).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    w = rng.normal(size=6)
    results = []
    for env in ("1", "0"):
        with pytest.MonkeyPatch.context() as m:
            m.setenv("MINIRATE_FUSED", env)
            layer = bn.BatchNorm2d(6)
            layer.params["weight"][:] = w
            y, cache = layer.forward(x)
            results.append((y, layer.backward(dy, cache), layer.grads["weight"].copy(),
                            layer.buffers["running_var"].copy()))
    check_close(results[0], results[1], dtype, "BatchNorm2d")


# -- whole training steps: every method, fused against unfused -------------------------------
@pytest.mark.parametrize("method,kw", [("bptt", {"step_mode": "m"}), ("bptt", {"step_mode": "s"}),
                                       ("rate_m", {}), ("rate_s", {}), ("sltt", {}),
                                       ("ottt", {})])
def test_a_training_step_fused_and_unfused(host, method, kw):
    """One float64 step of a small ResNet (conv, batchnorm, LIF, residual blocks): the LIF and
    batchnorm layers on the host kernels, against the same step on the NumPy path."""
    from minirate.methods import make_method
    from tests.nets import random_upstream_loss, tiny_resnet
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 3, 6, 6))
    y = np.array([0, 1, 2])
    G = rng.normal(size=(3, 5))
    grads = []
    for env in ("1", "0"):
        with pytest.MonkeyPatch.context() as m:
            m.setenv("MINIRATE_FUSED", env)
            model = tiny_resnet(reset="hard", detach_reset=False, surrogate="atan")
            model.zero_grad()
            loss, _ = make_method(method, model, 3, **kw).step(x, y, random_upstream_loss(G))
            grads.append([loss] + [g.copy() for _, _, g, _ in model.parameters()])
    assert "batchnorm_affine" in host and any(k.startswith("lif_") for k in host)
    assert abs(grads[0][0] - grads[1][0]) <= 1e-12 * abs(grads[1][0])
    for a, b in zip(grads[0][1:], grads[1][1:]):
        assert rel_err(a, b) <= 1e-12
