"""Scale: multiply by a fixed constant, y = c · x, dx = c · dy (no parameters, nothing cached).

OTTT's networks (Xiao et al., NeurIPS 2022) put a fixed ×2.74 after every spiking layer, together
with scaled weight standardization in place of batchnorm (see scaled_ws.py).
"""
from typing import NamedTuple

from .base import Module


class ScaleCache(NamedTuple):
    pass               # y = c · x needs nothing from forward


class Scale(Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = float(factor)

    def forward(self, x):
        return x * x.dtype.type(self.factor), ScaleCache()

    def backward(self, dy, cache):
        return dy * dy.dtype.type(self.factor)

    def __repr__(self):
        return f"Scale({self.factor})"
