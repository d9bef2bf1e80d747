"""Reference objectives of truncated and local training, built step by step for the tests.

A piece of network is a function `fn(h, run)` that runs its modules in order (as a container's
forward does). The reference runs it window by window, stepping every LIF layer one step at a
time from a given entering state, so the objective of truncated / local training can be written
down directly: each window's (and each block's) readout as a function of the parameters, with
the state entering every window and the input of every block held at constants.
"""
import numpy as np

from minirate.layers.container import call
from minirate.layers.lif import LIF
from minirate.methods.common import input_at, input_over_time


def windows(T, K):
    return [(t0, min(t0 + K, T)) for t0 in range(0, T, K)]


def frames(x, t0, t1):
    return x[t0:t1] if x.ndim == 5 else x


def chain(*modules):
    """fn(h, run) running `modules` in order."""
    def fn(h, run):
        for m in modules:
            h = call(m, h, run)
        return h
    return fn


def run_window(fn, xw, k, mode, states):
    """Outputs (k, B, ...) of `fn` over a window of k steps from `states` (LIF -> u⁺, updated).

    'm': every layer but LIF sees all k·B samples at once (batchnorm over k·B); 's': step by step.
    """
    if mode == "m":
        def run(layer, h):
            if not isinstance(layer, LIF):
                return layer.forward(h)[0]
            steps = h.reshape(k, -1, *h.shape[1:])          # (k*B, ...) -> (k, B, ...)
            out = []
            for t in range(k):
                s, states[layer], _ = layer.step(steps[t], states.get(layer))
                out.append(s)
            return np.concatenate(out)                     # (k*B, ...)
        out = fn(input_over_time(xw, k), run)
        return out.reshape(k, -1, *out.shape[1:])

    def run_s(layer, h):
        if isinstance(layer, LIF):
            s, states[layer], _ = layer.step(h, states.get(layer))
            return s
        return layer.forward(h)[0]
    return np.stack([fn(input_at(xw, i), run_s) for i in range(k)])


def base_pass(fn, x, T, K, mode):
    """At the current parameters: the state entering every window and fn's outputs (T, B, ...)."""
    states, entering, outs = {}, [], []
    for t0, t1 in windows(T, K):
        entering.append(dict(states))
        outs.append(run_window(fn, frames(x, t0, t1), t1 - t0, mode, states))
    return entering, np.concatenate(outs)


def window_readouts(fn, head, x, T, K, mode, entering):
    """[(1/k) Σ_{t in w} head(fn_t)] for every window w, each started from entering[w]."""
    zs = []
    for (t0, t1), state in zip(windows(T, K), entering):
        out = run_window(fn, frames(x, t0, t1), t1 - t0, mode, dict(state))
        if head is not None:                         # per-sample: GAP + flatten + linear
            k, B = out.shape[:2]
            out = head.forward(out.reshape(k * B, *out.shape[2:]), lambda l, h: l.forward(h)[0])
            out = out.reshape(k, B, -1)              # (k*B, K) -> (k, B, K)
        zs.append(out.mean(axis=0))
    return zs


def upstream_sequence(Gs):
    """A loss whose i-th call returns Σ z · Gs[i] and its gradient Gs[i] (a random upstream
    gradient per window / block, in the order the method evaluates them)."""
    calls = [0]

    def loss_fn(z, y):
        G = Gs[calls[0] % len(Gs)]
        calls[0] += 1
        return float(np.sum(z * G)), G.copy()
    return loss_fn
