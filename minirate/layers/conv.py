"""2-D convolution (cross-correlation, as in PyTorch) by im2col and matrix multiplies.

    y[n, o, i, j] = b[o] + sum_{c, p, q} W[o, c, p, q] * x_pad[n, c, s*i + p, s*j + q]

with s the stride, x_pad the input zero-padded by `padding` on each side, and output size
Ho = (H + 2*padding - k) // s + 1 (same for Wo). Writing the input windows as the columns of

    cols[(c, p, q), (n, i, j)] = x_pad[n, c, s*i + p, s*j + q]          (C*k*k, N*Ho*Wo)

turns each pass into one matrix multiply with W2 = W.reshape(O, C*k*k):

    forward   y2  = W2 @ cols                                          (O, N*Ho*Wo)
    backward  dW2 = dy2 @ cols.T        db = sum_{n,i,j} dy
              dx  = col2im(W2.T @ dy2)  (adds every column back onto the window it came from)

Stride 1 backward takes another road (`_backward_stride1`): dx is itself a convolution of dy
(kernel transposed and flipped), so the windows of dy, built once, give both dx and dW by GEMMs;
no col2im's strided adds and no second im2col of x.

Rows are ordered (c, p, q) to match W.reshape; columns hold every (n, i, j), so that one GEMM
covers many samples at once, in the order (n, i, j) or, on small stride-1 maps, (i, j, n) (see
`samples_last`). im2col is k*k strided slice copies (one per kernel offset), col2im k*k strided
slice adds.

On the CPU the batch is split into one range of samples per thread, run at once (see
`backend.cpu_ranges`); each range goes through in chunks of a few samples (see `_chunks`): one
chunk's cols is still in cache when the multiply reads it, the k*k-times-larger temporaries stay
small whatever N is, and only the chunk's y2 and dy2 (k*k times smaller than cols when O = C) are
transposed between (O, columns) and NCHW. The cache keeps the *unpadded* input x itself (not the padded copy and not
cols): backward rebuilds what it needs, chunk by chunk. Keeping x itself means a cache shares its
bytes with whichever layer produced x.
"""
from typing import NamedTuple

import numpy as np

from ..backend import cpu_map, cpu_ranges, get_array_module
from . import winograd
from .base import Module

# Chunks of samples on the CPU (see _chunks): CHUNK_BYTES of per-sample temporaries (cols in
# forward, cols and dcols in backward), but never GEMMs narrower than MIN_COLS columns.
CHUNK_BYTES = 4 * 2**20
MIN_COLS = 512
# im2col's columns put the sample axis last on stride-1 maps at most this wide (`samples_last`)
SAMPLES_LAST_MAX_WIDTH = 8


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


def _pad(x, padding, axes=(2, 3)):
    """Zero-pad the two spatial `axes` of x by `padding` on each side (a new array)."""
    if padding == 0:
        return x
    xp = get_array_module(x)
    shape, inner = list(x.shape), [slice(None)] * x.ndim
    for a in axes:
        shape[a] += 2 * padding
        inner[a] = slice(padding, padding + x.shape[a])
    x_pad = xp.zeros(shape, dtype=x.dtype)
    x_pad[tuple(inner)] = x
    return x_pad


