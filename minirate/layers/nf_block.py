"""Normalizer-free residual block (NF-ResNet; Brock et al., ICLR 2021) as the ImageNet spiking
networks of OTTT (Xiao et al., NeurIPS 2022) and SLTT (Meng et al., ICCV 2023) build it.

No batchnorm: convolutions use scaled weight standardization (scaled_ws.py), spikes are scaled by
a fixed 2.74, and the residual stream's variance is kept known by construction:

    a = 2.74 · LIF1(x / β)                        β = sqrt(Var[x]), the stream's expected variance
    h = conv2( 2.74 · LIF2(conv1(a)) )            (conv1 carries the stride)
    y = α · g · h + shortcut,    shortcut = x,  or conv1x1_stride(a) when the shape changes

g is a learnable scalar, `skipinit_gain`, that starts at 0 (each block starts as the identity);
α = 0.2. The expected variance grows by α² per block and restarts at 1 + α² after a downsampling
shortcut, which reads the standardized spikes a (see `nf_betas`).

Backward (g and h read from forward):

    dg = α · Σ dy · h,    dh = α · g · dy,    the shortcut gets dy unchanged;
    a feeds conv1 and the downsampling conv: da is the sum of their input gradients.

Names follow the authors' torch module: the block owns `skipinit_gain` (a 0-d parameter, the key
`layer1.0.skipinit_gain`); conv1, conv2 and downsample are ScaledWSConv2d with bias and gain.
The parameter-free children (the 1/β and 2.74 scales, the neurons sn1, sn2, and `skip`, the leaf
that multiplies by α · g) hold no state-dict entries.
"""
from typing import NamedTuple

import numpy as np

from .base import Module
from .container import Container, backward_chain, call_back, has_params
from .scale import Scale
from .scaled_ws import ScaledWSConv2d

SPIKE_SCALE = 2.74        # restores unit variance after a spike (Brock et al.'s γ for the ReLU)


def nf_betas(blocks_per_stage, downsamples, alpha):
    """β of every block, stage by stage: β = sqrt(expected variance of the block's input), the
    variance starting at 1, growing by α² per block, and restarting at 1 + α² after a block with
    a downsampling shortcut. downsamples[i]: whether stage i's first block has one."""
    var, betas = 1.0, []
    for n, down in zip(blocks_per_stage, downsamples):
        stage = []
        for j in range(n):
            stage.append(var ** 0.5)
            var = 1.0 + alpha ** 2 if (j == 0 and down) else var + alpha ** 2
        betas.append(stage)
    return betas


class SkipGainCache(NamedTuple):
    h: object          # (N, C, H, W) the residual branch's output, for dg
    g: object          # () the gain used


def skip_gain_forward(h, g, alpha):
    """y = α · g · h (g a 0-d array)."""
    return h * (alpha * g).astype(h.dtype), SkipGainCache(h=h, g=g)


def skip_gain_backward(dy, cache, alpha):
    """dh = α · g · dy and dg = α · Σ dy · h."""
    dg = alpha * (dy * cache.h).sum()
    return dy * (alpha * cache.g).astype(dy.dtype), dg


class SkipGain(Module):
    """y = α · g · h, with g the parameter `skipinit_gain` of the block that owns it: the leaf
    reads and accumulates into the owner's dicts, so the parameter keeps the owner's name."""

    def __init__(self, owner, alpha):
        super().__init__()
        self.owner_params, self.owner_grads = owner.params, owner.grads
        self.alpha = float(alpha)

    def forward(self, h):
        return skip_gain_forward(h, self.owner_params["skipinit_gain"], self.alpha)

    def backward(self, dy, cache):
        dh, dg = skip_gain_backward(dy, cache, self.alpha)
        self.owner_grads["skipinit_gain"][...] += dg
        return dh

    def __repr__(self):
        return f"SkipGain(alpha={self.alpha})"


class NFBlock(Container):
    def __init__(self, in_channels, out_channels, stride, make_neuron, rng, beta=1.0, alpha=0.2):
        super().__init__()
        self.add_param("skipinit_gain", np.zeros((), np.float32))
        self.conv1 = self.add_child("conv1", ScaledWSConv2d(in_channels, out_channels, 3, stride,
                                                            1, bias=True, rng=rng))
        self.conv2 = self.add_child("conv2", ScaledWSConv2d(out_channels, out_channels, 3, 1, 1,
                                                            bias=True, rng=rng))
        self.scale_in = self.add_child("scale_in", Scale(1.0 / beta))
        self.sn1 = self.add_child("sn1", make_neuron())
        self.scale1 = self.add_child("scale1", Scale(SPIKE_SCALE))
        self.sn2 = self.add_child("sn2", make_neuron())
        self.scale2 = self.add_child("scale2", Scale(SPIKE_SCALE))
        self.skip = self.add_child("skip", SkipGain(self, alpha))
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = self.add_child("downsample", ScaledWSConv2d(
                in_channels, out_channels, 1, stride, 0, bias=True, rng=rng))
        for conv in (self.conv1, self.conv2, self.downsample):
            if conv is not None:
                conv.params["bias"][...] = 0           # the authors' init

    def forward(self, x, run):
        a = run(self.scale1, run(self.sn1, run(self.scale_in, x)))
        shortcut = x if self.downsample is None else run(self.downsample, a)
        h = run(self.scale2, run(self.sn2, run(self.conv1, a)))
        return run(self.skip, run(self.conv2, h)) + shortcut

    def backward(self, dy, back, need_dx=True):
        # the children in exactly the reverse order of forward; without need_dx (and with the
        # 1/β, LIF and 2.74 in front of a free of parameters) nobody reads da either
        stem = (self.scale_in, self.sn1, self.scale1)
        need_da = need_dx or any(has_params(m) for m in stem)
        d = back(self.sn2, back(self.scale2, back(self.conv2, back(self.skip, dy))))
        da = call_back(self.conv1, d, back, need_da)
        dx = dy
        if self.downsample is not None:
            d_down = call_back(self.downsample, dy, back, need_da)
            da = da + d_down if need_da else None
            dx = 0
        if not need_da:
            return None
        dx_a = backward_chain(stem, da, back, need_dx)
        return dx + dx_a if need_dx else None
