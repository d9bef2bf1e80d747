"""2-D convolution (cross-correlation, as in PyTorch) by im2col and per-sample matrix multiplies.

    y[n, o, i, j] = b[o] + sum_{c, p, q} W[o, c, p, q] * x_pad[n, c, s*i + p, s*j + q]

with s the stride, x_pad the input zero-padded by `padding` on each side, and output size
Ho = (H + 2*padding - k) // s + 1 (same for Wo). Writing the windows of sample n as the columns of

    cols[n, (c, p, q), (i, j)] = x_pad[n, c, s*i + p, s*j + q]        (N, C*k*k, Ho*Wo)

turns each pass into matrix multiplies, one per sample, with W2 = W.reshape(O, C*k*k):

    forward   y[n]     = W2 @ cols[n]                                  (O, Ho*Wo)
    backward  dW2      = sum_n dy[n] @ cols[n].T                       (O, C*k*k)
              dcols[n] = W2.T @ dy[n]        db = sum_{n,i,j} dy
              dx       = col2im(dcols)       (adds every column back onto the window it came from)

Rows are ordered (c, p, q) to match W.reshape. With the sample axis first and (i, j) last, W2 @ cols[n]
is already sample n's output in NCHW order, and dy[n] is read where it lies: nothing is transposed.
im2col is k*k strided slice copies (one per kernel offset), col2im k*k strided slice adds.

The batch goes through in chunks of a few samples, so that one chunk's cols is still in cache when
the multiply reads it, and the k*k-times-larger temporaries stay small whatever N is. The cache
keeps the *unpadded* input x itself (not the padded copy and not cols): backward pads again and
rebuilds cols, chunk by chunk. Keeping x itself means a cache shares its bytes with whichever layer
produced x.
"""
from typing import NamedTuple

import numpy as np

from ..backend import get_array_module
from .base import Module

# Bytes of cols (and of dcols) per chunk of samples: small enough to stay in a CPU's last-level
# cache between im2col and the multiply, large enough that each chunk is a big GEMM batch.
CHUNK_BYTES = 8 * 2**20


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


