"""One LIF step and its backward (equations: the package docstring), and the presynaptic trace
â_t = λ â_{t−1} + s_t that online methods take weight gradients against.

NEURON_CUDA is the same neuron, one element at a time, for the kernels of this package: the
spike, the surrogate (surrogate.py's formulas), the reset and κ. LIFParams reach a kernel as
the doubles (and codes) they are; a kernel rounds them to `real` exactly where the NumPy code
meets an array with them, so both round alike.
"""
from typing import NamedTuple

import numpy as np

from ... import fused
from ...backend import get_array_module
from ..surrogate import surrogate_grad, surrogate_smooth


class LIFParams(NamedTuple):
    decay: float = 0.2
    threshold: float = 1.0
    reset: str = "soft"          # "soft" (subtract θ) or "hard" (set to v_reset)
    v_reset: float = 0.0
    detach_reset: bool = True    # treat the reset as a constant in backward
    surrogate: str = "sigmoid"
    alpha: float = 4.0
    smooth: bool = False         # test only: spike = the surrogate's smooth primitive, not H


class LIFStepCache(NamedTuple):
    u: object        # (B, ...) pre-reset potential u_t of one step


def _spike(x, p):
    if p.smooth:
        return surrogate_smooth(x, p.surrogate, p.alpha)
    return (x >= 0).astype(x.dtype)


def _reset(u, s, p):
    if p.reset == "soft":
        return u - p.threshold * s
    return u * (1 - s) + p.v_reset * s


def _kappa(u, s, sg, p):
    """κ = ∂u⁺/∂u, the derivative of the post-reset potential w.r.t. the pre-reset one."""
    if p.reset == "soft":
        return 1.0 if p.detach_reset else 1 - p.threshold * sg
    if p.detach_reset:
        return 1 - s
    return (1 - s) + (p.v_reset - u) * sg


SURROGATE_CODE = {"sigmoid": 0, "atan": 1, "triangle": 2, "rectangle": 3}

NEURON_CUDA = r"""
#define SIGMOID 0
#define ATAN 1
#define TRIANGLE 2
#define RECTANGLE 3
#define PI 3.141592653589793

struct LIF {            // LIFParams; reals are the doubles rounded once, as NumPy rounds them
    double decay_d, alpha_d;
    real decay, threshold, v_reset, alpha;
    int hard, detach, surrogate, smooth;
};

__device__ __forceinline__ LIF lif_params(double decay, double threshold, int reset,
                                          double v_reset, int detach_reset, int surrogate,
                                          double alpha, int smooth) {
    LIF p;
    p.decay_d = decay; p.alpha_d = alpha;
    p.decay = (real)decay; p.threshold = (real)threshold; p.v_reset = (real)v_reset;
    p.alpha = (real)alpha;
    p.hard = reset; p.detach = detach_reset; p.surrogate = surrogate; p.smooth = smooth;
    return p;
}

// surrogate.py: surrogate_grad(x), x = u − θ
__device__ __forceinline__ real surrogate_grad(real x, const LIF& p) {
    if (p.surrogate == SIGMOID) {                    // α e / (1 + e)², e = exp(−α|x|)
        real e = exp(fabs(x) * -p.alpha);
        real d = e + (real)1;
        d = d * d;
        return e / d * p.alpha;
    }
    if (p.surrogate == ATAN) {                       // (α/2) / (1 + (π α x / 2)²)
        real z = (real)(PI / 2 * p.alpha_d) * x;
        return (real)(p.alpha_d / 2) / ((real)1 + z * z);
    }
    if (p.surrogate == TRIANGLE) {                   // max(0, 1 − |x|/α) / α
        real z = (real)1 - fabs(x) / p.alpha;
        return (z > (real)0 ? z : (real)0) / p.alpha;
    }
    return (fabs(x) < (real)(p.alpha_d / 2) ? (real)1 : (real)0) / p.alpha;   // 1[|x| < α/2] / α
}

// surrogate.py: surrogate_smooth(x), whose derivative is surrogate_grad(x)
__device__ __forceinline__ real surrogate_smooth(real x, const LIF& p) {
    if (p.surrogate == SIGMOID) {                    // σ(αx)
        real z = p.alpha * x;
        real e = exp(-fabs(z));
        return z >= (real)0 ? (real)1 / ((real)1 + e) : e / ((real)1 + e);
    }
    if (p.surrogate == ATAN)                         // atan(π α x / 2)/π + 1/2
        return atan((real)(PI / 2 * p.alpha_d) * x) / (real)PI + (real)0.5;
    if (p.surrogate == TRIANGLE) {                   // z = clip(x/α, −1, 1), quadratic ramp
        real z = x / p.alpha;
        z = z < (real)-1 ? (real)-1 : (z > (real)1 ? (real)1 : z);
        return z < (real)0 ? ((real)1 + z) * ((real)1 + z) / (real)2
                           : (real)1 - ((real)1 - z) * ((real)1 - z) / (real)2;
    }
    real z = x / p.alpha + (real)0.5;                // clip(x/α + 1/2, 0, 1)
    return z < (real)0 ? (real)0 : (z > (real)1 ? (real)1 : z);
}

// s = H(x), or the smooth spike (tests)
__device__ __forceinline__ real spike(real x, const LIF& p) {
    if (p.smooth) return surrogate_smooth(x, p);
    return x >= (real)0 ? (real)1 : (real)0;
}

// u⁺ = u − θ s (soft) or u (1 − s) + v_reset s (hard)
__device__ __forceinline__ real after_reset(real u, real s, const LIF& p) {
    if (!p.hard) return u - p.threshold * s;
    return u * ((real)1 - s) + p.v_reset * s;
}

// κ = ∂u⁺/∂u, the package docstring's table
__device__ __forceinline__ real kappa(real u, real s, real sg, const LIF& p) {
    if (!p.hard) return p.detach ? (real)1 : (real)1 - p.threshold * sg;
    if (p.detach) return (real)1 - s;
    return ((real)1 - s) + (p.v_reset - u) * sg;
}

// u_t = λ u⁺_{t−1} + I_t (u_t = I_t at rest)
__device__ __forceinline__ real charge(real I, real u_prev, int has_u_prev, const LIF& p) {
    return has_u_prev ? p.decay * u_prev + I : I;
}
"""