def _chunks(xp, start, stop, HW, sample_bytes):
    """(n0, n1) sample ranges covering start..stop, for a layer with HW output pixels per sample.

    On the CPU a chunk holds about CHUNK_BYTES of temporaries, so that cols is still in the
    last-level cache when the multiply reads it, unless that would make the GEMMs narrower than
    MIN_COLS columns (small images, wide layers: there the multiplies dominate, and every chunk
    also pays one pass over dW). A GPU takes the whole batch at once: each chunk costs kernel
    launches, and it has no such cache to fit.
    """
    N = stop - start
    if xp is np:
        size = max(CHUNK_BYTES // max(1, sample_bytes), -(-MIN_COLS // HW))  # -(-a // b): ceil
    else:
        size = N
    size = max(1, min(N, size))
    return [(n0, min(stop, n0 + size)) for n0 in range(start, stop, size)]


def samples_last(stride, Wo):
    """The column order of im2col: (i, j, n) for small maps under stride 1, else (n, i, j).

    Each window copy moves runs that are contiguous in both the input and cols: with the sample
    axis first a run is one window row, Wo numbers (only 4 on a 4x4 map); with it last, a window
    row of all n samples, Wo*n numbers, at the price of transposing the input and the output
    (slow when n is small, as it is on large maps). Under stride 2 the window columns are not
    adjacent, so samples-last runs would shrink to n numbers.
    """
    return stride == 1 and Wo <= SAMPLES_LAST_MAX_WIDTH


def to_rows(y, stride):
    """(n, O, Ho, Wo) -> (O, n*Ho*Wo) in im2col's column order: a copy (GEMM layout of y or dy)."""
    O, Wo = y.shape[1], y.shape[3]
    if samples_last(stride, Wo):
        return y.transpose(1, 2, 3, 0).reshape(O, -1)
    return y.transpose(1, 0, 2, 3).reshape(O, -1)


def from_rows(y2, n, Ho, Wo, stride):
    """(O, n*Ho*Wo) in im2col's column order -> an (n, O, Ho, Wo) view."""
    O = y2.shape[0]
    if samples_last(stride, Wo):
        return y2.reshape(O, Ho, Wo, n).transpose(3, 0, 1, 2)
    return y2.reshape(O, n, Ho, Wo).transpose(1, 0, 2, 3)


def _windows(a, p, q, Ho, Wo, stride):
    """The (p, q) window slice of a padded, channel-first array in im2col's column order."""
    rows = slice(p, p + stride * Ho, stride)
    cols = slice(q, q + stride * Wo, stride)
    return a[:, rows, cols, :] if samples_last(stride, Wo) else a[:, :, rows, cols]


def im2col(x, k, stride, padding, out=None):
    """Windows of x as columns: (N, C, H, W) -> cols (C*k*k, N*Ho*Wo), rows (c, p, q).

        cols[(c, p, q), column(n, i, j)] = x_pad[n, c, s*i + p, s*j + q]

    with columns ordered (i, j, n) on small stride-1 maps and (n, i, j) otherwise (see
    `samples_last`).
    Filled through a 6-D view of cols by one strided slice copy per kernel offset (p, q);
    `out`, if given, is the (C*k*k, N*Ho*Wo) array to fill.
    """
    xp = get_array_module(x)
    N, C, H, W = x.shape
    Ho, Wo = conv_out_size(H, k, stride, padding), conv_out_size(W, k, stride, padding)
    if out is None:
        out = xp.empty((C * k * k, N * Ho * Wo), dtype=x.dtype)
    if samples_last(stride, Wo):
        src = _pad(x.transpose(1, 2, 3, 0), padding, axes=(1, 2))   # (C, Hp, Wp, N)
        cols6 = out.reshape(C, k, k, Ho, Wo, N)
    else:
        src = _pad(x, padding).transpose(1, 0, 2, 3)               # (C, N, Hp, Wp)
        cols6 = out.reshape(C, k, k, N, Ho, Wo)
    for p in range(k):
        for q in range(k):
            cols6[:, p, q] = _windows(src, p, q, Ho, Wo, stride)
    return out


def col2im(cols, x_shape, k, stride, padding, out=None):
    """Adjoint of im2col: add every column back onto its window, (C*k*k, N*Ho*Wo) -> (N, C, H, W).

    dx_pad[n, c, s*i + p, s*j + q] += cols[(c, p, q), column(n, i, j)], one strided slice add
    per kernel offset (p, q), then the padding is cropped off. `out`, if given, is the
    (N, C, H, W) array that receives dx (overwritten).
    """
    xp = get_array_module(cols)
    N, C, H, W = x_shape
    Ho, Wo = conv_out_size(H, k, stride, padding), conv_out_size(W, k, stride, padding)
    if out is None:
        out = xp.empty(x_shape, dtype=cols.dtype)
    Hp, Wp = H + 2 * padding, W + 2 * padding
    if samples_last(stride, Wo):
        dx_pad = xp.zeros((C, Hp, Wp, N), dtype=cols.dtype)
        cols6 = cols.reshape(C, k, k, Ho, Wo, N)
    else:
        dx_pad = xp.zeros((C, N, Hp, Wp), dtype=cols.dtype)
        cols6 = cols.reshape(C, k, k, N, Ho, Wo)
    for p in range(k):
        for q in range(k):
            window = _windows(dx_pad, p, q, Ho, Wo, stride)
            window += cols6[:, p, q]                          # in place, through the view
    crop = slice(padding, padding + H), slice(padding, padding + W)
    if samples_last(stride, Wo):
        out[...] = dx_pad[:, crop[0], crop[1], :].transpose(3, 0, 1, 2)
    else:
        out[...] = dx_pad[:, :, crop[0], crop[1]].transpose(1, 0, 2, 3)
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

    def fill(start, stop):                                    # y[start:stop], chunk by chunk
        chunks = _chunks(xp, start, stop, HW, CKK * HW * x.dtype.itemsize)
        buf = xp.empty(CKK * (chunks[0][1] - start) * HW, dtype=x.dtype)  # a chunk's cols
        for n0, n1 in chunks:
            n = n1 - n0
            cols = im2col(x[n0:n1], k, stride, padding, out=buf[:CKK * n * HW].reshape(CKK, -1))
            y2 = W2 @ cols                                    # (O, n*Ho*Wo)
            if b is not None:
                y2 += b.reshape(O, 1)
            y[n0:n1] = from_rows(y2, n, Ho, Wo, stride)      # -> (n, O, Ho, Wo)

    cpu_map(fill, cpu_ranges(xp, N, CKK * HW * x.dtype.itemsize))   # sample ranges at once
    return y, Conv2dCache(x=x, W=W, stride=stride, padding=padding, has_bias=b is not None)


def conv2d_backward(dy, cache, need_dx=True):
    """dy (N, O, Ho, Wo) -> (dx (N, C, H, W), dW (O, C, k, k), db (O,) or None).

    db = dy summed over n, i, j. dx and dW: `_backward_stride1` (stride 1, padding < k, O <= C)
    builds the windows of dy (O·k·k rows); `_backward_strided` (the rest) those of the input
    (C·k·k rows), the smaller ones when C < O, as at a network's stem (3 channels in, 64 out:
    its dW 4x faster this way). need_dx=False: nobody reads dx (the layer's input is the data,
    or a constant), so dx is None and neither its GEMM nor col2im runs; dW is computed exactly
    as with dx (same path, same chunks, same sums).
    """
    x, W, stride, padding = cache.x, cache.W, cache.stride, cache.padding
    O, C, k, _ = W.shape
    if stride == 1 and padding <= k - 1 and O <= C:
        dx, dW = _backward_stride1(dy, x, W, padding, need_dx)
    else:
        dx, dW = _backward_strided(dy, x, W, stride, padding, need_dx)
    db = dy.sum(axis=(0, 2, 3)) if cache.has_bias else None
    return dx, dW, db


def _backward_stride1(dy, x, W, padding, need_dx=True):
    """Stride 1: both gradients from one im2col, that of dy zero-padded by k − 1 − padding.

    dx[n, c, h, w] = Σ_{o,p,q} W[o, c, p, q] dy[n, o, h + padding − p, w + padding − q] is itself
    a convolution: of dy padded by k − 1 − padding, with the kernel transposed (O <-> C) and
    flipped (p -> k−1−p), and its output is exactly H x W. With D = im2col(dy) (rows (o, p', q'),
    one column per input pixel) and x2 the input as (C, N*H*W) in the same column order:

        dx2 = Wf2 @ D,    Wf[c, o, p', q'] = W[o, c, k−1−p', k−1−q']        (C, N*H*W)
        G   = D @ x2.T,   dW[o, c, p, q]   = G[(o, k−1−p, k−1−q), c]         (O*k*k, C)

    Chunk by chunk of samples, like the forward; no col2im and no im2col of x. need_dx=False:
    G only (dx is None).
    """
    xp = get_array_module(dy)
    O, C, k, _ = W.shape
    N, _, H, Wd = x.shape
    OKK, HW, pad = O * k * k, H * Wd, k - 1 - padding
    dx = None
    if need_dx:
        Wf2 = xp.ascontiguousarray(W.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]).reshape(C, OKK)
        dx = xp.empty(x.shape, dtype=xp.result_type(W, dy))

    def fill(start, stop):                                    # dx[start:stop] and its part of G
        G = xp.zeros((OKK, C), dtype=xp.result_type(dy, x))
        chunks = _chunks(xp, start, stop, HW, OKK * HW * dy.dtype.itemsize)
        buf = xp.empty(OKK * (chunks[0][1] - start) * HW, dtype=dy.dtype)  # a chunk's D
        for n0, n1 in chunks:
            n = n1 - n0
            D = im2col(dy[n0:n1], k, 1, pad, out=buf[:OKK * n * HW].reshape(OKK, -1))
            if need_dx:
                dx[n0:n1] = from_rows(Wf2 @ D, n, H, Wd, 1)  # (C, n*H*W) -> (n, C, H, W)
            G += D @ to_rows(x[n0:n1], 1).T                  # (O*k*k, n*H*W) @ (n*H*W, C)
        return G

    G = sum(cpu_map(fill, cpu_ranges(xp, N, OKK * HW * dy.dtype.itemsize)))
    dW = G.reshape(O, k, k, C)[:, ::-1, ::-1].transpose(0, 3, 1, 2)   # -> (O, C, k, k)
    return dx, xp.ascontiguousarray(dW)


