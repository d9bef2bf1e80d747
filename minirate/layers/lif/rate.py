"""Rate statistics of the spike pass: r = (1/T) Σ s_t and e = (1/T) Σ sg_t ε_t, with ε_1 = 1,
ε_{t+1} = 1 + λ κ_t ε_t (the package docstring), kept as running sums, no history.

On a GPU `lif_forward_rate` is one kernel with the sums in registers (only s is written per
step), and `lif_rate_step` one kernel per step; the CUDA C sits beside each NumPy function.
"""
from typing import NamedTuple

import numpy as np

from ... import fused
from ...backend import cpu_map, cpu_ranges, get_array_module
from ..surrogate import surrogate_grad
from .neuron import NEURON_CUDA, _kappa, kernel_params, lif_step


class LIFRateState(NamedTuple):
    """Running state of the spike pass when only rate statistics are kept."""
    u: object        # (B, ...) post-reset potential u⁺_t (None before the first step)
    eps: object      # (B, ...) ε_{t+1} = ∂u_{t+1}/∂c (None before the first step: ε_1 = 1)
    r_sum: object    # (B, ...) Σ s_t so far
    e_sum: object    # (B, ...) Σ sg_t ε_t so far
    steps: int


def lif_rate_step(I, state, p, out=None):
    """One spike-pass step that keeps only the running rate and eligibility sums.

    state: LIFRateState or None at t = 1. Returns s_t and the new state.
    With a soft detached reset (κ = 1) ε_t is the same for every neuron, a Python float.
    out: (s, u⁺, u) arrays to write the neuron's step into (lif_step's `out`), for the loop
    over time, which owns its state: the running sums are then added to in place. The same
    operations either way, so the same numbers.
    """
    xp = get_array_module(I)
    if out is None and fused.fusable(xp, I, *(() if state is None else
                                              (state.u, state.r_sum, state.e_sum))):
        return _rate_step_fused(xp, I, state, p)
    s, u_post, cache = lif_step(I, None if state is None else state.u, p, out=out)
    sg = surrogate_grad(cache.u - p.threshold, p.surrogate, p.alpha)
    eps = 1.0 if state is None else state.eps        # ε_1 = 1
    eps_next = 1 + p.decay * _kappa(cache.u, s, sg, p) * eps     # ε_{t+1} = 1 + λ κ_t ε_t
    if state is None:
        e_sum, r_sum = sg, (s if out is None else s.copy())     # s: a view of the loop's output
    elif out is None:
        e_sum, r_sum = state.e_sum + sg * eps, state.r_sum + s
    else:
        sg *= eps
        e_sum, r_sum = state.e_sum, state.r_sum
        e_sum += sg
        r_sum += s
    steps = 1 if state is None else state.steps + 1
    return s, LIFRateState(u=u_post, eps=eps_next, r_sum=r_sum, e_sum=e_sum, steps=steps)


LIF_RATE_STEP_CUDA = NEURON_CUDA + r"""
// lif_rate_step: one step of N neurons; the *_prev arrays are read only when !first.
// With κ = 1 (soft, detached) ε is one number, eps_const, and eps is not written.
extern "C" __global__ void lif_rate_step(const real* I, const real* u_prev, const real* eps_prev,
                                         const real* r_sum_prev, const real* e_sum_prev,
                                         real* s, real* u_post, real* eps, real* r_sum,
                                         real* e_sum, int N, int first, double eps_const,
                                         double decay, double threshold, int reset,
                                         double v_reset, int detach_reset, int surrogate,
                                         double alpha, int smooth) {
    const LIF p = lif_params(decay, threshold, reset, v_reset, detach_reset, surrogate, alpha,
                             smooth);
    const int kappa_one = !p.hard && p.detach;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned int)N;
         i += blockDim.x * gridDim.x) {
        real u_t = charge(I[i], first ? (real)0 : u_prev[i], !first, p);
        real x = u_t - p.threshold;
        real s_t = spike(x, p);
        real sg = surrogate_grad(x, p);
        real eps_t = first ? (real)1 : (kappa_one ? (real)eps_const : eps_prev[i]);
        s[i] = s_t;
        u_post[i] = after_reset(u_t, s_t, p);
        r_sum[i] = first ? s_t : r_sum_prev[i] + s_t;
        e_sum[i] = first ? sg : e_sum_prev[i] + sg * eps_t;
        if (!kappa_one) eps[i] = (real)1 + p.decay * kappa(u_t, s_t, sg, p) * eps_t;
    }
}
"""


