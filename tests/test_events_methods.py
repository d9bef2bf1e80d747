"""Time-varying input (frames (T, B, C, H, W)) through the methods: BPTT against finite
differences through time, rate_m/rate_s at T = 1 equal to BPTT, the rate pass on the frame mean."""
import numpy as np
import pytest

from minirate.backend import to_numpy
from minirate.methods import make_method
from minirate.models import build_model
from tests.gradcheck import check_entries, numerical_grad, rel_error
from tests.nets import random_upstream_loss, tiny_resnet

T, B = 3, 2


def _frames(seed, T_=T):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.5, 1.0, size=(T_, B, 3, 4, 4))       # every frame different
    return x, np.array([1, 3]), rng.normal(size=(B, 5))


def _spy_first_conv(net):
    """Record the input and the dx of the network's first convolution (computed here: the
    methods themselves do not ask for the network input's gradient)."""
    conv0 = net.children["conv0"].children["0"]
    inputs, dxs = [], []
    fwd, bwd = conv0.forward, conv0.backward

    def forward(x):
        inputs.append(x.copy())
        return fwd(x)

    def backward(dy, cache, need_dx=True):
        dx = bwd(dy, cache)
        dxs.append(dx)
        return dx
    conv0.forward, conv0.backward = forward, backward
    return inputs, dxs


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_bptt_gradients_through_time_with_frames(step_mode, xp):
    """Every pixel of every frame, and (multi-step; single-step parameters are checked with a
    static input in test_bptt.py) every parameter, against central differences (on CuPy: at
    `check_entries`)."""
    net = tiny_resnet(0, xp=xp, surrogate="sigmoid", alpha=2.0, smooth=True, detach_reset=False)
    method = make_method("bptt", net, T, step_mode)
    x, y, G = (xp.asarray(a) for a in _frames(0))
    loss_fn = random_upstream_loss(G)
    _, dxs = _spy_first_conv(net)
    net.zero_grad()
    method.step(x, y, loss_fn)
    analytic = {name: g.copy() for name, _, g, _ in net.parameters()}
    if step_mode == "m":
        dx = dxs[0].reshape(x.shape)                # (T*B, C, H, W) -> (T, B, C, H, W)
    else:
        dx = xp.stack(dxs[::-1])                    # backward visits steps T-1, ..., 0

    def f():
        net.zero_grad()
        return method.step(x, y, loss_fn)[1]

    for name, p, _, _ in (net.parameters() if step_mode == "m" else []):
        entries = check_entries(p)
        num = numerical_grad(f, p, G, h=1e-5, entries=entries)
        assert float(abs(num).max()) > 0, f"{name}: zero gradient, the check would prove nothing"
        assert rel_error(analytic[name], num, entries) < 1e-6, name
    num = numerical_grad(f, x, G, h=1e-5)
    assert rel_error(dx, num) < 1e-6
    # the frames matter one by one: each frame's gradient differs from the others
    num = to_numpy(num)
    assert not np.allclose(num[0], num[1]) and not np.allclose(num[1], num[2])


@pytest.mark.parametrize("rate,step_mode", [("rate_m", "m"), ("rate_s", "s")])
def test_rate_at_T1_equals_bptt_on_frames(rate, step_mode, xp):
    x, y, G = (xp.asarray(a) for a in _frames(1, T_=1))
    grads, logits = {}, {}
    for name, mode in ((rate, step_mode), ("bptt", step_mode)):
        net = tiny_resnet(1, xp=xp)
        net.zero_grad()
        _, z = make_method(name, net, 1, mode).step(x, y, random_upstream_loss(G))
        logits[name] = to_numpy(z)
        grads[name] = {k: to_numpy(g) for k, _, g, _ in net.parameters()}
    assert np.allclose(logits[rate], logits["bptt"], rtol=1e-12, atol=1e-12)
    for k, g in grads["bptt"].items():
        assert np.abs(g).max() > 0
        assert rel_error(grads[rate][k], g) < 1e-10, k


@pytest.mark.parametrize("rate", ["rate_m", "rate_s"])
def test_rate_pass_input_is_the_frame_mean(rate):
    net = tiny_resnet(2)
    x, y, G = _frames(2)
    inputs, _ = _spy_first_conv(net)
    make_method(rate, net, T, rate[-1]).step(x, y, random_upstream_loss(G))
    spike_inputs, rate_input = inputs[:-1], inputs[-1]
    assert rate_input.shape == (B, 3, 4, 4)
    assert np.array_equal(rate_input, x.mean(axis=0))
    # the spike pass saw the frames themselves, step by step (no repetition of one frame)
    assert np.array_equal(np.concatenate(spike_inputs).reshape(x.shape), x)


def test_vggsnn_dvs_shapes_and_names():
    model = build_model("vggsnn_dvs", 10, in_channels=2)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes["feature.0.weight"] == (64, 2, 3, 3)
    assert shapes["classifier.0.weight"] == (10, 4608)              # 512 channels x 3 x 3
    small = build_model("vggsnn_dvs", 11, width=1 / 16, in_channels=2)
    x = np.random.default_rng(0).random((2, 1, 2, 48, 48)).astype(np.float32)  # (T, B, 2, H, W)
    _, logits = make_method("bptt", small, 2).step(x, np.array([3]))
    assert logits.shape == (1, 11)


@pytest.mark.parametrize("arch", ["small", "resnet18", "resnet19", "vgg11", "vggsnn_cifar"])
def test_every_architecture_takes_two_channel_frames(arch):
    model = build_model(arch, 10, width=1 / 16, in_channels=2)
    x = np.random.default_rng(0).random((2, 2, 2, 32, 32)).astype(np.float32)
    net_grads = make_method("rate_m", model, 2)
    loss, logits = net_grads.step(x, np.array([0, 1]))
    assert logits.shape == (2, 10) and np.isfinite(loss)
