"""Study 1, memory and time: for each method and T, one batch, a fresh model.

    step time     median wall time of --steps training steps (forward + backward, no optimizer)
                  after --warmup untimed ones
    kept bytes    `method.kept_bytes`: bytes of the caches and statistics held for backward,
                  counted exactly from the arrays (parameters excluded)
    peak bytes    the most memory in use during one further step, minus what was in use before
                  it: tracemalloc on the CPU (NumPy reports its buffers to it); on the GPU the
                  CuPy memory pool's used bytes, read after every allocation of the step
    costs         MACs, ACs (accumulates on spike inputs) and memory accesses of one step,
                  counted from the layer shapes (minirate/costs.py)

sltt and ottt step with their per-step loss ((1 − λ_L) CE + λ_L MSE at every step, --loss-lambda);
the others with cross-entropy on the averaged output. With event data (--dataset cifar10dvs or
dvsgesture) each T gets the same samples' frames binned into T frames, (T, B, 2, H, W), and the
model takes 2 input channels. Kept bytes then include the whole input array wherever a cache
holds a frame (a view keeps its (T, B, 2, H, W) base alive), so sltt and ottt grow by the input
with T, and by nothing else.
"""
import time

import numpy as np

from ..backend import get_array_module, synchronize
from ..cli import positive_int
from ..layers.winograd import set_conv_algo
from ..memory import check_step, gib, guard
from ..models import build_model
from .common import (COST_HEADER, COST_KEYS, MiB, MethodUnavailable, add_common_options,
                     add_loss_option, add_model_options, build_method, cost_cells, data_source,
                     format_table, int_list, loss_for, method_specs, note, parse_method_spec,
                     peak_step_bytes, split_points, StudyError)
from .plots import plot_memory_time

DEFAULT_METHODS = "bptt,rate_m,rate_s,sltt,ottt"


def memory_time(x, y, methods, Ts, arch="small", width=1.0, num_classes=10, steps=3, warmup=1,
                seed=0, on_cell=None, loss_lambda=0.05, conv_algo="im2col"):
    """Step time, bytes kept for backward, peak bytes and costs of each method at each T.

    x, y: one batch (NumPy or CuPy; the model follows x): images (B, C, H, W), or frames
    (T, B, C, H, W) for a single T; or x a function T -> (x, y) (frames binned for each T) and
    y None. methods: MethodSpecs or spec texts ('bptt', 'tbptt:K=2', 'sltt:K=2', ...); one not
    in this build is skipped with a note. on_cell(i, n, method, T) reports progress: when cell i
    starts and after each of its steps. loss_lambda: λ_L of the per-step loss of sltt and ottt.
    conv_algo: what each fresh model's 3x3 stride-1 convolutions run (`set_conv_algo`).
    Returns one dict per (method, T): method, T, step_time_s, kept_bytes, peak_bytes and the
    totals of `costs.sum_costs`.
    """
    batch_at = x if callable(x) else (lambda T: (x, y))
    specs = [parse_method_spec(m) if isinstance(m, str) else m for m in methods]
    rows, n, i = [], len(specs) * len(Ts), 0
    for spec in specs:
        for T in Ts:
            if on_cell:
                on_cell(i, n, spec.label, T)
            i += 1
            xb, yb = batch_at(T)
            xp = get_array_module(xb)
            model = build_model(arch, num_classes, width, seed=seed,
                                in_channels=xb.shape[-3]).to(xp, xb.dtype)
            set_conv_algo(model, conv_algo)
            try:
                method = build_method(spec, model, T)
            except MethodUnavailable as e:
                note(f"skipped {e}")
                break
            loss_fn = loss_for(spec, loss_lambda)
            # a cell that clearly cannot fit is refused before its first step, one that runs
            # out during a step with the same line (minirate/memory.py)
            lower = f"--batch-size, --T, --width, or --methods without {spec.label}"
            need, _ = check_step(model, xb.shape, T, spec.label, xp, lower, spec.step_mode,
                                 spec.window, spec.local_blocks, optimizer_copies=0)
            method.step = guard(method.step, f" ({spec.label} at T={T}, estimated: at least "
                                             f"{gib(need['total'])})", lower)

            def step():
                method.step(xb, yb, loss_fn)
                synchronize(xp)

            times = []
            for k in range(warmup + steps):
                model.zero_grad()
                t0 = time.perf_counter()
                step()
                if k >= warmup:
                    times.append(time.perf_counter() - t0)
                if on_cell:                     # the same cell again: a heartbeat for long steps
                    on_cell(i - 1, n, spec.label, T)
            model.zero_grad()
            peak = peak_step_bytes(xp, step)
            costs = spec.costs(model, xb.shape, T, split_points(method))
            rows.append(dict(method=spec.label, T=T, step_time_s=float(np.median(times)),
                             kept_bytes=int(method.kept_bytes), peak_bytes=int(peak),
                             **{k: int(costs[k]) for k in COST_KEYS}))
    return rows


