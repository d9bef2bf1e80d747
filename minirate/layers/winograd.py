"""Winograd convolution for 3x3, stride-1 layers: F(m x m, 3 x 3), m = 2 or 4.

Same operation as conv.py (cross-correlation, zero padding p, any H and W):

    y[n, o, i, j] = b[o] + sum_{c, u, v} W[o, c, u, v] * x_pad[n, c, i + u, j + v]

1-D first. F(m, 3) gives m outputs y_i = sum_k g_k d_{i+k} of a 3-tap kernel g from α = m + 2
inputs d. Read backwards this is polynomial multiplication: the α coefficients of
c(t) = a(t) g(t), a of degree m − 1, are c = C_g a with C_g[s, i] = g_{s−i} (α x m), and y = C_g^T d.
A polynomial of degree α − 1 is fixed by its values at α points; we take 0, ±1 (and ±2 for
m = 4) and ∞, where "the value at ∞" is the leading coefficient. With the Vandermonde matrices
V_k[point, e] = point^e (α x k; the ∞ row is (0, ..., 0, 1)):

    c = V_α^{-1} ((V_m a) ⊙ (V_3 g))    so    C_g = V_α^{-1} diag(V_3 g) V_m
    y = C_g^T d = V_m^T ((V_3 g) ⊙ (V_α^{-T} d)) = A^T ((G g) ⊙ (B^T d))

    A^T = V_m^T  (m x α): the output transform sums the products back, point powers 0..m−1
    G   = V_3    (α x 3): the kernel transform evaluates g(t) at the points
    B^T = V_α^{-T} (α x α): the input transform is the transposed interpolation (Lagrange) matrix

Any diagonal D may move between the two: (D^{-1} G g) ⊙ (D B^T d) is the same product, so each row
of B^T is scaled to small integers (its smallest non-zero entry ±1) and G takes the fractions
(1/2 for m = 2; 1/4, 1/6, 1/12, 1/24 for m = 4). `transforms(m)` does this in exact rationals.
The same product taken along both image axes is the 2-D algorithm, per α x α input tile d
(tiles overlap by 2) and its m x m output tile:

    Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A

Summed over channels the elementwise product becomes, at each of the α² points (ξ, ν), one matrix
multiply over c, with P = number of tiles (n, ti, tj):

    U[ξν] = (G W[o, c] G^T)[ξν]        (α², O, C)    the kernel, transformed once per call
    V[ξν] = (B^T d[c, P] B)[ξν]        (α², C, P)    the input tiles
    M[ξν] = U[ξν] @ V[ξν]              (α², O, P)    one batched matmul: α² GEMMs
    y tile = A^T M A                   (m, m) per (o, P)

Backward, with dy cut into the same m x m tiles (zero beyond Ho, Wo):

    dM[ξν] = (A dY A^T)[ξν]                        (α², O, P)
    dU[ξν] = sum_P dM[ξν] V[ξν]^T                  (α², O, C)
    dW     = G^T dU G                              (O, C, 3, 3)
    db     = dy summed over n, i, j
    dx     = the same 3x3 correlation of dy padded by 2 − p with Wf[c, o, u, v] = W[o, c, 2−u, 2−v]
             (transposed and flipped; a negative padding crops dy), output H x W.

The cost per output pixel is α²/m² multiplies per (o, c) instead of 9: 4 for m = 2 (2.25 x
fewer), 2.25 for m = 4 (4 x fewer); the transforms add work linear in C and O. Error: in float64
both tile sizes match the direct sum to ~1e-15; in float32 m = 4 loses about one more decimal
digit than im2col (its G holds 1/24 and its A^T entries up to 8), m = 2 about none (see
tests/test_winograd.py and benchmarks/bench_conv.py for the measured figures).

On the CPU the batch is split into one sample range per thread (backend.cpu_map), each taken in
chunks of samples whose temporaries stay near CHUNK_BYTES; a GPU takes the batch in one chunk.
The cache keeps the unpadded input x and a reference to W, as conv.py's does.
"""
import sys
import time
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from ..backend import cpu_map, cpu_ranges, get_array_module, synchronize

