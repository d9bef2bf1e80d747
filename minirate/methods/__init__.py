"""Training methods. Each drives the same layers; `make_method(name, model, T, ...)` builds one.

    bptt     backpropagation through time ('m' multi-step or 's' single-step, --step-mode)
    rate     rate-based backpropagation, multi-step spike pass (same as rate_m)
    rate_m   rate-based backpropagation, multi-step spike pass
    rate_s   rate-based backpropagation, single-step spike pass
    sltt     spatial learning through time (per-step spatial backward; SLTT-K with sltt_k)
    ottt     online training through time (SLTT's backward, weight gradients from traces)

`per_step_loss=True`: the loss is (1/T) Σ_t loss_fn(out_t, y), one per step (bptt, rate_m,
rate_s; sltt and ottt always train so).
"""
from .bptt import BPTT
from .common import predict
from .ottt import OTTT
from .rate import RateBP
from .sltt import SLTT

METHODS = ("bptt", "rate", "rate_m", "rate_s", "sltt", "ottt")


def make_method(name, model, T, step_mode="m", scale_grad_by_T=True, per_step_loss=False,
                sltt_k=None, ottt_update="accumulate", seed=0):
    if name == "bptt":
        return BPTT(model, T, step_mode, per_step_loss)
    if name in ("rate", "rate_m"):
        return RateBP(model, T, "m", scale_grad_by_T, per_step_loss)
    if name == "rate_s":
        return RateBP(model, T, "s", scale_grad_by_T, per_step_loss)
    if name == "sltt":
        return SLTT(model, T, sltt_k, seed)
    if name == "ottt":
        return OTTT(model, T, ottt_update)
    raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")


__all__ = ["BPTT", "OTTT", "RateBP", "SLTT", "METHODS", "make_method", "predict"]
