"""Leaky integrate-and-fire (LIF) neuron: one time step, its backward, and the loops over time.

Dynamics at step t (λ = decay, θ = threshold), for every neuron independently:

    u_t      = λ · u⁺_{t−1} + I_t              charge (u⁺_0 = 0)
    s_t      = H(u_t − θ)                      fire (H: Heaviside step)
    u⁺_t     = u_t − θ · s_t                   soft reset (default), or
    u⁺_t     = u_t · (1 − s_t) + v_reset · s_t  hard reset

Backward through time replaces dH/du by a surrogate sg_t = sg(u_t − θ) (see surrogate.py). With
κ_t = ∂u⁺_t/∂u_t the reset's own derivative

    soft, detached reset:   κ_t = 1
    soft, not detached:     κ_t = 1 − θ · sg_t
    hard, detached:         κ_t = 1 − s_t
    hard, not detached:     κ_t = (1 − s_t) + (v_reset − u_t) · sg_t

the gradient of the membrane potential obeys, running t = T … 1,

    du_t  = ds_t · sg_t + du⁺_t · κ_t,   du⁺_{t−1} = λ · du_t,   dI_t = du_t     (du⁺_T = 0)

`lif_step` / `lif_step_backward` are that one step; `lif_forward` / `lif_backward` are the loop
and the reversed loop. The only thing a step keeps for backward is u_t (s_t and sg_t are
recomputed from it): T floats per neuron for BPTT.

Rate statistics (rate-based backpropagation) need no history at all, only running sums:
the firing rate r = (1/T) Σ_t s_t and the eligibility e = (1/T) Σ_t sg_t · ε_t with ε_1 = 1,
ε_{t+1} = 1 + λ κ_t ε_t. ε_t = ∂u_t/∂c for a shift c of the input that is the same at every
step, so e is exactly the surrogate derivative of r with respect to that shift.
"""
from typing import NamedTuple

from ..backend import cpu_map, cpu_ranges, get_array_module
from .base import Module
from .surrogate import DEFAULT_ALPHA, surrogate_grad, surrogate_smooth

RESETS = ("soft", "hard")
SURROGATES = tuple(DEFAULT_ALPHA)


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


class LIFCache(NamedTuple):
    u: object        # (T, B, ...) pre-reset potentials of all steps


class LIFRateState(NamedTuple):
    """Running state of the spike pass when only rate statistics are kept."""
    u: object        # (B, ...) post-reset potential u⁺_t (None before the first step)
    eps: object      # (B, ...) ε_{t+1} = ∂u_{t+1}/∂c (None before the first step: ε_1 = 1)
    r_sum: object    # (B, ...) Σ s_t so far
    e_sum: object    # (B, ...) Σ sg_t ε_t so far
    steps: int


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


def lif_step(I, u_prev, p):
    """One step. I: (B, ...) input current; u_prev: post-reset potential of the last step or None.

    Returns s (B, ...), u⁺ (B, ...), LIFStepCache(u).
    """
    u = I if u_prev is None else p.decay * u_prev + I
    s = _spike(u - p.threshold, p)
    return s, _reset(u, s, p), LIFStepCache(u=u)


def lif_step_backward(ds, du_post, cache, p):
    """Backward of one step. ds: dL/ds_t; du_post: dL/du⁺_t from the next step (None at t = T).

    Returns dI_t and dL/du⁺_{t−1} = λ · du_t.
    """
    x = cache.u - p.threshold
    sg = surrogate_grad(x, p.surrogate, p.alpha)
    du = ds * sg
    if du_post is not None:
        if p.reset == "soft" and p.detach_reset:     # κ = 1: skip the product
            du += du_post
        else:
            du += du_post * _kappa(cache.u, _spike(x, p), sg, p)
    return du, p.decay * du


def lif_forward(I, T, p, u0=None):
    """All T steps. I: (T*B, ...) input currents, time-major. Returns s (T*B, ...), LIFCache.

    u0: (B, ...) post-reset potential entering step 1 (None: at rest, u⁺_0 = 0); it enters as
    a value only, backward gives no gradient for it.
    Neurons are independent: on the CPU each thread runs the time loop on its own range of them.
    """
    xp = get_array_module(I)
    shape = I.shape
    I = I.reshape(T, -1)                             # (T*B, ...) -> (T, neurons)
    u0 = None if u0 is None else u0.reshape(-1)      # (B, ...) -> (neurons,)
    s = xp.empty_like(I)
    u_all = xp.empty_like(I)

    def run(a, b):                                   # neurons a..b, all steps
        u_post = None if u0 is None else u0[a:b]
        for t in range(T):
            s[t, a:b], u_post, step_cache = lif_step(I[t, a:b], u_post, p)
            u_all[t, a:b] = step_cache.u

    cpu_map(run, cpu_ranges(xp, I.shape[1], T * I.itemsize))
    return s.reshape(shape), LIFCache(u=u_all.reshape(T, -1, *shape[1:]))