def _chunks(N, sample_bytes):
    """(n0, n1) ranges covering 0..N, each holding about CHUNK_BYTES of per-sample temporaries."""
    size = max(1, min(N, CHUNK_BYTES // max(1, sample_bytes)))
    return [(n0, min(N, n0 + size)) for n0 in range(0, N, size)]


def _is_pointwise(k, stride, padding):
    """A 1x1 kernel, stride 1, no padding: the windows are the pixels, cols is x itself."""
    return k == 1 and stride == 1 and padding == 0


def im2col(x, k, stride, padding, out=None):
    """Windows of x as columns, one matrix per sample: (N, C, H, W) -> cols (N, C*k*k, Ho*Wo).

    cols[n, (c, p, q), (i, j)] = x_pad[n, c, s*i + p, s*j + q]. Filled through its
    (N, C, k, k, Ho, Wo) view by one strided slice copy per kernel offset (p, q); `out`, if given,
    is the (N, C*k*k, Ho*Wo) array to fill. A 1x1 kernel at stride 1 without padding copies nothing:
    cols is then a view of x (and `out` is ignored).
    """
    xp = get_array_module(x)
    N, C, H, W = x.shape
    Ho, Wo = conv_out_size(H, k, stride, padding), conv_out_size(W, k, stride, padding)
    if _is_pointwise(k, stride, padding):
        return x.reshape(N, C, H * W)                         # (N, C, H, W) -> (N, C, H*W)
    if out is None:
        out = xp.empty((N, C * k * k, Ho * Wo), dtype=x.dtype)
    cols6 = out.reshape(N, C, k, k, Ho, Wo)                   # (N, C*k*k, Ho*Wo) -> 6-D view
    x_pad = _pad(x, padding)
    for p in range(k):
        for q in range(k):
            cols6[:, :, p, q] = x_pad[:, :, p:p + stride * Ho:stride, q:q + stride * Wo:stride]
    return out


def col2im(cols, x_shape, k, stride, padding):
    """Adjoint of im2col: add every column back onto its window, (N, C*k*k, Ho*Wo) -> (N, C, H, W).

    dx_pad[n, c, s*i + p, s*j + q] += cols[n, (c, p, q), (i, j)], one strided slice add per kernel
    offset (p, q), then the padding is cropped off. Returns a view into the padded buffer when
    there is padding (the caller copies it where it needs it).
    """
    xp = get_array_module(cols)
    N, C, H, W = x_shape
    Ho, Wo = conv_out_size(H, k, stride, padding), conv_out_size(W, k, stride, padding)
    if _is_pointwise(k, stride, padding):
        return cols.reshape(N, C, H, W)                       # (N, C, H*W) -> (N, C, H, W)
    cols6 = cols.reshape(N, C, k, k, Ho, Wo)                  # (N, C*k*k, Ho*Wo) -> 6-D view
    dx_pad = xp.zeros((N, C, H + 2 * padding, W + 2 * padding), dtype=cols.dtype)
    for p in range(k):
        for q in range(k):
            dx_pad[:, :, p:p + stride * Ho:stride, q:q + stride * Wo:stride] += cols6[:, :, p, q]
    return dx_pad[:, :, padding:padding + H, padding:padding + W]


def conv2d_forward(x, W, b, stride=1, padding=0):
    """y = conv(x, W) + b.  x (N, C, H, W), W (O, C, k, k), b (O,) or None -> y (N, O, Ho, Wo).

    y[n] = W2 @ cols[n] + b, chunk by chunk over the batch (see the module docstring).
    """
    xp = get_array_module(x)
    N, C, H, Wd = x.shape
    O, C_w, k, k2 = W.shape
    if C_w != C or k2 != k:
        raise ValueError(f"weight {W.shape} does not fit input {x.shape} (square kernels only)")
    Ho, Wo = conv_out_size(H, k, stride, padding), conv_out_size(Wd, k, stride, padding)
    CKK, HW = C * k * k, Ho * Wo
    W2 = W.reshape(O, CKK)                                    # (O, C, k, k) -> (O, C*k*k)
    y = xp.empty((N, O, HW), dtype=xp.result_type(x, W))
    chunks = _chunks(N, CKK * HW * x.dtype.itemsize)
    buf = xp.empty((chunks[0][1], CKK, HW), dtype=x.dtype)   # one chunk's cols, reused
    for n0, n1 in chunks:
        cols = im2col(x[n0:n1], k, stride, padding, out=buf[:n1 - n0])  # (n, C*k*k, Ho*Wo)
        xp.matmul(W2, cols, out=y[n0:n1])                    # (O, CKK) @ (n, CKK, HW) -> (n, O, HW)
    if b is not None:
        y += b.reshape(1, O, 1)
    y = y.reshape(N, O, Ho, Wo)                               # (N, O, Ho*Wo) -> (N, O, Ho, Wo)
    return y, Conv2dCache(x=x, W=W, stride=stride, padding=padding, has_bias=b is not None)


def conv2d_backward(dy, cache):
    """dy (N, O, Ho, Wo) -> (dx (N, C, H, W), dW (O, C, k, k), db (O,) or None).

    dW2 = sum_n dy[n] @ cols[n].T,  dx = col2im(W2.T @ dy[n] for each n),  db = dy summed over
    n, i, j; cols is rebuilt from the cached input one chunk of samples at a time.
    """
    xp = get_array_module(dy)
    x, W, stride, padding = cache.x, cache.W, cache.stride, cache.padding
    O, C, k, _ = W.shape
    N, _, Ho, Wo = dy.shape
    CKK, HW = C * k * k, Ho * Wo
    dy3 = dy.reshape(N, O, HW)                                # (N, O, Ho, Wo) -> (N, O, Ho*Wo)
    W2 = W.reshape(O, CKK)                                    # (O, C, k, k) -> (O, C*k*k)
    dW2 = xp.zeros((O, CKK), dtype=xp.result_type(dy, x))
    dx = xp.empty(x.shape, dtype=xp.result_type(W, dy))
    chunks = _chunks(N, CKK * HW * max(x.dtype.itemsize, dx.dtype.itemsize))
    n_max = chunks[0][1]
    buf = xp.empty((n_max, CKK, HW), dtype=x.dtype)           # one chunk's cols, reused
    dbuf = xp.empty((n_max, CKK, HW), dtype=dx.dtype)         # one chunk's dcols, reused
    for n0, n1 in chunks:
        cols = im2col(x[n0:n1], k, stride, padding, out=buf[:n1 - n0])   # (n, CKK, HW)
        # sum_n dy[n] @ cols[n].T: (n, O, HW) @ (n, HW, CKK) -> (n, O, CKK), summed over n
        dW2 += xp.matmul(dy3[n0:n1], cols.transpose(0, 2, 1)).sum(axis=0)
        dcols = xp.matmul(W2.T, dy3[n0:n1], out=dbuf[:n1 - n0])  # (CKK, O) @ (n, O, HW)
        dx[n0:n1] = col2im(dcols, (n1 - n0,) + x.shape[1:], k, stride, padding)
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
