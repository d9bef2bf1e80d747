"""Spatial learning through time (SLTT; Meng et al., ICCV 2023): backpropagate through each
step's spatial graph only, right after that step's forward. Memory does not grow with T.

BPTT's gradient splits into a spatial part (through the layers within a step) and a temporal part
(through the membrane potential from step t to step t+1). SLTT drops the temporal part: the
potential entering the charge u_t = λ · u⁺_{t−1} + I_t is a constant. Then every step is a
network of its own, with its own loss, and can be differentiated as soon as it has run.

For t = 1 … T:

1. Forward one step (batchnorm normalises with that step's batch statistics, as single-step
   BPTT), keeping that step's caches; each LIF layer also carries u⁺_t to the next step.
2. Loss of the step: loss_t = loss_fn(out_t, y) / T. With `--loss-lambda λ_L` the loss function is
   (1 − λ_L) · CE + λ_L · MSE(onehot); the total loss is Σ_t loss_t (the per-step loss of
   `--loss per-step`, see common.per_step_loss).
3. Backward through step t's graph only. At a LIF layer

       du_t = ds_t · sg_t,   dI_t = du_t                    (no du⁺_t term: u⁺_{t−1} is constant)

   so a weight gradient accumulates Σ_t g_t ⊗ x_t over the steps (g_t: the layer's output
   gradient at step t, x_t its input). Step t's caches are then freed.

SLTT-K (`k` < T): K steps drawn at random for each batch (a permutation of the T steps, first K)
get steps 2–3; the others run forward only. Every loss_t is still divided by T.

The prediction is the output averaged over steps (the same argmax as Σ_t out_t).

What is kept (`kept_bytes`, the largest over steps): one step's caches and u⁺ per LIF neuron;
nothing depends on T. At T = 1, and for any T when λ = 0 (u_t = I_t), this is exactly BPTT with
the per-step loss (and a detached reset).

Published recipe: τ = 1.1 (`--decay` λ = 1 − 1/τ ≈ 0.0909), triangle surrogate with α = 1,
T = 6, per-step loss with λ_L = 0.05, batchnorm networks.
"""
import numpy as np

from ..layers.base import cache_nbytes
from ..layers.lif import LIF
from ..losses import cross_entropy
from .common import check_frames, input_at, leaf_backward
from .packing import Packer, unpacked


class SLTT:
    name = "sltt"
    update_each_step = False          # one optimizer step per batch (the caller's)

    def __init__(self, model, T, k=None, seed=0, pack_spikes=False):
        k = T if k is None else int(k)
        if not 1 <= k <= T:
            raise ValueError(f"SLTT-K needs 1 <= K <= T, got K={k} with T={T}")
        self.model, self.T, self.k = model, T, k
        self.seed = seed
        self.batches = 0              # batches stepped: the draw of batch n depends on (seed, n)
        self.kept_bytes = 0           # bytes held at a step's backward (the largest over steps)
        self.backward_steps = list(range(T))    # steps that got a backward in the last batch
        self.packer = Packer(pack_spikes, model.params_list())   # spikes kept as bits

    def choose_steps(self):
        """The steps that get a backward: all T, or K drawn at random (randperm(T)[:K]) from a
        generator seeded with (seed, batch number), so a resumed run draws what it would have."""
        if self.k == self.T:
            return list(range(self.T))
        rng = np.random.default_rng((self.seed, self.batches))
        return sorted(int(t) for t in rng.permutation(self.T)[:self.k])

    def state_dict(self):
        """What a checkpoint keeps of the method: the number of batches stepped."""
        return {"batches": self.batches}

    def load_state_dict(self, state):
        self.batches = int(state.get("batches", 0))

    def step(self, x, y, loss_fn=cross_entropy, after_step=None):
        """T steps of forward, each followed by its own spatial backward; adds gradients.

        x: a static batch (B, C, H, W) or frames (T, B, C, H, W). loss_fn(out_t, y) -> (loss, dout)
        is applied at every step. after_step(), called after each step's backward when the
        method updates the weights at every step (`update_each_step`): the caller's optimizer
        step. Returns (Σ_t loss_t, output averaged over steps (B, K)).
        """
        if self.update_each_step and after_step is None:
            raise ValueError(f"{self.name} with an update at every step needs after_step")
        check_frames(x, self.T)
        self.model.new_sequence(input_at(x, 0).shape[0])     # per-sequence state: dropout masks
        T, params = self.T, self.model.params_list()
        self.backward_steps = self.choose_steps()
        self.batches += 1
        state = {}                    # LIF layer -> what it carries to the next step
        loss, logits, kept = 0.0, 0, 0
        for t in range(T):
            caches = {} if t in self.backward_steps else None
            out = self.model.forward(input_at(x, t), self.run_at(state, caches))   # (B, K)
            loss_t, dout = loss_fn(out, y)
            loss += loss_t / T
            logits = logits + out / T
            if caches is None:
                continue
            kept = max(kept, cache_nbytes(caches, state, exclude=params))
            self.model.backward(dout / T, self.back(caches), need_dx=False)
            if self.update_each_step:
                after_step()
        self.kept_bytes = kept
        return loss, logits

    def run_at(self, state, caches):
        """run() of one step: LIF layers read and update `state`; caches kept unless None."""
        def run(layer, h):
            if isinstance(layer, LIF):
                out, state[layer], cache = layer.step(h, state.get(layer))
            else:
                out, cache = layer.forward(h)
            if caches is not None:
                caches[layer] = self.packer.keep(cache)
            return out
        return run

    def back(self, caches):
        """back() of one step's spatial graph: LIF layers get no gradient from the next step."""
        def back(layer, dh, need_dx=True):
            cache = unpacked(caches.pop(layer))
            if isinstance(layer, LIF):
                return layer.step_backward(dh, None, cache)[0]      # dI_t = ds_t · sg_t
            return leaf_backward(layer.backward, dh, cache, need_dx)
        return back
