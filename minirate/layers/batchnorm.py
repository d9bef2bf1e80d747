"""Batch normalisation over channels: forward, its backward, and the running statistics.

Channels are axis 1; the statistics of a channel are taken over every other axis
(BatchNorm1d: (N, C) or (N, C, L); BatchNorm2d: (N, C, H, W) over N, H, W). With n values per
channel, per-channel mean μ, biased variance σ², s = 1/√(σ² + ε):

    x̂ = (x − μ) · s,    y = γ · x̂ + β

Training mode uses the batch's own μ, σ² (two passes: μ first, then mean((x − μ)²); the one-pass
E[x²] − E[x]² loses every digit in float32 when |μ| ≫ σ) and updates, as PyTorch does,

    running_mean ← (1 − m) · running_mean + m · μ
    running_var  ← (1 − m) · running_var  + m · σ² · n/(n − 1)      (unbiased)
    num_batches_tracked ← num_batches_tracked + 1

Eval mode uses μ = running_mean, σ² = running_var. Backward, with means over the n values:

    batch statistics:  dx = γ s (dy − mean(dy) − x̂ · mean(dy · x̂))
    fixed statistics:  dx = γ s dy                                       (eval: y is affine in x)
    dγ = Σ dy · x̂,     dβ = Σ dy

Straight-through statistics (the μ_g, σ²_g used come from another pass): the value is
γ (x − μ_g)/√(σ²_g + ε) + β, and the derivative is that of the batch-statistics form with
μ̃(x) = μ_g + m(x) − stopgrad(m(x)), ṽ(x) = σ²_g + v(x) − stopgrad(v(x)), m, v the batch mean
and biased variance. Since ∂m/∂x_j = 1/n and ∂v/∂x_j = 2(x_j − m)/n,

    dx = γ s (dy − mean(dy) − (x − m) · s · mean(dy · x̂)),    s = 1/√(σ²_g + ε)

and (x − m) · s = x̂ − mean(x̂), where mean(x̂) = (m − μ_g) · s is one number per channel: that
number (`x_hat_mean`) is all the straight-through backward keeps beyond x − μ and s. With μ_g = m,
σ²_g = v it is 0 and dx is the ordinary batch-statistics derivative.

Synchronised batchnorm (data-parallel training): when the batch is split over several processes,
`reduce_sum` (a function: per-channel array -> its sum over all processes) makes every statistic
one of the whole batch. Forward sums n and Σ x, then Σ (x − μ)²; backward sums n, Σ dy and
Σ dy · (x − μ), so dx is the derivative over the whole batch. dγ, dβ stay this process's own sums:
the gradient all-reduce adds them up with every other gradient.

On a GPU (minirate/fused.py) the elementwise passes are one kernel each, their CUDA C beside the
NumPy code they mirror: the centring x − μ, the affine map y = x · scale + shift, and backward's
dx = dy · per_dy − (x − μ) · per_xc − per_one; the per-channel sums stay the array module's own.
"""
from typing import NamedTuple

import numpy as np

from .. import fused
from ..backend import cpu_map, cpu_ranges, get_array_module
from .base import Module


class BatchNormCache(NamedTuple):
    x_centred: object   # x.shape, x − μ with the μ the output used (x̂ = x_centred · s)
    inv_std: object     # (C,) s = 1/√(σ² + ε)
    gamma: object       # (C,) γ as used in forward (a reference to the parameter, no copy)
    batch_stats: bool   # True: μ, σ² are functions of x (train / straight-through); False: constants
    x_hat_mean: object  # (C,) mean(x̂) = (m − μ) · s for straight-through statistics, else None


def _axes(x):
    """Reduction axes: every axis but the channel axis 1."""
    return (0,) + tuple(range(2, x.ndim))


def _per_channel(v, x):
    """(C,) -> (1, C, 1, ...), broadcastable against x; cast to x's dtype so outputs keep it."""
    return v.astype(x.dtype, copy=False).reshape((1, -1) + (1,) * (x.ndim - 2))


def _count(x):
    """Number n of values per channel."""
    return x.size // x.shape[1]


def _per_channel_arg(v, x):
    """(C,) -> (C,) contiguous, in x's dtype: a per-channel argument of a kernel below."""
    xp = get_array_module(x)
    return xp.ascontiguousarray(v.astype(x.dtype, copy=False).reshape(-1))