def _rate_step_fused(xp, I, state, p):
    I = xp.ascontiguousarray(I)
    s, u_post, r_sum, e_sum = (xp.empty_like(I) for _ in range(4))
    kappa_one = p.reset == "soft" and p.detach_reset
    eps_in = 1.0 if state is None else state.eps
    eps_next = None if kappa_one else xp.empty_like(I)
    prev = ((I, I, I, I) if state is None else              # I: placeholders, not read
            tuple(xp.ascontiguousarray(a) for a in
                  (state.u, I if kappa_one else state.eps, state.r_sum, state.e_sum)))
    fused.launch(xp, LIF_RATE_STEP_CUDA, "lif_rate_step", I.size, I.dtype,
                 I, *prev, s, u_post, s if kappa_one else eps_next, r_sum, e_sum,
                 np.int32(I.size), np.int32(state is None),
                 np.float64(eps_in if kappa_one else 0.0), *kernel_params(p))
    if kappa_one:                                    # NumPy's Python float, the same sum
        eps_next = 1 + p.decay * 1.0 * eps_in
    steps = 1 if state is None else state.steps + 1
    return s, LIFRateState(u=u_post, eps=eps_next, r_sum=r_sum, e_sum=e_sum, steps=steps)


def rate_and_eligibility(state):
    """Firing rate r = Σ s_t / T and eligibility e = Σ sg_t ε_t / T from a final LIFRateState."""
    return state.r_sum / state.steps, state.e_sum / state.steps


def lif_forward_rate(I, T, p):
    """All T steps keeping no history. I: (T*B, ...). Returns s (T*B, ...), r (B, ...), e (B, ...).

    As in lif_forward, each CPU thread runs the time loop on its own range of neurons; on a GPU
    one kernel (LIF_FORWARD_RATE_CUDA), a thread per neuron.
    """
    xp = get_array_module(I)
    if fused.fusable(xp, I):
        return _forward_rate_fused(xp, I, T, p)
    shape = I.shape
    I = I.reshape(T, -1)                             # (T*B, ...) -> (T, neurons)
    s = xp.empty_like(I)
    r = xp.empty_like(I[0])
    e = xp.empty_like(I[0])

    def run(a, b):                                   # neurons a..b, all steps
        state = None
        post, u = xp.empty(b - a, dtype=I.dtype), xp.empty(b - a, dtype=I.dtype)
        for t in range(T):
            _, state = lif_rate_step(I[t, a:b], state, p, out=(s[t, a:b], post, u))
        r[a:b], e[a:b] = rate_and_eligibility(state)

    cpu_map(run, cpu_ranges(xp, I.shape[1], T * I.itemsize))
    per_sample = (-1, *shape[1:])                    # (neurons,) -> (B, ...)
    return s.reshape(shape), r.reshape(per_sample), e.reshape(per_sample)


LIF_FORWARD_RATE_CUDA = NEURON_CUDA + r"""
// lif_forward_rate: I, s are (T, N) time-major; r, e (N,). The sums and ε live in registers;
// with κ = 1 ε is the same double recursion for every neuron, as in the NumPy code.
extern "C" __global__ void lif_forward_rate(const real* I, real* s, real* r, real* e,
                                            int T, int N,
                                            double decay, double threshold, int reset,
                                            double v_reset, int detach_reset, int surrogate,
                                            double alpha, int smooth) {
    const LIF p = lif_params(decay, threshold, reset, v_reset, detach_reset, surrogate, alpha,
                             smooth);
    const int kappa_one = !p.hard && p.detach;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned int)N;
         i += blockDim.x * gridDim.x) {
        real u_post = (real)0, r_sum = (real)0, e_sum = (real)0, eps = (real)1;
        double eps_d = 1.0;
        for (int t = 0; t < T; t++) {
            size_t k = (size_t)t * N + i;
            real u_t = charge(I[k], u_post, t > 0, p);
            real x = u_t - p.threshold;
            real s_t = spike(x, p);
            real sg = surrogate_grad(x, p);
            s[k] = s_t;
            u_post = after_reset(u_t, s_t, p);
            r_sum = t == 0 ? s_t : r_sum + s_t;
            e_sum = t == 0 ? sg : e_sum + sg * (kappa_one ? (real)eps_d : eps);
            if (kappa_one) eps_d = 1.0 + p.decay_d * eps_d;          // ε_{t+1} = 1 + λ ε_t
            else eps = (real)1 + p.decay * kappa(u_t, s_t, sg, p) * eps;
        }
        r[i] = r_sum / (real)T;
        e[i] = e_sum / (real)T;
    }
}
"""


def _forward_rate_fused(xp, I, T, p):
    shape = I.shape
    I = xp.ascontiguousarray(I).reshape(T, -1)      # (T*B, ...) -> (T, neurons)
    N = I.shape[1]
    s, r, e = xp.empty_like(I), xp.empty_like(I[0]), xp.empty_like(I[0])
    fused.launch(xp, LIF_FORWARD_RATE_CUDA, "lif_forward_rate", N, I.dtype,
                 I, s, r, e, np.int32(T), np.int32(N), *kernel_params(p))
    per_sample = (-1, *shape[1:])                    # (neurons,) -> (B, ...)
    return s.reshape(shape), r.reshape(per_sample), e.reshape(per_sample)


def lif_rate_backward(dr, e):
    """Rate-pass backward of the neuron: dI = dr · e (e = ∂r/∂I for a constant input shift)."""
    return dr * e
