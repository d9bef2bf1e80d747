"""Rate-based backpropagation (Yu et al., NeurIPS 2024): memory that does not grow with T.

One training step is two passes over the same layers.

1. Spike pass: the ordinary T-step spiking forward, keeping no caches. Each layer keeps only
   per-neuron (or per-channel) averages:
     LIF        firing rate r = (1/T) Σ_t s_t and eligibility e = (1/T) Σ_t sg_t ε_t
                (ε_1 = 1, ε_{t+1} = 1 + λ κ_t ε_t; e = ∂r/∂c for a constant input shift c)
     BatchNorm  mean μ_s and biased variance σ²_s of its input; running statistics are
                updated here and only here.
2. Rate pass: one single-step forward on the time-averaged input (for a static image, the image
   itself; for frames, their mean over the T steps, in both step modes) keeping caches, then one
   backward:
     conv, linear, pooling   ordinary forward/backward on rates
     LIF                     output r (from the spike pass); backward dI = dr · e
     BatchNorm               output γ (x − μ_s)/sqrt(σ²_s + eps) + β; backward: the exact derivative
                             of γ (x − μ(x))/sqrt(v(x) + eps) + β over the rate batch, with the
                             statistics substituted straight-through (see layers/batchnorm.py,
                             _BatchNorm.backward_fixed_stats)
     loss                    cross-entropy of the rate-pass output, whose value equals the loss on the
                             time-averaged outputs (the layers after the last LIF are linear). Its
                             gradient is multiplied by 1/T when `scale_grad_by_T` (default, as the
                             published recipe does, so its hyperparameters carry over).
     per-step loss           with `per_step_loss`, L = (1/T) Σ_t loss_fn(out_t, y) on the spike
                             pass's outputs out_t (its value), and the rate-pass output, which
                             stands for every step at once, gets the sum of their gradients,
                             Σ_t (∂loss_fn/∂out_t)/T = mean_t ∂loss_fn/∂out_t: exactly how a rate
                             pass treats every other gradient (Σ_t dy_t backpropagated once).
                             At T = 1 this is BPTT with the per-step loss. Only that (B, K) sum is
                             kept from the spike pass, so memory stays flat in T.

rate_M ('m'): the spike pass runs each layer over all T*B samples at once; batchnorm statistics
    over T*B (the counterpart of multi-step BPTT).
rate_S ('s'): the spike pass steps the network T times, batchnorm normalising each step with its
    own batch statistics (μ_t, σ²_t); the rate pass uses μ_s = mean_t μ_t and the variance implied
    by the mean inverse variance, σ²_s + eps = 1 / mean_t(1/(σ²_t + eps)). (The authors' public
    code keeps only the last step's statistics, both its mean μ_T and its variance σ²_T, and adds
    eps twice, normalising by sqrt(σ²_T + 2·eps); here every step counts, and eps once.)

Data-parallel training with synchronised batchnorm (minirate/distributed.py): μ_s, σ²_s, and the
batch mean the rate pass's straight-through backward needs, are statistics of the whole global
batch, summed over every process. (The authors' public code keeps the spike-pass statistics per
GPU; here they are those of the batch one process would see.)

What is kept for backward (`kept_bytes`) is r, e per neuron, μ_s, σ²_s per channel and one
single-step set of caches: nothing depends on T.
"""
from ..layers.base import cache_nbytes
from ..layers.batchnorm import BatchNorm1d, BatchNorm2d
from ..layers.lif import LIF, lif_rate_backward, rate_and_eligibility
from ..losses import cross_entropy
from .common import (check_frames, input_at, input_mean, input_over_time, leaf_backward,
                     mean_over_time, per_step_loss)

BN_TYPES = (BatchNorm1d, BatchNorm2d)