def _launch_per_element(code, name, x, *args):
    """Launch kernel `name` over the elements of x (N, C, ...), C-contiguous; the kernel finds
    an element's channel as (i / inner) % C, inner = the number of values per (sample, channel)."""
    xp = get_array_module(x)
    inner = x.size // max(1, x.shape[0] * x.shape[1])
    fused.launch(xp, code, name, x.size, x.dtype, *args,
                 np.int32(x.size), np.int32(x.shape[1]), np.int32(inner))


def _channel_dot(a, b):
    """Σ a · b per channel, (C,): one pass (einsum), no product array."""
    xp = get_array_module(a)
    idx = "nchw"[:a.ndim]                                     # channel axis 1 is "c"
    return xp.einsum(f"{idx},{idx}->c", a, b)


def _by_samples(fn, x):
    """[fn(a, b)] for ranges a..b of samples (axis 0) that cover x, one per CPU thread, run at
    once (`cpu_map`): each pass below works sample by sample, or sums per-sample parts."""
    xp = get_array_module(x)
    return cpu_map(fn, cpu_ranges(xp, x.shape[0], x.nbytes // max(1, x.shape[0])))


PIECE_BYTES = 512 * 1024   # elementwise passes on the CPU: pieces of samples about this size


def _in_pieces(fn, x):
    """fn(a, b) for sample ranges a..b covering x: one range per CPU thread (`_by_samples`),
    each taken in pieces of about PIECE_BYTES. An elementwise pass of several ufuncs (and its
    temporaries) then runs on a piece still in the CPU's cache rather than on the whole array
    from memory; every element gets the same operations, so the numbers do not change. Off
    the CPU: one piece."""
    xp = get_array_module(x)
    per_sample = max(1, x.nbytes // max(1, x.shape[0]))

    def run(a, b):
        step = max(1, PIECE_BYTES // per_sample) if xp is np else max(1, b - a)
        for n0 in range(a, b, step):
            fn(n0, min(b, n0 + step))
    _by_samples(run, x)


def _sum_over_processes(reduce_sum, n, *sums):
    """(n, *sums) added up over every process by `reduce_sum`; unchanged when it is None.

    One message: [n, sums...] in float64 (n exact far past float32's 2²⁴), cast back after.
    """
    if reduce_sum is None:
        return (n,) + sums
    xp = get_array_module(sums[0])
    total = reduce_sum(xp.concatenate([xp.full(1, n, dtype=np.float64)] +
                                      [v.astype(np.float64) for v in sums]))
    C = sums[0].shape[0]
    return (int(round(float(total[0]))),) + tuple(
        total[1 + i * C:1 + (i + 1) * C].astype(v.dtype) for i, v in enumerate(sums))


def _centred_stats(x, reduce_sum=None):
    """(μ, σ², x − μ, n): per-channel mean, biased variance mean((x − μ)²), the centred x and the
    number of values per channel, over every process when `reduce_sum` is given.

    Two passes over x plus the centred copy; see the module docstring for why not E[x²] − E[x]².
    """
    xp = get_array_module(x)
    axes = _axes(x)
    n, total = _sum_over_processes(reduce_sum, _count(x),
                                   sum(_by_samples(lambda a, b: x[a:b].sum(axis=axes), x)))
    mean = total / n
    if fused.fusable(xp, x):
        xc = _centre(x, mean)
        sq = _channel_dot(xc, xc)
    else:
        xc = xp.empty_like(x)

        def centre(a, b):                 # x − μ for these samples, and their Σ (x − μ)²
            xp.subtract(x[a:b], _per_channel(mean, x), out=xc[a:b])
            return _channel_dot(xc[a:b], xc[a:b])

        sq = sum(_by_samples(centre, x))
    if reduce_sum is not None:
        sq = _sum_over_processes(reduce_sum, 0, sq)[1]
    return mean, sq / n, xc, n


CENTRE_CUDA = r"""
// xc = x − μ_c, x and xc (N, C, inner) C-order, mean (C,)
extern "C" __global__ void batchnorm_centre(const real* x, const real* mean, real* xc,
                                            int n, int C, int inner) {
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned int)n;
         i += blockDim.x * gridDim.x) {
        int c = (i / inner) % C;
        xc[i] = x[i] - mean[c];
    }
}
"""


def _centre(x, mean):
    """x − μ with the per-channel (C,) μ, like x; on a GPU one kernel (CENTRE_CUDA)."""
    xp = get_array_module(x)
    if not fused.fusable(xp, x):
        return x - _per_channel(mean, x)
    x = xp.ascontiguousarray(x)
    xc = xp.empty_like(x)
    _launch_per_element(CENTRE_CUDA, "batchnorm_centre", x, x, _per_channel_arg(mean, x), xc)
    return xc


def batchnorm_stats(x, reduce_sum=None):
    """Per-channel mean μ and biased variance σ² = mean((x − μ)²), each (C,), dtype of x."""
    mean, var, _, _ = _centred_stats(x, reduce_sum)
    return mean, var


def _inv_std(var, eps, x):
    xp = get_array_module(x)
    return (1 / xp.sqrt(var.astype(x.dtype, copy=False) + eps)).astype(x.dtype, copy=False)


AFFINE_CUDA = r"""
// y = x · scale_c + shift_c, x and y (N, C, inner) C-order, scale and shift (C,)
extern "C" __global__ void batchnorm_affine(const real* x, const real* scale, const real* shift,
                                            real* y, int n, int C, int inner) {
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned int)n;
         i += blockDim.x * gridDim.x) {
        int c = (i / inner) % C;
        real v = x[i] * scale[c];
        y[i] = v + shift[c];
    }
}
"""


def _affine(x, scale, shift):
    """y = x · scale + shift with per-channel (C,) scale and shift, in pieces on the threads;
    on a GPU one kernel (AFFINE_CUDA)."""
    xp = get_array_module(x)
    if fused.fusable(xp, x):
        x = xp.ascontiguousarray(x)
        y = xp.empty_like(x)
        _launch_per_element(AFFINE_CUDA, "batchnorm_affine", x, x, _per_channel_arg(scale, x),
                            _per_channel_arg(shift, x), y)
        return y
    scale, shift = _per_channel(scale, x), _per_channel(shift, x)
    y = xp.empty_like(x)

    def fill(a, b):
        xp.multiply(x[a:b], scale, out=y[a:b])
        y[a:b] += shift

    _in_pieces(fill, x)
    return y


def batchnorm_normalize(x, gamma, beta, mean, var, eps):
    """y = γ (x − μ)/√(σ² + ε) + β with given per-channel (C,) μ, σ²; x (N, C, ...), y like x."""
    scale = gamma.astype(x.dtype, copy=False) * _inv_std(var, eps, x)
    shift = beta.astype(x.dtype, copy=False) - mean.astype(x.dtype, copy=False) * scale
    return _affine(x, scale, shift)        # one fused affine map: y = x · (γ s) + (β − μ γ s)


def batchnorm_forward(x, gamma, beta, mean, var, eps, batch_stats, x_centred=None):
    """y = γ x̂ + β, x̂ = (x − μ)/√(σ² + ε), with the given (C,) μ, σ².

    `batch_stats` says whether μ, σ² are x's own batch statistics (backward then differentiates
    through them) or constants (running statistics). `x_centred`: x − μ if already at hand.
    The cache keeps x − μ and the per-channel s: x̂ itself is never formed, y = (x − μ)·(γ s) + β.
    x (N, C, ...) -> y like x.
    """
    inv_std = _inv_std(var, eps, x)
    xc = _centre(x, mean) if x_centred is None else x_centred
    y = _affine(xc, gamma.astype(x.dtype, copy=False) * inv_std, beta)   # (x − μ)·(γ s) + β
    return y, BatchNormCache(xc, inv_std, gamma, bool(batch_stats), None)


def batchnorm_fixed_stats_forward(x, gamma, beta, mean, var, eps, reduce_sum=None):
    """Straight-through statistics: y = γ (x − μ_g)/√(σ²_g + ε) + β with given (C,) μ_g, σ²_g.

    Backward is the derivative of the batch-statistics form (module docstring); for it this
    takes one extra pass, the batch mean m, and keeps x_hat_mean = (m − μ_g) · s, shape (C,).
    """
    xp = get_array_module(x)
    y, cache = batchnorm_forward(x, gamma, beta, mean, var, eps, batch_stats=True)
    n, x_sum = _sum_over_processes(reduce_sum, _count(x), xp.sum(x, axis=_axes(x)))
    m = x_sum / n
    x_hat_mean = (m - mean.astype(x.dtype, copy=False)) * cache.inv_std
    return y, cache._replace(x_hat_mean=x_hat_mean)


def batchnorm_backward(dy, cache, reduce_sum=None, need_dx=True):
    """(dx, dγ, dβ) for any forward above; dy and dx like x, dγ and dβ (C,). need_dx=False:
    dx is None, not computed (nor its sums over the processes, which every process skips alike).

    With `reduce_sum`, n, dβ and Σ dy · (x − μ) in dx are sums over every process (module
    docstring); the dγ, dβ returned are this process's own.

        dβ = Σ dy,  dγ = Σ dy · x̂ = s Σ dy · (x − μ)
        constants:        dx = γ s dy
        batch statistics: dx = γ s/n · (n dy − dβ − x̃ · dγ),   x̃ = x̂ − x_hat_mean  (= x̂ when None)

    written as dx = dy · (γ s) − (x − μ) · (γ s² dγ / n) − (γ s / n) · (dβ − x_hat_mean · dγ):
    per-channel numbers times the two full-size arrays, four passes.
    """
    xp = get_array_module(dy)
    xc, inv_std, gamma = cache.x_centred, cache.inv_std, cache.gamma
    axes, n = _axes(dy), _count(dy)
    sums = _by_samples(lambda a, b: (dy[a:b].sum(axis=axes), _channel_dot(dy[a:b], xc[a:b])), dy)
    dbeta = sum(part[0] for part in sums)
    dgamma = sum(part[1] for part in sums) * inv_std
    if not need_dx:
        return None, dgamma, dbeta
    n_all, dbeta_all, dgamma_all = n, dbeta, dgamma
    if cache.batch_stats and reduce_sum is not None:
        n_all, dbeta_all, dgamma_all = _sum_over_processes(reduce_sum, n, dbeta, dgamma)
    scale = gamma.astype(dy.dtype, copy=False) * inv_std      # (C,) γ s
    # x̃ · dγ = x̂ · dγ − x_hat_mean · dγ: the per-channel part joins dβ, no extra full-size array
    offset = dbeta_all if cache.x_hat_mean is None else dbeta_all - cache.x_hat_mean * dgamma_all
    per_dy, per_xc, per_one = (_per_channel(v, dy) for v in
                               (scale, scale * inv_std * dgamma_all / n_all,
                                scale * offset / n_all))
    if fused.fusable(xp, dy, xc):
        return _backward_dx_fused(dy, xc, per_dy, per_xc, per_one, cache.batch_stats), dgamma, dbeta
    dx = xp.empty_like(dy)

    def grad(a, b):                       # dx for these samples
        xp.multiply(dy[a:b], per_dy, out=dx[a:b])
        if cache.batch_stats:
            dx[a:b] -= xc[a:b] * per_xc
            dx[a:b] -= per_one

    _in_pieces(grad, dy)
    return dx, dgamma, dbeta


BACKWARD_DX_CUDA = r"""
// dx = dy · per_dy_c − xc · per_xc_c − per_one_c (batch statistics), or dy · per_dy_c (constants);
// dy, xc, dx (N, C, inner) C-order, the per-channel numbers (C,)
extern "C" __global__ void batchnorm_backward_dx(const real* dy, const real* xc,
                                                 const real* per_dy, const real* per_xc,
                                                 const real* per_one, real* dx, int batch_stats,
                                                 int n, int C, int inner) {
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned int)n;
         i += blockDim.x * gridDim.x) {
        int c = (i / inner) % C;
        real d = dy[i] * per_dy[c];
        if (batch_stats) {
            d = d - xc[i] * per_xc[c];
            d = d - per_one[c];
        }
        dx[i] = d;
    }
}
"""


def _backward_dx_fused(dy, xc, per_dy, per_xc, per_one, batch_stats):
    """batchnorm_backward's dx in one kernel (BACKWARD_DX_CUDA); per_* (1, C, 1, ...)."""
    xp = get_array_module(dy)
    dy, xc = xp.ascontiguousarray(dy), xp.ascontiguousarray(xc)
    dx = xp.empty_like(dy)
    _launch_per_element(BACKWARD_DX_CUDA, "batchnorm_backward_dx", dy, dy, xc,
                        *(_per_channel_arg(v, dy) for v in (per_dy, per_xc, per_one)), dx,
                        np.int32(bool(batch_stats)))
    return dx


class BatchStatisticsError(ValueError):
    """A batch too small for batch statistics (one value per channel has no variance)."""


class _BatchNorm(Module):
    """Shared implementation; subclasses only name the input ranks they accept."""

    ndims = ()  # accepted x.ndim values

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum    # None: cumulative average, as in PyTorch
        self.add_param("weight", np.ones(num_features, dtype=np.float32), decay=False)
        self.add_param("bias", np.zeros(num_features, dtype=np.float32), decay=False)
        # same names and order as torch.nn.BatchNorm*d, so state dicts match by name
        self.buffers["running_mean"] = np.zeros(num_features, dtype=np.float32)
        self.buffers["running_var"] = np.ones(num_features, dtype=np.float32)
        self.buffers["num_batches_tracked"] = np.array(0, dtype=np.int64)
        # synchronised batchnorm: per-channel array -> its sum over every data-parallel process
        # (minirate/distributed.py sets it); None: the statistics of this process's batch
        self.reduce_sum = None

    def _check(self, x):
        if x.ndim not in self.ndims or x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) expects input of rank "
                             f"{' or '.join(map(str, self.ndims))} with {self.num_features} "
                             f"channels on axis 1, got shape {tuple(x.shape)}")

    # -- the pieces, named from the maths ---------------------------------------------------
    def batch_stats(self, x):
        """Per-channel mean and biased variance of x, each (C,)."""
        return self.batch_stats_count(x)[:2]

    def batch_stats_count(self, x):
        """(μ, σ², n): batch_stats and the number n of values per channel they are over (with
        synchronised batchnorm, over every process: the n that `update_running` needs)."""
        self._check(x)
        mean, var, _, n = _centred_stats(x, self.reduce_sum)
        return mean, var, n

    def update_running(self, mean, var, n):
        """Running-statistics update from a batch's μ and biased σ² over n values per channel."""
        if n < 2:
            raise BatchStatisticsError(f"batchnorm needs more than 1 value per channel for its "
                                       f"batch statistics, got {n}")
        b = self.buffers
        b["num_batches_tracked"] += 1
        m = 1.0 / float(b["num_batches_tracked"]) if self.momentum is None else self.momentum
        xp = get_array_module(b["running_mean"])
        mean = xp.asarray(mean).astype(b["running_mean"].dtype, copy=False)
        var_unbiased = xp.asarray(var).astype(b["running_var"].dtype, copy=False) * (n / (n - 1))
        b["running_mean"] *= 1 - m
        b["running_mean"] += m * mean
        b["running_var"] *= 1 - m
        b["running_var"] += m * var_unbiased

    def normalize(self, x, mean, var):
        """γ (x − μ)/√(σ² + ε) + β with the given per-channel μ, σ²; nothing kept."""
        self._check(x)
        return batchnorm_normalize(x, self.params["weight"], self.params["bias"], mean, var,
                                   self.eps)

    # -- layer interface --------------------------------------------------------------------
    def forward(self, x):
        """Training: batch statistics, running statistics updated. Eval: running statistics."""
        self._check(x)
        w, b = self.params["weight"], self.params["bias"]
        if self.training:
            mean, var, xc, n = _centred_stats(x, self.reduce_sum)
            self.update_running(mean, var, n)
            return batchnorm_forward(x, w, b, mean, var, self.eps, batch_stats=True, x_centred=xc)
        return batchnorm_forward(x, w, b, self.buffers["running_mean"],
                                 self.buffers["running_var"], self.eps, batch_stats=False)

    def backward(self, dy, cache, need_dx=True):
        """dx for `forward`'s cache (None when not need_dx); adds dγ, dβ into grads['weight'],
        grads['bias']."""
        dx, dgamma, dbeta = batchnorm_backward(dy, cache, self.reduce_sum, need_dx)
        self.grads["weight"] += dgamma
        self.grads["bias"] += dbeta
        return dx

    def forward_fixed_stats(self, x, mean, var):
        """Straight-through statistics: the value uses the given μ, σ²; running stats untouched."""
        self._check(x)
        return batchnorm_fixed_stats_forward(x, self.params["weight"], self.params["bias"],
                                             mean, var, self.eps, self.reduce_sum)

    def backward_fixed_stats(self, dy, cache, need_dx=True):
        """dx for `forward_fixed_stats`'s cache (module docstring); adds dγ, dβ into grads."""
        if cache.x_hat_mean is None:
            raise ValueError("backward_fixed_stats needs the cache of forward_fixed_stats")
        return self.backward(dy, cache, need_dx)


class BatchNorm1d(_BatchNorm):
    """Input (N, C) or (N, C, L); statistics per channel over N (and L)."""
    ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Input (N, C, H, W); statistics per channel over N, H, W."""
    ndims = (4,)
