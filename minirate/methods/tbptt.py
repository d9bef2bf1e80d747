"""Truncated backpropagation through time (TBPTT): what is kept for backward grows with K, not T.

The T steps are cut into consecutive windows of K steps, w = [t0, t1) (the last one shorter when
K does not divide T). One training step runs the windows in order; for each window:

1. Forward over its k = t1 − t0 steps, starting from the neuron state the previous window left:
   every LIF layer starts from u⁺_{t0} as a value (the first window from rest, u⁺_0 = 0).
2. Its own loss on its own readout:  L_w = CE( (1/k) Σ_{t ∈ w} z_t , y ).
3. Backward through the window only, adding ∂L_w/∂θ into the gradients (dL/du⁺ at the window's
   last step is 0), then the window's caches are dropped, before the next window's forward.

So the gradient added is  Σ_w ∂L_w/∂θ  with the state entering every window held constant:
no gradient crosses a window edge. With K = T there is one window and this is BPTT exactly.

Step modes, as for BPTT: 'm' runs each layer over the window's k·B samples at once (batchnorm
statistics over k·B); 's' steps the network one step at a time (batchnorm per step).

Updates: `update="per-batch"` (default) leaves Σ_w ∂L_w/∂θ for the caller's one optimizer step.
`update="per-window"` calls `after_window()` after every window's backward; the caller passes a
function that clips, steps the optimizer and zeroes the gradients, so a batch makes ⌈T/K⌉
updates ("update unlocking"). The learning rate carries over unchanged: a per-batch step moves
the weights by lr · Σ_w g_w, the per-window steps by lr · g_1, lr · g_2, ... — the same sum to
first order. What differs is per update, not per batch: weight decay is applied ⌈T/K⌉ times per
batch, momentum's memory spans ⌈T/K⌉ times fewer batches, and gradient clipping acts on each
window's gradient alone.

Kept for backward (`kept_bytes`): one window's caches, the largest window's: O(K). Between
windows only the carried state is held, one potential per neuron (not needed for backward).
`step` returns the mean of the window losses and the readout over all T steps.
"""
from ..layers.base import cache_nbytes
from ..layers.lif import LIF
from ..losses import cross_entropy
from .common import (back_through_step, check_frames, input_at, input_over_time,
                     is_time_varying, leaf_backward, mean_over_time, run_keeping_step,
                     spread_over_time)
from .packing import Packer, unpacked

UPDATES = ("per-batch", "per-window")


def window_input(x, t0, t1):
    """The input of steps t0..t1−1: a static batch as it is, frames (T, B, ...) -> (t1−t0, B, ...)."""
    return x[t0:t1] if is_time_varying(x) else x


class TBPTT:
    name = "tbptt"

    def __init__(self, model, T, step_mode="m", window=None, update="per-batch",
                 pack_spikes=False):
        if step_mode not in ("m", "s"):
            raise ValueError(f"unknown step mode {step_mode!r}; choose m or s")
        window = T if window is None else window
        if not 1 <= window <= T:
            raise ValueError(f"window {window} must be between 1 and T={T}")
        if update not in UPDATES:
            raise ValueError(f"unknown update {update!r}; choose one of {', '.join(UPDATES)}")
        self.model, self.T, self.step_mode = model, T, step_mode
        self.window, self.update = window, update
        self.packer = Packer(pack_spikes, model.params_list())   # spikes kept as bits (BPTT's)
        self.kept_bytes = 0       # bytes of caches held for backward, largest window of the last step

    def windows(self):
        """[(t0, t1), ...]: consecutive windows of `window` steps covering 0..T−1."""
        return [(t0, min(t0 + self.window, self.T)) for t0 in range(0, self.T, self.window)]

    def step(self, x, y, loss_fn=cross_entropy, after_window=None):
        """Every window's forward and backward in turn; adds Σ_w ∂L_w/∂θ (per batch) or calls
        `after_window()` after each window (per window). Returns (mean window loss, logits (B, K))
        with the logits averaged over all T steps.

        x: a static batch (B, C, H, W) or frames (T, B, C, H, W) (see methods/common.py).
        """
        if (self.update == "per-window") != (after_window is not None):
            raise ValueError("after_window is the optimizer step of update='per-window' and "
                             "is given exactly in that mode")
        check_frames(x, self.T)
        self.model.new_sequence(input_at(x, 0).shape[0])     # per-sequence state: dropout masks
        state = {}                          # LIF layer -> u⁺ at the end of the last window
        losses, z_sum, self.kept_bytes = [], 0, 0
        for t0, t1 in self.windows():
            loss, z, kept = self.window_step(window_input(x, t0, t1), t1 - t0, y, loss_fn, state,
                                             carry=t1 < self.T)
            losses.append(loss)
            z_sum = z_sum + z * (t1 - t0)
            self.kept_bytes = max(self.kept_bytes, kept)
            if after_window is not None:
                after_window()
        return sum(losses) / len(losses), z_sum / self.T

    def window_step(self, xw, k, y, loss_fn, state, carry):
        """Forward, loss and backward of one window of k steps on its input xw, starting from
        `state` ({LIF layer: u⁺}, empty at rest) and leaving the state at its end there when
        `carry`. Returns (L_w, readout (B, K) averaged over the window, bytes kept)."""
        if self.step_mode == "m":
            return self._window_multi(xw, k, y, loss_fn, state, carry)
        return self._window_single(xw, k, y, loss_fn, state, carry)

    def _window_multi(self, xw, k, y, loss_fn, state, carry):
        """One window, all k steps per layer at once, from `state`; leaves the state at its end
        in `state` when `carry`. Returns (L_w, readout (B, K), kept bytes)."""
        caches, keep = {}, self.packer.keep

        def run(layer, h):
            if isinstance(layer, LIF):
                s, cache = layer.forward(h, k, state.get(layer))
                if carry:                                           # as a value, not a cache
                    state[layer] = layer.final_state(cache)
                caches[layer] = keep(cache)
                return s
            out, cache = layer.forward(h)
            caches[layer] = keep(cache)
            return out

        def back(layer, dh, need_dx=True):
            return leaf_backward(layer.backward, dh, unpacked(caches.pop(layer)), need_dx)

        out = self.model.forward(input_over_time(xw, k), run)       # (k*B, K)
        kept = cache_nbytes(caches, exclude=self.model.params_list())
        z = mean_over_time(out, k)
        loss, dz = loss_fn(z, y)
        self.model.backward(spread_over_time(dz, k), back, need_dx=False)
        return loss, z, kept

    def _window_single(self, xw, k, y, loss_fn, state, carry):
        """One window, one step at a time, from `state`; leaves the state at its end in `state`
        when `carry`. Returns (L_w, readout (B, K), kept bytes)."""
        caches = [dict() for _ in range(k)]     # caches[i][layer], step t0 + i

        z = sum(self.model.forward(input_at(xw, i), run_keeping_step(caches[i], state,
                                                                  self.packer.keep))
                for i in range(k)) / k
        if not carry:
            state.clear()                       # free the last potentials before backward
        kept = cache_nbytes(caches, exclude=self.model.params_list())
        loss, dz = loss_fn(z, y)
        du_post = {}                            # LIF layer -> dL/du⁺ from step i+1 (none at t1−1)

        for i in reversed(range(k)):
            self.model.backward(dz / k, back_through_step(caches[i], du_post), need_dx=False)
            caches[i] = None                    # free step i's caches as soon as possible
        return loss, z, kept
