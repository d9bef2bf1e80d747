"""The architectures of the SLTT and OTTT recipes: preact_resnet18, vgg11_bn, nf_resnet34.

Their state-dict keys and shapes are checked against tables written from the authors' torch
modules; their gradients through time against central differences (float64, smooth test spike,
random upstream gradient); and each trains one step under every method.
"""
import numpy as np
import pytest

from minirate.layers.dropout import NeuronDropout
from minirate.layers.nf_block import NFBlock, nf_betas
from minirate.methods import make_method, predict
from minirate.models import ARCHS, DROPOUT_ARCHS, build_model
from tests.gradcheck import numerical_grad, rel_error
from tests.nets import random_upstream_loss

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
SIZE = {"preact_resnet18": (3, 32), "vgg11_bn": (2, 48), "nf_resnet34": (3, 32)}


def _bn(name, c):
    return [(f"{name}.{k}", () if k == "num_batches_tracked" else (c,)) for k in BN]


def preact_resnet18_table(K=10):
    """SLTT models/spiking_resnet.py: PreActResNet(PreActBlock, [2, 2, 2, 2])."""
    keys, c_in = [("conv1.weight", (64, 3, 3, 3))], 64
    for i, c in enumerate((64, 128, 256, 512)):
        for j in range(2):
            b = f"layer{i + 1}.{j}"
            keys += _bn(f"{b}.bn1", c_in)
            keys += [(f"{b}.conv1.weight", (c, c_in, 3, 3)), (f"{b}.conv1.bias", (c,))]
            keys += _bn(f"{b}.bn2", c)
            keys += [(f"{b}.conv2.weight", (c, c, 3, 3)), (f"{b}.conv2.bias", (c,))]
            if j == 0 and i > 0:
                keys += [(f"{b}.shortcut.weight", (c, c_in, 1, 1)), (f"{b}.shortcut.bias", (c,))]
            c_in = c
    return keys + _bn("bn1", 512) + [("linear.weight", (K, 512)), ("linear.bias", (K,))]


def vgg11_bn_table(K=10, c_in=2):
    """SLTT models/spiking_vgg_bn.py: conv, BN, neuron, Dropout per number; 'M' a pool."""
    keys = []
    for i, stage in enumerate([[64, "M"], [128, "M"], [256, 256, "M"], [512, 512, "M"],
                               [512, 512, "M"]]):
        k = 0
        for v in stage:
            if v == "M":
                k += 1
                continue
            keys += [(f"layer{i + 1}.{k}.weight", (v, c_in, 3, 3)), (f"layer{i + 1}.{k}.bias", (v,))]
            keys += _bn(f"layer{i + 1}.{k + 1}", v)
            k, c_in = k + 4, v
    return keys + [("classifier.1.weight", (K, 512 * 49)), ("classifier.1.bias", (K,))]


def nf_resnet34_table(K=1000):
    """OTTT/SLTT models/spiking_resnet_imagenet.py: NFResNet(BasicBlock, [3, 4, 6, 3])."""
    def ws(name, o, i, k):
        return [(f"{name}.weight", (o, i, k, k)), (f"{name}.bias", (o,)),
                (f"{name}.gain", (o, 1, 1, 1))]
    keys, c_in = ws("conv1", 64, 3, 7), 64
    for i, (n, c) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for j in range(n):
            b = f"layer{i + 1}.{j}"
            keys += [(f"{b}.skipinit_gain", ())] + ws(f"{b}.conv1", c, c_in, 3) + \
                ws(f"{b}.conv2", c, c, 3)
            if j == 0 and i > 0:
                keys += ws(f"{b}.downsample", c, c_in, 1)
            c_in = c
    return keys + [("fc.weight", (K, 512)), ("fc.bias", (K,))]


@pytest.mark.parametrize("arch,table,kw", [
    ("preact_resnet18", preact_resnet18_table(), {}),
    ("vgg11_bn", vgg11_bn_table(), {"in_channels": 2}),
    ("nf_resnet34", nf_resnet34_table(), {"num_classes": 1000})])
def test_state_dict_equals_the_authors_modules(arch, table, kw):
    sd = build_model(arch, **kw).state_dict()
    assert [(k, v.shape) for k, v in sd.items()] == table
    assert len(sd) == {"preact_resnet18": 126, "vgg11_bn": 58, "nf_resnet34": 126}[arch]
    # neuron dropout adds no key and changes no initial weight
    with_dropout = build_model(arch, dropout=0.3, **kw).state_dict()
    assert list(with_dropout) == list(sd)
    assert all(np.array_equal(with_dropout[k], v) for k, v in sd.items())


