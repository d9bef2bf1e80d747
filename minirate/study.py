"""The method comparison, measured: memory and time against T, gradients against BPTT, firing.

    python -m minirate.study memory-time --arch small --batch-size 16 --T 1,2,4,8
    python -m minirate.study gradients --arch small --batch-size 16 --T 1,2,4
    python -m minirate.study firing --checkpoint runs/default/best.npz

Each subcommand writes NAME.csv, NAME.json and NAME.png into --out and prints its table.

memory-time   for each method and T, one batch, a fresh model:
    step time     median wall time of --steps training steps (forward + backward, no optimizer)
                  after --warmup untimed ones
    kept bytes    `method.kept_bytes`: bytes of the caches and statistics held for backward,
                  counted exactly from the arrays (parameters excluded)
    peak bytes    the most memory in use during one further step, minus what was in use before
                  it: tracemalloc on the CPU (NumPy reports its buffers to it); on the GPU the
                  CuPy memory pool's used bytes, read after every allocation of the step
gradients     one batch and one set of weights; for each method m and T, the BPTT gradient g_b
    in the same step mode (multi-step 'm' for rate_m, single-step 's' for rate_s) against g_m:
        cosine = <g_m, g_b> / (|g_m| |g_b|),     norm ratio = |g_m| / |g_b|
    per parameter tensor and over all parameters concatenated ('(all)'). Computed in float64,
    with the rate methods built with scale_grad_by_T=False: their default multiplies the loss
    gradient by 1/T, which would put a factor 1/T into every norm ratio. The row 'avg_limit'
    (`time_average_limit`) is BPTT's own backward with each layer's input averaged over time:
    the misalignment that averaging alone causes, even with exact upstream gradients.
firing        a trained network in eval mode on test images: each LIF layer's mean firing rate
    at step t, r_t = mean over samples and neurons of s_t, and over all steps (1/T) Σ_t r_t.
"""
import argparse
import csv
import json
import math
import os
import sys
import time
import tracemalloc

import numpy as np

from .backend import DEVICES, DeviceError, get_array_module, get_xp, synchronize
from .checkpoint import CheckpointError, load_checkpoint
from .cli import ArgumentParser, positive_float, positive_int
from .data.augment import normalize
from .data.cifar import SPECS, DatasetError, load_cifar
from .layers.base import StateDictError
from .layers.batchnorm import BatchNorm1d, BatchNorm2d
from .layers.conv import Conv2d
from .layers.lif import LIF
from .layers.linear import Linear
from .methods import BPTT, METHODS, make_method
from .methods.common import mean_over_time, repeat_over_time
from .models import ARCHS, build_model
from .progress import Progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBSET_DIR = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "cifar10-subset"))
LIMIT = "avg_limit"     # not a method: `time_average_limit`, compared like one
STEP_MODE = {"rate": "m", "rate_m": "m", "rate_s": "s", LIMIT: "m"}   # BPTT reference of each
NEURON_KEYS = ("decay", "threshold", "reset", "v_reset", "detach_reset", "surrogate", "alpha")
MiB = 2 ** 20


class StudyError(Exception):
    """A problem with what was asked for; reported as one line, exit status 1."""


# -- inputs -------------------------------------------------------------------------------
def load_batch(dataset, data_dir, batch_size, seed=0):
    """The first `batch_size` test images, normalised: float32 (B, 3, 32, 32), int64 (B,).

    Without the data set, random images and labels instead. Returns (x, y, source text).
    """
    try:
        _, _, x, y, _ = load_cifar(dataset, data_dir, download=False)
    except DatasetError as e:
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(batch_size, 3, 32, 32)).astype(np.float32)
        y = rng.integers(0, SPECS[dataset]["num_classes"], batch_size)
        note(f"no {SPECS[dataset]['title']} data ({e}); using random images")
        return x, y, "random images"
    if batch_size > len(x):
        raise StudyError(f"--batch-size {batch_size} is larger than the {len(x)} test images "
                         f"in {data_dir}")
    return normalize(x[:batch_size], dataset), y[:batch_size], f"{SPECS[dataset]['title']} test"


