"""Training methods. Each drives the same layers; `make_method(name, model, T, ...)` builds one.

    bptt     backpropagation through time ('m' multi-step or 's' single-step, --step-mode)
    rate     rate-based backpropagation, multi-step spike pass (same as rate_m)
    rate_m   rate-based backpropagation, multi-step spike pass
    rate_s   rate-based backpropagation, single-step spike pass
"""
from .bptt import BPTT
from .common import predict
from .rate import RateBP

METHODS = ("bptt", "rate", "rate_m", "rate_s")


def make_method(name, model, T, step_mode="m", scale_grad_by_T=True):
    if name == "bptt":
        return BPTT(model, T, step_mode)
    if name in ("rate", "rate_m"):
        return RateBP(model, T, "m", scale_grad_by_T)
    if name == "rate_s":
        return RateBP(model, T, "s", scale_grad_by_T)
    raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")


__all__ = ["BPTT", "RateBP", "METHODS", "make_method", "predict"]