def test_dropout_placement_and_refusal():
    def drops(model):
        return [n for n, m in model.named_modules() if isinstance(m, NeuronDropout)]
    assert len(drops(build_model("vgg11_bn", in_channels=2))) == 8          # even at p = 0
    assert drops(build_model("preact_resnet18"))[-1] == "drop"
    assert len(drops(build_model("preact_resnet18"))) == 9
    assert drops(build_model("nf_resnet34")) == []
    assert drops(build_model("nf_resnet34", dropout=0.1)) == ["dropout"]
    assert drops(build_model("vgg11_ws")) == []
    ws = drops(build_model("vgg11_ws", dropout=0.1, in_channels=2))
    assert ws[0] == "feature.1.1" and len(ws) == 8
    for arch in sorted(set(ARCHS) - set(DROPOUT_ARCHS)):
        with pytest.raises(ValueError, match=f"--arch {arch} has no neuron dropout"):
            build_model(arch, dropout=0.1)
    build_model("resnet18", dropout=0.0)


def test_nf_resnet34_betas_and_identity_start():
    model = build_model("nf_resnet34", 10, 1 / 16)
    blocks = [m for _, m in model.named_modules() if isinstance(m, NFBlock)]
    var = [1.0, 1.04, 1.08, 1.12, 1.04, 1.08, 1.12, 1.16]     # the authors' expected_var walk
    assert np.allclose([1 / b.scale_in.factor ** 2 for b in blocks[:8]], var)
    assert nf_betas([2], [True], 0.2) == [[1.0, 1.04 ** 0.5]]
    # skipinit_gain = 0 and fc.weight = 0 at the start: the logits are fc's bias, whatever x
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    fc_bias = model.children["fc"].params["bias"]
    assert np.allclose(predict(model.eval(), x, 2), np.stack([fc_bias] * 2), atol=1e-7)


@pytest.mark.parametrize("arch", sorted(SIZE))
def test_output_shape(arch):
    c, s = SIZE[arch]
    model = build_model(arch, 11, 1 / 16, in_channels=c).eval()
    x = np.random.default_rng(0).normal(size=(2, c, s, s)).astype(np.float32)
    out = predict(model, x, 2)
    assert out.shape == (2, 11) and np.all(np.isfinite(out))
    if arch == "vgg11_bn":                  # DVS128 Gesture frames: 128x128 -> 4x4 -> 7x7
        x = np.random.default_rng(0).normal(size=(1, 2, 128, 128)).astype(np.float32)
        assert predict(model, x, 1).shape == (1, 11)


METHODS = [("bptt", {"step_mode": "m"}), ("bptt", {"step_mode": "s"}), ("tbptt", {"window": 1}),
           ("bptt", {"local_blocks": 2}), ("tbptt", {"window": 1, "local_blocks": 2}),
           ("rate_m", {}), ("rate_s", {}), ("sltt", {}), ("ottt", {})]


@pytest.mark.parametrize("arch", sorted(SIZE))
@pytest.mark.parametrize("name,kw", METHODS, ids=[f"{n}-{kw}" for n, kw in METHODS])
def test_one_step_under_every_method(arch, name, kw):
    c, s = SIZE[arch]
    model = build_model(arch, 5, 1 / 32, in_channels=c, dropout=0.2)
    rng = np.random.default_rng(1)
    x = rng.random((2, 2, c, s, s)).astype(np.float32)           # (T, B, C, H, W) frames
    loss, logits = make_method(name, model, 2, **kw).step(x, np.array([0, 3]))
    assert logits.shape == (2, 5) and np.isfinite(loss)
    assert all(np.isfinite(g).all() for _, _, g, _ in model.parameters())


def _tiny(arch, seed=0):
    """A float64 width-1/32 instance with the smooth test spike; nf_resnet34 with non-zero
    skip gains and fc, so every gradient is non-zero."""
    c, s = SIZE[arch]
    neuron = dict(surrogate="sigmoid", alpha=2.0, smooth=True, detach_reset=False)
    model = build_model(arch, 4, 1 / 32, neuron=neuron, seed=seed, in_channels=c, dropout=0.2)
    model.to(np, np.float64)
    rng = np.random.default_rng(seed + 1)
    for name, p, _, _ in model.parameters():
        if name.endswith("skipinit_gain"):
            p[...] = rng.uniform(0.5, 1.5)
        elif name == "fc.weight":
            p[...] = rng.normal(0, 0.5, p.shape)
    return model, c, s


