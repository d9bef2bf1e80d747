"""2-D convolution (cross-correlation, as in PyTorch) by im2col and matrix multiplies.

    y[n, o, i, j] = b[o] + sum_{c, p, q} W[o, c, p, q] * x_pad[n, c, s*i + p, s*j + q]

with s the stride, x_pad the input zero-padded by `padding` on each side, and output size
Ho = (H + 2*padding - k) // s + 1 (same for Wo). Writing the input windows as the columns of

    cols[(c, p, q), (n, i, j)] = x_pad[n, c, s*i + p, s*j + q]          (C*k*k, N*Ho*Wo)

turns each pass into one matrix multiply with W2 = W.reshape(O, C*k*k):

    forward   y2  = W2 @ cols                                          (O, N*Ho*Wo)
    backward  dW2 = dy2 @ cols.T        dcols = W2.T @ dy2        db = sum_{n,i,j} dy
              dx  = col2im(dcols)       (adds every column back onto the window it came from)

Rows are ordered (c, p, q) to match W.reshape, and columns (n, i, j) so that one GEMM covers many
samples at once. im2col is k*k strided slice copies (one per kernel offset), col2im k*k strided
slice adds.

On the CPU the batch goes through in chunks of a few samples (see `_chunks`): one chunk's cols is
still in cache when the multiply reads it, the k*k-times-larger temporaries stay small whatever N
is, and only the chunk's y2 and dy2 (k*k times smaller than cols when O = C) are transposed between
(O, n, Ho*Wo) and NCHW. The cache keeps the *unpadded* input x itself (not the padded copy and not
cols): backward pads again and rebuilds cols, chunk by chunk. Keeping x itself means a cache shares
its bytes with whichever layer produced x.
"""
from typing import NamedTuple

import numpy as np

from ..backend import get_array_module
from .base import Module

# Chunks of samples on the CPU (see _chunks): CHUNK_BYTES of per-sample temporaries (cols in
# forward, cols and dcols in backward), but never GEMMs narrower than MIN_COLS columns.
CHUNK_BYTES = 4 * 2**20
MIN_COLS = 512


class Conv2dCache(NamedTuple):
    x: object          # (N, C, H, W) the input as given (unpadded; a reference, not a copy)
    W: object          # (O, C, k, k) the weight used in forward (a reference to the parameter)
    stride: int
    padding: int
    has_bias: bool


def conv_out_size(size, k, stride, padding):
    """Output length along one axis: floor((size + 2*padding - k) / stride) + 1."""
    out = (size + 2 * padding - k) // stride + 1
    if out < 1:
        raise ValueError(f"convolution window k={k} does not fit input {size} with padding {padding}")
    return out


def _pad(x, padding):
    """Zero-pad the two spatial axes of (N, C, H, W) by `padding` on each side."""
    if padding == 0:
        return x
    xp = get_array_module(x)
    N, C, H, W = x.shape
    x_pad = xp.zeros((N, C, H + 2 * padding, W + 2 * padding), dtype=x.dtype)
    x_pad[:, :, padding:padding + H, padding:padding + W] = x
    return x_pad


