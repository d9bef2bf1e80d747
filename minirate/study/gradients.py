"""Study 2, gradient alignment: each method's gradient against BPTT's on one batch.

For each method m and T, one batch and one set of weights, the BPTT gradient g_b in the same step
mode (multi-step 'm' for rate_m, single-step 's' for rate_s; a spec's mode= for bptt/tbptt
variants) against g_m:

    cosine = <g_m, g_b> / (|g_m| |g_b|),     norm ratio = |g_m| / |g_b|

per parameter tensor and over all parameters concatenated ('(all)'). Computed in float64, with
the rate methods built with scale_grad_by_T=False: their default multiplies the loss gradient by
1/T, which would put a factor 1/T into every norm ratio. The row 'avg_limit'
(`time_average_limit`) is BPTT's own backward with each layer's input averaged over time: the
misalignment that averaging alone causes, even with exact upstream gradients. Each '(all)' row
also carries the step's MACs, ACs and memory accesses (minirate/costs.py).

The online methods sltt and ottt (and SLTT-K, 'sltt:K=2') train on the per-step loss
(1/T) Σ_t ((1 − λ_L) CE + λ_L MSE)(out_t, y) and step one time step at a time, so their
reference is single-step BPTT on that same per-step loss (λ_L: --loss-lambda, train.py's default
0.05): what they drop is then exactly the temporal part of BPTT's gradient (SLTT), or that part
replaced by presynaptic traces (OTTT). At T = 1 both equal their reference. The rate methods,
tbptt and local keep the loss on the averaged output (cross-entropy) and BPTT in their own mode.

With event data (--dataset cifar10dvs or dvsgesture) each T gets the same samples' frames binned
into T frames, (T, B, 2, H, W), and the model takes 2 input channels.
"""
import argparse
import math

import numpy as np

from ..layers.batchnorm import BatchNorm1d, BatchNorm2d
from ..layers.conv import Conv2d
from ..layers.linear import Linear
from ..layers.scaled_ws import ScaledWSCache
from ..layers.winograd import set_conv_algo
from ..methods import BPTT
from ..losses import cross_entropy
from ..methods.common import mean_over_time
from ..models import build_model
from .common import (COST_HEADER, COST_KEYS, MethodUnavailable, StudyError, add_common_options,
                     add_loss_option, add_model_options, build_method, check_channels,
                     cost_cells, data_source, format_table, int_list, loss_for,
                     model_from_checkpoint, note, parse_method_spec, split_points)
from .plots import plot_gradients

LIMIT = "avg_limit"     # not a method: `time_average_limit`, compared like one
DEFAULT_METHODS = f"rate_m,rate_s,sltt,ottt,{LIMIT}"


def method_list(text):
    """Comma-separated specs or avg_limit; plain BPTT is the reference, not a method here."""
    out = []
    for t in text.split(","):
        if t == LIMIT:
            out.append(t)
            continue
        spec = parse_method_spec(t)
        exact_variant = spec.pack or spec.recompute is not None or spec.blocks
        if spec.name == "bptt" and spec.local_blocks == 1 and not exact_variant:
            raise argparse.ArgumentTypeError(f"{t!r} is the reference; compare rate_m, rate_s, "
                                             f"{LIMIT}, tbptt:K=.., local:N=.., bptt:pack, "
                                             f"bptt:blocks against it")
        out.append(spec)
    return out


def weight_depths(model):
    """{parameter name: depth} for the weights of conv and linear layers, input side first."""
    names = [f"{m_name}.weight" for m_name, m in model.named_modules()
             if isinstance(m, (Conv2d, Linear))]
    return {name: depth for depth, name in enumerate(names)}


def _gradients(model, method, x, y, loss_fn=cross_entropy):
    """{parameter name: gradient} after one step of `method` (a local method's aux heads
    included; only the names the reference has are compared)."""
    model.zero_grad()
    method.step(x, y, loss_fn)
    return {name: g.copy() for name, _, g, _ in model.parameters()}


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


# the cache field holding each parameterised layer's input (or, for batchnorm, x − μ); the
# subclasses (weight-standardized conv and linear) hold their layer's cache in `op`
LAYER_INPUT = {Conv2d: "x", Linear: "x", BatchNorm1d: "x_centred", BatchNorm2d: "x_centred"}