def model_from_checkpoint(path):
    """The network train.py saved at `path` (weights, batchnorm statistics): (model, config)."""
    arrays, meta = load_checkpoint(path)
    cfg = meta.get("config")
    if not isinstance(cfg, dict) or cfg.get("arch") not in ARCHS \
            or cfg.get("dataset", "cifar10") not in SPECS:
        raise CheckpointError(f"{path} is not a checkpoint of train.py (no usable config)")
    neuron = {k: cfg[k] for k in NEURON_KEYS if k in cfg}
    num_classes = SPECS[cfg.get("dataset", "cifar10")]["num_classes"]
    try:
        model = build_model(cfg["arch"], num_classes, cfg.get("width", 1.0), neuron)
        model.load_state_dict({k[len("model/"):]: v for k, v in arrays.items()
                               if k.startswith("model/")})
    except (StateDictError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} does not fit a {cfg['arch']} model: {e}") from None
    return model, cfg


# -- 1. memory and time -------------------------------------------------------------------
def peak_step_bytes(xp, fn):
    """Peak bytes in use while `fn()` runs, above the level just before it."""
    if xp is np:
        tracing = tracemalloc.is_tracing()
        if not tracing:
            tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        try:
            fn()
            return tracemalloc.get_traced_memory()[1] - before
        finally:
            if not tracing:
                tracemalloc.stop()
    pool = xp.get_default_memory_pool()
    synchronize(xp)
    before = peak = pool.used_bytes()

    def malloc(nbytes):             # the pool's own allocator, reading its level after each call
        nonlocal peak
        mem = pool.malloc(nbytes)
        peak = max(peak, pool.used_bytes())
        return mem

    with xp.cuda.using_allocator(malloc):
        fn()
        synchronize(xp)
    return peak - before


def memory_time(x, y, methods, Ts, arch="small", width=1.0, num_classes=10, steps=3, warmup=1,
                seed=0, on_cell=None):
    """Step time, bytes kept for backward and peak bytes of each method at each T.

    x, y: one batch (NumPy or CuPy; the model follows x). on_cell(i, n, method, T) reports
    progress. Returns one dict per (method, T): method, T, step_time_s, kept_bytes, peak_bytes.
    """
    xp = get_array_module(x)
    rows, n = [], len(methods) * len(Ts)
    for name in methods:
        for T in Ts:
            if on_cell:
                on_cell(len(rows), n, name, T)
            model = build_model(arch, num_classes, width, seed=seed).to(xp, x.dtype)
            method = make_method(name, model, T)

            def step():
                method.step(x, y)
                synchronize(xp)

            times = []
            for i in range(warmup + steps):
                model.zero_grad()
                t0 = time.perf_counter()
                step()
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
            model.zero_grad()
            peak = peak_step_bytes(xp, step)
            rows.append(dict(method=name, T=T, step_time_s=float(np.median(times)),
                             kept_bytes=int(method.kept_bytes), peak_bytes=int(peak)))
    return rows


# -- 2. gradient alignment ----------------------------------------------------------------
def weight_depths(model):
    """{parameter name: depth} for the weights of conv and linear layers, input side first."""
    names = [f"{m_name}.weight" for m_name, m in model.named_modules()
             if isinstance(m, (Conv2d, Linear))]
    return {name: depth for depth, name in enumerate(names)}


def _gradients(model, method, x, y):
    model.zero_grad()
    method.step(x, y)
    return [g.copy() for _, _, g, _ in model.parameters()]


def _dots(g_m, g_b):
    """(<g_m, g_b>, <g_m, g_m>, <g_b, g_b>) as floats; summed over tensors for the whole."""
    return np.array([float((g_m * g_b).sum()), float((g_m * g_m).sum()),
                     float((g_b * g_b).sum())])


