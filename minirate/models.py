"""Network architectures, built from minirate layers with PyTorch-equivalent names.

Every model is a Container whose state dict keys equal those of the matching torch.nn model:

    resnet18 / resnet19 / small   conv0.{0: Conv2d, 1: BatchNorm2d, 2: LIF}
                                  layer{i}.{j}.{conv1, bn1, spike1, conv2, bn2, shortcut.{0,1}, spike2}
                                  avg_pool (AdaptiveAvgPool2d(1)), flatten, classifier.{0, 1, 2 ...}
    vgg11 / vggsnn_cifar          feature.{k}: Conv2d(bias) - BatchNorm2d - LIF triplets and pools,
                                  flatten, classifier.{0 ...}
    vggsnn_dvs                    the same for 48x48 event frames: a last 2x2 average pool to 3x3
    sew_resnet34                  conv1, bn1, sn1, maxpool, layer{1-4}.{j}.{conv1, bn1, sn1, conv2,
                                  bn2, sn2, downsample.{0,1}, downsample_sn}, avgpool, flatten, fc
                                  (SpikingJelly's sew_resnet34, ADD connection)
    preact_resnet34               conv1, bn1, maxpool, layer{1-4}.{j}.{sn1, conv1, bn1, sn2, conv2,
                                  bn2, downsample.{0,1}}, avgpool, flatten, fc
    (the ImageNet models: 224x224 input, 7x7 stride-2 stem, 3x3 stride-2 max-pool, [3, 4, 6, 3]
    blocks of 64, 128, 256, 512 channels; see minirate/layers/residual.py for the blocks)
    vgg11_ws                      OTTT's VGG: feature.{k}: ScaledWSConv2d(bias) - LIF - Scale(2.74)
                                  triplets and pools, global average pool, flatten, classifier.0
    alexnet                       feature.{k}: five Conv2d(no bias) - BatchNorm2d - LIF triplets
                                  with average pools, flatten, classifier.{0: Linear, 1: LIF,
                                  2: Linear} (configuration below, at `_alexnet`)
    preact_resnet18               SLTT's CIFAR net: conv1, layer{1-4}.{j}.{bn1, conv1, bn2,
                                  dropout, conv2, shortcut, relu1, relu2}, bn1, relu1, pool, flat,
                                  drop, linear (pre-activation blocks, shortcut on the spikes)
    vgg11_bn                      SLTT's DVS net: layer{1-5}.{k}: Conv2d(bias) - BatchNorm2d - LIF
                                  - NeuronDropout quadruples and pools, avgpool (7x7),
                                  classifier.{0: Flatten, 1: Linear(512*49, K)}
    nf_resnet34                   OTTT's and SLTT's ImageNet NF-ResNet-34: conv1 (sWS 7x7/2),
                                  maxpool (an average pool), layer{1-4}.{j}.{skipinit_gain, conv1,
                                  conv2, downsample} (sWS convs, layers/nf_block.py), avgpool,
                                  flatten, fc

`build_model(..., dropout=p)` adds neuron dropout where the published code of vgg11_ws,
preact_resnet18, vgg11_bn and nf_resnet34 has it (see build_model); it has no parameters.

The model's output is the classifier output for every sample fed in (T*B rows in multi-step
mode); the training method averages it over time.

Local block-wise training (methods/local.py) cuts a model into consecutive blocks. Each model
lists the module names where a block may start by default, `model.split_points`, and N blocks
take N − 1 of them spread evenly (see methods/local.py):

    small, resnet18, resnet19     stage edges: layer1, layer2, ... (a block starting at layer1
                                  leaves the stem conv0 a block of its own)
    vgg11, vggsnn_cifar,          after every average pool that still has convs behind it
    vggsnn_dvs, vgg11_ws
    sew_resnet34, preact_resnet34 stage edges: layer1 ... layer4 (as above, the stem before layer1)
    preact_resnet18, nf_resnet34  the same
    alexnet                       after every conv-BN-LIF (with its pool): up to 5 blocks
    vgg11_bn                      after every stage (each ends in a pool): layer2 ... layer5
"""
import numpy as np