def kernel_params(p):
    """LIFParams as the trailing arguments of every LIF kernel (decay … smooth)."""
    return (np.float64(p.decay), np.float64(p.threshold), np.int32(p.reset == "hard"),
            np.float64(p.v_reset), np.int32(bool(p.detach_reset)),
            np.int32(SURROGATE_CODE[p.surrogate]), np.float64(p.alpha), np.int32(bool(p.smooth)))


def lif_step(I, u_prev, p, out=None):
    """One step. I: (B, ...) input current; u_prev: post-reset potential of the last step or None.

    Returns s (B, ...), u⁺ (B, ...), LIFStepCache(u).
    out: (s, u⁺, u) arrays like I to write the step into, the same numbers (`_step_into`); the
    loops over time pass views of their (T, neurons) outputs and one u⁺ buffer for every step.
    """
    xp = get_array_module(I)
    if out is not None:                              # the array module's ufuncs, on any device
        return _step_into(I, u_prev, p, *out)
    if fused.fusable(xp, I, u_prev):
        s, u_post, u, _ = _step_fused(xp, I, u_prev, None, p)
        return s, u_post, LIFStepCache(u=u)
    u = I if u_prev is None else p.decay * u_prev + I
    s = _spike(u - p.threshold, p)
    return s, _reset(u, s, p), LIFStepCache(u=u)


def _step_into(I, u_prev, p, s, u_post, u):
    """lif_step's arithmetic, operation for operation, written into s, u⁺ and u (NumPy-style
    ufuncs with out=): no temporaries, no copies afterwards. u⁺ may be u_prev itself (read
    before it is overwritten); it holds u − θ on the way, the spike test's argument."""
    xp = get_array_module(I)
    if u_prev is None:
        u[...] = I
    else:
        xp.multiply(u_prev, p.decay, out=u)
        u += I
    xp.subtract(u, p.threshold, out=u_post)                  # x = u − θ
    if p.smooth:
        s[...] = _spike(u_post, p)
    else:
        xp.greater_equal(u_post, 0, out=s)                    # s = H(x) as 1.0 / 0.0
    if p.reset == "soft":
        xp.multiply(s, p.threshold, out=u_post)
        xp.subtract(u, u_post, out=u_post)                    # u⁺ = u − θ s
    else:
        xp.subtract(1, s, out=u_post)
        u_post *= u                                           # u (1 − s), then + v_reset s
        u_post += p.v_reset * s
    return s, u_post, LIFStepCache(u=u)


def lif_step_traced(I, u_prev, a_prev, p):
    """lif_step and the presynaptic trace of the spikes: â_1 = s_1, â_t = λ · â_{t−1} + s_t.

    a_prev: (B, ...) â_{t−1}, or None at the first step (then â is s itself).
    Returns s, u⁺, LIFStepCache(u), â, each (B, ...) but the cache.
    """
    xp = get_array_module(I)
    if a_prev is not None and fused.fusable(xp, I, u_prev, a_prev):
        s, u_post, u, a = _step_fused(xp, I, u_prev, a_prev, p)
        return s, u_post, LIFStepCache(u=u), a
    s, u_post, cache = lif_step(I, u_prev, p)
    return s, u_post, cache, (s if a_prev is None else p.decay * a_prev + s)