def _alignment(dots):
    """cosine, norm ratio and both norms from the three dot products (NaN for a zero norm)."""
    mb, mm, bb = dots
    n_m, n_b = math.sqrt(mm), math.sqrt(bb)
    return dict(cosine=mb / (n_m * n_b) if n_m > 0 and n_b > 0 else math.nan,
                norm_ratio=n_m / n_b if n_b > 0 else math.nan, norm_method=n_m, norm_bptt=n_b)


# the cache field holding each parameterised layer's input (or, for batchnorm, x − μ)
LAYER_INPUT = {Conv2d: "x", Linear: "x", BatchNorm1d: "x_centred", BatchNorm2d: "x_centred"}


def time_average_limit(model, x, y, T):
    """Parameter gradients from BPTT's own upstream gradients with every layer input averaged
    over time: how far averaging alone moves a gradient, upstream gradients exact.

    One multi-step BPTT step records, for each conv, linear and batchnorm layer, the gradient dy
    at its output (T·B rows) and its cache. Each of those layers then runs backward once more on
    Σ_t dy_t with its cached input replaced by the mean over the T steps. That is where a rate
    pass would land if every upstream gradient were exact: it backpropagates once through
    time-averaged activations, so a weight gradient Σ_t dy_t ⊗ x_t becomes (Σ_t dy_t) ⊗ mean_t x_t
    (a batchnorm scale: Σ_t dy_t·x̂_t against (Σ_t dy_t)·mean_t x̂_t). Biases and any layer whose
    input is the same at every step (the first convolution) keep cosine 1.
    """
    recorded = []
    layers = [m for _, m in model.named_modules() if type(m) in LAYER_INPUT]
    for layer in layers:
        def record(dy, cache, layer=layer, backward=layer.backward):
            recorded.append((layer, dy, cache))
            return backward(dy, cache)
        layer.backward = record             # an instance attribute shadows the method...
    try:
        _gradients(model, BPTT(model, T, "m"), x, y)
    finally:
        for layer in layers:
            del layer.backward              # ...until it is deleted again
    model.zero_grad()
    for layer, dy, cache in recorded:
        field = LAYER_INPUT[type(layer)]
        averaged = cache._replace(**{field: mean_over_time(getattr(cache, field), T)})
        layer.backward(T * mean_over_time(dy, T), averaged)        # Σ_t dy_t
    return [g.copy() for _, _, g, _ in model.parameters()]


def gradient_alignment(model, x, y, Ts, methods=("rate_m", "rate_s"), on_cell=None):
    """Gradient of each method against BPTT's (same step mode) on batch (x, y), same weights.

    Runs in the model's dtype (use float64); training mode (batch statistics), so the running
    statistics move but nothing that is compared depends on them. Returns one dict per
    (method, T, parameter) plus one with param '(all)': cosine, norm_ratio, norm_method,
    norm_bptt, and depth (index among conv/linear weights; None for other parameters).
    """
    model.train()
    names = [name for name, _, _, _ in model.parameters()]
    depth = weight_depths(model)
    rows, n, i = [], len(methods) * len(Ts), 0
    for T in Ts:
        reference = {}                      # step mode -> BPTT gradients at this T
        for name in methods:
            if on_cell:
                on_cell(i, n, name, T)
            i += 1
            mode = STEP_MODE[name]
            if mode not in reference:
                reference[mode] = _gradients(model, BPTT(model, T, mode), x, y)
            if name == LIMIT:
                g_method = time_average_limit(model, x, y, T)
            else:
                g_method = _gradients(model, make_method(name, model, T, scale_grad_by_T=False),
                                      x, y)
            total = np.zeros(3)
            for p_name, g_m, g_b in zip(names, g_method, reference[mode]):
                dots = _dots(g_m, g_b)
                total += dots
                rows.append(dict(method=name, T=T, param=p_name, depth=depth.get(p_name),
                                 **_alignment(dots)))
            rows.append(dict(method=name, T=T, param="(all)", depth=None, **_alignment(total)))
    return rows


