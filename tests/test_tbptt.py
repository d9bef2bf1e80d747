"""Truncated BPTT: K = T is BPTT, K < T is the gradient of the truncated objective, memory O(K)."""
import math

import numpy as np
import pytest

from minirate.methods import make_method
from minirate.models import build_model
from tests.gradcheck import numerical_grad, rel_error
from tests.nets import random_upstream_loss, tiny_resnet
from tests.truncation import base_pass, upstream_sequence, window_readouts, windows

NEURON = dict(surrogate="sigmoid", alpha=2.0, smooth=True, detach_reset=False)


def _data(seed, T, frames):
    rng = np.random.default_rng(seed)
    shape = (T, 2, 3, 6, 6) if frames else (2, 3, 6, 6)
    return rng.normal(0.5, 1.0, size=shape), np.array([1, 3]), rng


def _grads(net):
    return {name: g.copy() for name, _, g, _ in net.parameters()}


@pytest.mark.parametrize("step_mode", ["m", "s"])
@pytest.mark.parametrize("frames", [False, True])
def test_one_window_is_bptt(step_mode, frames):
    T = 3
    x, y, rng = _data(0, T, frames)
    G = rng.normal(size=(2, 5))
    out = {}
    for name, kw in (("bptt", {}), ("tbptt", dict(window=T))):
        net = tiny_resnet(0, **NEURON)
        net.zero_grad()
        loss, z = make_method(name, net, T, step_mode, **kw).step(x, y, random_upstream_loss(G))
        out[name] = loss, z, _grads(net)
    (l_b, z_b, g_b), (l_t, z_t, g_t) = out["bptt"], out["tbptt"]
    assert np.isclose(l_t, l_b, rtol=1e-12) and np.allclose(z_t, z_b, rtol=1e-12, atol=1e-14)
    assert all(np.abs(g).max() > 0 for g in g_b.values())
    for k in g_b:
        assert rel_error(g_t[k], g_b[k]) <= 1e-10, k


@pytest.mark.parametrize("step_mode,T,K,frames", [("m", 4, 2, True), ("s", 3, 2, False)])
def test_truncated_gradient_against_finite_differences(step_mode, T, K, frames):
    """Every parameter and the input: the method's gradient is that of Σ_w Σ z_w · G_w with
    the state entering each window held at its value (the reference objective below)."""
    net = tiny_resnet(1, **NEURON)
    x, y, rng = _data(1, T, frames)
    Gs = [rng.normal(size=(2, 5)) for _ in windows(T, K)]
    method = make_method("tbptt", net, T, step_mode, window=K)
    conv0 = net.children["conv0"].children["0"]
    captured, original = [], conv0.backward
    # dx of the network input, which the method does not ask for (need_dx=False), computed here
    conv0.backward = lambda dy, cache, need_dx=True: captured.append(original(dy, cache)) or \
        captured[-1]
    net.zero_grad()
    method.step(x, y, upstream_sequence(Gs))
    conv0.backward = original
    analytic = _grads(net)

    entering, _ = base_pass(net.forward, x, T, K, step_mode)   # constants of the objective

    def f():
        return np.stack(window_readouts(net.forward, None, x, T, K, step_mode, entering))

    dy = np.stack(Gs)
    for name, p, _, _ in net.parameters():
        num = numerical_grad(f, p, dy, h=1e-5)
        assert np.abs(num).max() > 0, name
        assert rel_error(analytic[name], num) < 1e-6, (name, rel_error(analytic[name], num))
    # the input: one conv0 backward per window ('m', frames: (k*B, ...) each, in time order)
    dx = np.concatenate(captured).reshape(x.shape) if frames else \
        np.concatenate(captured).reshape(-1, *x.shape).sum(axis=0)
    assert rel_error(dx, numerical_grad(f, x, dy, h=1e-5)) < 1e-6
    # the truncation matters: the same objective with the entering states left free (gradient
    # crossing the window edges) has another gradient, which the checks above would reject
    def f_free():
        outs = base_pass(net.forward, x, T, K, step_mode)[1]       # (T, B, K), states carried
        return np.stack([outs[t0:t1].mean(axis=0) for t0, t1 in windows(T, K)])
    assert np.allclose(f_free(), f(), rtol=1e-12)
    free = numerical_grad(f_free, conv0.params["weight"], dy, h=1e-5)
    assert rel_error(free, analytic["conv0.0.weight"]) > 1e-3


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_kept_bytes_scale_with_window_not_T(step_mode):
    """Exact counts: a window of K steps keeps what BPTT over K steps keeps, whatever T is."""
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    y = np.array([0, 1])

    def kept(name, T, **kw):
        m = make_method(name, build_model("small", 10, 0.25), T, step_mode, **kw)
        m.step(x, y)
        return m.kept_bytes

    bptt = {K: kept("bptt", K) for K in (1, 2, 3)}
    assert bptt[1] < bptt[2] < bptt[3]
    for K in (1, 2, 3):
        assert kept("tbptt", 6, window=K) == bptt[K], K
    assert kept("tbptt", 3, window=2) == kept("tbptt", 8, window=2) == bptt[2]  # last window shorter
    full = kept("bptt", 6)                                      # BPTT grows with T: affine
    assert kept("tbptt", 6, window=6) == full and full - bptt[3] == 3 * (bptt[2] - bptt[1])


def test_per_window_update_steps_after_every_window():
    T, K = 5, 2
    x, y, rng = _data(2, T, False)
    Gs = [rng.normal(size=(2, 5)) for _ in windows(T, K)]
    # per batch: the sum of the window gradients
    net = tiny_resnet(2, **NEURON)
    net.zero_grad()
    make_method("tbptt", net, T, "m", window=K).step(x, y, upstream_sequence(Gs))
    summed = _grads(net)
    # per window with a callback that only collects: the same gradients, one window at a time
    net = tiny_resnet(2, **NEURON)
    seen = []

    def collect():
        seen.append(_grads(net))
        net.zero_grad()
    net.zero_grad()
    m = make_method("tbptt", net, T, "m", window=K, update="per-window")
    m.step(x, y, upstream_sequence(Gs), after_window=collect)
    assert len(seen) == math.ceil(T / K) == 3
    for k in summed:
        assert rel_error(sum(s[k] for s in seen), summed[k]) < 1e-12, k
    # a callback that steps the weights: windows 2 and 3 see the updated weights
    net = tiny_resnet(2, **NEURON)
    stepped = []

    def sgd():
        stepped.append(_grads(net))
        for _, p, g, _ in net.parameters():
            p -= 0.5 * g
        net.zero_grad()
    net.zero_grad()
    make_method("tbptt", net, T, "m", window=K, update="per-window").step(
        x, y, upstream_sequence(Gs), after_window=sgd)
    w = "conv0.0.weight"
    assert rel_error(stepped[0][w], seen[0][w]) < 1e-12            # same start, same first window
    assert rel_error(stepped[1][w], seen[1][w]) > 1e-3             # later windows: new weights


def test_bad_arguments():
    net = tiny_resnet(0)
    x, y, _ = _data(0, 4, False)
    for kw in (dict(window=0), dict(window=5), dict(update="sometimes")):
        with pytest.raises(ValueError):
            make_method("tbptt", net, 4, **kw)
    with pytest.raises(ValueError, match="tbptt"):
        make_method("bptt", net, 4, window=2)
    with pytest.raises(ValueError, match="after_window"):
        make_method("tbptt", net, 4, window=2, update="per-window").step(x, y)
    with pytest.raises(ValueError, match="after_window"):
        make_method("tbptt", net, 4, window=2).step(x, y, after_window=lambda: None)
