"""The LIF layer: a thin shell over the functions of this package (equations: its docstring)."""
from ..base import Module
from ..surrogate import DEFAULT_ALPHA
from .loops import lif_backward, lif_final_state, lif_forward
from .neuron import LIFParams, lif_step, lif_step_backward, lif_step_traced
from .rate import lif_forward_rate, lif_rate_step

RESETS = ("soft", "hard")
SURROGATES = tuple(DEFAULT_ALPHA)


class LIF(Module):
    """A layer of LIF neurons (no parameters). See the package docstring for the equations."""

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

    def step_traced(self, I, u_prev, a_prev):
        """step, and the presynaptic trace â_t = λ â_{t−1} + s_t (â_1 = s_1): s, u⁺, cache, â."""
        return lif_step_traced(I, u_prev, a_prev, self.p)

    def step_backward(self, ds, du_post, cache):
        return lif_step_backward(ds, du_post, cache, self.p)

    def rate_step(self, I, state):
        return lif_rate_step(I, state, self.p)

    def forward_rate(self, I, T):
        return lif_forward_rate(I, T, self.p)