# -- 3. firing rates ----------------------------------------------------------------------
def firing_rates(model, x, T):
    """Mean firing rate of every LIF layer on images x (B, C, H, W) over T steps, eval mode.

    Returns, for each LIF layer in forward order (depth 0, 1, ...), T rows with step = 1..T and
    rate = mean of s_t over samples and neurons, then one row with step = 'all' and the mean
    over all steps. Also: layer (dotted name), neurons (per sample).
    """
    training = model.training
    model.eval()
    names = {id(m): name for name, m in model.named_modules()}
    B, rows = x.shape[0], []

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
        model.forward(repeat_over_time(x, T), run)
    finally:
        model.train(training)
    return rows


# -- output -------------------------------------------------------------------------------
def _clean(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write_rows(out, stem, rows, info):
    """rows -> OUT/stem.csv and OUT/stem.json ({'info': ..., 'rows': ...}). Returns both paths."""
    csv_path, json_path = os.path.join(out, stem + ".csv"), os.path.join(out, stem + ".json")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(json_path, "w") as f:
        json.dump({"info": info, "rows": [{k: _clean(v) for k, v in r.items()} for r in rows]},
                  f, indent=1)
    return [csv_path, json_path]


def format_table(header, lines):
    """A plain text table, columns right-aligned to their widest entry."""
    cells = [header] + [[str(c) for c in line] for line in lines]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    fmt = lambda row: "  ".join(c.rjust(w) for c, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt(cells[0]), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells[1:]])


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")                      # files only, no display
    import matplotlib.pyplot as plt
    return plt


def plot_memory_time(rows, path, title):
    """Two panels against T, one colour per method: step time; memory in MiB, kept for
    backward (solid) and peak (dashed)."""
    plt = _pyplot()
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for k, name in enumerate(dict.fromkeys(r["method"] for r in rows)):
        rs = [r for r in rows if r["method"] == name]
        T = [r["T"] for r in rs]
        # later methods drawn thinner, so that equal curves (rate_m, rate_s memory) stay visible
        style = dict(color=f"C{k}", lw=max(3.0 - 0.8 * k, 1.0), ms=max(9 - 2.5 * k, 4))
        ax_t.plot(T, [r["step_time_s"] for r in rs], "o-", label=name, **style)
        ax_m.plot(T, [r["kept_bytes"] / MiB for r in rs], "o-", label=f"{name} kept", **style)
        ax_m.plot(T, [r["peak_bytes"] / MiB for r in rs], "s--", label=f"{name} peak", **style)
    ax_t.set(xlabel="time steps T", ylabel="step time (s, median)", title="step time")
    ax_m.set(xlabel="time steps T", ylabel="memory (MiB)",
             title="bytes kept for backward (solid), peak during a step (dashed)")
    for ax in (ax_t, ax_m):
        ax.set_xticks(sorted({r["T"] for r in rows}))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_gradients(rows, path, title):
    """Cosine with BPTT against T: one panel per method, one line per conv/linear weight
    coloured by depth, and the whole gradient in black."""
    plt = _pyplot()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    n_depth = 1 + max(r["depth"] for r in rows if r["depth"] is not None)
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, len(methods), figsize=(5.2 * len(methods) + 1, 4.2),
                             sharey=True, squeeze=False, layout="constrained")
    for ax, name in zip(axes[0], methods):
        rs = [r for r in rows if r["method"] == name]
        for d in range(n_depth):
            line = [r for r in rs if r["depth"] == d]
            ax.plot([r["T"] for r in line], [r["cosine"] for r in line], ".-", lw=1.2,
                    color=cmap(d / max(n_depth - 1, 1)))
        line = [r for r in rs if r["param"] == "(all)"]
        ax.plot([r["T"] for r in line], [r["cosine"] for r in line], "k--", lw=2,
                label="all parameters")
        ax.set(xlabel="time steps T", title=f"{name} vs BPTT ({STEP_MODE[name]})")
        ax.set_xticks(sorted({r["T"] for r in rs}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[0][0].set_ylabel("cosine similarity with the BPTT gradient")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, max(n_depth - 1, 1)))
    fig.colorbar(sm, ax=list(axes[0]), label="conv/linear weight depth (0 = input)")
    fig.suptitle(title)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_firing(rows, path, title):
    """Heat map: LIF layers (rows, input side on top) by time step, plus the all-step mean."""
    plt = _pyplot()
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    steps = list(dict.fromkeys(r["step"] for r in rows))
    rate = {(r["layer"], r["step"]): r["rate"] for r in rows}
    grid = np.array([[rate[layer, t] for t in steps] for layer in layers])
    fig, ax = plt.subplots(figsize=(1.6 + 0.7 * len(steps), 1.2 + 0.4 * len(layers)))
    im = ax.imshow(grid, cmap="magma", vmin=0, vmax=max(grid.max(), 1e-3), aspect="auto")
    if grid.size <= 400:
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7,
                    color="white" if v < 0.6 * grid.max() else "black")
    ax.set_xticks(range(len(steps)), [str(t) for t in steps])
    ax.set_yticks(range(len(layers)), layers, fontsize=8)
    ax.set(xlabel="time step (all = mean over steps)", ylabel="LIF layer")
    fig.colorbar(im, ax=ax, label="mean firing rate")
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# -- command line -------------------------------------------------------------------------
def note(text):
    print(f"note: {text}", file=sys.stderr, flush=True)