def add_parser(sub, fmt):
    s = sub.add_parser("memory-time", help="step time, memory and costs against T",
                       formatter_class=fmt, allow_abbrev=False,
                       description="Step time, bytes kept for backward, peak memory, MACs, ACs "
                                   "and memory accesses per method and T (float32).")
    s.add_argument("--methods", type=method_specs, default=DEFAULT_METHODS,
                   help="comma-separated specs: bptt, rate_m, rate_s, tbptt:K=2, local:N=2, "
                        "tbptt:K=2:N=2, rate_m:N=2, bptt:mode=s")
    s.add_argument("--T", type=int_list, default="1,2,4,6,8", help="comma-separated time steps")
    s.add_argument("--steps", type=positive_int, default=3,
                   help="timed steps (median)")
    s.add_argument("--warmup", type=int, default=1, help="untimed steps first (>= 0)")
    add_loss_option(s)
    add_model_options(s)
    add_common_options(s, 16)


def run(a, xp, bar):
    data, batches = data_source(a), {}

    def batch_at(T):            # images: the same batch at every T; event frames: binned for T
        key = T if data.events else None
        if key not in batches:
            x, y = data.batch(T, a.batch_size)
            batches[key] = xp.asarray(x), xp.asarray(y)
        return batches[key]

    source = data.describe()
    # a cell that clearly cannot fit is refused before any data is read or binned for its T
    probe = build_model(a.arch, data.num_classes, a.width, seed=a.seed,
                        in_channels=data.in_channels)
    size = data.frame_size if data.events else 32
    for spec in a.methods:
        for T in a.T:
            check_step(probe, ((T,) if data.events else ()) + (a.batch_size, data.in_channels,
                                                               size, size),
                       T, spec.label, xp, f"--batch-size, --T, --width, or --methods without "
                                          f"{spec.label}", spec.step_mode, spec.window,
                       spec.local_blocks, optimizer_copies=0)
    batch_at(a.T[0])            # a data set that does not load fails before the first cell
    rows = memory_time(batch_at, None, a.methods, a.T, a.arch, a.width, data.num_classes,
                       a.steps, a.warmup, a.seed,
                       on_cell=lambda i, n, m, T: bar(i, n, method=m, T=T),
                       loss_lambda=a.loss_lambda, conv_algo=a.conv_algo)
    if not rows:
        raise StudyError("none of --methods is available in this build of minirate.methods")
    info = dict(arch=a.arch, width=a.width, batch_size=a.batch_size, device=a.device,
                dtype="float32", data=source, dataset=data.dataset, loss_lambda=a.loss_lambda,
                conv_algo=a.conv_algo, steps=a.steps, warmup=a.warmup,
                peak="tracemalloc" if a.device == "cpu" else "CuPy memory pool",
                costs="minirate/costs.py: dense ACs on spike inputs, ideal memory traffic")
    table = format_table(["method", "T", "step s", "kept MiB", "peak MiB"] + COST_HEADER,
                         [[r["method"], r["T"], f"{r['step_time_s']:.3f}",
                           f"{r['kept_bytes'] / MiB:.2f}", f"{r['peak_bytes'] / MiB:.2f}"]
                          + cost_cells(r) for r in rows])
    title = f"{a.arch} (width {a.width}), batch {a.batch_size}, {a.device}, {source}"
    return rows, info, table, plot_memory_time, title
