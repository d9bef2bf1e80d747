"""Study 3, firing: a trained network in eval mode on test samples of the data set it was
trained on (the checkpoint's own --dataset, --data-dir and, for event data, frame options, unless
given): each LIF layer's mean firing rate at step t, r_t = mean over samples and neurons of s_t,
and over all steps (1/T) Σ_t r_t. Images are fed at every step; event data feed frame t at step t.
"""
import os

import numpy as np

from ..cli import positive_int
from ..layers.lif import LIF
from ..methods.common import input_over_time
from .common import add_common_options, check_channels, data_source, format_table, \
    model_from_checkpoint
from .plots import plot_firing


def firing_rates(model, x, T):
    """Mean firing rate of every LIF layer on images x (B, C, H, W) or frames x (T, B, C, H, W)
    over T steps, eval mode.

    Returns, for each LIF layer in forward order (depth 0, 1, ...), T rows with step = 1..T and
    rate = mean of s_t over samples and neurons, then one row with step = 'all' and the mean
    over all steps. Also: layer (dotted name), neurons (per sample).
    """
    training = model.training
    model.eval()
    names = {id(m): name for name, m in model.named_modules()}
    B, rows = x.shape[-4], []

    def run(layer, h):
        if not isinstance(layer, LIF):
            return layer.forward(h)[0]
        s, _ = layer.forward(h, T)
        s_t = s.reshape(T, B, -1)                  # (T*B, ...) -> (T, B, neurons)
        r_t = s_t.mean(axis=(1, 2), dtype="float64")   # (T,); spike counts add exactly
        common = dict(layer=names[id(layer)], depth=len(rows) // (T + 1), neurons=s_t.shape[2])
        rows.extend(dict(common, step=t + 1, rate=float(r_t[t])) for t in range(T))
        rows.append(dict(common, step="all", rate=float(s.mean(dtype="float64"))))
        return s

    try:
        model.forward(input_over_time(x, T), run)
    finally:
        model.train(training)
    return rows


def run(a, xp, bar):
    model, cfg = model_from_checkpoint(a.checkpoint, a.conv_algo)
    T = a.T or int(cfg.get("T", 4))
    dtype = np.dtype(cfg.get("dtype", "float32"))
    model.to(xp, dtype)
    data = data_source(a, cfg)
    check_channels(model, data)
    x, _ = data.batch(T, a.batch_size)
    source = data.describe()
    bar(0, 1, T=T, images=a.batch_size)
    rows = firing_rates(model, xp.asarray(x, dtype=dtype), T)
    info = dict(checkpoint=a.checkpoint, arch=cfg["arch"], width=cfg.get("width", 1.0),
                dataset=data.dataset, T=T, batch_size=a.batch_size,
                device=a.device, conv_algo=a.conv_algo, data=source)
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    table = format_table(["layer", "neurons"] + [f"t={t}" for t in range(1, T + 1)] + ["all"],
                         [[layer, next(r["neurons"] for r in rows if r["layer"] == layer)]
                          + [f"{r['rate']:.4f}" for r in rows if r["layer"] == layer]
                          for layer in layers])
    title = (f"firing rates: {os.path.basename(a.checkpoint)} ({cfg['arch']}, width "
             f"{cfg.get('width', 1.0)}), T={T}, {a.batch_size} {source} images")
    return rows, info, table, plot_firing, title


def add_parser(sub, fmt):
    s = sub.add_parser("firing", help="firing rates of a trained network", formatter_class=fmt,
                       description="Mean firing rate of every LIF layer at every step, eval mode, "
                                   "on the checkpoint's own data set.", allow_abbrev=False)
    s.add_argument("--checkpoint", required=True, help="checkpoint saved by train.py")
    s.add_argument("--T", type=positive_int, default=None, help="time steps (default: training T)")
    add_common_options(s, 64, from_checkpoint=True)
