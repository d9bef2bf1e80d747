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


def mse_onehot(z, y):
    """Mean squared error against one-hot targets, as a mean over all B·K entries.

        L = (1/(B K)) Σ_{b,k} (z[b, k] − onehot(y)[b, k])²,   dL/dz = 2 (z − onehot(y)) / (B K)
    """
    xp = get_array_module(z)
    diff = z.copy()
    diff[xp.arange(z.shape[0]), y] -= 1
    return float((diff * diff).mean()), 2 * diff / diff.size


def mse_constant(c):
    """Mean squared error of every logit against the same constant c, whatever the label (the
    regulariser of SLTT's CIFAR recipes, with c = 1.0), as a mean over all B·K entries:

        L = (1/(B K)) Σ_{b,k} (z[b, k] − c)²,   dL/dz = 2 (z − c) / (B K)
    """
    def loss_fn(z, y):
        diff = z - z.dtype.type(c)
        return float((diff * diff).mean()), 2 * diff / diff.size

    return loss_fn


def ce_mse(loss_lambda, target="onehot"):
    """The loss (1 − λ_L) · CE(z, y) + λ_L · MSE(z, target) as a loss function (z, y) ->
    (loss, dz), target "onehot" (onehot(y)) or a number c (every logit towards c). λ_L = 0 is
    plain cross-entropy. Used per step by the online methods."""
    if not 0.0 <= loss_lambda <= 1.0:
        raise ValueError(f"loss lambda must be in [0, 1], got {loss_lambda}")
    mse = mse_onehot if target == "onehot" else mse_constant(float(target))

    def loss_fn(z, y):
        if loss_lambda == 0.0:
            return cross_entropy(z, y)
        ce, dce = cross_entropy(z, y)
        m, dm = mse(z, y)
        return ((1 - loss_lambda) * ce + loss_lambda * m,
                (1 - loss_lambda) * dce + loss_lambda * dm)

    return loss_fn
