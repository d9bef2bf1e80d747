"""Will a training step fit in memory? Refuse one that clearly cannot, before it runs, and turn
an allocation that fails during a step into the same one line.

    need       costs.step_memory: what the method keeps for backward, the largest activation and
               its gradient, the batch, the weights with their gradients and optimizer buffers,
               counted from the layer shapes (a floor: temporaries come on top)
    available  backend.available_memory: MemAvailable and the process's limits on the CPU, the
               free memory on the GPU

A step is refused only when its floor is above what is available, so a run that fits is never
refused; one that passes the check and still runs out ends with the same line at the failed
allocation (`guard`).
"""
from .backend import available_memory
from .costs import step_memory
from .methods import LOCAL

GiB = 2 ** 30
FLAT_IN_T = ("rate", "rate_m", "rate_s", "sltt", "ottt")


class MemoryShortage(Exception):
    """A training step does not fit in memory; one line saying how much and what lowers it."""


def gib(n):
    """Bytes for a message: '10,600 GiB', '3.2 GiB', '87 MiB'."""
    if n >= 10 * GiB:
        return f"{n / GiB:,.0f} GiB"
    return f"{n / GiB:.1f} GiB" if n >= GiB / 10 else f"{n / 2 ** 20:,.0f} MiB"


def lower_with(method, window=None, dtype="float32", local=True, ranks=1):
    """The train.py options that lower a step's memory, for `method`."""
    opts = ["--batch-size"]
    if method not in FLAT_IN_T:
        opts.append("--T")
    if method in ("bptt", "tbptt"):
        opts.append("--pack-spikes" + (", --recompute-blocks (the same gradients)"
                                       if method == "bptt" else " (the same gradients)"))
        opts.append("--method rate_m (flat in T)" + (
            " or tbptt --window K" if method == "bptt" or window is None else " or a smaller "
                                                                              "--window"))
    if local:
        opts.append("--local-blocks N")
    opts.append("--width")
    if dtype == "float64":
        opts.append("--dtype float32")
    if ranks > 1:
        opts.append("more ranks (each takes its share of the batch)")
    return ", ".join(opts[:-1]) + " or " + opts[-1]


def describe(need, method, T, batch):
    return (f"about {gib(need['total'])} ({gib(need['kept'])} kept for backward by {method} at "
            f"T={T}, batch {batch})")


def check_step(model, input_shape, T, method, xp, options, step_mode="m", window=None,
               local_blocks=1, split_at=None, optimizer_copies=2, **saving):
    """Raise MemoryShortage when one step of `method` on a batch of `input_shape` ((B, C, H, W)
    or (T, B, C, H, W)) clearly cannot fit in what `xp`'s device has free. options: what lowers
    it (`lower_with`); saving: step_memory's pack_spikes, recompute_window, recompute_blocks.
    Returns the estimate (costs.step_memory) and the memory available (None when it cannot be
    told)."""
    need = step_memory(model, input_shape, T, method, step_mode, window, local_blocks, split_at,
                       optimizer_copies=optimizer_copies, **saving)
    available = available_memory(xp)
    batch = input_shape[1] if len(input_shape) == 5 else input_shape[0]
    if available is not None and need["total"] > available[0]:
        raise MemoryShortage(f"one training step needs {describe(need, method, T, batch)}, more "
                             f"than the {gib(available[0])} available ({available[1]}); lower "
                             f"it with {options}")
    return need, available


def guard(step, need_line, options):
    """`step` (a method's step), turning an allocation that fails inside it into MemoryShortage.
    need_line: what the step was estimated to need ('' when unknown)."""

    def guarded(*args, **kwargs):
        try:
            return step(*args, **kwargs)
        except MemoryError:          # CuPy's OutOfMemoryError is one too
            raise MemoryShortage(f"out of memory during a training step{need_line}; lower it "
                                 f"with {options}") from None

    return guarded


def guard_training(method, model, cfg, input_shape, ranks, xp):
    """train.py's check before training: refuse a step of `method` on this rank's batch of
    `input_shape` that clearly cannot fit, and make one that runs out later end with the same
    line (method.step is wrapped in place by `guard`). cfg: train.py's options."""
    lower = lower_with(cfg["method"], cfg["window"], cfg["dtype"], cfg["method"] in LOCAL, ranks)
    need, free = check_step(model, input_shape, cfg["T"], cfg["method"], xp, lower,
                            cfg["step_mode"], cfg["window"], cfg["local_blocks"], cfg["split_at"],
                            2 if cfg["optimizer"] == "adam" else int(cfg["momentum"] > 0),
                            pack_spikes=cfg["pack_spikes"],
                            recompute_window=cfg["recompute_window"],
                            recompute_blocks=cfg["recompute_blocks"])
    method.step = guard(method.step, f" (estimated: at least {gib(need['total'])}"
                        + (f"; {gib(free[0])} available before training)" if free else ")"), lower)
