"""Training methods. Each drives the same layers; `make_method(name, model, T, ...)` builds one.

    bptt     backpropagation through time ('m' multi-step or 's' single-step, --step-mode)
    tbptt    truncated BPTT: windows of `window` steps, no gradient across a window edge
    rate     rate-based backpropagation, multi-step spike pass (same as rate_m)
    rate_m   rate-based backpropagation, multi-step spike pass
    rate_s   rate-based backpropagation, single-step spike pass

Any of them can train the network block by block (`local_blocks` > 1 or `split_at`; local.py).
"""
from .bptt import BPTT
from .common import predict
from .local import LocalBlocks
from .rate import RateBP
from .tbptt import TBPTT, UPDATES

METHODS = ("bptt", "tbptt", "rate", "rate_m", "rate_s")


def make_method(name, model, T, step_mode="m", scale_grad_by_T=True, window=None,
                update="per-batch", local_blocks=1, split_at=None):
    """The method `name` on `model`. tbptt only: `window` K (None = T), `update` per-batch or
    per-window. Every method: `local_blocks` N, or `split_at` (module names where blocks start)."""
    if name != "tbptt" and (window is not None or update != "per-batch"):
        raise ValueError("window and update belong to the tbptt method")

    def make_base(net):
        if name == "bptt":
            return BPTT(net, T, step_mode)
        if name == "tbptt":
            return TBPTT(net, T, step_mode, window, update)
        if name in ("rate", "rate_m"):
            return RateBP(net, T, "m", scale_grad_by_T)
        if name == "rate_s":
            return RateBP(net, T, "s", scale_grad_by_T)
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")

    if local_blocks == 1 and not split_at:
        return make_base(model)
    return LocalBlocks(model, T, make_base, local_blocks, split_at)


__all__ = ["BPTT", "TBPTT", "RateBP", "LocalBlocks", "METHODS", "UPDATES", "make_method",
           "predict"]
