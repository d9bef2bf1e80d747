"""The per-step loss L = (1/T) Σ_t ((1 − λ_L) CE(out_t) + λ_L MSE(out_t, onehot)) in every method."""
import numpy as np
import pytest

from minirate.backend import to_numpy
from minirate.layers.lif import LIF
from minirate.layers.linear import Linear
from minirate.layers.pool import AdaptiveAvgPool2d, AvgPool2d
from minirate.layers.flatten import Flatten
from minirate.layers.scale import Scale
from minirate.layers.scaled_ws import ScaledWSConv2d
from minirate.layers.container import Sequential
from minirate.losses import ce_mse, cross_entropy
from minirate.methods import make_method
from minirate.models import Net
from tests.gradcheck import check_method_gradients, numerical_grad, rel_error
from tests.nets import random_upstream_loss, tiny_resnet


def tiny_ws_net(seed=0, xp=np, **neuron):
    """OTTT's kind of network in miniature: sWS conv - LIF - x2.74, pooling, linear readout;
    float64 on array module xp."""
    rng = np.random.default_rng(seed)
    net = Net([("feature", Sequential(ScaledWSConv2d(2, 3, 3, 1, 1, rng=rng), LIF(**neuron),
                                      Scale(2.74), AvgPool2d(2),
                                      ScaledWSConv2d(3, 4, 3, 1, 1, rng=rng), LIF(**neuron),
                                      Scale(2.74), AdaptiveAvgPool2d(1))),
               ("flatten", Flatten()), ("classifier", Sequential(Linear(4, 3, rng=rng)))])
    net.to(np, np.float64)
    for _, m in net.named_modules():
        if "gain" in m.params:
            m.params["gain"][...] = rng.uniform(0.8, 1.6, m.params["gain"].shape)
    return net.to(xp)


def test_ce_mse_against_loops_and_finite_differences():
    rng = np.random.default_rng(0)
    z, y, lam = rng.normal(size=(3, 4)), np.array([2, 0, 3]), 0.3
    loss, dz = ce_mse(lam)(z, y)
    ce = -np.mean([z[b, y[b]] - np.log(np.exp(z[b]).sum()) for b in range(3)])
    mse = np.mean([(z[b, k] - (k == y[b])) ** 2 for b in range(3) for k in range(4)])
    assert np.isclose(loss, (1 - lam) * ce + lam * mse, rtol=1e-12)
    G = rng.normal()
    assert rel_error(G * dz, numerical_grad(lambda: np.array(ce_mse(lam)(z, y)[0]), z,
                                            np.array(G))) < 1e-8
    assert ce_mse(0.0)(z, y)[0] == cross_entropy(z, y)[0]
    with pytest.raises(ValueError):
        ce_mse(1.5)


def test_ce_mse_with_a_constant_target():
    """SLTT's CIFAR loss: every logit pulled towards the same constant c (loss_means), the MSE a
    mean over all B·K entries as torch's MSELoss; against loops and finite differences."""
    rng = np.random.default_rng(1)
    z, y, lam, c = rng.normal(size=(3, 5)), np.array([4, 1, 0]), 0.05, 1.0
    loss, dz = ce_mse(lam, c)(z, y)
    ce = -np.mean([z[b, y[b]] - np.log(np.exp(z[b]).sum()) for b in range(3)])
    mse = np.mean([(z[b, k] - c) ** 2 for b in range(3) for k in range(5)])
    assert np.isclose(loss, (1 - lam) * ce + lam * mse, rtol=1e-12)
    G = rng.normal()
    assert rel_error(G * dz, numerical_grad(lambda: np.array(ce_mse(lam, c)(z, y)[0]), z,
                                            np.array(G))) < 1e-8
    # the label does not enter the MSE term: only the CE part moves with it
    other = ce_mse(1.0, c)
    assert other(z, y)[0] == other(z, (y + 1) % 5)[0]
    assert ce_mse(lam, 0.0)(z, y)[0] != ce_mse(lam, "onehot")(z, y)[0]


def _whole_net_check(net, method, x, y, loss_fn):
    xp = net.xp
    check_method_gradients(net, method, xp.asarray(x), xp.asarray(y), loss_fn, np.array(1.0),
                           value=0)


