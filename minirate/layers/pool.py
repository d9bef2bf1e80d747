"""Average, max and adaptive average pooling over (N, C, H, W), with PyTorch's semantics.

Window k, stride s (default k), zero/-inf padding p on each side, floor mode:
Ho = (H + 2p - k) // s + 1.  Window (i, j) covers rows s*i - p ... s*i - p + k - 1.

    AvgPool2d          y[i, j] = (1/k^2) sum_{window} x_pad       (padding counts as zeros: count_include_pad)
                       dx_pad[window(i, j)] += dy[i, j] / k^2
    MaxPool2d          y[i, j] = max_{window} x_pad               (x padded with -inf)
                       dx_pad[argmax(i, j)] += dy[i, j]           (first maximum on ties)
    AdaptiveAvgPool2d  y[i, j] = mean of x over rows [floor(i*H/oh), ceil((i+1)*H/oh)) and the
                       same rule for columns; as matrices y = P_h @ x @ P_w^T, dx = P_h^T @ dy @ P_w

Forward passes loop over the k*k window offsets, combining whole (N, C, Ho, Wo) strided slices
(never looping over pixels); on NumPy this beats a reshape into blocks followed by a reduction over
the small block axes, even for non-overlapping windows. The average-pool backward of
non-overlapping, unpadded windows (s == k, p == 0, the common case) is a broadcast and a reshape;
every other backward adds strided slices offset by offset.
"""
from typing import NamedTuple

import numpy as np

from ..backend import get_array_module
from .base import Module


class AvgPool2dCache(NamedTuple):
    x_shape: tuple
    kernel_size: int
    stride: int
    padding: int


class MaxPool2dCache(NamedTuple):
    argmax: object     # (N, C, Ho, Wo) window offset p*k + q of the maximum (uint8 when k*k <= 256)
    x_shape: tuple
    kernel_size: int
    stride: int
    padding: int


class AdaptiveAvgPool2dCache(NamedTuple):
    x_shape: tuple
    output_size: tuple  # (oh, ow)


# -- shared pieces -------------------------------------------------------------------------------
def _settings(kernel_size, stride, padding):
    k = int(kernel_size)
    s = k if stride is None else int(stride)
    p = int(padding)
    if k < 1 or s < 1 or p < 0:
        raise ValueError(f"bad pooling settings kernel_size={kernel_size}, stride={stride}, "
                         f"padding={padding}")
    if 2 * p > k:
        raise ValueError(f"padding {p} should be at most half of kernel_size {k}")
    return k, s, p


def _out_size(size, k, s, p):
    out = (size + 2 * p - k) // s + 1
    if out < 1:
        raise ValueError(f"pooling window {k} does not fit input {size} with padding {p}")
    return out


def _pad(x, p, value):
    """(N, C, H, W) -> (N, C, H+2p, W+2p) filled with `value` around x."""
    if p == 0:
        return x
    xp = get_array_module(x)
    N, C, H, W = x.shape
    x_pad = xp.full((N, C, H + 2 * p, W + 2 * p), value, dtype=x.dtype)
    x_pad[:, :, p:p + H, p:p + W] = x
    return x_pad


def _window(a, p, q, s, Ho, Wo):
    """The (N, C, Ho, Wo) strided slice of a padded array seen at window offset (p, q)."""
    return a[:, :, p:p + s * (Ho - 1) + 1:s, q:q + s * (Wo - 1) + 1:s]


def _unpad(dx_pad, p, H, W):
    if p == 0:
        return dx_pad
    xp = get_array_module(dx_pad)
    return xp.ascontiguousarray(dx_pad[:, :, p:p + H, p:p + W])