TILE = 4                    # m, the output tile side: 4 (fewer multiplies) or 2 (smaller error)
CHUNK_BYTES = 4 * 2**20     # temporaries per chunk of samples on the CPU
MIN_TILES = 256             # but never GEMMs narrower than this many tiles (forward, dx)
MIN_TILES_DW = 1024         # nor weight-gradient GEMMs (inner dimension P) shorter than this


class WinogradCache(NamedTuple):
    x: object          # (N, C, H, W) the input as given (unpadded; a reference, not a copy)
    W: object          # (O, C, 3, 3) the weight used in forward (a reference to the parameter)
    padding: int
    has_bias: bool
    m: int             # output tile side the forward used


# -- the transform matrices -------------------------------------------------------------------
POINTS = {2: (0, 1, -1), 4: (0, 1, -1, 2, -2)}         # plus ∞: α = m + 2 points


def _vandermonde(points, k):
    """V_k (α x k) in rationals: rows (p^0, ..., p^(k−1)) for each point, then (0, ..., 0, 1)."""
    return [[Fraction(p) ** e for e in range(k)] for p in points] + [[Fraction(0)] * (k - 1) + [1]]


def _inverse(M):
    """Exact inverse of a square matrix of Fractions (Gauss-Jordan; Vandermonde: always pivots)."""
    n = len(M)
    A = [list(row) + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(M)]
    for col in range(n):
        piv = next(r for r in range(col, n) if A[r][col] != 0)
        A[col], A[piv] = A[piv], A[col]
        A[col] = [v / A[col][col] for v in A[col]]
        for r in range(n):
            if r != col and A[r][col] != 0:
                A[r] = [v - A[r][col] * w for v, w in zip(A[r], A[col])]
    return [row[n:] for row in A]


def transforms(m):
    """(BT (α, α), G (α, 3), AT (m, α)) float64 arrays for F(m x m, 3 x 3), derived as in the
    module docstring: AT = V_m^T, G = V_3, BT = V_α^{-T}, rows of BT scaled to integers."""
    pts = POINTS[m]
    V_inv = _inverse(_vandermonde(pts, m + 2))
    BT = [list(col) for col in zip(*V_inv)]                       # V_α^{-T}
    G = _vandermonde(pts, 3)
    for row_b, row_g in zip(BT, G):
        s = min(abs(v) for v in row_b if v != 0)                  # D: smallest entry -> ±1
        row_b[:] = [v / s for v in row_b]
        row_g[:] = [v * s for v in row_g]
    AT = [list(col) for col in zip(*_vandermonde(pts, m))]        # V_m^T
    return tuple(np.array([[float(v) for v in row] for row in M]) for M in (BT, G, AT))


_MATRICES = {m: transforms(m) for m in POINTS}


def _matrices(xp, m, dtype):
    return tuple(xp.asarray(M.astype(dtype)) for M in _MATRICES[m])


def _sandwich(L, R, a):
    """L a R^T over the two leading axes of a: (p, q, *rest) -> (L rows, R rows, *rest)."""
    p, q = a.shape[:2]
    rest = a.shape[2:]
    t = (L @ a.reshape(p, -1)).reshape(L.shape[0], q, -1)        # (l, q, rest)
    return (R @ t).reshape((L.shape[0], R.shape[0]) + rest)       # R @ t[l] for each l


def kernel_transform(W, G):
    """U = G W G^T per (o, c): (O, C, 3, 3) -> (α², O, C)."""
    a = G.shape[0]
    U = _sandwich(G, G, W.transpose(2, 3, 0, 1))                  # (α, α, O, C)
    return U.reshape((a * a,) + W.shape[:2])