def _backward_strided(dy, x, W, stride, padding, need_dx=True):
    """Any stride: chunk by chunk of samples, with cols rebuilt from the cached input and dy2 the
    chunk of dy as (O, n*Ho*Wo):  dW2 += dy2 @ cols.T,  dx = col2im(W2.T @ dy2). need_dx=False:
    dW2 only (dx is None), in the same chunks as with dx, so that dW2 sums the same products.
    """
    xp = get_array_module(dy)
    O, C, k, _ = W.shape
    N, _, Ho, Wo = dy.shape
    CKK, HW = C * k * k, Ho * Wo
    W2 = W.reshape(O, CKK)                                    # (O, C, k, k) -> (O, C*k*k)
    dx_dtype = xp.result_type(W, dy)
    dx = xp.empty(x.shape, dtype=dx_dtype) if need_dx else None
    sample_bytes = CKK * HW * (x.itemsize + dx_dtype.itemsize)   # cols and dcols

    def fill(start, stop):                                    # dx[start:stop] and its part of dW2
        dW2 = xp.zeros((O, CKK), dtype=xp.result_type(dy, x))
        chunks = _chunks(xp, start, stop, HW, sample_bytes)
        size = CKK * (chunks[0][1] - start) * HW
        buf = xp.empty(size, dtype=x.dtype)                   # cols
        dbuf = xp.empty(size, dtype=dx_dtype) if need_dx else None   # dcols
        for n0, n1 in chunks:
            n = n1 - n0
            cols = im2col(x[n0:n1], k, stride, padding, out=buf[:CKK * n * HW].reshape(CKK, -1))
            dy2 = to_rows(dy[n0:n1], stride)                 # (O, n*Ho*Wo)
            dW2 += dy2 @ cols.T                               # (O, C*k*k)
            if need_dx:
                dcols = xp.matmul(W2.T, dy2, out=dbuf[:CKK * n * HW].reshape(CKK, -1))
                col2im(dcols, dx[n0:n1].shape, k, stride, padding, out=dx[n0:n1])
        return dW2

    dW2 = sum(cpu_map(fill, cpu_ranges(xp, N, sample_bytes)))
    return dx, dW2.reshape(W.shape)                           # (O, C*k*k) -> (O, C, k, k)


