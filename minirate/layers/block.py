"""Residual BasicBlock of spiking ResNets.

    y = LIF( BN2(conv2( LIF(BN1(conv1(x))) )) + shortcut(x) )

shortcut(x) = x when shape is kept, else BN(conv1x1_stride(x)). Children are named as the
equivalent torch module: conv1, bn1, spike1, conv2, bn2, shortcut (a Sequential, empty for the
identity), spike2. The residual add passes its gradient unchanged to both branches.
backward(..., need_dx=False) computes no gradient of x (see container.py).
"""
from .batchnorm import BatchNorm2d
from .container import Container, Sequential, call, call_back
from .conv import Conv2d


class BasicBlock(Container):
    def __init__(self, in_channels, out_channels, stride, make_neuron, rng):
        super().__init__()
        self.conv1 = self.add_child("conv1", Conv2d(in_channels, out_channels, 3, stride, 1,
                                                    bias=False, rng=rng))
        self.bn1 = self.add_child("bn1", BatchNorm2d(out_channels))
        self.spike1 = self.add_child("spike1", make_neuron())
        self.conv2 = self.add_child("conv2", Conv2d(out_channels, out_channels, 3, 1, 1,
                                                    bias=False, rng=rng))
        self.bn2 = self.add_child("bn2", BatchNorm2d(out_channels))
        if stride != 1 or in_channels != out_channels:
            self.shortcut = Sequential(Conv2d(in_channels, out_channels, 1, stride, 0, bias=False,
                                              rng=rng), BatchNorm2d(out_channels))
        else:
            self.shortcut = Sequential()
        self.add_child("shortcut", self.shortcut)
        self.spike2 = self.add_child("spike2", make_neuron())

    def forward(self, x, run):
        out = run(self.spike1, run(self.bn1, run(self.conv1, x)))
        out = run(self.bn2, run(self.conv2, out))
        return run(self.spike2, out + call(self.shortcut, x, run))

    def backward(self, dy, back, need_dx=True):
        # children in exactly the reverse order of forward: shortcut first, then the main branch;
        # without need_dx, x's two readers (conv1, the shortcut) compute no gradient of x
        d_sum = back(self.spike2, dy)            # d(out + shortcut(x)) reaches both branches
        d_short = call_back(self.shortcut, d_sum, back, need_dx)
        d_main = back(self.conv2, back(self.bn2, d_sum))
        d_main = call_back(self.conv1, back(self.bn1, back(self.spike1, d_main)), back, need_dx)
        return d_main + d_short if need_dx else None
