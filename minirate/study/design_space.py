"""Study 4, design space: truncation window K x number of local blocks N (Guo et al. 2023).

For each cell (K, N), a fresh model (same seed) trained briefly on real images with truncated
BPTT of window K and N local blocks (`make_method("tbptt", ..., window=K, local_blocks=N)`;
K = T with N = 1 is plain BPTT), then:

    accuracy      on the test images after --train-steps SGD steps (eval mode, `predict`)
    loss          mean training loss over the last quarter of the steps
    kept bytes    `method.kept_bytes` after a step: bytes held for backward at once
    peak bytes    peak memory of the first step above the level before it (as memory-time)
    step time     median wall time of the training steps after the first (forward + backward)
    costs         MACs, ACs and memory accesses of one step (minirate/costs.py), computed even
                  where the method is not in this build (its measured columns are then empty)

The table goes to design_space.csv/.json, the heat maps (K across, N down) to design_space.png
(measured) and design_space_costs.png (counted).

With event data (--dataset cifar10dvs or dvsgesture) the cells train on frames binned for T,
(T, B, 2, H, W), without augmentation: --train-steps x --batch-size training samples drawn at
random (seeded) from the training split, tested on the whole test split.
"""
import time

import numpy as np

from ..backend import get_array_module, synchronize
from ..cli import positive_float, positive_int
from ..costs import model_split_candidates, trace
from ..layers.winograd import set_conv_algo
from ..methods import predict
from ..models import build_model
from ..optim import SGD
from .common import (COST_KEYS, MiB, MethodSpec, MethodUnavailable, StudyError,
                     add_common_options, add_model_options, build_method, cost_cells,
                     data_source, format_table, int_list, note, peak_step_bytes, split_points,
                     title_of)
from .plots import plot_design_space


def cell_spec(K, N, T, step_mode="m"):
    """The method of cell (K, N): plain BPTT at K = T, N = 1; else tbptt (K capped at T)."""
    if K >= T and N == 1:
        return MethodSpec("bptt", "bptt", step_mode, None, 1)
    return MethodSpec(f"tbptt:K={K}:N={N}", "tbptt", step_mode, min(K, T), N)


def take(x, idx):
    """Samples idx of images (N, ...) or of frames (T, N, ...)."""
    return x[:, idx] if x.ndim == 5 else x[idx]


def evaluate(model, x, y, T, batch_size):
    """Accuracy of `model` on normalised images x (N, C, H, W) or frames x (T, N, C, H, W),
    eval mode, in batches."""
    xp = get_array_module(model.params_list()[0])
    model.eval()
    try:
        correct = 0
        for i in range(0, len(y), batch_size):
            part = np.arange(i, min(i + batch_size, len(y)))
            logits = predict(model, xp.asarray(take(x, part)), T)
            correct += int((logits.argmax(axis=1) == xp.asarray(y[part])).sum())
    finally:
        model.train()
    return correct / len(y)