class RateBP:
    def __init__(self, model, T, step_mode="m", scale_grad_by_T=True, per_step_loss=False):
        if step_mode not in ("m", "s"):
            raise ValueError(f"unknown step mode {step_mode!r}; choose m or s")
        self.model, self.T, self.step_mode = model, T, step_mode
        self.scale_grad_by_T = scale_grad_by_T
        self.per_step_loss = per_step_loss
        self.name = "rate_m" if step_mode == "m" else "rate_s"
        self.kept_bytes = 0

    # -- pass 1 ---------------------------------------------------------------------------
    def spike_pass(self, x):
        """Run T spiking steps; return {layer: (r, e)} for LIF and {layer: (μ_s, σ²_s)} for BN,
        and the network's outputs at every step (T*B, K)."""
        if self.step_mode == "m":
            return self._spike_pass_multi(x)
        return self._spike_pass_single(x)

    def _spike_pass_multi(self, x):
        T, stats = self.T, {}

        def run(layer, h):
            if isinstance(layer, LIF):
                s, r, e = layer.forward_rate(h, T)
                stats[layer] = (r, e)
                return s
            if isinstance(layer, BN_TYPES):
                mean, var, n = layer.batch_stats_count(h)   # over all processes when synced
                layer.update_running(mean, var, n)
                stats[layer] = (mean, var)
                return layer.normalize(h, mean, var)
            return layer.forward(h)[0]

        out = self.model.forward(input_over_time(x, T), run)        # (T*B, K)
        return stats, out

    def _spike_pass_single(self, x):
        T, state, sums = self.T, {}, {}     # LIF -> LIFRateState; BN -> [Σ μ_t, Σ 1/(σ²_t + eps)]

        def run(layer, h):
            if isinstance(layer, LIF):
                s, state[layer] = layer.rate_step(h, state.get(layer))
                return s
            if isinstance(layer, BN_TYPES):
                mean, var, n = layer.batch_stats_count(h)   # over all processes when synced
                layer.update_running(mean, var, n)
                acc = sums.setdefault(layer, [0, 0])
                acc[0] = acc[0] + mean
                acc[1] = acc[1] + 1 / (var + layer.eps)
                return layer.normalize(h, mean, var)
            return layer.forward(h)[0]

        outs = [self.model.forward(input_at(x, t), run) for t in range(T)]
        stats = {layer: rate_and_eligibility(st) for layer, st in state.items()}
        for layer, (mean_sum, inv_sum) in sums.items():
            stats[layer] = (mean_sum / T, T / inv_sum - layer.eps)
        return stats, self.model.xp.concatenate(outs)               # T x (B, K) -> (T*B, K)

    # -- pass 2 ---------------------------------------------------------------------------
    def step(self, x, y, loss_fn=cross_entropy):
        """Spike pass, then rate pass forward and backward; adds gradients. Returns (loss, logits)."""
        check_frames(x, self.T)
        self.model.new_sequence(input_at(x, 0).shape[0])     # per-sequence state: dropout masks
        stats, out = self.spike_pass(x)
        if self.per_step_loss:                   # only Σ_t dL/dout_t (B, K) is kept
            loss, dout = per_step_loss(out, y, loss_fn, self.T)
            dlogits = self.T * mean_over_time(dout, self.T)
        del out
        caches = {}

        def run(layer, h):
            if isinstance(layer, LIF):
                r, caches[layer] = stats[layer]          # value r; backward needs e
                return r
            if isinstance(layer, BN_TYPES):
                mean, var = stats[layer]
                out, caches[layer] = layer.forward_fixed_stats(h, mean, var)
                return out
            out, caches[layer] = layer.forward(h)
            return out

        def back(layer, dh, need_dx=True):
            if isinstance(layer, LIF):
                return lif_rate_backward(dh, caches.pop(layer))
            if isinstance(layer, BN_TYPES):
                return leaf_backward(layer.backward_fixed_stats, dh, caches.pop(layer), need_dx)
            return leaf_backward(layer.backward, dh, caches.pop(layer), need_dx)

        logits = self.model.forward(input_mean(x), run)   # (B, K): rate pass on the mean input
        self.kept_bytes = cache_nbytes(stats, caches, exclude=self.model.params_list())
        if not self.per_step_loss:
            loss, dlogits = loss_fn(logits, y)
        if self.scale_grad_by_T:
            dlogits = dlogits / self.T
        self.model.backward(dlogits, back, need_dx=False)   # nobody reads the input's gradient
        return loss, logits