def _time_averaged(layer, cache, T):
    """`cache` with the layer's input (batchnorm: x − μ) replaced by its mean over T steps."""
    if isinstance(cache, ScaledWSCache):
        return cache._replace(op=_time_averaged(layer, cache.op, T))
    field = next(f for cls, f in LAYER_INPUT.items() if isinstance(layer, cls))
    return cache._replace(**{field: mean_over_time(getattr(cache, field), T)})


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
    layers = [m for _, m in model.named_modules() if isinstance(m, tuple(LAYER_INPUT))]
    for layer in layers:
        def record(dy, cache, need_dx=True, layer=layer, backward=layer.backward):
            recorded.append((layer, dy, cache))
            return backward(dy, cache, need_dx=need_dx)
        layer.backward = record             # an instance attribute shadows the method...
    try:
        _gradients(model, BPTT(model, T, "m"), x, y)
    finally:
        for layer in layers:
            del layer.backward              # ...until it is deleted again
    model.zero_grad()
    for layer, dy, cache in recorded:
        layer.backward(T * mean_over_time(dy, T), _time_averaged(layer, cache, T))   # Σ_t dy_t
    return {name: g.copy() for name, _, g, _ in model.parameters()}


def reference_of(spec):
    """(step mode, per-step loss) of the BPTT run a method is compared with."""
    if spec == LIMIT:
        return "m", False
    return spec.step_mode, spec.per_step_loss


def gradient_alignment(model, x, y, Ts, methods=("rate_m", "rate_s"), on_cell=None,
                       loss_lambda=0.05):
    """Gradient of each method against BPTT's (same step mode; for sltt and ottt single-step
    BPTT on the same per-step loss, λ_L = loss_lambda) on batch (x, y), same weights.

    x, y: images (B, C, H, W) or frames (T, B, C, H, W) for a single T; or x a function
    T -> (x, y) (frames binned for each T) and y None. methods: MethodSpecs, spec texts
    ('rate_m', 'tbptt:K=2', 'local:N=2', 'sltt', 'sltt:K=2', 'ottt') or LIMIT; one not in
    this build is skipped with a note. Runs in the model's dtype (use float64); training mode
    (batch statistics), so the running statistics move but nothing that is compared depends on
    them. Returns one dict per (method, T, parameter) plus one with param '(all)': cosine,
    norm_ratio, norm_method, norm_bptt, depth (index among conv/linear weights; None for other
    parameters), bptt_mode, per_step_loss (of the reference and the method), and on the
    '(all)' row the step's costs (`costs.sum_costs`; None for LIMIT).
    """
    batch_at = x if callable(x) else (lambda T: (x, y))
    model.train()
    names = [name for name, _, _, _ in model.parameters()]
    depth = weight_depths(model)
    specs = [m if m == LIMIT or not isinstance(m, str) else parse_method_spec(m) for m in methods]
    rows, n, i, skipped = [], len(specs) * len(Ts), 0, set()
    for T in Ts:
        reference = {}                      # (step mode, per-step loss) -> BPTT's gradients
        xb, yb = batch_at(T)
        for spec in specs:
            label = LIMIT if spec == LIMIT else spec.label
            if on_cell:
                on_cell(i, n, label, T)
            i += 1
            if label in skipped:
                continue
            ref = mode, per_step = reference_of(spec)
            loss_fn = loss_for(spec, loss_lambda) if spec != LIMIT else cross_entropy
            if ref not in reference:
                reference[ref] = _gradients(model, BPTT(model, T, mode, per_step), xb, yb,
                                            loss_fn)
            costs = dict.fromkeys(COST_KEYS)
            if spec == LIMIT:
                g_method = time_average_limit(model, xb, yb, T)
            else:
                try:
                    method = build_method(spec, model, T, scale_grad_by_T=False)
                except MethodUnavailable as e:
                    note(f"skipped {e}")
                    skipped.add(label)
                    continue
                g_method = _gradients(model, method, xb, yb, loss_fn)
                costs = spec.costs(model, xb.shape, T, split_points(method))
            total = np.zeros(3)
            for p_name in names:
                dots = _dots(g_method[p_name], reference[ref][p_name])
                total += dots
                rows.append(dict(method=label, T=T, bptt_mode=mode, per_step_loss=per_step,
                                 param=p_name,
                                 depth=depth.get(p_name),
                                 **_alignment(dots), **dict.fromkeys(COST_KEYS)))
            rows.append(dict(method=label, T=T, bptt_mode=mode, per_step_loss=per_step,
                             param="(all)", depth=None,
                             **_alignment(total),
                             **costs))
    return rows


def describe_reference(label, loss_lambda):
    """The BPTT run a method label is compared with, in words."""
    mode, per_step = reference_of(label if label == LIMIT else parse_method_spec(label))
    loss = (f"per-step loss (1 - {loss_lambda}) CE + {loss_lambda} MSE" if per_step
            else "cross-entropy of the averaged output")
    return f"bptt step mode {mode}, {loss}"


