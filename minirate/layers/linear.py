"""Fully connected layer.

    forward   y  = x @ W.T + b                      x (N, in), W (out, in), b (out,) -> y (N, out)
    backward  dx = dy @ W     dW = dy.T @ x     db = sum_n dy

Leading axes beyond one are allowed (x (..., in)): they are flattened into N for the products.
The cache keeps the input x itself (a reference, not a copy) and a reference to W.
"""
from typing import NamedTuple

import numpy as np

from .base import Module


class LinearCache(NamedTuple):
    x: object          # (..., in) the input as given
    W: object          # (out, in) the weight used in forward (a reference to the parameter)
    has_bias: bool


def linear_forward(x, W, b=None):
    """y = x @ W.T + b.  x (..., in), W (out, in), b (out,) or None -> y (..., out)."""
    out_f, in_f = W.shape
    if x.shape[-1] != in_f:
        raise ValueError(f"weight {W.shape} does not fit input {x.shape}")
    y = x.reshape(-1, in_f) @ W.T                 # (..., in) -> (M, in); (M, out)
    if b is not None:
        y += b
    return y.reshape(x.shape[:-1] + (out_f,)), LinearCache(x=x, W=W, has_bias=b is not None)


def linear_backward(dy, cache, need_dx=True):
    """dy (..., out) -> (dx (..., in), dW (out, in), db (out,) or None); dx is None (not
    computed) when need_dx is False."""
    x, W = cache.x, cache.W
    out_f, in_f = W.shape
    dy2 = dy.reshape(-1, out_f)                   # (..., out) -> (M, out)
    dx = (dy2 @ W).reshape(x.shape) if need_dx else None   # (M, in) -> (..., in)
    dW = dy2.T @ x.reshape(-1, in_f)              # (out, M) @ (M, in)
    db = dy2.sum(axis=0) if cache.has_bias else None
    return dx, dW, db


class Linear(Module):
    """y = x W^T + b with PyTorch's default initialisation: W and b from U(-1/sqrt(in), 1/sqrt(in))."""

    def __init__(self, in_features, out_features, bias=True, rng=None):
        super().__init__()
        rng = np.random.default_rng() if rng is None else rng
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / np.sqrt(in_features)
        self.add_param("weight", rng.uniform(-bound, bound, (out_features, in_features))
                       .astype(np.float32), decay=True)
        if bias:
            self.add_param("bias", rng.uniform(-bound, bound, out_features).astype(np.float32),
                           decay=False)

    def forward(self, x):
        return linear_forward(x, self.params["weight"], self.params.get("bias"))

    def backward(self, dy, cache, need_dx=True):
        dx, dW, db = linear_backward(dy, cache, need_dx)
        self.grads["weight"] += dW
        if db is not None:
            self.grads["bias"] += db
        return dx

    def __repr__(self):
        return (f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={'bias' in self.params})")
