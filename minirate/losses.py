"""Softmax cross-entropy, averaged over the batch.

    p = softmax(z),  L = −(1/B) Σ_b log p[b, y_b],  dL/dz = (p − onehot(y)) / B
"""
from .backend import get_array_module


def cross_entropy(z, y):
    """z: (B, K) logits, y: (B,) int labels. Returns (loss as float, dz (B, K))."""
    xp = get_array_module(z)
    z = z - z.max(axis=1, keepdims=True)             # same softmax, no overflow
    logp = z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))
    B = z.shape[0]
    rows = xp.arange(B)
    loss = -logp[rows, y].mean()
    dz = xp.exp(logp)
    dz[rows, y] -= 1
    return float(loss), dz / B