def _cache_for(algo, cache):
    """The cache whose type makes Conv2d.backward run `algo` ("im2col" or "winograd"). Both kinds
    keep the same x, W, padding and bias flag (stride 1 wherever Winograd applies), so a forward
    by one algorithm can hand its backward to the other: only the type changes, not the bytes."""
    if algo == "winograd" and isinstance(cache, Conv2dCache):
        return winograd.WinogradCache(x=cache.x, W=cache.W, padding=cache.padding,
                                      has_bias=cache.has_bias, m=winograd.TILE)
    if algo == "im2col" and isinstance(cache, winograd.WinogradCache):
        return Conv2dCache(x=cache.x, W=cache.W, stride=1, padding=cache.padding,
                           has_bias=cache.has_bias)
    return cache


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
        self.algo = "im2col"      # or "winograd", "auto": see winograd.choose and set_conv_algo

    def forward(self, x):
        W, b = self.params["weight"], self.params.get("bias")
        fwd, bwd = winograd.choose(self.algo, x, W, b, self.stride, self.padding)
        if fwd == "winograd":
            y, cache = winograd.winograd_forward(x, W, b, self.padding)
        else:
            y, cache = conv2d_forward(x, W, b, self.stride, self.padding)
        return y, _cache_for(bwd, cache)

    def backward(self, dy, cache, need_dx=True):
        if isinstance(cache, winograd.WinogradCache):         # backward by Winograd
            dx, dW, db = winograd.winograd_backward(dy, cache, need_dx)
        else:
            dx, dW, db = conv2d_backward(dy, cache, need_dx)
        self.grads["weight"] += dW
        if db is not None:
            self.grads["bias"] += db
        return dx

    def __repr__(self):
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={'bias' in self.params})")
