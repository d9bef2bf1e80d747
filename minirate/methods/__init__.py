"""Training methods. Each drives the same layers; `make_method(name, model, T, ...)` builds one.

    bptt     backpropagation through time ('m' multi-step or 's' single-step, --step-mode)
    tbptt    truncated BPTT: windows of `window` steps, no gradient across a window edge
    rate     rate-based backpropagation, multi-step spike pass (same as rate_m)
    rate_m   rate-based backpropagation, multi-step spike pass
    rate_s   rate-based backpropagation, single-step spike pass
    sltt     spatial learning through time (per-step spatial backward; SLTT-K with sltt_k)
    ottt     online training through time (SLTT's backward, weight gradients from traces)

`per_step_loss=True`: the loss is (1/T) Σ_t loss_fn(out_t, y), one per step (bptt, rate_m,
rate_s; sltt and ottt always train so). bptt, tbptt, rate_m and rate_s can also train the
network block by block (`local_blocks` > 1 or `split_at`; local.py).

Exact gradients in less memory: bptt, tbptt and sltt can keep their spikes as bits
(`pack_spikes`, packing.py); bptt can recompute instead of keeping, in time
(`recompute_window` K) or in depth (`recompute_blocks`) (recompute.py). All bitwise equal.
"""
from .bptt import BPTT
from .common import predict
from .local import LocalBlocks
from .ottt import OTTT
from .rate import RateBP
from .recompute import RecomputedBPTT
from .sltt import SLTT
from .tbptt import TBPTT, UPDATES

METHODS = ("bptt", "tbptt", "rate", "rate_m", "rate_s", "sltt", "ottt")
LOCAL = ("bptt", "tbptt", "rate", "rate_m", "rate_s")      # methods that run block by block
PACKING = ("bptt", "tbptt", "sltt")     # methods whose caches hold spikes (packing.py)


def make_method(name, model, T, step_mode="m", scale_grad_by_T=True, per_step_loss=False,
                sltt_k=None, ottt_update="accumulate", seed=0, window=None, update="per-batch",
                local_blocks=1, split_at=None, pack_spikes=False, recompute_window=None,
                recompute_blocks=False):
    """The method `name` on `model`. tbptt only: `window` K (None = T), `update` per-batch or
    per-window. sltt only: `sltt_k`, `seed` (also the auxiliary classifiers' initialisation of
    local blocks); ottt only: `ottt_update`. bptt and the rate methods:
    `per_step_loss`. The methods in LOCAL: `local_blocks` N, or `split_at` (module names where
    blocks start). The methods in PACKING: `pack_spikes` (caches keep spikes as bits). bptt on
    the whole network: `recompute_window` K (step mode s), `recompute_blocks` (recompute.py)."""
    if name != "tbptt" and (window is not None or update != "per-batch"):
        raise ValueError("window and update belong to the tbptt method")
    local = local_blocks != 1 or bool(split_at)
    if local and name not in LOCAL:
        raise ValueError(f"local blocks train with {', '.join(LOCAL)}, not {name}")
    if pack_spikes and name not in PACKING:
        raise ValueError(f"{name} keeps no spikes for backward (firing rates, traces): nothing "
                         f"to pack; packed spikes are for {', '.join(PACKING)}")
    recompute = recompute_window is not None or recompute_blocks
    if recompute and (name != "bptt" or local):
        raise ValueError("recomputation (in time or in depth) is for bptt on the whole network")
    if per_step_loss and (name == "tbptt" or local):
        raise ValueError("the per-step loss is for bptt, rate_m and rate_s on the whole network "
                         "(tbptt and local blocks have a loss per window and per block)")

    def make_base(net):
        if name == "bptt" and recompute:
            return RecomputedBPTT(net, T, step_mode, per_step_loss, pack_spikes,
                                  recompute_window, recompute_blocks)
        if name == "bptt":
            return BPTT(net, T, step_mode, per_step_loss, pack_spikes)
        if name == "tbptt":
            return TBPTT(net, T, step_mode, window, update, pack_spikes)
        if name in ("rate", "rate_m"):
            return RateBP(net, T, "m", scale_grad_by_T, per_step_loss)
        if name == "rate_s":
            return RateBP(net, T, "s", scale_grad_by_T, per_step_loss)
        if name == "sltt":
            return SLTT(net, T, sltt_k, seed, pack_spikes)
        if name == "ottt":
            return OTTT(net, T, ottt_update)
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")

    if not local:
        return make_base(model)
    return LocalBlocks(model, T, make_base, local_blocks, split_at, seed)


__all__ = ["BPTT", "TBPTT", "OTTT", "RateBP", "SLTT", "LocalBlocks", "METHODS", "LOCAL",
           "UPDATES", "PACKING", "RecomputedBPTT", "make_method", "predict"]