from .layers.block import BasicBlock
from .layers.batchnorm import BatchNorm2d
from .layers.container import Sequential, backward_chain, call
from .layers.conv import Conv2d
from .layers.dropout import NeuronDropout
from .layers.flatten import Flatten
from .layers.lif import LIF
from .layers.linear import Linear
from .layers.pool import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from .layers.nf_block import NFBlock, nf_betas
from .layers.residual import PreActBlock, SEWBlock, SpikePreActBlock
from .layers.scale import Scale
from .layers.scaled_ws import ScaledWSConv2d


class Net(Sequential):
    """A Sequential whose children carry names (stem, stages, pool, flatten, classifier).

    Forward and backward run only the parts given here; a child added later (the auxiliary
    classifiers of local training, `aux`) is saved with the model but never run by it.
    """

    def __init__(self, parts, split_points=()):
        super().__init__()
        for name, module in parts:
            self.add_child(name, module)
        self.parts = [module for _, module in parts]
        self.split_points = list(split_points)      # where a local block may start by default

    def forward(self, x, run):
        for part in self.parts:
            x = call(part, x, run)
        return x

    def backward(self, dy, back, need_dx=True):
        return backward_chain(self.parts, dy, back, need_dx)


def _ch(c, width):
    n = int(round(c * width))
    if n < 1:
        raise ValueError(f"--width {width:g} leaves the {c}-channel layers of this network with "
                         f"no channel; it needs --width above {0.5 / c:g}")
    return n


def _resnet(blocks, channels, stem, hidden, num_classes, width, make_neuron, rng, in_channels):
    c_in = _ch(stem, width)
    ch = [_ch(c, width) for c in channels]
    parts = [("conv0", Sequential(Conv2d(in_channels, c_in, 3, 1, 1, bias=False, rng=rng),
                                  BatchNorm2d(c_in), make_neuron()))]
    for i, (n, c) in enumerate(zip(blocks, ch)):
        layers = []
        for j in range(n):
            layers.append(BasicBlock(c_in, c, 2 if (j == 0 and i > 0) else 1, make_neuron, rng))
            c_in = c
        parts.append((f"layer{i + 1}", Sequential(*layers)))
    parts += [("avg_pool", AdaptiveAvgPool2d(1)), ("flatten", Flatten())]
    if hidden:
        h = _ch(hidden, width)
        head = Sequential(Linear(c_in, h, rng=rng), make_neuron(), Linear(h, num_classes, rng=rng))
    else:
        head = Sequential(Linear(c_in, num_classes, rng=rng))
    parts.append(("classifier", head))
    return Net(parts, [f"layer{i + 1}" for i in range(len(blocks))])


def _vgg(cfg, flat_hw, num_classes, width, make_neuron, rng, in_channels):
    feature, c_in, after_pools = [], in_channels, []
    for v in cfg:
        if v == "A":
            feature.append(AvgPool2d(2, 2))
            after_pools.append(f"feature.{len(feature)}")
        elif isinstance(v, tuple):                  # ("AA", size): adaptive average pool
            feature.append(AdaptiveAvgPool2d(v[1]))
        else:
            c = _ch(v, width)
            feature += [Conv2d(c_in, c, 3, 1, 1, bias=True, rng=rng), BatchNorm2d(c), make_neuron()]
            c_in = c
    splits = [name for name in after_pools if int(name.split(".")[1]) < len(feature) - 1]
    return Net([("feature", Sequential(*feature)), ("flatten", Flatten()),
                ("classifier", Sequential(Linear(c_in * flat_hw, num_classes, rng=rng)))], splits)


