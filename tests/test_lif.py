"""LIF neuron: forward against a plain loop, BPTT backward and eligibility against finite differences."""
import itertools

import numpy as np
import pytest

from minirate.backend import to_numpy
from minirate.layers.lif import (LIF, LIFParams, lif_backward, lif_forward, lif_forward_rate,
                                 rate_and_eligibility)
from minirate.layers.lif.neuron import LIFStepCache, lif_step, lif_step_backward
from minirate.layers.lif.rate import lif_rate_step
from minirate.layers.surrogate import surrogate_grad, surrogate_smooth
from tests.gradcheck import numerical_grad, rel_error

SURROGATES = ["sigmoid", "atan", "triangle", "rectangle"]
RESETS = [("soft", True), ("soft", False), ("hard", True), ("hard", False)]


def reference_lif(I, p, frozen_s=None):
    """Plain loop over time and neurons. I: (T, N). frozen_s: spikes to use in the reset only
    (emulates a detached reset: the reset is a constant for the derivative)."""
    T, N = I.shape
    s = np.zeros_like(I)
    for n in range(N):
        u_post = 0.0
        for t in range(T):
            u = p.decay * u_post + I[t, n]
            x = u - p.threshold
            s[t, n] = surrogate_smooth(np.array(x), p.surrogate, p.alpha) if p.smooth else float(x >= 0)
            r = s[t, n] if frozen_s is None else frozen_s[t, n]
            if p.reset == "soft":
                u_post = u - p.threshold * r
            else:
                u_post = u * (1 - r) + p.v_reset * r
    return s


@pytest.mark.parametrize("reset,v_reset", [("soft", 0.0), ("hard", 0.0), ("hard", -0.3)])
def test_forward_matches_loop(reset, v_reset):
    rng = np.random.default_rng(0)
    T, B = 6, 50
    I = rng.normal(0.6, 0.8, size=(T * B,))
    lif = LIF(reset=reset, v_reset=v_reset)
    s, cache = lif.forward(I, T)
    ref = reference_lif(I.reshape(T, B), lif.p)
    assert np.array_equal(s.reshape(T, B), ref)
    assert 0.1 < s.mean() < 0.9                       # the test exercises spikes and silences
    assert cache.u.shape == (T, B)


@pytest.mark.parametrize("surrogate", SURROGATES)
def test_surrogate_is_derivative_of_smooth(surrogate):
    x = np.linspace(-2.3, 2.1, 37)
    h = 1e-6
    for a in (0.5, 1.0, 4.0):
        num = (surrogate_smooth(x + h, surrogate, a) - surrogate_smooth(x - h, surrogate, a)) / (2 * h)
        assert rel_error(num, surrogate_grad(x, surrogate, a)) < 1e-6


@pytest.mark.parametrize("surrogate,reset", list(itertools.product(SURROGATES, RESETS)))
def test_bptt_backward_matches_finite_differences(surrogate, reset, xp):
    rng = np.random.default_rng(1)
    T, B, C = 5, 3, 4
    lif = LIF(reset=reset[0], detach_reset=reset[1], v_reset=-0.2 if reset[0] == "hard" else 0.0,
              surrogate=surrogate, smooth=True)
    I = rng.normal(0.8, 0.9, size=(T * B, C))
    ds = rng.normal(size=(T * B, C))
    s, cache = lif.forward(xp.asarray(I), T)                 # the layer on xp, the reference on NumPy
    s, dI = to_numpy(s), to_numpy(lif.backward(xp.asarray(ds), cache))
    # reference function: a plain loop; a detached reset uses the spikes at the unperturbed input
    frozen = reference_lif(I.reshape(T, -1), lif.p) if lif.p.detach_reset else None
    assert np.allclose(s.reshape(T, -1), reference_lif(I.reshape(T, -1), lif.p))

    def f():
        return reference_lif(I.reshape(T, -1), lif.p, frozen).reshape(T * B, C)
    num = numerical_grad(f, I, ds)
    assert rel_error(dI, num) < 1e-7
    assert np.abs(dI).max() > 1e-3