def train_cell(spec, model, T, data, steps, batch_size, lr, seed, on_step=None):
    """`steps` SGD steps (momentum 0.9) of spec's method on data = (x_train, y_train, x_test,
    y_test): normalised float32 images (N, C, H, W) or frames (T, N, C, H, W), int64 labels.
    Returns the measured columns, or None where the method is not in this build."""
    xp = get_array_module(model.params_list()[0])
    x_train, y_train, x_test, y_test = data
    method = build_method(spec, model, T)
    opt = SGD(model.parameters(), lr, momentum=0.9)
    rng = np.random.default_rng(seed)
    order, times, losses, peak = rng.permutation(len(y_train)), [], [], 0
    for step in range(steps):
        if (step + 1) * batch_size > len(order):
            order = np.concatenate([order, rng.permutation(len(y_train))])
        idx = order[step * batch_size:(step + 1) * batch_size]
        x, y = xp.asarray(take(x_train, idx)), xp.asarray(y_train[idx])
        model.zero_grad()
        t0 = time.perf_counter()
        if step == 0:                               # the first step: peak memory, not timed
            def first():
                losses.append(float(method.step(x, y)[0]))
                synchronize(xp)
            peak = peak_step_bytes(xp, first)
        else:
            losses.append(float(method.step(x, y)[0]))
            synchronize(xp)
            times.append(time.perf_counter() - t0)
        opt.step()
        if on_step:
            on_step(step, losses[-1])
    tail = losses[-max(1, steps // 4):]
    return method, dict(accuracy=evaluate(model, x_test, y_test, T, batch_size),
                        loss=float(np.mean(tail)), kept_bytes=int(method.kept_bytes),
                        peak_bytes=int(peak),
                        step_time_s=float(np.median(times)) if times else None)


def design_space(data, Ks, Ns, T, arch="small", width=1.0, num_classes=10, step_mode="m",
                 steps=30, batch_size=32, lr=0.05, seed=0, xp=np, on_cell=None,
                 conv_algo="im2col"):
    """One row per (K, N): K, N, method, ran, the measured columns of `train_cell` (None where
    the method is not in this build) and the costs of one step (`costs.sum_costs`). conv_algo:
    what each fresh model's 3x3 stride-1 convolutions run (`set_conv_algo`)."""
    rows, cells = [], [(K, N) for N in Ns for K in Ks]
    x0 = data[0]
    x_shape = ((T, batch_size) if x0.ndim == 5 else (batch_size,)) + tuple(x0.shape[-3:])
    for i, (K, N) in enumerate(cells):
        spec = cell_spec(K, N, T, step_mode)
        model = build_model(arch, num_classes, width, seed=seed,
                            in_channels=x0.shape[-3]).to(xp, np.float32)
        set_conv_algo(model, conv_algo)
        report = (lambda s, loss, i=i, spec=spec:
                  on_cell(i, len(cells), cell=spec.label, train_step=s + 1, loss=loss)
                  ) if on_cell else None
        if on_cell:
            on_cell(i, len(cells), cell=spec.label)
        measured = dict.fromkeys(("accuracy", "loss", "kept_bytes", "peak_bytes", "step_time_s"))
        split, ran = None, True
        try:
            method, measured = train_cell(spec, model, T, data, steps, batch_size, lr, seed,
                                          report)
            split = split_points(method)
        except MethodUnavailable as e:
            note(f"skipped the training of cell K={K}, N={N}: {e}")
            ran = False
        costs = spec.costs(model, x_shape, T, split)
        rows.append(dict(K=K, N=N, method=spec.label, ran=ran, **measured,
                         **{k: int(costs[k]) for k in COST_KEYS}))
    return rows


def add_parser(sub, fmt):
    s = sub.add_parser("design-space", formatter_class=fmt, allow_abbrev=False,
                       help="truncation window K x local blocks N: accuracy, memory, costs",
                       description="A short training per cell (K, N) of truncated BPTT with "
                                   "local blocks on real images: accuracy, bytes kept, peak "
                                   "memory, MACs, ACs, memory accesses and step time; a table "
                                   "and heat maps.")
    s.add_argument("--K", type=int_list, default="1,2,4", help="windows (each at most --T)")
    s.add_argument("--N", type=int_list, default="1,2,3", help="numbers of local blocks")
    s.add_argument("--T", type=positive_int, default=4, help="time steps")
    s.add_argument("--step-mode", choices=("m", "s"), default="m", help="multi- or single-step")
    s.add_argument("--train-steps", type=positive_int, default=30, help="SGD steps per cell")
    s.add_argument("--lr", type=positive_float, default=0.05,
                   help="SGD learning rate (momentum 0.9)")
    add_model_options(s)
    add_common_options(s, 32)


def run(a, xp, bar):
    if max(a.K) > a.T:
        raise StudyError(f"--K {max(a.K)} is longer than --T {a.T}: a window holds at most T steps")
    source = data_source(a)
    n_train = a.train_steps * a.batch_size if source.events else None   # frames: what is used
    x_train, y_train = source.load(a.T, "train", n_train, a.seed)
    x_test, y_test = source.load(a.T, "test")
    if a.batch_size > len(y_train):
        raise StudyError(f"--batch-size {a.batch_size} is larger than the {len(y_train)} "
                         f"training samples of {a.dataset}")
    num_classes = source.num_classes
    probe = build_model(a.arch, num_classes, a.width, seed=a.seed, in_channels=source.in_channels)
    most = 1 + len(model_split_candidates(probe, trace(probe, x_train.shape[-3:])))
    if max(a.N) > most:
        raise StudyError(f"--N {max(a.N)}: {a.arch} can be cut into at most {most} local blocks")
    data = (x_train, y_train, x_test, y_test)
    rows = design_space(data, a.K, a.N, a.T, a.arch, a.width, num_classes, a.step_mode,
                        a.train_steps, a.batch_size, a.lr, a.seed, xp, on_cell=bar,
                        conv_algo=a.conv_algo)
    info = dict(arch=a.arch, width=a.width, T=a.T, step_mode=a.step_mode, dataset=a.dataset,
                data=source.describe("train"), train_images=len(y_train),
                test_images=len(y_test), batch_size=a.batch_size,
                train_steps=a.train_steps, lr=a.lr, momentum=0.9, seed=a.seed, device=a.device,
                conv_algo=a.conv_algo,
                split_default="costs.default_split (N - 1 of the model's split_points, spread "
                              "evenly, as the local method picks them) unless the method "
                              "reports its own split_at")
    fmt = lambda v, f: "-" if v is None else f.format(v)  # noqa: E731
    table = format_table(["K", "N", "method", "acc", "loss", "kept MiB", "peak MiB", "step s",
                          "GMAC", "GAC", "mem acc MiB"],
                         [[r["K"], r["N"], r["method"], fmt(r["accuracy"], "{:.3f}"),
                           fmt(r["loss"], "{:.3f}"),
                           fmt(r["kept_bytes"] and r["kept_bytes"] / MiB, "{:.2f}"),
                           fmt(r["peak_bytes"] and r["peak_bytes"] / MiB, "{:.2f}"),
                           fmt(r["step_time_s"], "{:.3f}")] + cost_cells(r) for r in rows])
    title = (f"{a.arch} (width {a.width}), T={a.T} ({a.step_mode}), batch {a.batch_size}, "
             f"{a.train_steps} steps, {title_of(a.dataset)}")
    return rows, info, table, plot_design_space, title