def _imagenet_resnet(block, stem_neuron, num_classes, width, make_neuron, rng, in_channels):
    """ResNet-34 layout for 224x224 images: stem conv 7x7/2 - BN (- LIF) - max-pool 3x3/2, then
    [3, 4, 6, 3] `block`s, global average pool and fc."""
    c_in = _ch(64, width)
    stem = [("conv1", Conv2d(in_channels, c_in, 7, 2, 3, bias=False, rng=rng)),
            ("bn1", BatchNorm2d(c_in))]
    if stem_neuron:
        stem.append(("sn1", make_neuron()))
    parts = stem + [("maxpool", MaxPool2d(3, 2, 1))]
    for i, (n, c) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512])):
        c = _ch(c, width)
        blocks = []
        for j in range(n):
            blocks.append(block(c_in, c, 2 if (j == 0 and i > 0) else 1, make_neuron, rng))
            c_in = c
        parts.append((f"layer{i + 1}", Sequential(*blocks)))
    parts += [("avgpool", AdaptiveAvgPool2d(1)), ("flatten", Flatten()),
              ("fc", Linear(c_in, num_classes, rng=rng))]
    return Net(parts, [f"layer{i + 1}" for i in range(4)])


def _vgg_ws(cfg, num_classes, width, make_neuron, rng, in_channels, scale=2.74,
            make_dropout=None):
    """VGG without batchnorm (OTTT): each conv is scaled-weight-standardized, each LIF is
    followed by a fixed ×2.74; then global average pooling and one linear layer.
    make_dropout: OTTT's neuron dropout, which masks each LIF's spikes (inside its neuron):
    feature.{k} becomes Sequential(LIF, NeuronDropout), so no conv changes its index."""
    feature, c_in, splits = [], in_channels, []
    for v in cfg:
        if v == "A":
            feature.append(AvgPool2d(2, 2))
            splits.append(f"feature.{len(feature)}")
        else:
            c = _ch(v, width)
            neuron = make_neuron() if make_dropout is None else \
                Sequential(make_neuron(), make_dropout())
            feature += [ScaledWSConv2d(c_in, c, 3, 1, 1, bias=True, rng=rng), neuron,
                        Scale(scale)]
            c_in = c
    feature.append(AdaptiveAvgPool2d(1))
    return Net([("feature", Sequential(*feature)), ("flatten", Flatten()),
                ("classifier", Sequential(Linear(c_in, num_classes, rng=rng)))], splits)


def _alexnet(num_classes, width, make_neuron, rng, in_channels):
    """AlexNet-style spiking net for 32x32 images (or any size >= 8, e.g. event frames):

        feature.0-3    Conv2d(in, 64, 3, padding=1)  - BN - LIF - AvgPool2d(2)     32 -> 16
        feature.4-7    Conv2d(64, 192, 3, padding=1) - BN - LIF - AvgPool2d(2)     16 -> 8
        feature.8-10   Conv2d(192, 384, 3, padding=1) - BN - LIF
        feature.11-13  Conv2d(384, 256, 3, padding=1) - BN - LIF
        feature.14-17  Conv2d(256, 256, 3, padding=1) - BN - LIF - AdaptiveAvgPool2d(4)  8 -> 4
        flatten, classifier.0 Linear(256*4*4, 1024) - classifier.1 LIF - classifier.2 Linear(1024, K)

    AlexNet's five convolutions and channel counts (64, 192, 384, 256, 256) with 3x3 kernels and
    stride 1 instead of 11x11/5x5 strides, which would leave nothing of a 32x32 image; average
    instead of max pooling; batchnorm after every conv, so the convs have no bias. The last pool
    is adaptive (an ordinary 2x2 pool on 32x32 input), so larger event frames fit the same head.
    Channels (and the 1024 hidden units) scale with `width`. Default local-block starts: after
    each conv-BN-LIF and its pool (feature.4, feature.8, feature.11, feature.14).
    """
    feature, c_in, splits = [], in_channels, []
    for c, pool in ((64, AvgPool2d(2, 2)), (192, AvgPool2d(2, 2)), (384, None), (256, None),
                    (256, AdaptiveAvgPool2d(4))):
        if feature:
            splits.append(f"feature.{len(feature)}")
        c = _ch(c, width)
        feature += [Conv2d(c_in, c, 3, 1, 1, bias=False, rng=rng), BatchNorm2d(c), make_neuron()]
        feature += [pool] if pool is not None else []
        c_in = c
    h = _ch(1024, width)
    head = Sequential(Linear(c_in * 16, h, rng=rng), make_neuron(), Linear(h, num_classes, rng=rng))
    return Net([("feature", Sequential(*feature)), ("flatten", Flatten()), ("classifier", head)],
               splits)


