"""Backpropagation through time (BPTT), exact up to the surrogate derivative of the spike.

Multi-step mode ('m'): the input (a static image repeated, or T frames) is stacked over T steps and every stateless layer (conv,
batchnorm, linear, pooling) processes all T*B samples at once, batchnorm statistics over T*B;
each LIF layer loops over time. Every layer keeps its cache; backward runs the layers in reverse
and each LIF layer runs its reversed loop over time.

Single-step mode ('s'): the network is stepped T times, each layer one step at a time (batchnorm
normalises each step with that step's batch statistics); the caches of every step are kept and
backward is a reversed loop over steps, LIF layers carrying dL/du⁺ from step t+1 to step t.

Packed spikes (`pack_spikes=True`): every cache keeps its 0/1 tensors as bits, unpacked just
before the layer's backward (see packing.py); gradients are bitwise the same. Recomputation in
time and in depth, which keep less still, are in recompute.py.

Loss: cross-entropy of the output averaged over steps (the default), or with `per_step_loss` the
mean over steps of one loss per step, L = (1/T) Σ_t loss_fn(out_t, y); each step's output then
gets its own gradient (∂loss_fn/∂out_t)/T instead of the shared (∂loss_fn/∂z̄)/T.
"""
from ..backend import get_array_module
from ..layers.base import cache_nbytes
from ..layers.lif import LIF
from ..losses import cross_entropy
from .common import (back_through_step, check_frames, input_at, input_over_time, leaf_backward,
                     mean_over_time, per_step_loss, run_keeping_step, spread_over_time)
from .packing import Packer, unpacked


class BPTT:
    name = "bptt"

    def __init__(self, model, T, step_mode="m", per_step_loss=False, pack_spikes=False):
        if step_mode not in ("m", "s"):
            raise ValueError(f"unknown step mode {step_mode!r}; choose m or s")
        self.model, self.T, self.step_mode = model, T, step_mode
        self.per_step_loss = per_step_loss
        self.packer = Packer(pack_spikes, model.params_list())
        self.kept_bytes = 0       # bytes of caches held for backward in the last step

    def step(self, x, y, loss_fn=cross_entropy):
        """Forward and backward on one batch; adds gradients into the model. Returns (loss, logits).

        x: a static batch (B, C, H, W) or frames (T, B, C, H, W) (see methods/common.py).
        loss_fn(logits, y) -> (loss, dlogits); cross-entropy by default.
        """
        self.model.new_sequence(input_at(x, 0).shape[0])     # per-sequence state: dropout masks
        if self.step_mode == "m":
            return self._step_multi(x, y, loss_fn)
        return self._step_single(x, y, loss_fn)

    def _step_multi(self, x, y, loss_fn):
        T, caches, keep = self.T, {}, self.packer.keep

        def run(layer, h):
            out, cache = layer.forward(h, T) if isinstance(layer, LIF) else layer.forward(h)
            caches[layer] = keep(cache)
            return out

        def back(layer, dh, need_dx=True):
            return leaf_backward(layer.backward, dh, unpacked(caches.pop(layer)), need_dx)

        out = self.model.forward(input_over_time(x, T), run)         # (T*B, K)
        self.kept_bytes = cache_nbytes(caches, exclude=self.model.params_list())
        loss, logits, dout = self.output_gradient(out, y, loss_fn)
        self.model.backward(dout, back, need_dx=False)     # nobody reads the input's gradient
        return loss, logits

    def output_gradient(self, out, y, loss_fn):
        """(loss, logits (B, K), dL/dout (T*B, K)) of the output of all T steps, out (T*B, K)."""
        logits = mean_over_time(out, self.T)
        if self.per_step_loss:
            loss, dout = per_step_loss(out, y, loss_fn, self.T)
        else:
            loss, dlogits = loss_fn(logits, y)
            dout = spread_over_time(dlogits, self.T)
        return loss, logits, dout

    def _step_single(self, x, y, loss_fn):
        T = self.T
        check_frames(x, T)
        caches = [dict() for _ in range(T)]     # caches[t][layer]
        u_post = {}                             # LIF layer -> post-reset potential of step t-1

        outs = [self.model.forward(input_at(x, t),
                                   run_keeping_step(caches[t], u_post, self.packer.keep))
                for t in range(T)]
        self.kept_bytes = cache_nbytes(caches, exclude=self.model.params_list())
        loss, logits, douts = self.steps_output_gradient(outs, y, loss_fn)
        du_post = {}                            # LIF layer -> dL/du⁺ flowing from step t+1

        for t in reversed(range(T)):
            self.model.backward(douts[t], back_through_step(caches[t], du_post), need_dx=False)
            caches[t] = None                    # free step t's caches as soon as possible
        return loss, logits

    def steps_output_gradient(self, outs, y, loss_fn):
        """(loss, logits (B, K), [dL/dout_t]) of the outputs of T single steps, outs[t] (B, K)."""
        T = self.T
        logits = sum(outs) / T
        if self.per_step_loss:
            loss, dout = per_step_loss(get_array_module(logits).concatenate(outs), y, loss_fn, T)
            return loss, logits, dout.reshape(T, -1, *dout.shape[1:])   # (T*B, K) -> (T, B, K)
        loss, dlogits = loss_fn(logits, y)
        return loss, logits, [dlogits / T] * T
