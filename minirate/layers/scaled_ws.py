"""Scaled weight standardization (sWS): convolution and linear layers whose weight is re-centred
and re-scaled per output unit at every call, used instead of batchnorm (Brock et al., 2021; the
networks of OTTT, Xiao et al., NeurIPS 2022).

For output unit i with weight row W_i (its N = fan-in entries: C·k·k for a convolution, `in` for
a linear layer), mean m_i, *unbiased* variance v_i = Σ_j (W_ij − m_i)² / (N − 1) and gain g_i:

    d_i  = sqrt(N · v_i + eps)                   (eps = 1e-4)
    ẑ_i  = (W_i − m_i) / d_i                     standardized row
    Ŵ_i  = g_i · ẑ_i                             the weight the layer uses

The layer is then an ordinary convolution / linear layer with Ŵ (see conv.py, linear.py), and
its backward turns dŴ into the gradients of W and g (all through m_i, v_i and g_i). With
a_i = g_i · dŴ_i, and means over the N entries of the row,

    dg_i = Σ_j dŴ_ij · ẑ_ij
    dW_i = (a_i − mean(a_i) − N/(N − 1) · (Σ_j a_ij ẑ_ij) · ẑ_i) / d_i

(the first two terms: ẑ's direct dependence on W through W − m; the last: through d_i via v_i,
using Σ_j (W_ij − m_i) = 0). The gain starts at 1 and is a parameter named `gain` of shape
(O, 1, 1, 1) (convolution) or (O, 1) (linear), as in the equivalent PyTorch layer.
"""
from typing import NamedTuple

import numpy as np

from ..backend import get_array_module
from .conv import Conv2d, conv2d_backward, conv2d_forward
from .linear import Linear, linear_backward, linear_forward

WS_EPS = 1e-4


class WSCache(NamedTuple):
    z: object          # (O, N) standardized rows ẑ = (W − m) / d
    inv_d: object      # (O, 1) 1 / d
    gain: object       # (O, 1) the gain used in forward (a view of the parameter)


class ScaledWSCache(NamedTuple):
    op: object         # Conv2dCache or LinearCache of the layer run with Ŵ (its input is op.x)
    ws: WSCache


def standardize_weight(W, gain, eps=WS_EPS):
    """Ŵ = gain · (W − mean) / sqrt(N · var + eps) per output row. W (O, ...), gain (O, 1, ...).

    Returns Ŵ (W's shape) and a WSCache.
    """
    O = W.shape[0]
    W2 = W.reshape(O, -1)                                   # (O, ...) -> (O, N)
    N = W2.shape[1]
    centred = W2 - W2.mean(axis=1, keepdims=True)
    var = (centred * centred).sum(axis=1, keepdims=True) / (N - 1)      # unbiased
    inv_d = 1 / get_array_module(W).sqrt(N * var + eps)
    z = centred * inv_d
    g = gain.reshape(O, 1)
    return (g * z).reshape(W.shape), WSCache(z=z, inv_d=inv_d, gain=g)


def standardize_weight_backward(dW_hat, cache):
    """dŴ (O, ...) -> (dW (O, ...), dgain (O, 1)); see the module docstring."""
    z, inv_d, g = cache.z, cache.inv_d, cache.gain
    O, N = z.shape
    dW_hat2 = dW_hat.reshape(O, N)                          # (O, ...) -> (O, N)
    dgain = (dW_hat2 * z).sum(axis=1, keepdims=True)
    a = g * dW_hat2
    az = (a * z).sum(axis=1, keepdims=True)
    dW = (a - a.mean(axis=1, keepdims=True) - (N / (N - 1)) * az * z) * inv_d
    return dW.reshape(dW_hat.shape), dgain


class ScaledWSConv2d(Conv2d):
    """Conv2d with a standardized weight Ŵ (see the module docstring); same initialisation."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_param("gain", np.ones((self.out_channels, 1, 1, 1), np.float32), decay=False)

    def forward(self, x):
        W_hat, ws = standardize_weight(self.params["weight"], self.params["gain"])
        y, op = conv2d_forward(x, W_hat, self.params.get("bias"), self.stride, self.padding)
        return y, ScaledWSCache(op=op, ws=ws)

    def backward(self, dy, cache, need_dx=True):
        dx, dW_hat, db = conv2d_backward(dy, cache.op, need_dx)
        dW, dgain = standardize_weight_backward(dW_hat, cache.ws)
        self.grads["weight"] += dW
        self.grads["gain"] += dgain.reshape(self.grads["gain"].shape)
        if db is not None:
            self.grads["bias"] += db
        return dx

    def __repr__(self):
        return "ScaledWS" + super().__repr__()


class ScaledWSLinear(Linear):
    """Linear with a standardized weight Ŵ (see the module docstring); same initialisation."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_param("gain", np.ones((self.out_features, 1), np.float32), decay=False)

    def forward(self, x):
        W_hat, ws = standardize_weight(self.params["weight"], self.params["gain"])
        y, op = linear_forward(x, W_hat, self.params.get("bias"))
        return y, ScaledWSCache(op=op, ws=ws)

    def backward(self, dy, cache, need_dx=True):
        dx, dW_hat, db = linear_backward(dy, cache.op, need_dx)
        dW, dgain = standardize_weight_backward(dW_hat, cache.ws)
        self.grads["weight"] += dW
        self.grads["gain"] += dgain
        if db is not None:
            self.grads["bias"] += db
        return dx

    def __repr__(self):
        return "ScaledWS" + super().__repr__()
