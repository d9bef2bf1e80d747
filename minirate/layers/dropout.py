"""Inverted dropout, and neuron dropout (one mask per sample for a whole sequence).

    training:  m ~ Bernoulli(1 - p) per element,  y = x * m / (1 - p),  dx = dy * m / (1 - p)
    eval:      y = x,  dx = dy

Scaling by 1/(1 - p) at training time keeps E[y] = x, so eval needs no rescaling. The mask is
drawn on the CPU from the module's numpy.random.Generator (so runs repeat on either device) and
moved to the input's array module. The cache holds the 0/1 mask in the input's dtype, or None
when nothing was dropped (eval mode, or p == 0).

Neuron dropout (the form spiking networks use): a sample's mask is drawn once per sequence and
kept over all T steps, so a dropped neuron is silent for the whole sample rather than at random
steps (which would only thin its spike train):

    m ~ Bernoulli(1 - p)  of shape (B, *features), drawn at the first training forward after
                          `begin_sequence(B)` (the training method calls model.new_sequence(B)
                          at the start of every batch)
    y_t = x_t * m / (1 - p),    dx_t = dy_t * m / (1 - p)        for every step t

One forward may carry one step (B, ...), k steps stacked step-major (k*B, ...) (multi-step mode,
a window), or a rate (B, ...) (rate-based backprop, where y = r * m / (1 - p) is exactly the rate
of the masked spikes). Being linear with a mask that does not change within the sequence, it
acts on spikes and on presynaptic traces alike (OTTT). Eval mode or p == 0: the identity.
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


def _probability(p):
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    return float(p)


class Dropout(Module):
    def __init__(self, p=0.5, rng=None):
        super().__init__()
        self.p = _probability(p)
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


# -- neuron dropout: one mask per sample for the whole sequence --------------------------------


class NeuronDropoutCache(NamedTuple):
    mask: object       # (B, *features) 0/1 in x's dtype, shared by every step; None: identity
    scale: float       # 1 / (1 - p); 0 when p == 1


def neuron_dropout_forward(x, mask, p):
    """y = x * mask / (1 - p) with mask (B, ...) broadcast over the k = x.shape[0] / B steps
    stacked in x ((k*B, ...), k >= 1); mask None is the identity."""
    if mask is None:
        return x, NeuronDropoutCache(mask=None, scale=1.0)
    scale = _scale(p)
    y = _steps(x, mask.shape[0]) * mask * x.dtype.type(scale)       # (k, B, ...)
    return y.reshape(x.shape), NeuronDropoutCache(mask=mask, scale=scale)  # -> (k*B, ...)


def neuron_dropout_backward(dy, cache):
    """dx = dy * mask / (1 - p), the same mask at every step (dx = dy for the identity)."""
    if cache.mask is None:
        return dy
    dx = _steps(dy, cache.mask.shape[0]) * cache.mask * dy.dtype.type(cache.scale)  # (k, B, ...)
    return dx.reshape(dy.shape)                                                      # -> (k*B, ...)


def _steps(x, B):
    """(k*B, ...) -> (k, B, ...): the steps stacked in x, step-major as multi-step mode stacks them."""
    if x.shape[0] % B:
        raise ValueError(f"neuron dropout holds masks for a batch of {B} samples, but its input "
                         f"has {x.shape[0]} rows, which is not a whole number of steps of {B}; "
                         f"call model.new_sequence(batch_size) when a new batch starts")
    return x.reshape((x.shape[0] // B, B) + tuple(x.shape[1:]))


class NeuronDropout(Module):
    def __init__(self, p=0.5, rng=None):
        super().__init__()
        self.p = _probability(p)
        self.batch_size, self.mask = None, None
        self.seed(rng)

    def seed(self, rng):
        """Set the masks' seed from a numpy.random.Generator, an int seed, or None (fresh).
        Sequence n draws its mask from default_rng([seed, n]), so a run resumed with the
        count of sequences (`sequences`, saved with checkpoints) draws what it would have."""
        self.base_seed = int(np.random.default_rng(rng).integers(2 ** 63))
        self.sequences = 0

    def begin_sequence(self, batch_size):
        """A new batch of `batch_size` sequences: forget the mask (the next forward draws one)."""
        self.batch_size, self.mask = int(batch_size), None
        self.sequences += 1

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return neuron_dropout_forward(x, None, self.p)
        if self.batch_size is None:
            raise ValueError("neuron dropout needs the batch size of the sequence: call "
                             "model.new_sequence(batch_size) before the first step of a batch")
        if self.mask is None:
            rng = np.random.default_rng([self.base_seed, self.sequences])
            keep = rng.random((self.batch_size,) + tuple(x.shape[1:])) >= self.p
            self.mask = to_device(keep.astype(x.dtype), get_array_module(x))
        elif self.mask.shape[1:] != x.shape[1:]:
            raise ValueError(f"neuron dropout drew its mask for samples of shape "
                             f"{tuple(self.mask.shape[1:])}, but got {tuple(x.shape[1:])}")
        elif self.mask.dtype != x.dtype:              # the same mask, in x's dtype
            self.mask = self.mask.astype(x.dtype)
        return neuron_dropout_forward(x, self.mask, self.p)

    def backward(self, dy, cache):
        return neuron_dropout_backward(dy, cache)

    def __repr__(self):
        return f"NeuronDropout(p={self.p})"


def sequence_counts(model):
    """{module name: sequences begun} of every NeuronDropout in `model`: what a checkpoint keeps
    so that a resumed run draws the masks an uninterrupted one would."""
    return {name: m.sequences for name, m in model.named_modules() if isinstance(m, NeuronDropout)}


def set_sequence_counts(model, counts):
    """Restore `sequence_counts`; ValueError when they do not name this model's dropouts."""
    mine = {name: m for name, m in model.named_modules() if isinstance(m, NeuronDropout)}
    if set(counts) != set(mine):
        raise ValueError(f"dropout counts for {sorted(counts)}, the model has {sorted(mine)}")
    for name, n in counts.items():
        mine[name].sequences = int(n)
