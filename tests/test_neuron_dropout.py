"""NeuronDropout: one mask per sample for a whole sequence, under every training method."""
import numpy as np
import pytest

from minirate.layers.base import cache_nbytes
from minirate.layers.batchnorm import BatchNorm2d
from minirate.layers.container import Sequential
from minirate.layers.conv import Conv2d
from minirate.layers.dropout import NeuronDropout, neuron_dropout_forward
from minirate.layers.flatten import Flatten
from minirate.layers.lif import LIF
from minirate.layers.linear import Linear
from minirate.layers.pool import AdaptiveAvgPool2d, AvgPool2d
from minirate.methods import make_method
from minirate.models import Net
from tests.gradcheck import check_method_gradients, numerical_grad, rel_error
from tests.nets import random_upstream_loss

T, B = 3, 2


def test_one_mask_for_every_step_and_stacked_steps():
    rng = np.random.default_rng(0)
    layer = NeuronDropout(0.5, rng=3)
    layer.begin_sequence(B)
    x = rng.standard_normal((4 * B, 3, 5))                      # 4 steps stacked: (T*B, ...)
    y, cache = layer.forward(x)
    m = cache.mask
    assert m.shape == (B, 3, 5) and set(np.unique(m)) == {0.0, 1.0}
    assert np.array_equal(y.reshape(4, B, 3, 5), x.reshape(4, B, 3, 5) * m * 2.0)
    for t in range(4):                                          # step by step: the same mask
        y_t, cache_t = layer.forward(x[t * B:(t + 1) * B])
        assert cache_t.mask is m and np.array_equal(y_t, y[t * B:(t + 1) * B])
    # the caches of all steps share one (B, ...) mask: counted once
    caches = [layer.forward(x[t * B:(t + 1) * B])[1] for t in range(4)]
    assert cache_nbytes(*caches) == m.nbytes
    layer.begin_sequence(B)                                     # a new batch: a new mask
    assert not np.array_equal(layer.forward(x)[1].mask, m)


def test_rows_that_are_no_whole_number_of_steps_and_a_missing_sequence():
    layer = NeuronDropout(0.2, rng=0)
    with pytest.raises(ValueError, match="new_sequence"):
        layer.forward(np.ones((4, 3)))
    layer.begin_sequence(4)
    layer.forward(np.ones((8, 3)))
    with pytest.raises(ValueError, match="not a whole number of steps"):
        layer.forward(np.ones((6, 3)))
    with pytest.raises(ValueError, match="shape"):
        layer.forward(np.ones((4, 5)))


def test_kept_fraction_scale_and_identity_cases():
    x = np.ones((400, 250), dtype=np.float32)
    layer = NeuronDropout(0.3, rng=1)
    layer.begin_sequence(400)
    y, cache = layer.forward(x)
    assert y.dtype == cache.mask.dtype == np.float32
    assert abs(cache.mask.mean() - 0.7) < 0.01 and abs(y.mean() - 1.0) < 0.02
    layer.eval()                                                # eval: the identity
    y, cache = layer.forward(x)
    assert y is x and cache.mask is None and layer.backward(x, cache) is x
    layer = NeuronDropout(0.0)                                  # p = 0: identity, no sequence
    y, cache = layer.forward(x)
    assert y is x and cache.mask is None
    with pytest.raises(ValueError):
        NeuronDropout(1.5)


def test_gradient_float64_random_upstream():
    rng = np.random.default_rng(2)
    layer = NeuronDropout(0.4, rng=5)
    layer.begin_sequence(B)
    x = rng.standard_normal((T * B, 3, 4))
    y, cache = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy, cache)
    num = numerical_grad(lambda: neuron_dropout_forward(x, cache.mask, 0.4)[0], x, dy)
    assert rel_error(dx, num) < 1e-8
    assert rel_error(dy * np.concatenate([cache.mask] * T), num) > 1e-2   # the 1/(1-p) matters


def test_new_sequence_reaches_every_dropout_in_the_tree():
    inner = NeuronDropout(0.5, rng=0)
    net = Sequential(Sequential(inner), NeuronDropout(0.5, rng=1))
    net.new_sequence(7)
    assert inner.batch_size == 7 and net.children["1"].batch_size == 7


