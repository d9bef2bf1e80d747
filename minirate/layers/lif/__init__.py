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

On a GPU (an array module with `RawKernel`, see minirate/fused.py) each function below runs as one
kernel, the loop over T inside it, one thread per neuron; its CUDA C source sits beside the NumPy
code it mirrors, which stays the specification.

The package, by concept: `neuron.py` one step and its backward (and the presynaptic trace),
`loops.py` the loops over T that BPTT keeps u for, `rate.py` the rate statistics, `layer.py` the
LIF layer itself.
"""
from .layer import LIF, RESETS, SURROGATES
from .loops import LIFCache, lif_backward, lif_final_state, lif_forward
from .neuron import LIFParams, LIFStepCache, lif_step, lif_step_backward, lif_step_traced
from .rate import (LIFRateState, lif_forward_rate, lif_rate_backward, lif_rate_step,
                   rate_and_eligibility)

__all__ = ["LIF", "RESETS", "SURROGATES", "LIFCache", "lif_backward", "lif_final_state",
           "lif_forward", "LIFParams", "LIFStepCache", "lif_step", "lif_step_backward",
           "lif_step_traced", "LIFRateState", "lif_forward_rate", "lif_rate_backward",
           "lif_rate_step", "rate_and_eligibility"]
