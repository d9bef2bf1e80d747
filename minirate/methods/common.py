"""Pieces every training method shares: input encoding, readout and inference."""
from ..backend import get_array_module
from ..layers.lif import LIF


def repeat_over_time(x, T):
    """Direct input encoding: the static image at every step. (B, ...) -> (T*B, ...)."""
    xp = get_array_module(x)
    return xp.broadcast_to(x, (T,) + x.shape).reshape(T * x.shape[0], *x.shape[1:])


def mean_over_time(out, T):
    """Readout: the output averaged over steps. (T*B, K) -> (B, K)."""
    return out.reshape(T, -1, *out.shape[1:]).mean(axis=0)


def spread_over_time(dlogits, T):
    """Backward of mean_over_time. (B, K) -> (T*B, K), each step gets dlogits / T."""
    xp = get_array_module(dlogits)
    return xp.broadcast_to(dlogits / T, (T,) + dlogits.shape).reshape(-1, *dlogits.shape[1:])


def predict(model, x, T):
    """Logits (B, K) of the spiking network over T steps, keeping nothing for backward.

    Used for evaluation by every method (eval mode: batchnorm uses running statistics, so
    stepping all samples at once or one step at a time gives the same result).
    """
    def run(layer, h):
        return layer.forward(h, T)[0] if isinstance(layer, LIF) else layer.forward(h)[0]

    return mean_over_time(model.forward(repeat_over_time(x, T), run), T)
