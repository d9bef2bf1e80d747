"""SEW and pre-activation residual blocks, and the ImageNet ResNet-34s built from them: BPTT
through a whole small network of each, against finite differences over time; torch names."""
import numpy as np
import pytest

from minirate.layers.batchnorm import BatchNorm2d
from minirate.layers.block import BasicBlock
from minirate.layers.container import Sequential
from minirate.layers.conv import Conv2d
from minirate.layers.flatten import Flatten
from minirate.layers.lif import LIF
from minirate.layers.linear import Linear
from minirate.layers.pool import AdaptiveAvgPool2d, MaxPool2d
from minirate.layers.residual import PreActBlock, SEWBlock
from minirate.methods import make_method
from minirate.models import Net, build_model
from tests.gradcheck import check_method_gradients, numerical_grad, rel_error
from tests.nets import random_upstream_loss

T = 2


def _net(block, seed=0):
    """stem conv-BN(-LIF)-maxpool, a block that changes shape, a block that keeps it, fc."""
    rng = np.random.default_rng(seed)

    def make_neuron():
        return LIF(surrogate="sigmoid", alpha=2.0, smooth=True, detach_reset=False)

    stem = [("conv1", Conv2d(3, 2, 3, 1, 1, bias=False, rng=rng)), ("bn1", BatchNorm2d(2))]
    if block is SEWBlock:
        stem.append(("sn1", make_neuron()))
    net = Net(stem + [("maxpool", MaxPool2d(3, 2, 1)),
                      ("layer1", Sequential(block(2, 3, 2, make_neuron, rng),
                                            block(3, 3, 1, make_neuron, rng))),
                      ("avgpool", AdaptiveAvgPool2d(1)), ("flatten", Flatten()),
                      ("fc", Linear(3, 5, rng=rng))])
    net.to(np, np.float64)
    for _, m in net.named_modules():
        if isinstance(m, BatchNorm2d):
            m.params["weight"][...] = rng.uniform(0.5, 1.5, m.params["weight"].shape)
            m.params["bias"][...] = rng.uniform(-0.2, 0.6, m.params["bias"].shape)
    return net


@pytest.mark.parametrize("block, step_mode", [(SEWBlock, "m"), (PreActBlock, "s")])
def test_whole_network_gradients(block, step_mode, xp):
    rng = np.random.default_rng(1)
    net = _net(block).to(xp)
    method = make_method("bptt", net, T, step_mode)
    x = xp.asarray(rng.normal(0.5, 1.0, size=(2, 3, 6, 6)))
    G = xp.asarray(rng.normal(size=(2, 5)))
    y = xp.asarray([0, 1])
    analytic = check_method_gradients(net, method, x, y, random_upstream_loss(G), G)
    # stem conv + BN, block with downsample (conv, BN, conv, BN, conv, BN), block without, fc
    assert len(analytic) == 3 + 9 + 6 + 2


@pytest.mark.parametrize("block", [SEWBlock, PreActBlock])
def test_input_gradient(block):
    rng = np.random.default_rng(2)
    net = _net(block, seed=3)
    method = make_method("bptt", net, T, "m")
    x = rng.normal(0.5, 1.0, size=(2, 3, 6, 6))
    G = rng.normal(size=(2, 5))
    conv1 = net.children["conv1"]
    captured, original = [], conv1.backward

    def spy(dy, cache, need_dx=True):       # dx computed here, though the method needs none
        captured.append(original(dy, cache))
        return captured[-1]
    conv1.backward = spy
    method.step(x, np.array([0, 1]), random_upstream_loss(G))
    conv1.backward = original
    dx = captured[0].reshape(T, *x.shape).sum(axis=0)     # (T*B, ...) -> (T, B, ...) summed

    def f():
        return method.step(x, np.array([0, 1]), random_upstream_loss(G))[1]
    assert rel_error(dx, numerical_grad(f, x, G, h=1e-5)) < 1e-6


@pytest.mark.parametrize("arch", ["sew_resnet34", "preact_resnet34"])
def test_imagenet_resnet34_names_and_size(arch):
    model = build_model(arch, 1000)
    sd = model.state_dict()
    assert sum(p.size for _, p, _, _ in model.parameters()) == 21_797_672   # as torchvision's
    assert sd["conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["fc.weight"].shape == (1000, 512)
    assert sd["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    for key in ["bn1.running_var", "layer1.2.bn2.weight", "layer3.5.conv2.weight",
                "layer4.0.downsample.1.num_batches_tracked", "layer4.2.bn2.bias", "fc.bias"]:
        assert key in sd, key
    assert "layer3.6.conv1.weight" not in sd and "layer1.0.downsample.0.weight" not in sd
    names = [name for name, _ in model.named_modules()]
    spiking = [n for n, m in model.named_modules() if isinstance(m, LIF)]
    assert "maxpool" in names
    if arch == "sew_resnet34":      # stem neuron, two per block, one per downsample
        assert len(spiking) == 1 + 2 * 16 + 3 and "layer2.0.downsample_sn" in spiking
    else:                           # two per block, none on the stem or after the last block
        assert len(spiking) == 2 * 16 and "layer1.0.sn1" in spiking and "sn1" not in spiking


@pytest.mark.parametrize("block", [BasicBlock, SEWBlock, PreActBlock])
@pytest.mark.parametrize("stride", [1, 2])
def test_backward_visits_the_layers_in_reverse_forward_order(block, stride):
    """The container contract (layers/container.py): back(layer) in exactly the reverse order
    of run(layer), the shortcut's layers included."""
    rng = np.random.default_rng(4)
    blk = block(3, 3 if stride == 1 else 4, stride, LIF, rng)
    order, shapes = [], {}

    def run(layer, h):
        order.append(layer)
        shapes[layer] = h.shape
        return layer.forward(h, 1)[0] if isinstance(layer, LIF) else layer.forward(h)[0]

    def back(layer, dh):                        # only the order matters: a gradient of x's shape
        order.append(layer)
        return np.zeros(shapes[layer])
    y = blk.forward(rng.normal(size=(2, 3, 4, 4)), run)
    forward = list(order)
    order.clear()
    blk.backward(np.ones_like(y), back)
    assert order == forward[::-1] and len(forward) >= 6