def int_list(text):
    return [positive_int(t) for t in text.split(",")]


def method_list(choices):
    def parse(text):
        names = text.split(",")
        for name in names:
            if name not in choices:
                raise argparse.ArgumentTypeError(f"unknown method {name!r}; choose from "
                                                 f"{', '.join(choices)}")
        return names
    return parse


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m minirate.study", allow_abbrev=False,
                       description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="{memory-time,gradients,firing}")
    fmt = argparse.ArgumentDefaultsHelpFormatter
    default_data = SUBSET_DIR if os.path.isdir(SUBSET_DIR) else "data"

    def common(s, batch_size):
        s.add_argument("--batch-size", type=positive_int, default=batch_size, help="images")
        s.add_argument("--device", choices=DEVICES, default="cpu", help="cuda needs CuPy")
        s.add_argument("--data-dir", default=default_data,
                       help="folder holding cifar-10-batches-py/ (random images when missing)")
        s.add_argument("--out", default="runs/study", help="folder for the csv/json/png files")

    def model_opts(s):
        s.add_argument("--arch", choices=ARCHS, default="small", help="architecture")
        s.add_argument("--width", type=positive_float, default=1.0, help="channel multiplier")
        s.add_argument("--seed", type=int, default=0, help="weight initialisation")

    s = sub.add_parser("memory-time", help="step time and memory against T", formatter_class=fmt,
                       description="Step time, bytes kept for backward and peak memory per "
                                   "method and T (float32).", allow_abbrev=False)
    s.add_argument("--methods", type=method_list(METHODS), default="bptt,rate_m,rate_s",
                   help="comma-separated")
    s.add_argument("--T", type=int_list, default="1,2,4,6,8", help="comma-separated time steps")
    s.add_argument("--steps", type=positive_int, default=3, help="timed steps (median)")
    s.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    model_opts(s)
    common(s, 16)

    s = sub.add_parser("gradients", help="gradient alignment with BPTT", formatter_class=fmt,
                       description="Cosine and norm ratio of each method's gradient against "
                                   "BPTT's, per parameter tensor, in float64. Rate methods run "
                                   "with scale_grad_by_T=False so that norms compare. "
                                   f"'{LIMIT}' is BPTT's own backward with every layer input "
                                   "averaged over time: what averaging alone costs.",
                       allow_abbrev=False)
    s.add_argument("--methods", type=method_list(tuple(STEP_MODE)),
                   default=f"rate_m,rate_s,{LIMIT}", help="comma-separated; BPTT is the reference")
    s.add_argument("--T", type=int_list, default="1,2,4,6,8", help="comma-separated time steps")
    s.add_argument("--checkpoint", default="",
                   help="weights saved by train.py (its arch/width/dataset replace --arch/--width)")
    model_opts(s)
    common(s, 16)

    s = sub.add_parser("firing", help="firing rates of a trained network", formatter_class=fmt,
                       description="Mean firing rate of every LIF layer at every step, eval mode.",
                       allow_abbrev=False)
    s.add_argument("--checkpoint", required=True, help="checkpoint saved by train.py")
    s.add_argument("--T", type=positive_int, default=None, help="time steps (default: training T)")
    common(s, 64)
    a = p.parse_args(argv)
    if getattr(a, "warmup", 0) < 0:
        p.error("argument --warmup: must be >= 0")
    return a