def _chunks(xp, N, HW, sample_bytes):
    """(n0, n1) sample ranges covering 0..N, for a layer with HW output pixels per sample.

    On the CPU a chunk holds about CHUNK_BYTES of temporaries, so that cols is still in the
    last-level cache when the multiply reads it, unless that would make the GEMMs narrower than
    MIN_COLS columns (small images, wide layers: there the multiplies dominate, and every chunk
    also pays one pass over dW). A GPU takes the whole batch at once: each chunk costs kernel
    launches, and it has no such cache to fit.
    """
    if xp is np:
        size = max(CHUNK_BYTES // max(1, sample_bytes), -(-MIN_COLS // HW))  # -(-a // b): ceil
    else:
        size = N
    size = max(1, min(N, size))
    return [(n0, min(N, n0 + size)) for n0 in range(0, N, size)]


def im2col(x, k, stride, padding, out=None):
    """Windows of x as columns: (N, C, H, W) -> cols (C*k*k, N*Ho*Wo), rows (c, p, q), columns (n, i, j).

    Filled through its (C, k, k, N, Ho, Wo) view by one strided slice copy per kernel offset
    (p, q); `out`, if given, is the (C*k*k, N*Ho*Wo) array to fill.
    """
    xp = get_array_module(x)
    N, C, H, W = x.shape
    Ho, Wo = conv_out_size(H, k, stride, padding), conv_out_size(W, k, stride, padding)
    if out is None:
        out = xp.empty((C * k * k, N * Ho * Wo), dtype=x.dtype)
    cols6 = out.reshape(C, k, k, N, Ho, Wo)                   # (C*k*k, N*Ho*Wo) -> 6-D view
    x_pad = _pad(x, padding).transpose(1, 0, 2, 3)            # (N, C, Hp, Wp) -> (C, N, Hp, Wp)
    for p in range(k):
        for q in range(k):
            cols6[:, p, q] = x_pad[:, :, p:p + stride * Ho:stride, q:q + stride * Wo:stride]
    return out


def col2im(cols, x_shape, k, stride, padding, out=None):
    """Adjoint of im2col: add every column back onto its window, (C*k*k, N*Ho*Wo) -> (N, C, H, W).

    dx_pad[n, c, s*i + p, s*j + q] += cols[(c, p, q), (n, i, j)], one strided slice add per kernel
    offset (p, q), then the padding is cropped off. `out`, if given, is the (N, C, H, W) array that
    receives dx (overwritten); without padding the sums are built in it directly.
    """
    xp = get_array_module(cols)
    N, C, H, W = x_shape
    Ho, Wo = conv_out_size(H, k, stride, padding), conv_out_size(W, k, stride, padding)
    if out is None:
        out = xp.empty(x_shape, dtype=cols.dtype)
    cols6 = cols.reshape(C, k, k, N, Ho, Wo)                  # (C*k*k, N*Ho*Wo) -> 6-D view
    if padding == 0:
        dx_pad = out                                          # no border to crop off
        dx_pad[...] = 0
    else:
        dx_pad = xp.zeros((N, C, H + 2 * padding, W + 2 * padding), dtype=cols.dtype)
    dx_pad_t = dx_pad.transpose(1, 0, 2, 3)                   # (N, C, Hp, Wp) -> (C, N, Hp, Wp)
    for p in range(k):
        for q in range(k):
            window = dx_pad_t[:, :, p:p + stride * Ho:stride, q:q + stride * Wo:stride]
            window += cols6[:, p, q]                          # in place, through the view
    if padding:
        out[...] = dx_pad[:, :, padding:padding + H, padding:padding + W]
    return out


def conv2d_forward(x, W, b, stride=1, padding=0):
    """y = conv(x, W) + b.  x (N, C, H, W), W (O, C, k, k), b (O,) or None -> y (N, O, Ho, Wo).

    y2 = W2 @ cols + b for one chunk of samples at a time (see the module docstring).
    """
    xp = get_array_module(x)
    N, C, H, Wd = x.shape
    O, C_w, k, k2 = W.shape
    if C_w != C or k2 != k:
        raise ValueError(f"weight {W.shape} does not fit input {x.shape} (square kernels only)")
    Ho, Wo = conv_out_size(H, k, stride, padding), conv_out_size(Wd, k, stride, padding)
    CKK, HW = C * k * k, Ho * Wo
    W2 = W.reshape(O, CKK)                                    # (O, C, k, k) -> (O, C*k*k)
    y = xp.empty((N, O, Ho, Wo), dtype=xp.result_type(x, W))
    chunks = _chunks(xp, N, HW, CKK * HW * x.dtype.itemsize)
    buf = xp.empty(CKK * chunks[0][1] * HW, dtype=x.dtype)   # one chunk's cols, reused
    for n0, n1 in chunks:
        n = n1 - n0
        cols = im2col(x[n0:n1], k, stride, padding, out=buf[:CKK * n * HW].reshape(CKK, n * HW))
        y2 = W2 @ cols                                        # (O, n*Ho*Wo)
        if b is not None:
            y2 += b.reshape(O, 1)
        y[n0:n1] = y2.reshape(O, n, Ho, Wo).transpose(1, 0, 2, 3)  # -> (n, O, Ho, Wo)
    return y, Conv2dCache(x=x, W=W, stride=stride, padding=padding, has_bias=b is not None)


def conv2d_backward(dy, cache):
    """dy (N, O, Ho, Wo) -> (dx (N, C, H, W), dW (O, C, k, k), db (O,) or None).

    dW2 = dy2 @ cols.T summed over the chunks,  dx = col2im(W2.T @ dy2) chunk by chunk,
    db = dy summed over n, i, j; dy2 is a chunk of dy as (O, n*Ho*Wo) and cols is rebuilt from
    the cached input.
    """
    xp = get_array_module(dy)
    x, W, stride, padding = cache.x, cache.W, cache.stride, cache.padding
    O, C, k, _ = W.shape
    N, _, Ho, Wo = dy.shape
    CKK, HW = C * k * k, Ho * Wo
    W2 = W.reshape(O, CKK)                                    # (O, C, k, k) -> (O, C*k*k)
    dW2 = xp.zeros((O, CKK), dtype=xp.result_type(dy, x))
    dx = xp.empty(x.shape, dtype=xp.result_type(W, dy))
    chunks = _chunks(xp, N, HW, CKK * HW * (x.dtype.itemsize + dx.dtype.itemsize))  # cols, dcols
    n_max = chunks[0][1]
    buf = xp.empty(CKK * n_max * HW, dtype=x.dtype)           # one chunk's cols, reused
    dbuf = xp.empty(CKK * n_max * HW, dtype=dx.dtype)         # one chunk's dcols, reused
    for n0, n1 in chunks:
        n = n1 - n0
        cols = im2col(x[n0:n1], k, stride, padding, out=buf[:CKK * n * HW].reshape(CKK, n * HW))
        # (n, O, Ho, Wo) -> (O, n*Ho*Wo): a copy, k*k times smaller than cols when O = C
        dy2 = dy[n0:n1].transpose(1, 0, 2, 3).reshape(O, n * HW)
        dW2 += dy2 @ cols.T                                   # (O, C*k*k)
        dcols = xp.matmul(W2.T, dy2, out=dbuf[:CKK * n * HW].reshape(CKK, n * HW))  # W2.T @ dy2
        col2im(dcols, dx[n0:n1].shape, k, stride, padding, out=dx[n0:n1])
    db = dy.sum(axis=(0, 2, 3)) if cache.has_bias else None
    return dx, dW2.reshape(W.shape), db                       # (O, C*k*k) -> (O, C, k, k)


class Conv2d(Module):
    """Square-kernel 2-D convolution with PyTorch's default initialisation.

    weight (O, C, k, k) and bias (O,) are both drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    fan_in = C*k*k (what kaiming_uniform_(a=sqrt(5)) reduces to).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 rng=None):
        super().__init__()
        rng = np.random.default_rng() if rng is None else rng
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        fan_in = in_channels * kernel_size * kernel_size
        bound = 1.0 / np.sqrt(fan_in)
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.add_param("weight", rng.uniform(-bound, bound, shape).astype(np.float32), decay=True)
        if bias:
            self.add_param("bias", rng.uniform(-bound, bound, out_channels).astype(np.float32),
                           decay=False)

    def forward(self, x):
        return conv2d_forward(x, self.params["weight"], self.params.get("bias"),
                              self.stride, self.padding)

    def backward(self, dy, cache):
        dx, dW, db = conv2d_backward(dy, cache)
        self.grads["weight"] += dW
        if db is not None:
            self.grads["bias"] += db
        return dx

    def __repr__(self):
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={'bias' in self.params})")