# -- one 3x3 correlation of a batch, tile by tile ---------------------------------------------
def _sample_chunks(xp, N, per_sample_bytes, tiles, min_tiles=None):
    """[(n0, n1)] chunks within one range of samples per CPU thread: lists, one per thread.
    A chunk holds about CHUNK_BYTES of temporaries, but at least `min_tiles` tiles (default
    MIN_TILES): dW's GEMMs sum over the tiles, and a short sum costs a whole pass over dU."""
    min_tiles = MIN_TILES if min_tiles is None else min_tiles
    if xp is np:
        size = max(CHUNK_BYTES // max(1, per_sample_bytes), -(-min_tiles // tiles))
    else:
        size = N
    out = []
    for start, stop in cpu_ranges(xp, N, per_sample_bytes):
        s = max(1, min(stop - start, size))
        out.append(([(n0, min(stop, n0 + s)) for n0 in range(start, stop, s)],))
    return out


def _input_tiles(x, pad, th, tw, m, BT):
    """V = B^T d B for every α x α tile of x zero-padded by `pad` (negative: cropped) at the
    top-left and with zeros out to th*m + 2, tw*m + 2: (n, C, H, W) -> (α², C, n*th*tw)."""
    xp = get_array_module(x)
    n, C, H, Wd = x.shape
    a = m + 2
    src = xp.zeros((C, n, th * m + 2, tw * m + 2), dtype=x.dtype)
    h0, w0 = max(0, -pad), max(0, -pad)                            # rows/cols of x that land
    h1, w1 = min(H, th * m + 2 - pad), min(Wd, tw * m + 2 - pad)
    src[:, :, h0 + pad:h1 + pad, w0 + pad:w1 + pad] = \
        x[:, :, h0:h1, w0:w1].transpose(1, 0, 2, 3)               # (n, C, ..) -> (C, n, ..)
    d = xp.empty((a, a, C, n, th, tw), dtype=x.dtype)
    for u in range(a):                                            # d[u, v] = tile entry (u, v)
        for v in range(a):
            d[u, v] = src[:, :, u:u + m * th:m, v:v + m * tw:m]
    return _sandwich(BT, BT, d).reshape(a * a, C, n * th * tw)


def _correlate(x, U, pad, Ho, Wo, m, AT, BT, b, y):
    """y[:] = b + the 3x3 correlation of x (N, C, H, W), zero-padded by `pad`, with the kernel
    whose transform is U (α², O, C): y (N, O, Ho, Wo), filled chunk by chunk of samples."""
    xp = get_array_module(x)
    N, C = x.shape[:2]
    O, a = U.shape[1], m + 2
    th, tw = -(-Ho // m), -(-Wo // m)                              # tiles, the last maybe partial
    per_sample = a * a * (2 * C + 2 * O) * th * tw * x.dtype.itemsize

    def fill(chunks):
        for n0, n1 in chunks:
            n = n1 - n0
            V = _input_tiles(x[n0:n1], pad, th, tw, m, BT)          # (α², C, P)
            M = xp.matmul(U, V)                                     # (α², O, P)
            Y = _sandwich(AT, AT, M.reshape(a, a, -1))             # (m, m, O*P)
            Y = Y.reshape(m, m, O, n, th, tw).transpose(3, 2, 4, 0, 5, 1)   # (n, O, th, m, tw, m)
            if (th * m, tw * m) == (Ho, Wo):                       # whole tiles: one copy into y
                y[n0:n1].reshape(n, O, th, m, tw, m)[...] = Y
            else:                                                  # merge, then crop the last
                y[n0:n1] = Y.reshape(n, O, th * m, tw * m)[:, :, :Ho, :Wo]
            if b is not None:
                y[n0:n1] += b.reshape(1, O, 1, 1)

    cpu_map(fill, _sample_chunks(xp, N, per_sample, th * tw))
    return y


def winograd_forward(x, W, b, padding, m=None):
    """y = conv(x, W) + b, stride 1.  x (N, C, H, W), W (O, C, 3, 3), b (O,) or None ->
    y (N, O, H + 2p − 2, W + 2p − 2), and a WinogradCache. m: tile side (default TILE)."""
    xp = get_array_module(x)
    m = TILE if m is None else m
    N, C, H, Wd = x.shape
    if W.shape[1:] != (C, 3, 3):
        raise ValueError(f"winograd: weight {W.shape} does not fit input {x.shape} (3x3 only)")
    Ho, Wo = H + 2 * padding - 2, Wd + 2 * padding - 2
    if Ho < 1 or Wo < 1:
        raise ValueError(f"convolution window k=3 does not fit input {x.shape} with padding "
                         f"{padding}")
    dtype = xp.result_type(x, W)
    BT, G, AT = _matrices(xp, m, dtype)
    U = kernel_transform(W.astype(dtype, copy=False), G)
    y = xp.empty((N, W.shape[0], Ho, Wo), dtype=dtype)
    _correlate(x, U, padding, Ho, Wo, m, AT, BT, b, y)
    return y, WinogradCache(x=x, W=W, padding=padding, has_bias=b is not None, m=m)


def winograd_backward(dy, cache, need_dx=True):
    """dy (N, O, Ho, Wo) -> (dx (N, C, H, W) or None when not need_dx, dW (O, C, 3, 3),
    db (O,) or None), by the equations of the module docstring."""
    xp = get_array_module(dy)
    x, W, pad, m = cache.x, cache.W, cache.padding, cache.m
    N, C, H, Wd = x.shape
    O, a = W.shape[0], m + 2
    Ho, Wo = dy.shape[2:]
    th, tw = -(-Ho // m), -(-Wo // m)
    dtype = xp.result_type(dy, x, W)
    BT, G, AT = _matrices(xp, m, dtype)
    A = AT.T
    per_sample = a * a * (2 * C + 2 * O) * th * tw * x.dtype.itemsize

    def weight_part(chunks):                                       # dU for these samples
        dU = xp.zeros((a * a, O, C), dtype=dtype)
        for n0, n1 in chunks:
            n = n1 - n0
            V = _input_tiles(x[n0:n1], pad, th, tw, m, BT)          # (α², C, P)
            t = xp.zeros((O, n, th * m, tw * m), dtype=dtype)       # dy, zero beyond Ho, Wo
            t[:, :, :Ho, :Wo] = dy[n0:n1].transpose(1, 0, 2, 3)
            t = t.reshape(O, n, th, m, tw, m).transpose(3, 5, 0, 1, 2, 4)   # (m, m, O, n, th, tw)
            dM = _sandwich(A, A, xp.ascontiguousarray(t)).reshape(a * a, O, -1)   # (α², O, P)
            dU += xp.matmul(dM, V.transpose(0, 2, 1))              # (α², O, C)
        return dU

    dU = sum(cpu_map(weight_part, _sample_chunks(xp, N, per_sample, th * tw, MIN_TILES_DW)))
    dW = _sandwich(G.T, G.T, dU.reshape(a, a, O, C))               # (3, 3, O, C)
    dW = xp.ascontiguousarray(dW.transpose(2, 3, 0, 1))            # -> (O, C, 3, 3)
    db = dy.sum(axis=(0, 2, 3)) if cache.has_bias else None
    dx = None
    if need_dx:
        Wf = W.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1].astype(dtype, copy=False)   # (C, O, 3, 3)
        dx = xp.empty((N, C, H, Wd), dtype=dtype)
        _correlate(dy, kernel_transform(Wf, G), 2 - pad, H, Wd, m, AT, BT, None, dx)
    return dx, dW, db


# -- which algorithm a Conv2d layer runs ------------------------------------------------------
ALGOS = ("im2col", "winograd", "auto")
choices = {}          # (N, C, O, H, W, padding, dtype, array module) -> (forward, backward) algos


def log(line):
    """Where `auto` reports each decision (one line per layer shape); replaceable."""
    print(line, file=sys.stderr, flush=True)


def applies(W, stride):
    """Winograd runs 3x3 kernels at stride 1; every other layer keeps im2col."""
    return stride == 1 and tuple(W.shape[2:]) == (3, 3)


AUTO_ROUNDS = 3       # timed runs of each algorithm when `auto` first sees a layer shape
PASSES = ("forward", "backward")


def measure(algo, x, W, b, padding, stride=1):
    """(forward seconds, backward seconds) of this layer by `algo`, on the layer's own input and
    with its output as upstream gradient (the device synchronized around each pass)."""
    from .conv import conv2d_backward, conv2d_forward     # conv.py imports this module
    xp = get_array_module(x)
    synchronize(xp)
    t0 = time.perf_counter()
    if algo == "winograd":
        y, cache = winograd_forward(x, W, b, padding)
    else:
        y, cache = conv2d_forward(x, W, b, stride, padding)
    synchronize(xp)
    t1 = time.perf_counter()
    if algo == "winograd":
        winograd_backward(y, cache)
    else:
        conv2d_backward(y, cache)
    synchronize(xp)
    return t1 - t0, time.perf_counter() - t1


def compare(x, W, b, padding):
    """{algo: (best forward seconds, best backward seconds)} of im2col and winograd on this layer:
    one untimed run of each (first calls pay for allocation and caches), then AUTO_ROUNDS rounds
    of one run of each, in alternating order, keeping each algorithm's minimum per pass. On a
    shared machine other work only ever adds time, and a burst of it lands on both algorithms'
    runs, not on one's whole series, so the minima are what the two cost undisturbed."""
    pair = ("im2col", "winograd")
    for algo in pair:
        measure(algo, x, W, b, padding)
    best = {algo: (float("inf"), float("inf")) for algo in pair}
    for r in range(AUTO_ROUNDS):
        for algo in (pair if r % 2 == 0 else pair[::-1]):
            best[algo] = tuple(map(min, best[algo], measure(algo, x, W, b, padding)))
    return best


def choose(algo, x, W, b, stride, padding):
    """The algorithms a layer runs, (forward, backward): each "im2col" or "winograd".

    Both caches hold the same things (x, W, padding), so either backward can follow either
    forward. algo "im2col" / "winograd": that one for both passes (winograd only where it
    `applies`). "auto": per pass, the faster of the two by `compare` (best of AUTO_ROUNDS runs
    each) the first time a layer shape (batch, channels, size, padding, dtype, device) is seen;
    the decision is kept in `choices` and logged once, with every time.
    """
    if algo not in ALGOS:
        raise ValueError(f"unknown convolution algorithm {algo!r}; choose one of {ALGOS}")
    if algo == "im2col" or not applies(W, stride):
        return ("im2col", "im2col")
    if algo == "winograd":
        return ("winograd", "winograd")
    xp = get_array_module(x)
    key = tuple(x.shape) + (W.shape[0], padding, str(xp.result_type(x, W)), xp.__name__)
    if key not in choices:
        t = compare(x, W, b, padding)
        pair = ("im2col", "winograd")                             # a tie keeps im2col
        choices[key] = tuple(min(pair, key=lambda a: t[a][i]) for i in range(len(PASSES)))
        N, C, H, Wd = x.shape
        times = "; ".join(f"{p}: im2col {t['im2col'][i] * 1e3:.2f} ms, winograd "
                          f"{t['winograd'][i] * 1e3:.2f} ms" for i, p in enumerate(PASSES))
        log(f"conv algo: N={N} C={C} O={W.shape[0]} {H}x{Wd} pad={padding} {key[-2]} "
            f"{key[-1]}: forward {choices[key][0]}, backward {choices[key][1]} ({times}; "
            f"best of {AUTO_ROUNDS})")
    return choices[key]


def set_conv_algo(model, algo):
    """Every Conv2d of `model` runs `algo` ("im2col", "winograd" or "auto") from now on."""
    if algo not in ALGOS:
        raise ValueError(f"unknown convolution algorithm {algo!r}; choose one of {ALGOS}")
    for _, module in model.named_modules():
        if hasattr(module, "algo"):
            module.algo = algo
    return model
