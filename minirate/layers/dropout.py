"""Inverted dropout.

    training:  m ~ Bernoulli(1 - p) per element,  y = x * m / (1 - p),  dx = dy * m / (1 - p)
    eval:      y = x,  dx = dy

Scaling by 1/(1 - p) at training time keeps E[y] = x, so eval needs no rescaling. The mask is
drawn on the CPU from the module's numpy.random.Generator (so runs repeat on either device) and
moved to the input's array module. The cache holds the 0/1 mask in the input's dtype, or None
when nothing was dropped (eval mode, or p == 0).
"""
from typing import NamedTuple

import numpy as np

from ..backend import get_array_module, to_device
from .base import Module


class DropoutCache(NamedTuple):
    mask: object       # (same shape as x) 0/1 in x's dtype, or None for the identity
    scale: float       # 1 / (1 - p); 0 when p == 1 (everything dropped)


def _scale(p):
    return 1.0 / (1.0 - p) if p < 1 else 0.0


def dropout_forward(x, mask, p):
    """y = x * mask / (1 - p); mask None means the identity (y is x itself)."""
    if mask is None:
        return x, DropoutCache(mask=None, scale=1.0)
    scale = _scale(p)
    return x * mask * x.dtype.type(scale), DropoutCache(mask=mask, scale=scale)


def dropout_backward(dy, cache):
    """dx = dy * mask * scale (dx = dy for the identity)."""
    if cache.mask is None:
        return dy
    return dy * cache.mask * dy.dtype.type(cache.scale)


class Dropout(Module):
    def __init__(self, p=0.5, rng=None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = float(p)
        self.seed(rng)

    def seed(self, rng):
        """Replace the mask generator: a numpy.random.Generator, an int seed, or None (fresh)."""
        self.rng = np.random.default_rng(rng)

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return dropout_forward(x, None, self.p)
        keep = self.rng.random(x.shape) >= self.p  # True with probability 1 - p
        mask = to_device(keep.astype(x.dtype), get_array_module(x))
        return dropout_forward(x, mask, self.p)

    def backward(self, dy, cache):
        return dropout_backward(dy, cache)

    def __repr__(self):
        return f"Dropout(p={self.p})"
