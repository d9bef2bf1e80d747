"""SLTT: per-step spatial backward, exact against per-step BPTT where the temporal path vanishes."""
import numpy as np
import pytest

from minirate.backend import get_array_module, to_device, to_numpy
from minirate.losses import ce_mse
from minirate.methods import make_method
from minirate.models import build_model
from tests.nets import random_upstream_loss, tiny_resnet


def _batch(seed=0, frames=0):
    rng = np.random.default_rng(20 + seed)
    shape = (4, 3, 6, 6) if not frames else (frames, 4, 3, 6, 6)
    return rng.normal(0.5, 1.0, size=shape), rng.integers(0, 5, size=4)


def _grads(name, T, loss_fn, x, y, neuron=None, xp=np, **kw):
    """Gradients and logits as NumPy arrays, computed on array module xp."""
    net = tiny_resnet(0, xp=xp, **(neuron or {}))
    net.zero_grad()
    loss, logits = make_method(name, net, T, **kw).step(xp.asarray(x), xp.asarray(y), loss_fn)
    return {n: to_numpy(g) for n, _, g, _ in net.parameters()}, loss, to_numpy(logits)


def _assert_same(a, b):
    assert all(np.abs(g).max() > 0 for g in b.values())
    for k in a:
        assert np.allclose(a[k], b[k], rtol=1e-12, atol=1e-15), k


def per_step_random_loss(Gs):
    """Σ out_t · G_t at the t-th call (cycling over steps): a random upstream gradient per step."""
    calls = []

    def loss_fn(z, y):
        G = to_device(Gs[len(calls) % len(Gs)], get_array_module(z))
        calls.append(1)
        return float((z * G).sum()), G.copy()
    return loss_fn


@pytest.mark.parametrize("name", ["sltt", "ottt"])
@pytest.mark.parametrize("loss", ["ce_mse", "random"])
def test_T1_equals_per_step_bptt(name, loss, xp):
    x, y = _batch()
    loss_fn = ce_mse(0.05) if loss == "ce_mse" else random_upstream_loss(
        np.random.default_rng(5).normal(size=(4, 5)))
    g, l, z = _grads(name, 1, loss_fn, x, y, xp=xp)
    g_b, l_b, z_b = _grads("bptt", 1, loss_fn, x, y, xp=xp, step_mode="s", per_step_loss=True)
    _assert_same(g, g_b)
    assert l == l_b and np.array_equal(z, z_b)


@pytest.mark.parametrize("frames", [0, 3])
def test_no_leak_equals_per_step_bptt(frames, xp):
    """λ = 0: u_t = I_t, BPTT has no temporal path either; SLTT equals it at any T."""
    T = 3
    x, y = _batch(1, frames)
    Gs = np.random.default_rng(6).normal(size=(T, 4, 5))
    neuron = dict(decay=0.0)
    g, l, _ = _grads("sltt", T, per_step_random_loss(Gs), x, y, neuron, xp)
    g_b, l_b, _ = _grads("bptt", T, per_step_random_loss(Gs), x, y, neuron, xp, step_mode="s",
                         per_step_loss=True)
    _assert_same(g, g_b)
    assert np.isclose(l, l_b, rtol=1e-12)
    g_leak, *_ = _grads("sltt", T, per_step_random_loss(Gs), x, y, xp=xp)   # λ = 0.2 differs
    assert max(np.abs(g_leak[k] - g_b[k]).max() for k in g_b) > 1e-6


def test_sltt_k_backpropagates_only_the_drawn_steps():
    """SLTT-K equals full SLTT whose loss gradient is zeroed at the steps not drawn: the
    forward-only steps still advance the state, and the loss is still divided by T."""
    T, K = 4, 2
    x, y = _batch(2)
    Gs = np.random.default_rng(7).normal(size=(T, 4, 5))
    net = tiny_resnet(0)
    method = make_method("sltt", net, T, sltt_k=K, seed=3)
    net.zero_grad()
    loss_k, _ = method.step(x, y, per_step_random_loss(Gs))
    drawn = method.backward_steps
    assert len(drawn) == K and len(set(drawn)) == K and all(0 <= t < T for t in drawn)
    g_k = {n: g.copy() for n, _, g, _ in net.parameters()}
    masked = np.array([G if t in drawn else 0 * G for t, G in enumerate(Gs)])
    g_full, _, _ = _grads("sltt", T, per_step_random_loss(masked), x, y)
    _assert_same(g_k, g_full)
    _, loss_all, _ = _grads("sltt", T, per_step_random_loss(Gs), x, y)
    assert np.isclose(loss_k, loss_all, rtol=1e-12)
    draws = set()
    for _ in range(20):                         # a fresh draw for every batch
        method.step(x, y)
        draws.add(tuple(method.backward_steps))
    assert len(draws) > 1


def test_k_out_of_range():
    with pytest.raises(ValueError):
        make_method("sltt", tiny_resnet(0), 3, sltt_k=4)
    with pytest.raises(ValueError):
        make_method("sltt", tiny_resnet(0), 3, sltt_k=0)


@pytest.mark.parametrize("name,kw", [("sltt", {}), ("sltt", {"sltt_k": 1}), ("ottt", {}),
                                     ("ottt", {"ottt_update": "per-step"})])
def test_kept_bytes_do_not_grow_with_T(name, kw):
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    y = np.array([0, 1])
    kept = []
    for T in (1, 2, 5):
        model = build_model("small", 10, 0.25)
        method = make_method(name, model, T, **kw)
        method.step(x, y, after_step=model.zero_grad)
        kept.append(method.kept_bytes)
    bptt = make_method("bptt", build_model("small", 10, 0.25), 2, "s", per_step_loss=True)
    bptt.step(x, y)
    assert kept[0] > 0 and kept == [kept[0]] * 3
    assert kept[0] < bptt.kept_bytes


def test_sltt_k_draws_resume_where_they_left_off():
    """The draw of batch n depends on (seed, n) and the method's state_dict carries n, so a
    method restored from a checkpoint draws what the uninterrupted one draws."""
    x, y = _batch(3)

    def draws(method, n):
        out = []
        for _ in range(n):
            method.step(x, y)
            out.append(tuple(method.backward_steps))
        return out
    straight = draws(make_method("sltt", tiny_resnet(0), 4, sltt_k=2, seed=5), 6)
    first = make_method("sltt", tiny_resnet(0), 4, sltt_k=2, seed=5)
    resumed = make_method("sltt", tiny_resnet(0), 4, sltt_k=2, seed=5)
    head = draws(first, 3)
    resumed.load_state_dict(first.state_dict())
    assert head + draws(resumed, 3) == straight and len(set(straight)) > 1