@pytest.mark.parametrize("arch", sorted(SIZE))
def test_bptt_gradient_through_time(arch):
    """Every parameter, at a few entries each (the nets have thousands), against central
    differences of sum(logits · G) through T = 2 steps; the dropout masks held fixed."""
    model, c, s = _tiny(arch)
    rng = np.random.default_rng(2)
    x = rng.normal(0.5, 1.0, size=(2, c, s, s))
    y, G = np.array([0, 2]), rng.normal(size=(2, 4))
    method = make_method("bptt", model, 2, "m")
    drops = [m for _, m in model.named_modules() if isinstance(m, NeuronDropout)]

    def f():
        for i, d in enumerate(drops):
            d.seed(100 + i)
        model.zero_grad()
        return method.step(x, y, random_upstream_loss(G))[1]

    f()
    analytic = {name: g.copy() for name, _, g, _ in model.parameters()}
    worst, checked = 0.0, 0
    for name, p, _, _ in model.parameters():
        entries = [tuple(int(v) for v in np.unravel_index(i, p.shape))
                   for i in rng.choice(p.size, min(p.size, 3), replace=False)]
        num = numerical_grad(f, p, G, h=1e-5, entries=entries)
        err = rel_error(analytic[name], num, entries)
        # a conv bias in front of batchnorm has gradient 0: there only the absolute error counts
        absolute = max(abs(analytic[name][e] - num[e]) for e in entries)
        assert err < 1e-5 or absolute < 1e-9, f"{name}: relative error {err:.2e}"
        if float(np.abs(num).max()) > 1e-6:
            worst, checked = max(worst, err), checked + 1
    assert checked > len(analytic) // 2, "too few gradients far enough from 0 to prove anything"
    first = next(iter(analytic))              # the stem conv: the gradient got all the way down
    assert np.abs(analytic[first]).max() > 1e-6, first


@pytest.mark.parametrize("arch,adds", [("preact_resnet18", 8), ("nf_resnet34", 16),
                                       ("vgg11_bn", 0)])
def test_cost_trace_sees_every_residual_sum(arch, adds):
    from minirate.costs import trace
    c, s = SIZE[arch]
    ops = trace(build_model(arch, 10, 1 / 16, in_channels=c, dropout=0.3), (c, s, s))
    names = [op.name for op in ops]
    assert all(op.src in names or op.src is None for op in ops)      # no unknown producer
    assert sum(op.kind == "add" for op in ops) == adds


def test_recomputed_bptt_keeps_the_sequence_masks():
    """Recomputation runs forwards again: a per-sequence mask makes them see the same masks, so
    gradients equal plain BPTT's exactly."""
    grads = {}
    for kw in ({}, {"recompute_blocks": True}):
        model, c, s = _tiny("preact_resnet18", seed=3)
        x = np.random.default_rng(4).random((2, c, s, s))
        make_method("bptt", model, 2, **kw).step(x, np.array([1, 2]))
        grads[bool(kw)] = [g.copy() for _, _, g, _ in model.parameters()]
    assert all(np.array_equal(a, b) for a, b in zip(grads[False], grads[True]))


@pytest.mark.parametrize("arch", sorted(SIZE))
@pytest.mark.parametrize("name", ["bptt", "rate_m", "ottt"])
def test_device_step_equals_the_cpu_step(arch, name, xp):
    """The same step on the array module `xp` (the strict CuPy stand-in on any machine), with
    the same dropout masks (drawn on the host): the CPU's gradients."""
    from minirate.backend import to_numpy
    grads = []
    for mod in (np, xp):
        model, c, s = _tiny(arch, seed=5)
        model.to(mod)
        x = np.random.default_rng(6).random((2, c, s, s))
        make_method(name, model, 2).step(mod.asarray(x), mod.asarray(np.array([1, 3])))
        grads.append([to_numpy(g) for _, _, g, _ in model.parameters()])
    assert all(np.allclose(a, b, rtol=1e-9, atol=1e-12) for a, b in zip(*grads))
