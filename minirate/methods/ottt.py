"""Online training through time (OTTT; Xiao et al., NeurIPS 2022): SLTT's per-step spatial
backward, with weight gradients taken against presynaptic traces. Memory does not grow with T.

Every step runs as in sltt.py (forward one step, loss_t = loss_fn(out_t, y) / T, backward
through that step's graph with the membrane potential entering the charge a constant), and

1. Each LIF layer keeps a presynaptic trace of its spikes (no gradient flows through it):

       â_1 = s_1,   â_t = λ · â_{t−1} + s_t           (λ: the layer's decay)

2. A trace follows the spikes through the layers that act on spikes and traces alike (pooling,
   Flatten, Scale, neuron dropout with its per-sequence mask): each computes its output once
   from the spikes and once from the trace.
3. A convolution or linear layer (plain or sWS) whose input carries a trace computes its output,
   and the gradient it passes down, from the spikes; its weight gradient uses the trace:

       ∂W += g_t ⊗ â_t            instead of g_t ⊗ s_t       (g_t: its output gradient)

   (for sWS layers, g_t ⊗ â_t is dŴ, then backpropagated through the standardization). Biases
   get Σ_t g_t, no trace; the first convolution sees the raw input, which has no trace; the
   readout linear layer is fed by spikes through pooling, so it uses the trace.

Since Σ_t g_t ⊗ â_t = Σ_t (Σ_{τ ≥ t} λ^{τ−t} g_τ) ⊗ s_t, the trace carries forward in time what
BPTT would carry backward along the leak (without the surrogate and reset terms).

Updates: OTTT_A ('accumulate', the default) sums the gradients of all T steps for one optimizer
step per batch; OTTT_O ('per-step') calls the caller's `after_step()` (its optimizer step) after
every time step, so step t+1 runs on the weights updated at step t.

What is kept (`kept_bytes`, the largest over steps): one step's caches (with traces in place of
spikes), u⁺ and â per LIF neuron; nothing depends on T. At T = 1 (â_1 = s_1) this is exactly
BPTT with the per-step loss and a detached reset.

Published recipe: scaled weight standardization instead of batchnorm and ×2.74 after every
spiking layer (`--arch vgg11_ws`), τ = 2 (`--decay 0.5`), sigmoid surrogate α = 4, T = 6,
per-step loss with λ_L = 0.05, no weight decay.
"""
from ..layers.conv import Conv2d
from ..layers.dropout import NeuronDropout
from ..layers.flatten import Flatten
from ..layers.linear import Linear
from ..layers.lif import LIF
from ..layers.pool import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from ..layers.scale import Scale
from ..layers.scaled_ws import ScaledWSCache
from .sltt import SLTT

UPDATES = ("accumulate", "per-step")
TRACE_ALIKE = (AvgPool2d, MaxPool2d, AdaptiveAvgPool2d, Flatten, Scale, NeuronDropout)
WEIGHT_LAYERS = (Conv2d, Linear)          # ScaledWSConv2d and ScaledWSLinear are subclasses


def with_input(cache, a):
    """A conv/linear cache whose input is replaced by `a`: its backward then computes the
    weight gradient against `a` (dx does not read the input)."""
    if isinstance(cache, ScaledWSCache):
        return cache._replace(op=cache.op._replace(x=a))
    return cache._replace(x=a)


class OTTT(SLTT):
    def __init__(self, model, T, update="accumulate"):
        if update not in UPDATES:
            raise ValueError(f"unknown OTTT update {update!r}; choose one of {', '.join(UPDATES)}")
        super().__init__(model, T)
        self.update = update
        self.update_each_step = update == "per-step"
        self.name = "ottt"

    def run_at(self, state, caches):
        """run() of one step; LIF state is (u⁺_t, â_t). Values that spikes flow into carry
        their trace in `traced` (id(value) -> (value, trace)) for the layers that read them."""
        traced = {}

        def run(layer, h):
            a = traced[id(h)][1] if id(h) in traced else None
            if isinstance(layer, LIF):
                u_prev, a_prev = state.get(layer, (None, None))
                out, u_post, cache, a_out = layer.step_traced(h, u_prev, a_prev)
                state[layer] = (u_post, a_out)
                traced[id(out)] = (out, a_out)
            else:
                out, cache = layer.forward(h)
                if a is not None and isinstance(layer, TRACE_ALIKE):
                    traced[id(out)] = (out, layer.forward(a)[0])
                elif a is not None and isinstance(layer, WEIGHT_LAYERS):
                    cache = with_input(cache, a)
            if caches is not None:
                caches[layer] = cache
            return out
        return run