def _preact_resnet18(num_classes, width, make_neuron, rng, in_channels, make_dropout):
    """SLTT's CIFAR pre-activation spiking ResNet-18 (see residual.SpikePreActBlock):

        conv1      Conv2d(in, 64, 3, padding=1, no bias)                        32x32
        layer1-4   [2, 2, 2, 2] SpikePreActBlocks of 64, 128, 256, 512 (stride 2 from layer2)
        bn1, relu1 BatchNorm2d(512) - LIF, pool AvgPool2d(4)                    4x4 -> 1x1
        flat, drop (neuron dropout on the pooled spikes), linear Linear(512, K)
    """
    c_in = _ch(64, width)
    parts = [("conv1", Conv2d(in_channels, c_in, 3, 1, 1, bias=False, rng=rng))]
    for i, c in enumerate([64, 128, 256, 512]):
        c = _ch(c, width)
        blocks = []
        for j in range(2):
            blocks.append(SpikePreActBlock(c_in, c, 2 if (j == 0 and i > 0) else 1, make_neuron,
                                           rng, make_dropout.p, make_dropout.rng()))
            c_in = c
        parts.append((f"layer{i + 1}", Sequential(*blocks)))
    parts += [("bn1", BatchNorm2d(c_in)), ("relu1", make_neuron()), ("pool", AvgPool2d(4)),
              ("flat", Flatten()), ("drop", make_dropout()),
              ("linear", Linear(c_in, num_classes, rng=rng))]
    return Net(parts, [f"layer{i + 1}" for i in range(4)])


def _vgg11_bn(num_classes, width, make_neuron, rng, in_channels, make_dropout):
    """SLTT's spiking VGG-11 with batchnorm for event frames:

        layer1..layer5   [64, A], [128, A], [256, 256, A], [512, 512, A], [512, 512, A]; each
                         number a Conv2d(3x3, bias) - BatchNorm2d - LIF - NeuronDropout quadruple,
                         A an AvgPool2d(2)
        avgpool          AdaptiveAvgPool2d(7)
        classifier       0: Flatten, 1: Linear(512*7*7, K)

    The dropout takes its place in each Sequential (a layer3's second conv is layer3.4) even at
    p = 0, as in the authors' module. Any input of 32x32 or more: CIFAR10-DVS resized to 48x48
    (-> 1x1 before the adaptive pool, which repeats it 7x7), DVS128 Gesture at 128x128 (-> 4x4).
    """
    stages, c_in = [[64, "A"], [128, "A"], [256, 256, "A"], [512, 512, "A"], [512, 512, "A"]], \
        in_channels
    parts = []
    for i, cfg in enumerate(stages):
        layers = []
        for v in cfg:
            if v == "A":
                layers.append(AvgPool2d(2, 2))
            else:
                c = _ch(v, width)
                layers += [Conv2d(c_in, c, 3, 1, 1, bias=True, rng=rng), BatchNorm2d(c),
                           make_neuron(), make_dropout()]
                c_in = c
        parts.append((f"layer{i + 1}", Sequential(*layers)))
    parts += [("avgpool", AdaptiveAvgPool2d(7)),
              ("classifier", Sequential(Flatten(), Linear(c_in * 49, num_classes, rng=rng)))]
    return Net(parts, [f"layer{i + 2}" for i in range(4)])