def lif_final_state(cache, p):
    """u⁺_T, the post-reset potential after the last step of a LIFCache: (B, ...), a new array."""
    u = cache.u[-1]
    return _reset(u, _spike(u - p.threshold, p), p)


def lif_backward(ds, cache, p):
    """Reversed loop of lif_step_backward. ds: (T*B, ...). Returns dI (T*B, ...)."""
    xp = get_array_module(ds)
    T = cache.u.shape[0]
    u = cache.u.reshape(T, -1)                       # (T, B, ...) -> (T, neurons)
    ds = ds.reshape(u.shape)
    dI = xp.empty_like(ds)

    def run(a, b):                                   # neurons a..b, all steps backwards
        du_post = None
        for t in reversed(range(T)):
            dI[t, a:b], du_post = lif_step_backward(ds[t, a:b], du_post,
                                                    LIFStepCache(u=u[t, a:b]), p)

    cpu_map(run, cpu_ranges(xp, u.shape[1], T * u.itemsize))
    return dI.reshape(-1, *cache.u.shape[2:])        # (T, neurons) -> (T*B, ...)


def lif_rate_step(I, state, p):
    """One spike-pass step that keeps only the running rate and eligibility sums.

    state: LIFRateState or None at t = 1. Returns s_t and the new state.
    """
    s, u_post, cache = lif_step(I, None if state is None else state.u, p)
    sg = surrogate_grad(cache.u - p.threshold, p.surrogate, p.alpha)
    if state is None:                                # ε_1 = 1
        e_sum, r_sum, eps = sg, s, 1.0
    else:
        e_sum, r_sum, eps = state.e_sum + sg * state.eps, state.r_sum + s, state.eps
    eps_next = 1 + p.decay * _kappa(cache.u, s, sg, p) * eps     # ε_{t+1} = 1 + λ κ_t ε_t
    steps = 1 if state is None else state.steps + 1
    return s, LIFRateState(u=u_post, eps=eps_next, r_sum=r_sum, e_sum=e_sum, steps=steps)


def rate_and_eligibility(state):
    """Firing rate r = Σ s_t / T and eligibility e = Σ sg_t ε_t / T from a final LIFRateState."""
    return state.r_sum / state.steps, state.e_sum / state.steps


def lif_forward_rate(I, T, p):
    """All T steps keeping no history. I: (T*B, ...). Returns s (T*B, ...), r (B, ...), e (B, ...).

    As in lif_forward, each CPU thread runs the time loop on its own range of neurons.
    """
    xp = get_array_module(I)
    shape = I.shape
    I = I.reshape(T, -1)                             # (T*B, ...) -> (T, neurons)
    s = xp.empty_like(I)
    r = xp.empty_like(I[0])
    e = xp.empty_like(I[0])

    def run(a, b):                                   # neurons a..b, all steps
        state = None
        for t in range(T):
            s[t, a:b], state = lif_rate_step(I[t, a:b], state, p)
        r[a:b], e[a:b] = rate_and_eligibility(state)

    cpu_map(run, cpu_ranges(xp, I.shape[1], T * I.itemsize))
    per_sample = (-1, *shape[1:])                    # (neurons,) -> (B, ...)
    return s.reshape(shape), r.reshape(per_sample), e.reshape(per_sample)


def lif_rate_backward(dr, e):
    """Rate-pass backward of the neuron: dI = dr · e (e = ∂r/∂I for a constant input shift)."""
    return dr * e


class LIF(Module):
    """A layer of LIF neurons (no parameters). See the module docstring for the equations."""

    def __init__(self, decay=0.2, threshold=1.0, reset="soft", v_reset=0.0, detach_reset=True,
                 surrogate="sigmoid", alpha=None, smooth=False):
        super().__init__()
        if reset not in RESETS:
            raise ValueError(f"unknown reset {reset!r}; choose one of {', '.join(RESETS)}")
        if surrogate not in SURROGATES:
            raise ValueError(f"unknown surrogate {surrogate!r}; choose one of {', '.join(SURROGATES)}")
        alpha = DEFAULT_ALPHA[surrogate] if alpha is None else alpha
        self.p = LIFParams(decay, threshold, reset, v_reset, detach_reset, surrogate, alpha, smooth)

    def forward(self, I, T, u0=None):
        return lif_forward(I, T, self.p, u0)

    def final_state(self, cache):
        return lif_final_state(cache, self.p)

    def backward(self, ds, cache):
        return lif_backward(ds, cache, self.p)

    def step(self, I, u_prev):
        return lif_step(I, u_prev, self.p)

    def step_backward(self, ds, du_post, cache):
        return lif_step_backward(ds, du_post, cache, self.p)

    def rate_step(self, I, state):
        return lif_rate_step(I, state, self.p)

    def forward_rate(self, I, T):
        return lif_forward_rate(I, T, self.p)