def test_bptt_m_per_step_loss_whole_network(xp):
    """Multi-step BPTT with the per-step CE + MSE loss through a small ResNet over T = 3 steps
    (smooth test spike, reset not detached) against finite differences of the loss."""
    rng = np.random.default_rng(3)
    net = tiny_resnet(3, xp=xp, surrogate="sigmoid", alpha=2.0, smooth=True, detach_reset=False)
    x, y = rng.normal(0.5, 1.0, size=(2, 3, 6, 6)), np.array([1, 4])
    _whole_net_check(net, make_method("bptt", net, 3, "m", per_step_loss=True), x, y, ce_mse(0.4))


def test_bptt_s_per_step_loss_whole_ws_network_on_frames(xp):
    """Single-step BPTT, per-step loss, sWS network, a different input frame at each step."""
    rng = np.random.default_rng(4)
    net = tiny_ws_net(4, xp, decay=0.5, surrogate="sigmoid", alpha=2.0, smooth=True,
                      detach_reset=False)
    x, y = rng.normal(0.5, 1.0, size=(3, 2, 2, 4, 4)), np.array([2, 0])
    _whole_net_check(net, make_method("bptt", net, 3, "s", per_step_loss=True), x, y, ce_mse(0.4))


def _grads(name, T, loss_fn, seed=0, xp=np, **kw):
    """Gradients as NumPy arrays, computed on array module xp."""
    net = tiny_resnet(seed, xp=xp)
    rng = np.random.default_rng(10 + seed)
    x, y = rng.normal(0.5, 1.0, size=(4, 3, 6, 6)), rng.integers(0, 5, size=4)
    net.zero_grad()
    loss, logits = make_method(name, net, T, **kw).step(xp.asarray(x), xp.asarray(y), loss_fn)
    return {n: to_numpy(g) for n, _, g, _ in net.parameters()}, loss, logits, (net, x, y)


def _max_rel(a, b):
    return max(np.max(np.abs(a[k] - b[k])) / max(np.max(np.abs(b[k])), 1e-300) for k in a)


@pytest.mark.parametrize("rate,mode", [("rate_m", "m"), ("rate_s", "s")])
def test_rate_per_step_loss_at_T1_equals_bptt(rate, mode, xp):
    g_r, l_r, _, _ = _grads(rate, 1, ce_mse(0.05), xp=xp, per_step_loss=True,
                            scale_grad_by_T=False)
    g_b, l_b, _, _ = _grads("bptt", 1, ce_mse(0.05), xp=xp, step_mode=mode, per_step_loss=True)
    assert np.isclose(l_r, l_b, rtol=1e-12)
    assert _max_rel(g_r, g_b) < 1e-10


@pytest.mark.parametrize("rate,mode", [("rate_m", "m"), ("rate_s", "s")])
def test_rate_per_step_loss_definition(rate, mode):
    """T = 3: the loss value is BPTT's per-step loss, and the rate pass is backpropagated from
    Σ_t dL/dout_t, the per-step gradients of BPTT's (identical) forward outputs."""
    T, lam = 3, 0.2
    g_r, l_r, _, (net, x, y) = _grads(rate, T, ce_mse(lam), per_step_loss=True)
    _, l_b, _, _ = _grads("bptt", T, ce_mse(lam), step_mode=mode, per_step_loss=True)
    assert np.isclose(l_r, l_b, rtol=1e-12)
    outs = []                                   # BPTT's per-step outputs, from a fresh net

    def keep_out(z, y_):
        outs.append(z.copy())
        return 0.0, np.zeros_like(z)
    make_method("bptt", tiny_resnet(0), T, mode, per_step_loss=True).step(x, y, keep_out)
    G = sum(ce_mse(lam)(z, y)[1] for z in outs) / T           # Σ_t (∂ℓ/∂out_t) / T
    g_ref, *_ = _grads(rate, T, random_upstream_loss(G))      # mean-output loss, gradient G
    assert _max_rel(g_r, g_ref) < 1e-10
    assert len(outs) == T and np.abs(G).max() > 0