def run(a, xp, bar):
    cfg = None
    if a.checkpoint:
        model, cfg = model_from_checkpoint(a.checkpoint, a.conv_algo)
        weights = a.checkpoint
        a.arch, a.width = cfg["arch"], cfg.get("width", 1.0)
    data = data_source(a, cfg)
    if not a.checkpoint:
        model = build_model(a.arch, data.num_classes, a.width, seed=a.seed,
                            in_channels=data.in_channels)
        set_conv_algo(model, a.conv_algo)
        weights = f"fresh init, seed {a.seed}"
    check_channels(model, data)
    model.to(xp, np.float64)
    batches = {}

    def batch_at(T):            # images: the same batch at every T; event frames: binned for T
        key = T if data.events else None
        if key not in batches:
            x, y = data.batch(T, a.batch_size)
            batches[key] = xp.asarray(x, dtype=np.float64), xp.asarray(y)
        return batches[key]

    source = data.describe()
    batch_at(a.T[0])            # a data set that does not load fails before the first cell
    depths = weight_depths(model)           # before a local method adds its aux heads
    rows = gradient_alignment(model, batch_at, None, a.T, a.methods,
                              on_cell=lambda i, n, m, T: bar(i, n, method=m, T=T),
                              loss_lambda=a.loss_lambda)
    if not rows:
        raise StudyError("none of --methods is available in this build of minirate.methods")
    labels = list(dict.fromkeys(r["method"] for r in rows))
    info = dict(arch=a.arch, width=a.width, dataset=data.dataset, batch_size=a.batch_size,
                device=a.device, dtype="float64", data=source, weights=weights,
                scale_grad_by_T=False, costs="minirate/costs.py, memory at 8 bytes per number",
                loss_lambda=a.loss_lambda, conv_algo=a.conv_algo,
                reference={m: describe_reference(m, a.loss_lambda) for m in labels})
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
                        worst_any["param"]] + (["-"] * 3 if r["macs"] is None else cost_cells(r)))
    table = format_table(["method", "T", "cos(all)", "|g|/|g_bptt|", "min cos (weights)", "at",
                          "min cos (any tensor)", "at"] + COST_HEADER, summary)
    cells = list(dict.fromkeys((r["method"], r["T"]) for r in rows))
    per_weight = [[f"{d}", p] + [f"{r['cosine']:.3f}" for c in cells for r in rows
                                 if (r["method"], r["T"], r["param"]) == (*c, p)]
                  for p, d in depths.items()]
    table += "\n\ncosine per conv/linear weight:\n" + format_table(
        ["depth", "weight"] + [f"{m} T={T}" for m, T in cells], per_weight)
    table += "\n(rate methods without the 1/T loss-gradient factor, so norm ratios compare)"
    online = [m for m in labels if m != LIMIT and parse_method_spec(m).per_step_loss]
    if online:
        table += (f"\n({', '.join(online)}: against {describe_reference(online[0], a.loss_lambda)}"
                  f"; the others against BPTT on the cross-entropy of the averaged output)")
    title = (f"gradient cosine with BPTT: {a.arch} (width {a.width}), batch {a.batch_size}, "
             f"float64, {source}")
    return rows, info, table, plot_gradients, title


def add_parser(sub, fmt):
    s = sub.add_parser("gradients", help="gradient alignment with BPTT", formatter_class=fmt,
                       description="Cosine and norm ratio of each method's gradient against "
                                   "BPTT's, per parameter tensor, in float64, with each step's "
                                   "MACs, ACs and memory accesses. Rate methods run with "
                                   "scale_grad_by_T=False so that norms compare. sltt and ottt "
                                   "are compared with single-step BPTT on the same per-step "
                                   "loss (--loss-lambda). "
                                   f"'{LIMIT}' is BPTT's own backward with every layer input "
                                   "averaged over time: what averaging alone costs.",
                       allow_abbrev=False)
    s.add_argument("--methods", type=method_list, default=DEFAULT_METHODS,
                   help=f"comma-separated: rate_m, rate_s, sltt, sltt:K=2, ottt, {LIMIT}, "
                        "tbptt:K=2, local:N=2, tbptt:K=2:N=2, bptt:mode=s:N=2; BPTT is the "
                        "reference")
    s.add_argument("--T", type=int_list, default="1,2,4,6,8", help="comma-separated time steps")
    s.add_argument("--checkpoint", default="",
                   help="weights saved by train.py (its arch/width replace --arch/--width)")
    add_loss_option(s)
    add_model_options(s)
    add_common_options(s, 16, from_checkpoint=True)
