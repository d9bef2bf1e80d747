"""Pieces every training method shares: input encoding, readout and inference.

Inputs come in two kinds, told apart by their number of axes:
    static image     (B, C, H, W)      fed unchanged at every step (direct encoding)
    time-varying     (T, B, C, H, W)   frame t is the input at step t (event-camera data)
`input_over_time`, `input_at` and `input_mean` give every method the same view of both.
"""
from ..backend import get_array_module
from ..layers.lif import LIF
from .packing import unpacked


def repeat_over_time(x, T):
    """Direct input encoding: the static image at every step. (B, ...) -> (T*B, ...)."""
    xp = get_array_module(x)
    return xp.broadcast_to(x, (T,) + x.shape).reshape(T * x.shape[0], *x.shape[1:])


def is_time_varying(x):
    """True for a frame sequence (T, B, C, H, W); False for a static batch (B, C, H, W)."""
    return x.ndim == 5


def check_frames(x, T):
    """Raise ValueError unless x is a static batch or holds exactly T frames."""
    if is_time_varying(x) and x.shape[0] != T:
        raise ValueError(f"input has {x.shape[0]} frames, the method runs T={T} steps")


def input_over_time(x, T):
    """The input of all T steps stacked: (B, ...) repeated, or (T, B, ...) -> (T*B, ...)."""
    if not is_time_varying(x):
        return repeat_over_time(x, T)
    check_frames(x, T)
    return x.reshape(T * x.shape[1], *x.shape[2:])      # (T, B, C, H, W) -> (T*B, C, H, W)


def input_at(x, t):
    """The input of step t: (B, ...) for both kinds (the caller checks the frames with
    `check_frames` first)."""
    return x[t] if is_time_varying(x) else x


def input_mean(x):
    """The input averaged over time, (B, ...): a static image is its own mean."""
    return x.mean(axis=0) if is_time_varying(x) else x


def mean_over_time(out, T):
    """Readout: the output averaged over steps. (T*B, K) -> (B, K)."""
    return out.reshape(T, -1, *out.shape[1:]).mean(axis=0)


def spread_over_time(dlogits, T):
    """Backward of mean_over_time. (B, K) -> (T*B, K), each step gets dlogits / T."""
    xp = get_array_module(dlogits)
    return xp.broadcast_to(dlogits / T, (T,) + dlogits.shape).reshape(-1, *dlogits.shape[1:])


def predict(model, x, T):
    """Logits (B, K) of the spiking network over T steps, keeping nothing for backward.

    x: a static batch (B, C, H, W) or frames (T, B, C, H, W).
    Used for evaluation by every method (eval mode: batchnorm uses running statistics, so
    stepping all samples at once or one step at a time gives the same result).
    """
    return mean_over_time(model.forward(input_over_time(x, T), run_forward_only(T)), T)


def run_forward_only(T):
    """Forward callback of all T steps at once (multi-step) that keeps no cache."""
    def run(layer, h):
        return layer.forward(h, T)[0] if isinstance(layer, LIF) else layer.forward(h)[0]
    return run


def per_step_loss(out, y, loss_fn, T):
    """The per-step loss L = (1/T) Σ_t loss_fn(out_t, y) over outputs out (T*B, K).

    Returns L and dL/dout (T*B, K): row block t is (∂loss_fn/∂out_t) / T.
    """
    xp = get_array_module(out)
    out_t = out.reshape(T, -1, *out.shape[1:])          # (T*B, K) -> (T, B, K)
    dout = xp.empty_like(out_t)
    total = 0.0
    for t in range(T):
        loss_t, dout[t] = loss_fn(out_t[t], y)
        total += loss_t / T
    return total, (dout / T).reshape(out.shape)


def leaf_backward(backward, dh, cache, need_dx=True):
    """backward(dh, cache) of a leaf layer, or backward(dh, cache, need_dx=False) when nobody
    reads its input gradient (then None: the network input, a local block's input). Containers
    pass need_dx=False only to layers with parameters (see layers/container.py)."""
    return backward(dh, cache) if need_dx else backward(dh, cache, need_dx=False)


# -- one step of a single-step pass, kept for backward (BPTT 's', truncated BPTT windows) -----
def run_keeping_step(caches_t, u_post, keep=None):
    """Forward callback of one step that keeps the step's caches in `caches_t` ({layer: cache});
    LIF layers carry their post-reset potential from step to step in `u_post`. keep: how a
    cache is stored (Packer.keep: spikes as bits), or as it is."""
    keep = keep or (lambda cache: cache)

    def run(layer, h):
        if isinstance(layer, LIF):
            out, u_post[layer], cache = layer.step(h, u_post.get(layer))
        else:
            out, cache = layer.forward(h)
        caches_t[layer] = keep(cache)
        return out
    return run


def back_through_step(caches_t, du_post):
    """Backward callback of one step, from its caches (packed spikes unpacked); LIF layers take
    dL/du⁺ of the later step from `du_post` and leave their own there for the earlier one."""
    def back(layer, dh, need_dx=True):
        cache = unpacked(caches_t[layer])
        if isinstance(layer, LIF):
            dI, du_post[layer] = layer.step_backward(dh, du_post.get(layer), cache)
            return dI
        return leaf_backward(layer.backward, dh, cache, need_dx)
    return back