def _nf_resnet34(num_classes, width, make_neuron, rng, in_channels, make_dropout, alpha=0.2):
    """NF-ResNet-34 of OTTT's and SLTT's ImageNet runs (see layers/nf_block.py):

        conv1      ScaledWSConv2d(in, 64, 7, stride 2, padding 3, bias, gain)   224 -> 112
        maxpool    AvgPool2d(3, stride 2, padding 1) (an average pool, under the torch name)
        layer1-4   [3, 4, 6, 3] NFBlocks of 64, 128, 256, 512 (stride 2 from layer2), α = 0.2
        avgpool    AdaptiveAvgPool2d(1), flatten, [dropout], fc Linear(512, K)

    The stream stays real-valued to the end (no neuron after the last block). fc starts at zero
    and every skipinit_gain at 0, as in the authors' code. Neuron dropout (OTTT's `drop_rate`,
    a mask per sample kept over all steps) sits on the pooled features before fc, only when
    p > 0; SLTT's version takes no dropout.
    """
    c_in = _ch(64, width)
    parts = [("conv1", ScaledWSConv2d(in_channels, c_in, 7, 2, 3, bias=True, rng=rng)),
             ("maxpool", AvgPool2d(3, 2, 1))]
    parts[0][1].params["bias"][...] = 0
    channels = [_ch(c, width) for c in (64, 128, 256, 512)]
    downsamples = [i > 0 or channels[0] != c_in for i in range(4)]
    betas = nf_betas([3, 4, 6, 3], downsamples, alpha)
    for i, (c, stage_betas) in enumerate(zip(channels, betas)):
        blocks = []
        for j, beta in enumerate(stage_betas):
            blocks.append(NFBlock(c_in, c, 2 if (j == 0 and i > 0) else 1, make_neuron, rng,
                                  beta, alpha))
            c_in = c
        parts.append((f"layer{i + 1}", Sequential(*blocks)))
    parts += [("avgpool", AdaptiveAvgPool2d(1)), ("flatten", Flatten())]
    if make_dropout.p > 0:
        parts.append(("dropout", make_dropout()))
    fc = Linear(c_in, num_classes, rng=rng)
    fc.params["weight"][...] = 0
    parts.append(("fc", fc))
    return Net(parts, [f"layer{i + 1}" for i in range(4)])


class _DropoutMaker:
    """Makes the NeuronDropout layers of one model, each with its own generator drawn from
    `seed` (apart from the weights' generator, so adding dropout changes no initial weight)."""

    def __init__(self, p, seed):
        self.p, self.seeds = float(p), np.random.default_rng([seed, 1])

    def rng(self):
        return np.random.default_rng(int(self.seeds.integers(2 ** 63)))

    def __call__(self):
        return NeuronDropout(self.p, rng=self.rng())


ARCHS = ("small", "resnet18", "resnet19", "vgg11", "vggsnn_cifar", "vggsnn_dvs", "alexnet",
         "vgg11_ws", "sew_resnet34", "preact_resnet34", "preact_resnet18", "vgg11_bn",
         "nf_resnet34")
DROPOUT_ARCHS = ("vgg11_ws", "preact_resnet18", "vgg11_bn", "nf_resnet34")   # see build_model