def _blocks_to_image(g, x_shape):
    """(N, C, Ho, k, Wo, k) block values -> (N, C, H, W), zeros on the rows/columns floor mode drops."""
    xp = get_array_module(g)
    N, C, Ho, k, Wo, _ = g.shape
    img = g.reshape(N, C, Ho * k, Wo * k)  # (N, C, Ho, k, Wo, k) -> (N, C, Ho*k, Wo*k)
    if img.shape == tuple(x_shape):
        return xp.ascontiguousarray(img)
    dx = xp.zeros(x_shape, dtype=g.dtype)
    dx[:, :, :Ho * k, :Wo * k] = img
    return dx


# -- average pooling -----------------------------------------------------------------------------
def avg_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """x (N, C, H, W) -> y (N, C, Ho, Wo), the mean over each k x k window (padding counted)."""
    k, s, p = _settings(kernel_size, stride, padding)
    N, C, H, W = x.shape
    Ho, Wo = _out_size(H, k, s, p), _out_size(W, k, s, p)
    x_pad = _pad(x, p, 0)
    y = _window(x_pad, 0, 0, s, Ho, Wo).copy()
    for off in range(1, k * k):
        y += _window(x_pad, off // k, off % k, s, Ho, Wo)
    y /= k * k
    return y, AvgPool2dCache(x_shape=tuple(x.shape), kernel_size=k, stride=s, padding=p)


def avg_pool2d_backward(dy, cache):
    """dy (N, C, Ho, Wo) -> dx (N, C, H, W): each window gets dy / k^2 on every element."""
    xp = get_array_module(dy)
    k, s, p = cache.kernel_size, cache.stride, cache.padding
    N, C, H, W = cache.x_shape
    _, _, Ho, Wo = dy.shape
    g = dy / (k * k)
    if s == k and p == 0:
        blocks = xp.broadcast_to(g[:, :, :, None, :, None], (N, C, Ho, k, Wo, k))
        return _blocks_to_image(blocks, cache.x_shape)
    dx_pad = xp.zeros((N, C, H + 2 * p, W + 2 * p), dtype=dy.dtype)
    for off in range(k * k):
        _window(dx_pad, off // k, off % k, s, Ho, Wo)[...] += g
    return _unpad(dx_pad, p, H, W)


# -- max pooling ---------------------------------------------------------------------------------
def max_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """x (N, C, H, W) -> y (N, C, Ho, Wo), the max over each k x k window (padding is -inf).

    The cache keeps only the argmax offset in the window, as a small integer per output.
    """
    xp = get_array_module(x)
    k, s, p = _settings(kernel_size, stride, padding)
    N, C, H, W = x.shape
    Ho, Wo = _out_size(H, k, s, p), _out_size(W, k, s, p)
    x_pad = _pad(x, p, -np.inf)
    y = _window(x_pad, 0, 0, s, Ho, Wo).copy()
    argmax = xp.zeros((N, C, Ho, Wo), dtype=np.uint8 if k * k <= 256 else np.int32)
    for off in range(1, k * k):
        v = _window(x_pad, off // k, off % k, s, Ho, Wo)
        better = v > y  # strictly greater keeps the first maximum on ties
        xp.maximum(y, v, out=y)
        xp.copyto(argmax, argmax.dtype.type(off), where=better)
    return y, MaxPool2dCache(argmax=argmax, x_shape=tuple(x.shape), kernel_size=k, stride=s,
                             padding=p)


def max_pool2d_backward(dy, cache):
    """dy (N, C, Ho, Wo) -> dx (N, C, H, W): each dy goes to its window's argmax (summed on overlap)."""
    xp = get_array_module(dy)
    k, s, p = cache.kernel_size, cache.stride, cache.padding
    N, C, H, W = cache.x_shape
    _, _, Ho, Wo = dy.shape
    argmax = cache.argmax
    dx_pad = xp.zeros((N, C, H + 2 * p, W + 2 * p), dtype=dy.dtype)
    for off in range(k * k):
        _window(dx_pad, off // k, off % k, s, Ho, Wo)[...] += dy * (argmax == off)
    return _unpad(dx_pad, p, H, W)


# -- adaptive average pooling --------------------------------------------------------------------
def _pair(v):
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def _bin_matrix(size, out):
    """P (out, size): P[i, a] = 1/len(bin i) for a in bin i = [floor(i*size/out), ceil((i+1)*size/out))."""
    P = np.zeros((out, size))
    for i in range(out):
        start, end = (i * size) // out, -((-(i + 1) * size) // out)
        P[i, start:end] = 1.0 / (end - start)
    return P


def adaptive_avg_pool2d_forward(x, output_size):
    """x (N, C, H, W) -> y (N, C, oh, ow) with PyTorch's adaptive bins (see the module docstring)."""
    xp = get_array_module(x)
    oh, ow = _pair(output_size)
    N, C, H, W = x.shape
    if (oh, ow) == (1, 1):  # global average pooling
        y = x.mean(axis=(2, 3), keepdims=True)
    elif H % oh == 0 and W % ow == 0:  # equal kh x kw bins: a non-overlapping average
        kh, kw = H // oh, W // ow
        y = x[:, :, 0::kh, 0::kw].copy()
        for off in range(1, kh * kw):
            y += x[:, :, off // kw::kh, off % kw::kw]
        y /= kh * kw
    else:
        P_h = xp.asarray(_bin_matrix(H, oh), dtype=x.dtype)
        P_w = xp.asarray(_bin_matrix(W, ow), dtype=x.dtype)
        y = (P_h @ x) @ P_w.T  # (oh, H) @ (N, C, H, W) -> (N, C, oh, W); @ (W, ow) -> (N, C, oh, ow)
    return y, AdaptiveAvgPool2dCache(x_shape=tuple(x.shape), output_size=(oh, ow))


def adaptive_avg_pool2d_backward(dy, cache):
    """dy (N, C, oh, ow) -> dx (N, C, H, W) = P_h^T @ dy @ P_w."""
    xp = get_array_module(dy)
    oh, ow = cache.output_size
    N, C, H, W = cache.x_shape
    if (oh, ow) == (1, 1):
        return xp.ascontiguousarray(xp.broadcast_to(dy / (H * W), cache.x_shape))
    if H % oh == 0 and W % ow == 0:
        kh, kw = H // oh, W // ow
        g = xp.broadcast_to((dy / (kh * kw))[:, :, :, None, :, None], (N, C, oh, kh, ow, kw))
        return g.reshape(N, C, H, W)  # (N, C, oh, kh, ow, kw) -> (N, C, H, W), a copy
    P_h = xp.asarray(_bin_matrix(H, oh), dtype=dy.dtype)
    P_w = xp.asarray(_bin_matrix(W, ow), dtype=dy.dtype)
    return (P_h.T @ dy) @ P_w  # (H, oh) @ (N, C, oh, ow) -> (N, C, H, ow); @ (ow, W) -> (N, C, H, W)


# -- modules -------------------------------------------------------------------------------------
class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = _settings(kernel_size, stride, padding)

    def forward(self, x):
        return avg_pool2d_forward(x, self.kernel_size, self.stride, self.padding)

    def backward(self, dy, cache):
        return avg_pool2d_backward(dy, cache)

    def __repr__(self):
        return f"AvgPool2d(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding})"


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = _settings(kernel_size, stride, padding)

    def forward(self, x):
        return max_pool2d_forward(x, self.kernel_size, self.stride, self.padding)

    def backward(self, dy, cache):
        return max_pool2d_backward(dy, cache)

    def __repr__(self):
        return f"MaxPool2d(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding})"


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size):
        super().__init__()
        self.output_size = _pair(output_size)

    def forward(self, x):
        return adaptive_avg_pool2d_forward(x, self.output_size)

    def backward(self, dy, cache):
        return adaptive_avg_pool2d_backward(dy, cache)

    def __repr__(self):
        return f"AdaptiveAvgPool2d(output_size={self.output_size})"
