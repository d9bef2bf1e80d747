"""Rate-based backpropagation against BPTT: exact at T = 1, aligned at T = 4, flat memory in T."""
import numpy as np
import pytest

from minirate.backend import to_numpy
from minirate.losses import cross_entropy
from minirate.methods import make_method
from minirate.models import build_model
from minirate.study import LIMIT, gradient_alignment, weight_depths
from minirate.data.augment import normalize
from minirate.data.cifar import load_cifar
from tests.nets import random_upstream_loss, tiny_resnet


def _grads(method_name, T, step_mode="m", seed=0, loss="ce", xp=np, **neuron):
    """Gradients and logits as NumPy arrays, computed on array module xp."""
    net = tiny_resnet(seed, xp=xp, **neuron)
    rng = np.random.default_rng(100 + seed)
    x = xp.asarray(rng.normal(0.5, 1.0, size=(4, 3, 6, 6)))
    y = xp.asarray(rng.integers(0, 5, size=4))
    loss_fn = cross_entropy if loss == "ce" else random_upstream_loss(rng.normal(size=(4, 5)))
    method = make_method(method_name, net, T, step_mode)
    net.zero_grad()
    value, logits = method.step(x, y, loss_fn)
    return {name: to_numpy(g) for name, _, g, _ in net.parameters()}, value, to_numpy(logits), net


def _max_rel(a, b):
    return max(np.max(np.abs(a[k] - b[k])) / max(np.max(np.abs(b[k])), 1e-300) for k in a)


@pytest.mark.parametrize("rate,step_mode", [("rate_m", "m"), ("rate_s", "s")])
@pytest.mark.parametrize("loss", ["ce", "random"])
def test_T1_equals_bptt(rate, step_mode, loss, xp):
    g_rate, l_rate, z_rate, _ = _grads(rate, 1, loss=loss, xp=xp)
    g_bptt, l_bptt, z_bptt, _ = _grads("bptt", 1, step_mode, loss=loss, xp=xp)
    assert np.allclose(z_rate, z_bptt, rtol=1e-12, atol=1e-12)
    assert np.isclose(l_rate, l_bptt, rtol=1e-12)
    assert all(np.abs(g).max() > 0 for g in g_bptt.values())
    assert _max_rel(g_rate, g_bptt) <= 1e-10


@pytest.mark.parametrize("reset,detach", [("soft", True), ("hard", False)])
def test_T1_equals_bptt_other_resets(reset, detach):
    g_rate, *_ = _grads("rate_m", 1, reset=reset, detach_reset=detach, surrogate="atan")
    g_bptt, *_ = _grads("bptt", 1, reset=reset, detach_reset=detach, surrogate="atan")
    assert _max_rel(g_rate, g_bptt) <= 1e-10


def test_rate_loss_value_equals_time_averaged_output(xp):
    """The rate pass output equals the spike pass output averaged over T (linear readout)."""
    _, l_rate, z_rate, _ = _grads("rate_m", 4, xp=xp)
    _, l_bptt, z_bptt, _ = _grads("bptt", 4, xp=xp)
    assert np.allclose(z_rate, z_bptt, rtol=1e-10, atol=1e-12)
    assert np.isclose(l_rate, l_bptt)


def test_rate_s_loss_value_equals_single_step_bptt(xp):
    _, l_rate, z_rate, _ = _grads("rate_s", 4, xp=xp)
    _, l_bptt, z_bptt, _ = _grads("bptt", 4, "s", xp=xp)
    assert np.allclose(z_rate, z_bptt, rtol=1e-10, atol=1e-12)


def test_T4_gradients_align_with_bptt():
    """Small residual net on real CIFAR-10 images, T = 4: rate_M's gradient points where BPTT's
    does, per tensor as closely as averaging over time allows.

    A per-tensor cosine of 0.98 is out of reach for some tensors even with exact upstream
    gradients: `time_average_limit` (BPTT's own backward, each layer input averaged over time)
    gives 0.93-0.96 for some batchnorm scales of this net. Measured (seeds
    0, 1): overall > 0.99; conv/linear weights 0.97-1.0; every tensor within 0.05 of its limit.
    """
    x_all, y_all, *_ = load_cifar("cifar10-sample", None)
    x = normalize(x_all[:16]).astype(np.float64)
    y = y_all[:16]
    for seed in (0, 1):
        model = build_model("small", 10, 0.5, seed=seed).to(np, np.float64)
        rows = gradient_alignment(model, x, y, [4], ["rate_m", LIMIT])
        cos = {m: {r["param"]: r["cosine"] for r in rows if r["method"] == m}
               for m in ("rate_m", LIMIT)}
        overall = cos["rate_m"].pop("(all)")
        cos[LIMIT].pop("(all)")
        assert overall >= 0.98, overall
        weights = {k: c for k, c in cos["rate_m"].items() if k in weight_depths(model)}
        assert len(weights) == 8 and min(weights.values()) >= 0.95, weights
        for k, c in cos["rate_m"].items():
            assert c >= cos[LIMIT][k] - 0.06, (k, c, cos[LIMIT][k])
        assert min(cos["rate_m"].values()) < 1 - 1e-6    # T = 4 is not T = 1: not trivially exact
        assert min(cos[LIMIT].values()) < 0.98             # the limit itself, as the docstring says


def test_running_stats_come_from_the_spike_pass(xp):
    """rate_M updates BN running statistics exactly as multi-step BPTT's forward does."""
    *_, net_rate = _grads("rate_m", 3, xp=xp)
    *_, net_bptt = _grads("bptt", 3, xp=xp)
    sr, sb = net_rate.state_dict(), net_bptt.state_dict()
    for k in sr:
        if "running" in k or "num_batches" in k:
            assert np.allclose(sr[k], sb[k], rtol=1e-12), k
    *_, net_s = _grads("rate_s", 3, xp=xp)
    *_, net_bs = _grads("bptt", 3, "s", xp=xp)
    for k, v in net_s.state_dict().items():
        if "running" in k or "num_batches" in k:
            assert np.allclose(v, net_bs.state_dict()[k], rtol=1e-12), k


def test_loss_gradient_scaling_by_T_is_an_option():
    net_a, net_b = tiny_resnet(0), tiny_resnet(0)
    x = np.random.default_rng(0).normal(size=(4, 3, 6, 6))
    y = np.arange(4)
    make_method("rate_m", net_a, 4, scale_grad_by_T=True).step(x, y)
    make_method("rate_m", net_b, 4, scale_grad_by_T=False).step(x, y)
    for (_, _, ga, _), (_, _, gb, _) in zip(net_a.parameters(), net_b.parameters()):
        assert np.allclose(ga * 4, gb)


@pytest.mark.parametrize("name", ["rate_m", "rate_s"])
def test_kept_bytes_flat_in_T(name, xp):
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.normal(size=(2, 3, 32, 32)).astype(np.float32))
    y = xp.asarray([0, 1])
    kept = {}
    for T in (1, 2, 4, 8):
        m = make_method(name, build_model("small", 10, 0.5).to(xp), T)
        m.step(x, y)
        kept[T] = m.kept_bytes
    assert kept[1] > 0 and len(set(kept.values())) == 1, kept
