"""Small float64 networks for the method tests."""
import numpy as np

from minirate.backend import get_array_module, to_device
from minirate.layers.batchnorm import BatchNorm2d
from minirate.layers.block import BasicBlock
from minirate.layers.conv import Conv2d
from minirate.layers.flatten import Flatten
from minirate.layers.lif import LIF
from minirate.layers.linear import Linear
from minirate.layers.pool import AdaptiveAvgPool2d, AvgPool2d
from minirate.models import Net
from minirate.layers.container import Sequential


def tiny_resnet(seed=0, classes=5, xp=np, **neuron):
    """conv-BN-LIF, a residual block with a conv shortcut, a plain residual block, avg pools,
    flatten, linear-LIF-linear: every kind of layer a spiking ResNet uses. Float64, on array
    module `xp` (the same weights for numpy and cupy)."""
    rng = np.random.default_rng(seed)

    def make_neuron():
        return LIF(**neuron)

    net = Net([
        ("conv0", Sequential(Conv2d(3, 4, 3, 1, 1, bias=False, rng=rng), BatchNorm2d(4), make_neuron())),
        ("layer1", Sequential(BasicBlock(4, 6, 2, make_neuron, rng), BasicBlock(6, 6, 1, make_neuron, rng))),
        ("pool", AvgPool2d(1)),
        ("avg_pool", AdaptiveAvgPool2d(1)),
        ("flatten", Flatten()),
        ("classifier", Sequential(Linear(6, 7, rng=rng), make_neuron(), Linear(7, classes, rng=rng))),
    ])
    net.to(np, np.float64)
    # a stronger hidden layer so the classifier's LIF neurons fire and every gradient is non-zero
    net.children["classifier"].children["0"].params["weight"] *= 4
    # random BN affine parameters so the check does not rest on gamma = 1, beta = 0
    for _, m in net.named_modules():
        if isinstance(m, BatchNorm2d):
            m.params["weight"][...] = rng.uniform(0.5, 1.5, m.params["weight"].shape)
            m.params["bias"][...] = rng.uniform(-0.2, 0.4, m.params["bias"].shape)
    return net.to(xp)


def random_upstream_loss(G):
    """loss = Σ logits · G: its gradient is the random upstream gradient G (on the logits' device)."""
    def loss_fn(logits, y):
        G_ = to_device(G, get_array_module(logits))
        return float((logits * G_).sum()), G_.copy()
    return loss_fn
