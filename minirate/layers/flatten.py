"""Flatten: (N, d1, d2, ...) -> (N, d1*d2*...); backward reshapes the gradient back.

The cache keeps only the input shape (no arrays).
"""
from typing import NamedTuple

from .base import Module


class FlattenCache(NamedTuple):
    x_shape: tuple


def flatten_forward(x):
    """x (N, ...) -> y (N, prod(...)), a view where x is contiguous."""
    return x.reshape(x.shape[0], -1), FlattenCache(x_shape=tuple(x.shape))


def flatten_backward(dy, cache):
    """dy (N, prod(...)) -> dx (N, ...)."""
    return dy.reshape(cache.x_shape)


class Flatten(Module):
    def forward(self, x):
        return flatten_forward(x)

    def backward(self, dy, cache):
        return flatten_backward(dy, cache)

    def __repr__(self):
        return "Flatten()"
