"""No unused work in a training step: input gradients nobody reads are not computed.

The network input is data and a local block's input a constant, so the layers that read them
are told need_dx=False: they return None and skip the dx GEMM (and col2im), while every
parameter gradient stays bitwise what it was when dx was computed and thrown away.
"""
import numpy as np
import pytest

from minirate.layers import conv as conv_module
from minirate.layers.batchnorm import BatchNorm1d, BatchNorm2d
from minirate.layers.container import Sequential
from minirate.layers.conv import Conv2d, conv2d_backward, conv2d_forward
from minirate.layers.lif import LIF
from minirate.layers.linear import Linear
from minirate.layers.residual import PreActBlock, SEWBlock
from minirate.methods import make_method
from minirate.models import Net, build_model

T, B = 3, 4


@pytest.mark.parametrize("stride,padding,bias", [(1, 1, False), (1, 0, True), (2, 1, True),
                                                 (2, 0, False)])
@pytest.mark.parametrize("out_channels", [4, 3, 2])   # more, as many, fewer than the input's 3
def test_conv_backward_without_dx_skips_it_and_keeps_dW(stride, padding, bias, out_channels,
                                                         monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3, 9, 9)).astype(np.float32)
    k = 3 if padding else 1
    W = rng.normal(size=(out_channels, 3, k, k)).astype(np.float32)
    b = rng.normal(size=out_channels).astype(np.float32) if bias else None
    y, cache = conv2d_forward(x, W, b, stride, padding)
    dy = rng.normal(size=y.shape).astype(np.float32)
    dx, dW, db = conv2d_backward(dy, cache)

    calls = {"col2im": 0, "from_rows": 0}             # the dx paths: col2im, or Wf2 @ D -> rows

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped
    for name in calls:
        monkeypatch.setattr(conv_module, name, counting(name, getattr(conv_module, name)))
    none, dW2, db2 = conv2d_backward(dy, cache, need_dx=False)
    assert none is None and calls == {"col2im": 0, "from_rows": 0}
    assert np.array_equal(dW, dW2)
    assert (db is None and db2 is None) or np.array_equal(db, db2)
    conv2d_backward(dy, cache)                        # the counters do see the dx paths
    assert calls["col2im"] + calls["from_rows"] > 0


def test_batchnorm_and_linear_without_dx():
    rng = np.random.default_rng(1)
    for layer, shape in ((BatchNorm2d(3), (4, 3, 5, 5)), (BatchNorm1d(3), (6, 3)),
                         (Linear(3, 2, rng=rng), (6, 3))):
        x = rng.normal(size=shape).astype(np.float32)
        y, cache = layer.forward(x)
        dy = rng.normal(size=y.shape).astype(np.float32)
        layer.backward(dy, cache)
        full = [g.copy() for g in layer.grads.values()]
        layer.zero_grad()
        assert layer.backward(dy, cache, need_dx=False) is None
        assert all(np.array_equal(a, g) for a, g in zip(full, layer.grads.values()))


def _record_convs(monkeypatch):
    """[(layer, need_dx, dx is None)] for every Conv2d backward call."""
    seen, original = [], Conv2d.backward

    def backward(self, dy, cache, need_dx=True):
        dx = original(self, dy, cache, need_dx)
        seen.append((self, need_dx, dx is None))
        return dx
    monkeypatch.setattr(Conv2d, "backward", backward)
    return seen


def _force_full_backward(model):
    """The behaviour before need_dx: model.backward computes every input gradient."""
    full = model.backward
    model.backward = lambda dy, back, need_dx=True: full(dy, back)


def _grads(model):
    return {name: g.copy() for name, _, g, _ in model.parameters()}


CASES = [("bptt", dict(step_mode="m")), ("bptt", dict(step_mode="s")),
         ("tbptt", dict(step_mode="m", window=2)), ("tbptt", dict(step_mode="s", window=2)),
         ("rate_m", {}), ("rate_s", {}), ("sltt", {}), ("ottt", {}),
         ("bptt", dict(local_blocks=3)), ("rate_m", dict(local_blocks=2)),
         ("tbptt", dict(window=2, local_blocks=2)), ("rate_s", dict(split_at=["layer1.0"]))]


