"""The residual blocks of the ImageNet spiking ResNets: SEW (spike-element-wise) and pre-activation.

SEW block (Fang et al., NeurIPS 2021), ADD connection, no neuron after the add:

    s = LIF(BN2(conv2( LIF(BN1(conv1(x))) )))
    y = s + shortcut(x),    shortcut(x) = x,  or LIF(BN(conv1x1_stride(x))) when the shape changes

Both branches end in spikes, so y counts spikes (0, 1 or 2). Children, named as SpikingJelly's
torch module: conv1, bn1, sn1, conv2, bn2, sn2, downsample (Sequential conv 1x1, BN), downsample_sn.

Pre-activation block on a real-valued residual stream (no neuron on the stream itself):

    a = LIF1(x)                                   the stream's spikes
    y = BN2(conv2( LIF2(BN1(conv1(a))) )) + shortcut,
    shortcut = x,  or BN(conv1x1_stride(a)) when the shape changes (spikes in, as every conv)

Children: sn1, conv1, bn1, sn2, conv2, bn2, downsample (Sequential conv 1x1, BN).

Pre-activation block with the shortcut on the spikes (SLTT's CIFAR ResNet-18, Meng et al., ICCV
2023): batchnorm and neuron before each conv, biased convs, a neuron dropout before conv2:

    a = LIF1(BN1(x))                              the block's input spikes
    y = conv2( D( LIF2(BN2(conv1(a))) ) ) + shortcut(a),
    shortcut(a) = a,  or conv1x1_stride(a) (with bias, no BN) when the shape changes

D is NeuronDropout (one mask per sample for the whole sequence; the identity at p = 0). The
identity shortcut adds the spikes a, not x. Children, named as the authors' torch module: bn1,
conv1, bn2, dropout, conv2, shortcut (a Conv2d, absent for the identity), relu1, relu2.

Backward: an add passes its gradient unchanged to both terms; a value used twice (x, a) gets the
sum of the gradients of its uses. backward(..., need_dx=False) computes no gradient of x, nor
of anything only x's gradient would read (see container.py).
"""
from .batchnorm import BatchNorm2d
from .container import Container, Sequential, call, call_back, has_params
from .conv import Conv2d
from .dropout import NeuronDropout


def _downsample(in_channels, out_channels, stride, rng):
    """conv 1x1 stride s (no bias) then BN, as torchvision's `downsample`."""
    return Sequential(Conv2d(in_channels, out_channels, 1, stride, 0, bias=False, rng=rng),
                      BatchNorm2d(out_channels))


class SEWBlock(Container):
    def __init__(self, in_channels, out_channels, stride, make_neuron, rng):
        super().__init__()
        self.conv1 = self.add_child("conv1", Conv2d(in_channels, out_channels, 3, stride, 1,
                                                    bias=False, rng=rng))
        self.bn1 = self.add_child("bn1", BatchNorm2d(out_channels))
        self.sn1 = self.add_child("sn1", make_neuron())
        self.conv2 = self.add_child("conv2", Conv2d(out_channels, out_channels, 3, 1, 1,
                                                    bias=False, rng=rng))
        self.bn2 = self.add_child("bn2", BatchNorm2d(out_channels))
        self.sn2 = self.add_child("sn2", make_neuron())
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = self.add_child("downsample",
                                             _downsample(in_channels, out_channels, stride, rng))
            self.downsample_sn = self.add_child("downsample_sn", make_neuron())

    def forward(self, x, run):
        s = run(self.sn1, run(self.bn1, run(self.conv1, x)))
        s = run(self.sn2, run(self.bn2, run(self.conv2, s)))
        if self.downsample is None:
            return s + x
        return s + run(self.downsample_sn, call(self.downsample, x, run))

    def backward(self, dy, back, need_dx=True):
        # children in exactly the reverse order of forward: shortcut first, then the main branch
        if self.downsample is None:
            dx = dy
        else:
            dx = call_back(self.downsample, back(self.downsample_sn, dy), back, need_dx)
        d = back(self.conv2, back(self.bn2, back(self.sn2, dy)))
        d = call_back(self.conv1, back(self.bn1, back(self.sn1, d)), back, need_dx)
        return dx + d if need_dx else None