def run_memory_time(a, xp, bar):
    x, y, source = load_batch("cifar10", a.data_dir, a.batch_size, a.seed)
    rows = memory_time(xp.asarray(x), xp.asarray(y), a.methods, a.T, a.arch, a.width, 10,
                       a.steps, a.warmup, a.seed,
                       on_cell=lambda i, n, m, T: bar(i, n, method=m, T=T))
    info = dict(arch=a.arch, width=a.width, batch_size=a.batch_size, device=a.device,
                dtype="float32", data=source, steps=a.steps, warmup=a.warmup,
                peak="tracemalloc" if a.device == "cpu" else "CuPy memory pool")
    table = format_table(["method", "T", "step s", "kept MiB", "peak MiB"],
                         [[r["method"], r["T"], f"{r['step_time_s']:.3f}",
                           f"{r['kept_bytes'] / MiB:.2f}", f"{r['peak_bytes'] / MiB:.2f}"]
                          for r in rows])
    title = f"{a.arch} (width {a.width}), batch {a.batch_size}, {a.device}, {source}"
    return rows, info, table, plot_memory_time, title


def run_gradients(a, xp, bar):
    dataset = "cifar10"
    if a.checkpoint:
        model, cfg = model_from_checkpoint(a.checkpoint)
        dataset, weights = cfg.get("dataset", "cifar10"), a.checkpoint
        a.arch, a.width = cfg["arch"], cfg.get("width", 1.0)
    else:
        model = build_model(a.arch, 10, a.width, seed=a.seed)
        weights = f"fresh init, seed {a.seed}"
    model.to(xp, np.float64)
    x, y, source = load_batch(dataset, a.data_dir, a.batch_size, a.seed)
    rows = gradient_alignment(model, xp.asarray(x, dtype=np.float64), xp.asarray(y), a.T,
                              a.methods, on_cell=lambda i, n, m, T: bar(i, n, method=m, T=T))
    info = dict(arch=a.arch, width=a.width, dataset=dataset, batch_size=a.batch_size,
                device=a.device, dtype="float64", data=source, weights=weights,
                scale_grad_by_T=False, reference={m: f"bptt step mode {STEP_MODE[m]}"
                                                  for m in a.methods})
    summary = []
    for r in (r for r in rows if r["param"] == "(all)"):
        ws = [w for w in rows if (w["method"], w["T"]) == (r["method"], r["T"])
              and w["depth"] is not None]
        every = [w for w in rows if (w["method"], w["T"]) == (r["method"], r["T"])
                 and w["param"] != "(all)"]
        worst, worst_any = (min(rs, key=lambda w: w["cosine"] if math.isfinite(w["cosine"]) else 2)
                            for rs in (ws, every))
        summary.append([r["method"], r["T"], f"{r['cosine']:.6f}", f"{r['norm_ratio']:.4f}",
                        f"{worst['cosine']:.4f}", worst["param"], f"{worst_any['cosine']:.4f}",
                        worst_any["param"]])
    table = format_table(["method", "T", "cos(all)", "|g|/|g_bptt|", "min cos (weights)", "at",
                          "min cos (any tensor)", "at"], summary)
    cells = list(dict.fromkeys((r["method"], r["T"]) for r in rows))
    per_weight = [[f"{d}", p] + [f"{r['cosine']:.3f}" for c in cells for r in rows
                                 if (r["method"], r["T"], r["param"]) == (*c, p)]
                  for p, d in weight_depths(model).items()]
    table += "\n\ncosine per conv/linear weight:\n" + format_table(
        ["depth", "weight"] + [f"{m} T={T}" for m, T in cells], per_weight)
    table += "\n(rate methods without the 1/T loss-gradient factor, so norm ratios compare)"
    title = (f"gradient cosine with BPTT: {a.arch} (width {a.width}), batch {a.batch_size}, "
             f"float64, {source}")
    return rows, info, table, plot_gradients, title