def test_single_step_equals_multi_step():
    rng = np.random.default_rng(2)
    T, B = 4, 7
    lif = LIF(detach_reset=False, smooth=True)
    I = rng.normal(0.7, 1.0, size=(T * B, 3))
    ds = rng.normal(size=I.shape)
    s, cache = lif.forward(I, T)
    dI = lif.backward(ds, cache)
    u, outs, caches = None, [], []
    for t in range(T):
        st, u, c = lif.step(I[t * B:(t + 1) * B], u)
        outs.append(st)
        caches.append(c)
    du_post, dIs = None, [None] * T
    for t in reversed(range(T)):
        dIs[t], du_post = lif.step_backward(ds[t * B:(t + 1) * B], du_post, caches[t])
    assert np.allclose(np.concatenate(outs), s)
    assert np.allclose(np.concatenate(dIs), dI)


@pytest.mark.parametrize("surrogate,reset", list(itertools.product(["sigmoid", "atan"], RESETS)))
def test_eligibility_is_derivative_of_rate(surrogate, reset, xp):
    """e = d r / d c for I_t + c at every step (smooth spikes; detached reset held fixed)."""
    rng = np.random.default_rng(3)
    T, B = 6, 40
    lif = LIF(reset=reset[0], detach_reset=reset[1], surrogate=surrogate, smooth=True)
    I = rng.normal(0.8, 1.0, size=(T * B,))
    s, r, e = (to_numpy(a) for a in lif_forward_rate(xp.asarray(I), T, lif.p))
    s_ref = reference_lif(I.reshape(T, B), lif.p)
    assert np.allclose(s.reshape(T, B), s_ref)
    assert np.allclose(r, s_ref.mean(axis=0))
    frozen = s_ref if lif.p.detach_reset else None
    h = 1e-6
    rp = reference_lif(I.reshape(T, B) + h, lif.p, frozen).mean(axis=0)
    rm = reference_lif(I.reshape(T, B) - h, lif.p, frozen).mean(axis=0)
    assert rel_error(e, (rp - rm) / (2 * h)) < 1e-7


def test_eligibility_with_heaviside_matches_formula():
    """With hard spikes, e is the surrogate derivative: (1/T) Σ sg_t ε_t with ε_t = Σ λ^k (soft, detached)."""
    rng = np.random.default_rng(4)
    T, B = 5, 30
    lif = LIF()
    I = rng.normal(0.8, 1.0, size=(T * B,))
    _, cache = lif.forward(I, T)
    sg = surrogate_grad(cache.u - 1.0, "sigmoid", 4.0)
    eps = np.array([sum(0.2 ** k for k in range(t + 1)) for t in range(T)])
    _, r, e = lif.forward_rate(I, T)
    assert np.allclose(e, (sg * eps[:, None]).mean(axis=0))


def test_rate_state_over_steps_equals_multi_step():
    rng = np.random.default_rng(5)
    T, B = 4, 9
    lif = LIF(reset="hard", detach_reset=False)
    I = rng.normal(0.8, 1.0, size=(T * B, 2))
    _, r, e = lif.forward_rate(I, T)
    state = None
    for t in range(T):
        _, state = lif.rate_step(I[t * B:(t + 1) * B], state)
    r2, e2 = rate_and_eligibility(state)
    assert np.array_equal(r, r2) and np.array_equal(e, e2)


def test_bad_options():
    with pytest.raises(ValueError, match="reset"):
        LIF(reset="medium")
    with pytest.raises(ValueError, match="surrogate"):
        LIF(surrogate="relu")


@pytest.mark.parametrize("reset", ["soft", "hard"])
def test_forward_from_an_entering_state(reset):
    """lif_forward from u⁺_0 = u0 is the step loop from u0; final_state is that loop's last u⁺."""
    rng = np.random.default_rng(3)
    layer = LIF(reset=reset)
    T, shape = 3, (2, 4, 5)
    I = rng.normal(0.6, 1.0, size=(T * shape[0],) + shape[1:])
    u0 = rng.normal(0.3, 0.5, size=shape)
    s, cache = layer.forward(I, T, u0)
    u_post, steps = u0, []
    for t in range(T):
        s_t, u_post, _ = layer.step(I[t * 2:(t + 1) * 2], u_post)
        steps.append(s_t)
    assert np.array_equal(s, np.concatenate(steps))
    assert np.allclose(layer.final_state(cache), u_post, rtol=0, atol=1e-15)
    assert not np.array_equal(s, layer.forward(I, T)[0])      # the entering state matters


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reset,detach,v_reset", [("soft", True, 0.0), ("soft", False, 0.0),
                                                  ("hard", True, 0.0), ("hard", False, -0.3)])