# -- whole networks ---------------------------------------------------------------------------
def small_net(seed=0, batchnorm=True, p=0.3, **neuron):
    """conv(-BN)-LIF-dropout, pool, conv-LIF-dropout, GAP, flatten, linear; float64. Block starts
    at the pool for local training."""
    rng = np.random.default_rng(seed)
    drops = iter(range(100))

    def unit(c_in, c):
        layers = [Conv2d(c_in, c, 3, 1, 1, bias=not batchnorm, rng=rng)]
        layers += [BatchNorm2d(c)] if batchnorm else []
        return layers + [LIF(**neuron), NeuronDropout(p, rng=seed * 100 + next(drops))]

    net = Net([("feature", Sequential(*unit(3, 6), AvgPool2d(2), *unit(6, 8))),
               ("gap", AdaptiveAvgPool2d(1)), ("flatten", Flatten()),
               ("classifier", Sequential(Linear(8, 5, rng=rng)))], ["feature.4"])
    net.to(np, np.float64)
    for _, m in net.named_modules():              # strong enough inputs that neurons fire
        if isinstance(m, Conv2d):
            m.params["weight"] *= 3
    return net


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0.5, 1.0, size=(B, 3, 6, 6)), np.array([1, 3]), rng.normal(size=(B, 5))


METHODS = [("bptt", {"step_mode": "m"}), ("bptt", {"step_mode": "s"}), ("tbptt", {"window": 2}),
           ("bptt", {"local_blocks": 2}), ("rate_m", {}), ("rate_s", {}), ("sltt", {}),
           ("ottt", {})]


@pytest.mark.parametrize("name,kw", METHODS, ids=[f"{n}-{kw}" for n, kw in METHODS])
def test_one_training_step_under_every_method(name, kw):
    net = small_net()
    x, y, G = _data()
    method = make_method(name, net, T, **kw)
    loss, logits = method.step(x, y, random_upstream_loss(G))
    assert logits.shape == (B, 5) and np.isfinite(loss)
    grads = {n: g for n, _, g, _ in net.parameters()}
    assert all(np.isfinite(g).all() for g in grads.values())
    assert np.abs(grads["feature.0.weight"]).max() > 0
    drops = [m for _, m in net.named_modules() if isinstance(m, NeuronDropout)]
    assert all(d.mask is not None and d.mask.shape[0] == B for d in drops)


def test_bptt_multi_and_single_step_see_the_same_masks():
    """Without batchnorm, step modes m and s compute the same function: equal outputs and
    gradients for the same dropout seeds mean the same mask at every step of both."""
    x, y, G = _data(1)
    out = {}
    for mode in ("m", "s"):
        net = small_net(seed=4, batchnorm=False)
        _, logits = make_method("bptt", net, T, mode).step(x, y, random_upstream_loss(G))
        out[mode] = logits, {n: g.copy() for n, _, g, _ in net.parameters()}
    assert np.allclose(out["m"][0], out["s"][0], rtol=1e-12, atol=1e-12)
    for n, g in out["m"][1].items():
        assert np.allclose(g, out["s"][1][n], rtol=1e-10, atol=1e-12), n


def test_ottt_masks_spikes_and_traces_alike():
    """At T = 1 OTTT (trace = spikes) equals BPTT with a detached reset, dropout included: the
    weight gradients after a dropout use the masked trace."""
    x, y, G = _data(2)
    grads = {}
    for name in ("bptt", "ottt"):
        net = small_net(seed=5, batchnorm=False, detach_reset=True)
        make_method(name, net, 1).step(x, y, random_upstream_loss(G))
        grads[name] = {n: g.copy() for n, _, g, _ in net.parameters()}
    for n, g in grads["bptt"].items():
        assert np.allclose(g, grads["ottt"][n], rtol=1e-10, atol=1e-12), n


class SameMasks:
    """A method whose every step draws the same dropout masks (generators reseeded): finite
    differences then perturb one fixed function."""

    def __init__(self, method, net):
        self.method, self.drops = method, [m for _, m in net.named_modules()
                                           if isinstance(m, NeuronDropout)]

    def step(self, *args):
        for i, d in enumerate(self.drops):
            d.seed(1000 + i)
        return self.method.step(*args)


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_bptt_gradient_through_time_with_dropout(step_mode):
    net = small_net(seed=6, batchnorm=True, surrogate="sigmoid", alpha=2.0, smooth=True,
                    detach_reset=False)
    x, y, G = _data(3)
    method = SameMasks(make_method("bptt", net, T, step_mode), net)
    analytic = check_method_gradients(net, method, x, y, random_upstream_loss(G), G)
    assert len(analytic) == 8
