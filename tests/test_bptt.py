"""BPTT through a whole small spiking ResNet, checked against finite differences over time."""
import numpy as np
import pytest

from minirate.layers.base import cache_nbytes
from minirate.losses import cross_entropy
from minirate.methods import make_method
from tests.gradcheck import check_entries, check_method_gradients, numerical_grad, rel_error
from tests.nets import random_upstream_loss, tiny_resnet

T = 3


def _setup(step_mode, seed=0, xp=np):
    rng = np.random.default_rng(seed)
    # smooth spikes: finite differences then see exactly what backward differentiates;
    # reset not detached, so the reset path through the surrogate is checked too
    net = tiny_resnet(seed, xp=xp, surrogate="sigmoid", alpha=2.0, smooth=True, detach_reset=False)
    method = make_method("bptt", net, T, step_mode)
    x = xp.asarray(rng.normal(0.5, 1.0, size=(2, 3, 6, 6)))
    y = xp.asarray([1, 3])
    G = xp.asarray(rng.normal(size=(2, 5)))
    return net, method, x, y, G


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_whole_network_gradients(step_mode, xp):
    net, method, x, y, G = _setup(step_mode, xp=xp)
    analytic = check_method_gradients(net, method, x, y, random_upstream_loss(G), G)
    assert len(analytic) == 22


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_input_gradient(step_mode, xp):
    """dL/dx through the whole network: read off the first conv's backward, made to compute
    the input gradient that the method itself does not ask for (need_dx=False)."""
    net, method, x, y, G = _setup(step_mode, seed=1, xp=xp)
    conv0 = net.children["conv0"].children["0"]
    captured = []
    original = conv0.backward

    def spy(dy, cache, need_dx=True):
        assert not need_dx
        dx = original(dy, cache)
        captured.append(dx)
        return dx
    conv0.backward = spy
    method.step(x, y, random_upstream_loss(G))
    conv0.backward = original
    B = x.shape[0]
    dx = sum(captured)
    dx = dx.reshape(-1, B, *x.shape[1:]).sum(axis=0)   # (T*B, ...) -> (T, B, ...) summed over steps

    def f():
        return method.step(x, y, random_upstream_loss(G))[1]
    entries = check_entries(x)
    num = numerical_grad(f, x, G, h=1e-5, entries=entries)
    assert rel_error(dx, num, entries) < 1e-6


def test_cross_entropy_gradient():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 6))
    y = np.array([0, 5, 2, 2])
    loss, dz = cross_entropy(z, y)
    ref = -np.mean([z[b, y[b]] - np.log(np.exp(z[b]).sum()) for b in range(4)])
    assert np.isclose(loss, ref)
    G = rng.normal()      # the loss is a scalar: a random upstream gradient scales it

    def f():
        return np.array(cross_entropy(z, y)[0])
    assert rel_error(G * dz, numerical_grad(f, z, np.array(G))) < 1e-8


def test_kept_bytes_grow_linearly_with_T():
    from minirate.models import build_model
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    y = np.array([0, 1])
    kept = {}
    for T_ in (1, 2, 4):
        net = build_model("small", 10, 0.5)
        m = make_method("bptt", net, T_)
        m.step(x, y)
        kept[T_] = m.kept_bytes
    per_step = kept[2] - kept[1]
    assert kept[4] - kept[2] == 2 * per_step                 # affine in T ...
    assert kept[1] - per_step < 0.01 * kept[1]               # ... and almost all of it per step
    assert cache_nbytes() == 0


@pytest.mark.parametrize("name,kw", [("bptt", {}), ("bptt", dict(step_mode="s")),
                                     ("tbptt", dict(window=2)), ("tbptt", dict(window=2, step_mode="s")),
                                     ("rate_m", {}), ("rate_s", {}), ("sltt", {}), ("ottt", {}),
                                     ("tbptt", dict(window=2, step_mode="s", split_at=["layer1"])),
                                     ("rate_s", dict(split_at=["layer1"]))])
@pytest.mark.parametrize("frames", [T - 1, T + 1])
def test_every_method_refuses_frames_that_are_not_T(name, kw, frames):
    """Frames (F, B, ...) with F != T: the same clear error in every method and step mode,
    never a frame silently left out or an IndexError."""
    x = np.random.default_rng(0).normal(size=(frames, 2, 3, 6, 6))
    method = make_method(name, tiny_resnet(0), T, **kw)
    with pytest.raises(ValueError, match=f"input has {frames} frames, the method runs T={T}"):
        method.step(x, np.array([0, 1]))