def build_model(arch, num_classes=10, width=1.0, neuron=None, seed=0, in_channels=3,
                dropout=0.0):
    """Build `arch` (one of ARCHS). `neuron`: keyword arguments for every LIF layer;
    `in_channels`: 3 for RGB images, 2 for event frames (one channel per polarity).

    `dropout` p: neuron dropout (one mask per sample, kept over all T steps; layers/dropout.py),
    placed where the published code of the arch places it, which is only in DROPOUT_ARCHS:

        vgg11_ws          after every LIF of `feature` (OTTT: inside each neuron; p = 0.1 on
                          CIFAR10-DVS), each such LIF becoming Sequential(LIF, NeuronDropout)
        preact_resnet18   in every block before conv2, and on the pooled spikes before `linear`
        vgg11_bn          after every LIF (SLTT: p = 0.3 on CIFAR10-DVS, 0.4 on DVS128 Gesture)
        nf_resnet34       on the pooled features before fc (OTTT's `drop_rate`)

    Any other arch with p > 0 is an error. The dropout layers hold no parameters: no state-dict
    key changes with p. Their masks come from generators seeded by `seed`."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"neuron dropout must lie in [0, 1), got {dropout}")
    if dropout > 0 and arch in ARCHS and arch not in DROPOUT_ARCHS:
        raise ValueError(f"--arch {arch} has no neuron dropout in its published form; the archs "
                         f"with one are {', '.join(DROPOUT_ARCHS)}")
    rng = np.random.default_rng(seed)
    neuron = dict(neuron or {})
    make_dropout = _DropoutMaker(dropout, seed)

    def make_neuron():
        return LIF(**neuron)

    if arch == "small":       # a fast net for CPU runs: 3 spiking convs stages, 2 residual blocks
        return _resnet([1, 1], [32, 64], 16, None, num_classes, width, make_neuron, rng,
                       in_channels)
    if arch == "resnet18":
        return _resnet([2, 2, 2, 2], [64, 128, 256, 512], 64, None, num_classes, width,
                       make_neuron, rng, in_channels)
    if arch == "resnet19":
        return _resnet([3, 3, 2], [128, 256, 512], 128, 256, num_classes, width, make_neuron,
                       rng, in_channels)
    if arch == "vgg11":
        cfg = [64, "A", 128, 256, "A", 512, 512, "A", 512, "A", 512, 512, ("AA", 1)]
        return _vgg(cfg, 1, num_classes, width, make_neuron, rng, in_channels)
    if arch == "vggsnn_cifar":
        cfg = [64, 128, "A", 256, 256, "A", 512, 512, "A", 512, 512, ("AA", 3)]
        return _vgg(cfg, 9, num_classes, width, make_neuron, rng, in_channels)
    if arch == "sew_resnet34":
        return _imagenet_resnet(SEWBlock, True, num_classes, width, make_neuron, rng, in_channels)
    if arch == "preact_resnet34":    # real-valued stem and stream, no final neuron
        return _imagenet_resnet(PreActBlock, False, num_classes, width, make_neuron, rng,
                                in_channels)
    if arch == "vggsnn_dvs":  # event frames (in_channels=2) at 48x48 -> 3x3 -> Linear(4608, K)
        cfg = [64, 128, "A", 256, 256, "A", 512, 512, "A", 512, 512, "A"]
        return _vgg(cfg, 9, num_classes, width, make_neuron, rng, in_channels)
    if arch == "vgg11_ws":
        cfg = [64, 128, "A", 256, 256, "A", 512, 512, "A", 512, 512]
        return _vgg_ws(cfg, num_classes, width, make_neuron, rng, in_channels,
                       make_dropout=make_dropout if dropout > 0 else None)
    if arch == "preact_resnet18":
        return _preact_resnet18(num_classes, width, make_neuron, rng, in_channels, make_dropout)
    if arch == "vgg11_bn":
        return _vgg11_bn(num_classes, width, make_neuron, rng, in_channels, make_dropout)
    if arch == "nf_resnet34":
        return _nf_resnet34(num_classes, width, make_neuron, rng, in_channels, make_dropout)
    if arch == "alexnet":
        return _alexnet(num_classes, width, make_neuron, rng, in_channels)
    raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")


def input_size_problem(model, arch, in_channels, size, what="input"):
    """Why `model` (built as `arch`) cannot take (in_channels, size, size) samples, naming the
    smallest size it takes; None when it can. A shape pass on one zero sample (costs.trace:
    only the layers that change the shape run), so nothing the size of a batch is allocated.
    what: how the user set the size, e.g. '--frame-size 2'."""
    from .costs import trace          # costs counts over models' layers: imported when asked

    def fails(s):
        try:
            ops = trace(model, (in_channels, s, s))
        except (ValueError, IndexError, ZeroDivisionError) as e:
            return str(e).splitlines()[0] if str(e) else type(e).__name__
        empty = next((op for op in ops if 0 in op.out_shape), None)
        return f"{empty.name} is left with no output" if empty else None

    why = fails(size)
    if why is None:
        return None
    smallest = next((s for s in range(1, max(2 * size, 256) + 1) if s != size and not fails(s)),
                    None)
    takes = (f"no size up to {max(2 * size, 256)} fits" if smallest is None else
             f"the smallest size it takes is {smallest}x{smallest}" if smallest > size else
             f"it takes {smallest}x{smallest}")       # e.g. a head sized for one input size
    return f"--arch {arch} cannot take {size}x{size} input ({what}): {why}; {takes}"