def run_firing(a, xp, bar):
    model, cfg = model_from_checkpoint(a.checkpoint)
    T = a.T or int(cfg.get("T", 4))
    dtype = np.dtype(cfg.get("dtype", "float32"))
    model.to(xp, dtype)
    x, _, source = load_batch(cfg.get("dataset", "cifar10"), a.data_dir, a.batch_size)
    bar(0, 1, T=T, images=a.batch_size)
    rows = firing_rates(model, xp.asarray(x, dtype=dtype), T)
    info = dict(checkpoint=a.checkpoint, arch=cfg["arch"], width=cfg.get("width", 1.0),
                dataset=cfg.get("dataset", "cifar10"), T=T, batch_size=a.batch_size,
                device=a.device, data=source)
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    table = format_table(["layer", "neurons"] + [f"t={t}" for t in range(1, T + 1)] + ["all"],
                         [[layer, next(r["neurons"] for r in rows if r["layer"] == layer)]
                          + [f"{r['rate']:.4f}" for r in rows if r["layer"] == layer]
                          for layer in layers])
    title = (f"firing rates: {os.path.basename(a.checkpoint)} ({cfg['arch']}, width "
             f"{cfg.get('width', 1.0)}), T={T}, {a.batch_size} {source} images")
    return rows, info, table, plot_firing, title


def make_out(out):
    """Create --out now (before the work) and check it takes files; returns the folders this
    created, deepest first, so that a failed run can take them away again."""
    created, path = [], os.path.abspath(out)
    while not os.path.exists(path):
        created.append(path)
        path = os.path.dirname(path)
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        remove_empty(created)
        raise StudyError(f"cannot write to --out {out}: {e.strerror or e}") from None
    return created


def remove_empty(folders):
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            break


COMMANDS = {"memory-time": ("memory_time", run_memory_time),
            "gradients": ("gradients", run_gradients),
            "firing": ("firing", run_firing)}


def main(argv=None):
    """The command line. Returns the exit status: 0, or 1 after a one-line error on stderr
    (a malformed command line exits with status 2 from the parser)."""
    a = parse_args(argv)
    try:
        return _main(a)
    except (StudyError, DatasetError, CheckpointError, DeviceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _main(a):
    stem, run = COMMANDS[a.command]
    xp = get_xp(a.device)
    created = make_out(a.out)       # fail on an unwritable --out before the work, not after
    progress = {}

    def bar(i, n, **fields):        # one progress line on stderr per measured cell
        if "bar" not in progress:
            progress["bar"] = Progress(n, a.command, every=1)
        progress["bar"].update(i + 1, **fields)

    try:
        rows, info, table, plot, title = run(a, xp, bar)
    except BaseException:
        remove_empty(created)       # no empty --out left behind by a failed run
        raise
    if "bar" in progress:
        progress["bar"].close()
    try:                            # files first: a closed stdout must not cost the results
        paths = write_rows(a.out, stem, rows, info)
        paths.append(os.path.join(a.out, stem + ".png"))
        plot(rows, paths[-1], title)
    except OSError as e:
        raise StudyError(f"cannot write to --out {a.out}: {e.strerror or e}") from None
    print(table)
    print("wrote: " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