class PreActBlock(Container):
    def __init__(self, in_channels, out_channels, stride, make_neuron, rng):
        super().__init__()
        self.sn1 = self.add_child("sn1", make_neuron())
        self.conv1 = self.add_child("conv1", Conv2d(in_channels, out_channels, 3, stride, 1,
                                                    bias=False, rng=rng))
        self.bn1 = self.add_child("bn1", BatchNorm2d(out_channels))
        self.sn2 = self.add_child("sn2", make_neuron())
        self.conv2 = self.add_child("conv2", Conv2d(out_channels, out_channels, 3, 1, 1,
                                                    bias=False, rng=rng))
        self.bn2 = self.add_child("bn2", BatchNorm2d(out_channels))
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = self.add_child("downsample",
                                             _downsample(in_channels, out_channels, stride, rng))

    def forward(self, x, run):
        a = run(self.sn1, x)
        h = run(self.bn1, run(self.conv1, a))
        h = run(self.bn2, run(self.conv2, run(self.sn2, h)))
        return h + (x if self.downsample is None else call(self.downsample, a, run))

    def backward(self, dy, back, need_dx=True):
        # a = sn1(x) feeds conv1 and the downsample; without need_dx, and with sn1 free of
        # parameters, nobody reads the gradient of a either
        need_da = need_dx or has_params(self.sn1)
        dx, da = (dy, 0) if self.downsample is None else \
            (0, call_back(self.downsample, dy, back, need_da))
        d = back(self.sn2, back(self.conv2, back(self.bn2, dy)))
        d = call_back(self.conv1, back(self.bn1, d), back, need_da)
        if not need_da:
            return None
        da = da + d
        dx_a = call_back(self.sn1, da, back, need_dx)
        return dx + dx_a if need_dx else None


class SpikePreActBlock(Container):
    def __init__(self, in_channels, out_channels, stride, make_neuron, rng, dropout=0.0,
                 dropout_rng=None):
        super().__init__()
        self.bn1 = self.add_child("bn1", BatchNorm2d(in_channels))
        self.conv1 = self.add_child("conv1", Conv2d(in_channels, out_channels, 3, stride, 1,
                                                    bias=True, rng=rng))
        self.bn2 = self.add_child("bn2", BatchNorm2d(out_channels))
        self.dropout = self.add_child("dropout", NeuronDropout(dropout, rng=dropout_rng))
        self.conv2 = self.add_child("conv2", Conv2d(out_channels, out_channels, 3, 1, 1,
                                                    bias=True, rng=rng))
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = self.add_child("shortcut", Conv2d(in_channels, out_channels, 1,
                                                              stride, 0, bias=True, rng=rng))
        self.relu1 = self.add_child("relu1", make_neuron())
        self.relu2 = self.add_child("relu2", make_neuron())

    def forward(self, x, run):
        a = run(self.relu1, run(self.bn1, x))
        h = run(self.relu2, run(self.bn2, run(self.conv1, a)))
        h = run(self.conv2, run(self.dropout, h))
        return h + (a if self.shortcut is None else run(self.shortcut, a))

    def backward(self, dy, back, need_dx=True):
        # the children in exactly the reverse order of forward; a feeds conv1 and the shortcut,
        # and bn1 has parameters, so the gradient of a is always needed
        da = dy if self.shortcut is None else back(self.shortcut, dy)
        d = back(self.dropout, back(self.conv2, dy))
        da = da + back(self.conv1, back(self.bn2, back(self.relu2, d)))
        return call_back(self.bn1, back(self.relu1, da), back, need_dx)