@pytest.mark.parametrize("name,kwargs", CASES,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}"
                              for n, kw in CASES])
def test_method_gradients_unchanged_and_first_convs_skip_dx(name, kwargs, monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(B, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, B)

    def run(full):
        model = build_model("small", 10, 0.5, seed=0)
        method = make_method(name, model, T, **kwargs)
        targets = [m.model for m in method.methods] if hasattr(method, "methods") else [model]
        if full:
            for target in targets:
                _force_full_backward(target)
        model.zero_grad()
        method.step(x, y)
        method.step(x, y)                             # second step: updated BN statistics
        return model, method, _grads(model)

    _, _, reference = run(full=True)
    seen = _record_convs(monkeypatch)
    model, method, grads = run(full=False)
    assert reference.keys() == grads.keys()
    for key in reference:
        assert np.array_equal(reference[key], grads[key]), key

    # the layers that read an input nobody differentiates: the stem conv, and at a block start
    # (a BasicBlock) its conv1 and the shortcut conv
    starts = [m.model.body[0] for m in method.methods[1:]] if hasattr(method, "methods") else []
    readers = {model.children["conv0"].children["0"]}
    for block in starts:
        readers |= {block.conv1} | {m for m in block.shortcut.children.values()
                                    if isinstance(m, Conv2d)}
    skipped = {layer for layer, need_dx, _ in seen if not need_dx}
    assert skipped == readers
    assert all(is_none == (not need_dx) for _, need_dx, is_none in seen)
    assert all(need_dx for layer, need_dx, _ in seen if layer not in readers)


def test_linear_first_layer(monkeypatch):
    """A network that starts with a Linear layer: its input gradient is not computed."""
    rng = np.random.default_rng(3)
    seen, original = [], Linear.backward

    def backward(self, dy, cache, need_dx=True):
        dx = original(self, dy, cache, need_dx)
        seen.append((self, need_dx, dx))
        return dx
    monkeypatch.setattr(Linear, "backward", backward)
    net = Net([("classifier", Sequential(Linear(6, 8, rng=rng), LIF(), Linear(8, 3, rng=rng)))])
    first = net.children["classifier"].children["0"]
    make_method("bptt", net, T).step(rng.normal(size=(B, 6)).astype(np.float32), np.arange(B) % 3)
    assert [(layer is first, need_dx, dx is None) for layer, need_dx, dx in seen] == \
        [(False, True, False), (True, False, True)]


@pytest.mark.parametrize("block_type", [PreActBlock, SEWBlock])
@pytest.mark.parametrize("stride", [1, 2])
def test_residual_blocks_without_dx(block_type, stride):
    """need_dx=False on the ImageNet blocks: the same parameter gradients, None returned, and
    for the pre-activation block no backward of its first neuron (it has no parameters and
    only x's gradient would read it), hence no dx for the convs that read its spikes."""
    rng = np.random.default_rng(4)
    x = rng.normal(0.5, 1.0, size=(B, 4, 6, 6)).astype(np.float32)

    def run(need_dx):
        block = block_type(4, 4 if stride == 1 else 6, stride, LIF, np.random.default_rng(5))
        caches, calls = {}, []

        def forward(layer, h):                        # one step (T = 1)
            out, caches[layer] = layer.forward(h, 1) if isinstance(layer, LIF) else layer.forward(h)
            return out

        def back(layer, dh, layer_need_dx=True):
            calls.append((layer, layer_need_dx))
            if layer_need_dx:
                return layer.backward(dh, caches.pop(layer))
            return layer.backward(dh, caches.pop(layer), need_dx=False)

        out = block.forward(x, forward)
        dx = block.backward(np.ones_like(out), back, need_dx)
        names = {id(m): n for n, m in block.named_modules()}
        return dx, _grads(block), [(names[id(m)], d) for m, d in calls]

    dx, full, calls_full = run(True)
    none, grads, calls = run(False)
    assert dx is not None and none is None
    assert all(np.array_equal(full[k], grads[k]) for k in full)
    assert [n for n, _ in calls] == [n for n, _ in calls_full if
                                     not (block_type is PreActBlock and n == "sn1")]
    no_dx = {n for n, d in calls if not d}
    downsample = {"downsample.0"} if stride == 2 else set()
    assert no_dx == {"conv1"} | downsample
