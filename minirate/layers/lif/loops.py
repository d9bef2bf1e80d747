"""The loops over time: all T steps forward keeping u_t for BPTT, and the reversed loop.

On a GPU each is one kernel (one thread per neuron, t inside), the CUDA C beside the NumPy loop.
"""
from typing import NamedTuple

import numpy as np

from ... import fused
from ...backend import cpu_map, cpu_ranges, get_array_module
from .neuron import (DU_CUDA, NEURON_CUDA, LIFStepCache, _reset, _spike,
                     kernel_params, lif_step, lif_step_backward)


class LIFCache(NamedTuple):
    u: object        # (T, B, ...) pre-reset potentials of all steps


def lif_forward(I, T, p, u0=None):
    """All T steps. I: (T*B, ...) input currents, time-major. Returns s (T*B, ...), LIFCache.

    u0: (B, ...) post-reset potential entering step 1 (None: at rest, u⁺_0 = 0); it enters as
    a value only, backward gives no gradient for it.
    Neurons are independent: on the CPU each thread runs the time loop on its own range of them;
    on a GPU one kernel (LIF_FORWARD_CUDA) runs it, a thread per neuron.
    """
    xp = get_array_module(I)
    if fused.fusable(xp, I, u0):
        return _forward_fused(xp, I, T, p, u0)
    shape = I.shape
    I = I.reshape(T, -1)                             # (T*B, ...) -> (T, neurons)
    u0 = None if u0 is None else u0.reshape(-1)      # (B, ...) -> (neurons,)
    s = xp.empty_like(I)
    u_all = xp.empty_like(I)

    def run(a, b):                                   # neurons a..b, all steps
        u_post = None if u0 is None else u0[a:b]
        post = xp.empty(b - a, dtype=I.dtype)        # u⁺, carried from step to step
        for t in range(T):
            _, u_post, _ = lif_step(I[t, a:b], u_post, p, out=(s[t, a:b], post, u_all[t, a:b]))

    cpu_map(run, cpu_ranges(xp, I.shape[1], T * I.itemsize))
    return s.reshape(shape), LIFCache(u=u_all.reshape(T, -1, *shape[1:]))


LIF_FORWARD_CUDA = NEURON_CUDA + r"""
// lif_forward: I, s, u are (T, N) time-major; u0 (N,) read only when has_u0
extern "C" __global__ void lif_forward(const real* I, const real* u0, real* s, real* u,
                                       int T, int N, int has_u0,
                                       double decay, double threshold, int reset, double v_reset,
                                       int detach_reset, int surrogate, double alpha, int smooth) {
    const LIF p = lif_params(decay, threshold, reset, v_reset, detach_reset, surrogate, alpha,
                             smooth);
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned int)N;
         i += blockDim.x * gridDim.x) {
        real u_post = has_u0 ? u0[i] : (real)0;
        for (int t = 0; t < T; t++) {
            size_t k = (size_t)t * N + i;
            real u_t = charge(I[k], u_post, has_u0 || t > 0, p);
            real s_t = spike(u_t - p.threshold, p);
            s[k] = s_t;
            u[k] = u_t;
            u_post = after_reset(u_t, s_t, p);
        }
    }
}
"""


def _forward_fused(xp, I, T, p, u0):
    shape = I.shape
    I = xp.ascontiguousarray(I).reshape(T, -1)      # (T*B, ...) -> (T, neurons)
    s, u_all = xp.empty_like(I), xp.empty_like(I)
    N = I.shape[1]
    fused.launch(xp, LIF_FORWARD_CUDA, "lif_forward", N, I.dtype,
                 I, I if u0 is None else xp.ascontiguousarray(u0),     # I: placeholder for u0
                 s, u_all, np.int32(T), np.int32(N), np.int32(u0 is not None), *kernel_params(p))
    return s.reshape(shape), LIFCache(u=u_all.reshape(T, -1, *shape[1:]))


def lif_final_state(cache, p):
    """u⁺_T, the post-reset potential after the last step of a LIFCache: (B, ...), a new array."""
    u = cache.u[-1]
    return _reset(u, _spike(u - p.threshold, p), p)


def lif_backward(ds, cache, p):
    """Reversed loop of lif_step_backward. ds: (T*B, ...). Returns dI (T*B, ...).

    On a GPU one kernel (LIF_BACKWARD_CUDA), a thread per neuron running t = T … 1.
    """
    xp = get_array_module(ds)
    if fused.fusable(xp, ds, cache.u):
        return _backward_fused(xp, ds, cache, p)
    T = cache.u.shape[0]
    u = cache.u.reshape(T, -1)                       # (T, B, ...) -> (T, neurons)
    ds = ds.reshape(u.shape)
    dI = xp.empty_like(ds)

    def run(a, b):                                   # neurons a..b, all steps backwards
        du_post = None
        carry = xp.empty(b - a, dtype=dI.dtype)      # dL/du⁺, carried from step to step
        for t in reversed(range(T)):
            _, du_post = lif_step_backward(ds[t, a:b], du_post, LIFStepCache(u=u[t, a:b]), p,
                                           out=(dI[t, a:b], carry))

    cpu_map(run, cpu_ranges(xp, u.shape[1], T * u.itemsize))
    return dI.reshape(-1, *cache.u.shape[2:])        # (T, neurons) -> (T*B, ...)


LIF_BACKWARD_CUDA = DU_CUDA + r"""
// lif_backward: ds, u, dI are (T, N) time-major; t = T … 1, du⁺ carried in a register
extern "C" __global__ void lif_backward(const real* ds, const real* u, real* dI, int T, int N,
                                        double decay, double threshold, int reset,
                                        double v_reset, int detach_reset, int surrogate,
                                        double alpha, int smooth) {
    const LIF p = lif_params(decay, threshold, reset, v_reset, detach_reset, surrogate, alpha,
                             smooth);
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned int)N;
         i += blockDim.x * gridDim.x) {
        real du_post = (real)0;
        for (int t = T - 1; t >= 0; t--) {
            size_t k = (size_t)t * N + i;
            real du = du_of_step(ds[k], du_post, t < T - 1, u[k], p);
            dI[k] = du;
            du_post = p.decay * du;
        }
    }
}
"""


def _backward_fused(xp, ds, cache, p):
    T = cache.u.shape[0]
    u = xp.ascontiguousarray(cache.u).reshape(T, -1)             # (T, B, ...) -> (T, neurons)
    ds = xp.ascontiguousarray(ds).reshape(u.shape)
    dI = xp.empty_like(ds)
    fused.launch(xp, LIF_BACKWARD_CUDA, "lif_backward", u.shape[1], u.dtype,
                 ds, u, dI, np.int32(T), np.int32(u.shape[1]), *kernel_params(p))
    return dI.reshape(-1, *cache.u.shape[2:])        # (T, neurons) -> (T*B, ...)