LIF_STEP_CUDA = NEURON_CUDA + r"""
// lif_step / lif_step_traced: one step of N neurons; the trace â only when has_a_prev
extern "C" __global__ void lif_step(const real* I, const real* u_prev, const real* a_prev,
                                    real* s, real* u_post, real* u, real* a,
                                    int N, int has_u_prev, int has_a_prev,
                                    double decay, double threshold, int reset, double v_reset,
                                    int detach_reset, int surrogate, double alpha, int smooth) {
    const LIF p = lif_params(decay, threshold, reset, v_reset, detach_reset, surrogate, alpha,
                             smooth);
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned int)N;
         i += blockDim.x * gridDim.x) {
        real u_t = charge(I[i], has_u_prev ? u_prev[i] : (real)0, has_u_prev, p);
        real s_t = spike(u_t - p.threshold, p);
        s[i] = s_t;
        u[i] = u_t;
        u_post[i] = after_reset(u_t, s_t, p);
        if (has_a_prev) a[i] = p.decay * a_prev[i] + s_t;
    }
}
"""


def _step_fused(xp, I, u_prev, a_prev, p):
    """lif_step (a_prev None) or lif_step_traced in one kernel: s, u⁺, u, â (None without)."""
    I = xp.ascontiguousarray(I)
    s, u_post, u = xp.empty_like(I), xp.empty_like(I), xp.empty_like(I)
    a = None if a_prev is None else xp.empty_like(I)
    u_prev = I if u_prev is None else xp.ascontiguousarray(u_prev)   # I: a placeholder, not read
    fused.launch(xp, LIF_STEP_CUDA, "lif_step", I.size, I.dtype,
                 I, u_prev, I if a_prev is None else xp.ascontiguousarray(a_prev),
                 s, u_post, u, s if a is None else a,
                 np.int32(I.size), np.int32(u_prev is not I), np.int32(a is not None),
                 *kernel_params(p))
    return s, u_post, u, a


def lif_step_backward(ds, du_post, cache, p, out=None):
    """Backward of one step. ds: dL/ds_t; du_post: dL/du⁺_t from the next step (None at t = T).

    Returns dI_t and dL/du⁺_{t−1} = λ · du_t.
    out: (dI_t, dL/du⁺_{t−1}) arrays like ds to write them into, the same numbers; the second may
    be du_post itself (read before it is overwritten), as in the reversed loop over time.
    """
    xp = get_array_module(ds)
    if out is None and fused.fusable(xp, ds, du_post, cache.u):
        return _step_backward_fused(xp, ds, du_post, cache.u, p)
    x = cache.u - p.threshold
    sg = surrogate_grad(x, p.surrogate, p.alpha)
    du = ds * sg if out is None else xp.multiply(ds, sg, out=out[0])
    if du_post is not None:
        if p.reset == "soft" and p.detach_reset:     # κ = 1: skip the product
            du += du_post
        else:
            du += du_post * _kappa(cache.u, _spike(x, p), sg, p)
    if out is None:
        return du, p.decay * du
    return du, xp.multiply(du, p.decay, out=out[1])


DU_CUDA = NEURON_CUDA + r"""
// du_t = ds_t sg_t + du⁺_t κ_t (no du⁺ at t = T); dI_t = du_t, du⁺_{t−1} = λ du_t
__device__ __forceinline__ real du_of_step(real ds, real du_post, int has_du_post, real u,
                                           const LIF& p) {
    real x = u - p.threshold;
    real sg = surrogate_grad(x, p);
    real du = ds * sg;
    if (has_du_post) {
        if (!p.hard && p.detach) du = du + du_post;                  // κ = 1
        else du = du + du_post * kappa(u, spike(x, p), sg, p);
    }
    return du;
}
"""

LIF_STEP_BACKWARD_CUDA = DU_CUDA + r"""
extern "C" __global__ void lif_step_backward(const real* ds, const real* du_post, const real* u,
                                             real* dI, real* du_prev, int N, int has_du_post,
                                             double decay, double threshold, int reset,
                                             double v_reset, int detach_reset, int surrogate,
                                             double alpha, int smooth) {
    const LIF p = lif_params(decay, threshold, reset, v_reset, detach_reset, surrogate, alpha,
                             smooth);
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned int)N;
         i += blockDim.x * gridDim.x) {
        real du = du_of_step(ds[i], has_du_post ? du_post[i] : (real)0, has_du_post, u[i], p);
        dI[i] = du;
        du_prev[i] = p.decay * du;
    }
}
"""


def _step_backward_fused(xp, ds, du_post, u, p):
    ds = xp.ascontiguousarray(ds)
    dI, du_prev = xp.empty_like(ds), xp.empty_like(ds)
    has_du_post = du_post is not None
    fused.launch(xp, LIF_STEP_BACKWARD_CUDA, "lif_step_backward", ds.size, ds.dtype,
                 ds, xp.ascontiguousarray(du_post) if has_du_post else ds,   # ds: placeholder
                 xp.ascontiguousarray(u), dI, du_prev, np.int32(ds.size), np.int32(has_du_post),
                 *kernel_params(p))
    return dI, du_prev
