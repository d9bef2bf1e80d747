"""Backpropagation through time (BPTT), exact up to the surrogate derivative of the spike.

Multi-step mode ('m'): the input (a static image repeated, or T frames) is stacked over T steps and every stateless layer (conv,
batchnorm, linear, pooling) processes all T*B samples at once, batchnorm statistics over T*B;
each LIF layer loops over time. Every layer keeps its cache; backward runs the layers in reverse
and each LIF layer runs its reversed loop over time.

Single-step mode ('s'): the network is stepped T times, each layer one step at a time (batchnorm
normalises each step with that step's batch statistics); the caches of every step are kept and
backward is a reversed loop over steps, LIF layers carrying dL/du⁺ from step t+1 to step t.

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


class BPTT:
    name = "bptt"

    def __init__(self, model, T, step_mode="m", per_step_loss=False):
        if step_mode not in ("m", "s"):
            raise ValueError(f"unknown step mode {step_mode!r}; choose m or s")
        self.model, self.T, self.step_mode = model, T, step_mode
        self.per_step_loss = per_step_loss
        self.kept_bytes = 0       # bytes of caches held for backward in the last step

    def step(self, x, y, loss_fn=cross_entropy):
        """Forward and backward on one batch; adds gradients into the model. Returns (loss, logits).

        x: a static batch (B, C, H, W) or frames (T, B, C, H, W) (see methods/common.py).
        loss_fn(logits, y) -> (loss, dlogits); cross-entropy by default.
        """
        if self.step_mode == "m":
            return self._step_multi(x, y, loss_fn)
        return self._step_single(x, y, loss_fn)

    def _step_multi(self, x, y, loss_fn):
        T, caches = self.T, {}

        def run(layer, h):
            out, caches[layer] = layer.forward(h, T) if isinstance(layer, LIF) else layer.forward(h)
            return out

        def back(layer, dh, need_dx=True):
            return leaf_backward(layer.backward, dh, caches.pop(layer), need_dx)

        out = self.model.forward(input_over_time(x, T), run)         # (T*B, K)
        self.kept_bytes = cache_nbytes(caches, exclude=self.model.params_list())
        logits = mean_over_time(out, T)
        if self.per_step_loss:
            loss, dout = per_step_loss(out, y, loss_fn, T)
        else:
            loss, dlogits = loss_fn(logits, y)
            dout = spread_over_time(dlogits, T)
        self.model.backward(dout, back, need_dx=False)     # nobody reads the input's gradient
        return loss, logits

    def _step_single(self, x, y, loss_fn):
        T = self.T
        check_frames(x, T)
        caches = [dict() for _ in range(T)]     # caches[t][layer]
        u_post = {}                             # LIF layer -> post-reset potential of step t-1

        outs = [self.model.forward(input_at(x, t), run_keeping_step(caches[t], u_post))
                for t in range(T)]
        logits = sum(outs) / T
        self.kept_bytes = cache_nbytes(caches, exclude=self.model.params_list())
        if self.per_step_loss:
            loss, dout = per_step_loss(get_array_module(logits).concatenate(outs), y, loss_fn, T)
            douts = dout.reshape(T, -1, *dout.shape[1:])      # (T*B, K) -> (T, B, K)
        else:
            loss, dlogits = loss_fn(logits, y)
            douts = [dlogits / T] * T
        du_post = {}                            # LIF layer -> dL/du⁺ flowing from step t+1

        for t in reversed(range(T)):
            self.model.backward(douts[t], back_through_step(caches[t], du_post), need_dx=False)
            caches[t] = None                    # free step t's caches as soon as possible
        return loss, logits