@pytest.mark.parametrize("smooth", [False, True])
def test_loops_over_time_equal_the_step_functions_to_the_bit(dtype, reset, detach, v_reset,
                                                             smooth):
    """The loops write each step into their outputs (`out=`, in place); the step functions
    called without `out` return new arrays. Same operations, so the same bytes (signed zeros
    included), forward from rest and from an entering state, backward, and the rate pass."""
    rng = np.random.default_rng(11)
    T, B = 4, 6
    p = LIFParams(decay=0.3, threshold=0.7, reset=reset, v_reset=v_reset, detach_reset=detach,
                  smooth=smooth)
    I = rng.normal(0.5, 1.0, size=(T * B, 3, 5)).astype(dtype)
    I[0, 0, :3] = [-0.0, 0.0, 0.7]                       # signed zeros and u = θ exactly
    ds = rng.normal(size=I.shape).astype(dtype)
    u0 = rng.normal(size=(B, 3, 5)).astype(dtype)
    same = lambda a, b: a.dtype == b.dtype and a.tobytes() == b.tobytes()   # noqa: E731
    for entering in (None, u0):
        s, cache = lif_forward(I, T, p, entering)
        u_post, steps, caches = entering, [], []
        for t in range(T):
            st, u_post, c = lif_step(I[t * B:(t + 1) * B], u_post, p)
            steps.append(st)
            caches.append(c)
        assert same(s, np.concatenate(steps))
        assert same(cache.u, np.stack([c.u for c in caches]))
        dI = lif_backward(ds, cache, p)
        du_post, dIs = None, [None] * T
        for t in reversed(range(T)):
            dIs[t], du_post = lif_step_backward(ds[t * B:(t + 1) * B], du_post,
                                                LIFStepCache(u=caches[t].u), p)
        assert same(dI, np.concatenate(dIs))
    s, r, e = lif_forward_rate(I, T, p)
    state, steps = None, []
    for t in range(T):
        st, state = lif_rate_step(I[t * B:(t + 1) * B], state, p)
        steps.append(st)
    r2, e2 = rate_and_eligibility(state)
    assert same(s, np.concatenate(steps)) and same(r, r2) and same(e, e2)


def test_out_is_written_even_where_a_fused_kernel_would_run(monkeypatch):
    """A step given `out` writes it with the array module's ufuncs whatever `fused.fusable`
    says: a loop over a layer too large for a kernel may still hand fusable slices to the step
    function, and a kernel's fresh arrays would leave the loop's outputs unwritten."""
    from minirate import fused
    from minirate.layers.lif import neuron, rate
    rng = np.random.default_rng(13)
    p = LIFParams(reset="hard", detach_reset=False)
    I, u0, ds = (rng.normal(0.8, 1.0, size=(4, 5)).astype(np.float32) for _ in range(3))
    ref_s, ref_post, ref_c = lif_step(I, u0, p)
    ref_dI, ref_du = lif_step_backward(ds, u0, ref_c, p)
    _, ref_state = lif_rate_step(I, rate.LIFRateState(u=u0, eps=u0 * 0 + 1.5, r_sum=u0 * 0,
                                                      e_sum=u0 * 0, steps=1), p)

    def kernel(*args, **kwargs):
        raise AssertionError("a fused kernel ran although `out` was given")
    monkeypatch.setattr(fused, "fusable", lambda *arrays: True)
    for name in ("_step_fused", "_step_backward_fused"):
        monkeypatch.setattr(neuron, name, kernel)
    monkeypatch.setattr(rate, "_rate_step_fused", kernel)
    s, post, u = (np.full_like(I, np.nan) for _ in range(3))
    lif_step(I, u0, p, out=(s, post, u))
    assert np.array_equal(s, ref_s) and np.array_equal(post, ref_post)
    assert np.array_equal(u, ref_c.u)
    dI, du = np.full_like(I, np.nan), np.full_like(I, np.nan)
    lif_step_backward(ds, u0, ref_c, p, out=(dI, du))
    assert np.array_equal(dI, ref_dI) and np.array_equal(du, ref_du)
    state = rate.LIFRateState(u=u0.copy(), eps=u0 * 0 + 1.5, r_sum=u0 * 0, e_sum=u0 * 0, steps=1)
    s2 = np.full_like(I, np.nan)
    _, state = lif_rate_step(I, state, p, out=(s2, np.empty_like(I), np.empty_like(I)))
    assert np.array_equal(s2, ref_s)
    assert all(np.array_equal(a, b) for a, b in zip(state[1:4], ref_state[1:4]))
