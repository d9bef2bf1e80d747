"""Every training method on two devices, side by side: the same gradients, the same loss curve.

    python benchmarks/gpu_cpu_agreement.py --devices cpu,cuda --out runs/gpu_check/agreement
    python benchmarks/gpu_cpu_agreement.py --devices cpu,cpu    # the same code, on the CPU only

Two measurements per method (bptt m and s, rate_m, rate_s, sltt, ottt, and tbptt / local blocks
where this build registers them), each on device A and device B from the same weights and
images (the bundled real CIFAR-10 sample):

1. float64 gradients of one step on a small net: the relative error
       err = max over parameter tensors of max|g_A − g_B| / max|g_B|
   with the LIF's Heaviside spike (what training uses) and with the test-only smooth spike (no
   threshold to flip: a mismatch there is a wrong kernel, not a rounding that crossed θ).
   Target: err ≤ 1e-10.
2. a short float32 training run (SGD, fixed batches): the loss at every step on both devices,
   and the worst relative difference between the two curves. Float32 sums run in another order
   on a GPU, and a spike that flips makes the curves drift apart slowly; --loss-tol bounds it.

Writes OUT/agreement.md (the table), OUT/agreement.json (every number, both loss curves) and
prints the table. Exit status 0 when every row is within its tolerances, 1 otherwise.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minirate.backend import DEVICES, DeviceError, get_xp, synchronize, to_numpy  # noqa: E402
from minirate.cli import ArgumentParser, positive_float, positive_int  # noqa: E402
from minirate.data.augment import normalize  # noqa: E402
from minirate.data.cifar import load_cifar  # noqa: E402
from minirate.methods import make_method  # noqa: E402
from minirate.models import build_model  # noqa: E402
from minirate.optim import SGD  # noqa: E402
from minirate.study.common import MethodUnavailable, build_method, parse_method_spec  # noqa: E402

# (label, make_method name, keyword arguments); tbptt and local through the study's specs
METHOD_ROWS = [("bptt:m", "bptt", {"step_mode": "m"}), ("bptt:s", "bptt", {"step_mode": "s"}),
               ("rate_m", "rate_m", {}), ("rate_s", "rate_s", {}), ("sltt", "sltt", {}),
               ("ottt", "ottt", {})]
SPEC_ROWS = ["tbptt:K=2", "local:N=2"]


def method_builders(only=None):
    """[(label, build(model, T) -> method)] for every method this build has; notes the others."""
    rows = [(label, lambda model, T, n=name, kw=kw: make_method(n, model, T, **kw))
            for label, name, kw in METHOD_ROWS]
    probe = build_model("small", 10, 0.125)
    for text in SPEC_ROWS:
        spec = parse_method_spec(text)
        try:
            build_method(spec, probe, 2)
        except MethodUnavailable as e:
            print(f"note: skipped, not in this build: {e}", file=sys.stderr)
            continue
        rows.append((text, lambda model, T, s=spec: build_method(s, model, T)))
    if only:
        unknown = set(only) - {label for label, _ in rows}
        if unknown:
            raise ValueError(f"unknown --methods {', '.join(sorted(unknown))}; this build has "
                             f"{', '.join(label for label, _ in rows)}")
        rows = [r for r in rows if r[0] in only]
    return rows


def max_rel_error(a, b):
    """max over keys k of max|a[k] − b[k]| / max|b[k]| (0 where both are all zero)."""
    worst = 0.0
    for k in b:
        scale = float(np.max(np.abs(b[k])))
        diff = float(np.max(np.abs(a[k] - b[k])))
        worst = max(worst, diff / scale if scale > 0 else (0.0 if diff == 0 else np.inf))
    return worst


def one_step_gradients(build, xp, x, y, T, a, smooth):
    """float64 loss, logits and gradients (NumPy) of one step of a fresh model on module xp."""
    neuron = {"smooth": True, "surrogate": "sigmoid"} if smooth else None
    model = build_model(a.arch, 10, a.width, neuron, seed=a.seed).to(xp, np.float64)
    method = build(model, T)
    model.zero_grad()
    loss, logits = method.step(xp.asarray(x, dtype=np.float64), xp.asarray(y),
                               **({"after_step": lambda: None} if _needs_after_step(method) else {}))
    grads = {name: to_numpy(g) for name, _, g, _ in model.parameters()}
    grads["(logits)"] = to_numpy(logits)
    return float(loss), grads


def _needs_after_step(method):
    return getattr(method, "update_each_step", False)


def loss_curve(build, xp, batches, T, a):
    """float32 training losses of a.steps SGD steps on fixed batches, and the seconds taken."""
    model = build_model(a.arch, 10, a.width, seed=a.seed).to(xp, np.float32)
    method = build(model, T)
    opt = SGD(model.parameters(), lr=a.lr, momentum=0.9)
    losses = []
    synchronize(xp)
    t0 = time.perf_counter()
    for x, y in batches:
        model.zero_grad()
        kw = {"after_step": opt.step} if _needs_after_step(method) else {}
        loss, _ = method.step(xp.asarray(x), xp.asarray(y), **kw)
        if not kw:
            opt.step()
        losses.append(float(loss))
    synchronize(xp)
    return losses, time.perf_counter() - t0


def curve_difference(la, lb):
    """Worst relative difference between two loss curves, step by step."""
    la, lb = np.asarray(la), np.asarray(lb)
    return float(np.max(np.abs(la - lb) / np.maximum(np.abs(lb), 1e-12)))


def parse_devices(text):
    devices = text.split(",")
    if len(devices) != 2 or any(d not in DEVICES for d in devices):
        raise argparse.ArgumentTypeError(f"expected two devices A,B from {', '.join(DEVICES)}, "
                                         f"e.g. cpu,cuda; got {text!r}")
    return devices


def parse_args(argv=None):
    p = ArgumentParser(prog="gpu_cpu_agreement.py", description=__doc__.split("\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--devices", type=parse_devices, default=["cpu", "cuda"], help="A,B")
    p.add_argument("--methods", type=lambda s: s.split(","), default=None,
                   help="comma-separated labels (default: every method this build has)")
    p.add_argument("--arch", default="small")
    p.add_argument("--width", type=positive_float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--T", type=positive_int, default=3, help="steps of the gradient check")
    p.add_argument("--grad-batch", type=positive_int, default=4, help="images, float64 check")
    p.add_argument("--grad-tol", type=positive_float, default=1e-10)
    p.add_argument("--train-T", type=positive_int, default=2)
    p.add_argument("--batch-size", type=positive_int, default=32, help="float32 run")
    p.add_argument("--steps", type=positive_int, default=20, help="float32 run")
    p.add_argument("--lr", type=positive_float, default=0.05)
    p.add_argument("--loss-tol", type=positive_float, default=2e-2,
                   help="worst relative loss difference allowed over the float32 run")
    p.add_argument("--out", default="runs/agreement")
    return p.parse_args(argv)


def compare(label, build, xps, xg, yg, batches, a):
    """One method's row: gradient errors (spike, smooth), loss curves on both devices."""
    row = {"method": label}
    for smooth in (False, True):
        (la, ga), (lb, gb) = (one_step_gradients(build, xp, xg, yg, a.T, a, smooth)
                              for xp in xps)
        key = "smooth" if smooth else "spike"
        row[f"grad_err_{key}"] = max_rel_error(ga, gb)
        row[f"loss_err_{key}"] = abs(la - lb) / max(abs(lb), 1e-300)
        # a tensor whose gradient is zero everywhere would agree trivially
        row[f"zero_grads_{key}"] = [k for k, g in gb.items() if not np.any(g)]
    (ca, ta), (cb, tb) = (loss_curve(build, xp, batches, a.train_T, a) for xp in xps)
    row.update(curve_err=curve_difference(ca, cb), loss_first=cb[0], loss_last_A=ca[-1],
               loss_last_B=cb[-1], seconds_A=ta, seconds_B=tb, curve_A=ca, curve_B=cb)
    row["ok"] = bool(row["grad_err_spike"] <= a.grad_tol and row["grad_err_smooth"] <= a.grad_tol
                     and row["curve_err"] <= a.loss_tol and not row["zero_grads_spike"]
                     and not row["zero_grads_smooth"])
    return row


def run(a):
    xps = [get_xp(d) for d in a.devices]
    builders = method_builders(a.methods)
    x_train, y_train, x_test, y_test, _ = load_cifar("cifar10-sample", None)
    need = a.batch_size * a.steps
    if need > len(x_train):
        raise ValueError(f"--batch-size x --steps = {need} is more than the {len(x_train)} "
                         f"training images of the sample")
    xg, yg = normalize(x_test[:a.grad_batch]), y_test[:a.grad_batch]
    xs = normalize(x_train[:need])
    batches = [(xs[i:i + a.batch_size], y_train[i:i + a.batch_size])
               for i in range(0, need, a.batch_size)]
    rows = []
    for label, build in builders:
        try:
            row = compare(label, build, xps, xg, yg, batches, a)
        except Exception as e:          # one broken method must not cost the others' rows
            row = {"method": label, "ok": False, "error": f"{type(e).__name__}: {e}"}
            print(f"{label}: FAILED: {row['error']}", file=sys.stderr, flush=True)
        else:
            print(f"{label}: grad err {row['grad_err_spike']:.1e} (smooth "
                  f"{row['grad_err_smooth']:.1e}), loss curves {row['curve_err']:.1e}",
                  file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def table(rows, a):
    A, B = a.devices
    head = (f"{A} (A) against {B} (B): {a.arch} x{a.width}, float64 gradients of one step "
            f"(batch {a.grad_batch}, T={a.T}; tolerance {a.grad_tol:g}); float32 SGD run of "
            f"{a.steps} steps (batch {a.batch_size}, T={a.train_T}, lr {a.lr:g}; tolerance "
            f"{a.loss_tol:g})\n\n")
    lines = ["| method | grad rel. err (spike) | grad rel. err (smooth) | loss curve rel. diff |"
             " loss step 1 | last loss A / B | s A / s B | ok |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error'][:120]} | | | | | | NO |")
            continue
        lines.append(f"| {r['method']} | {r['grad_err_spike']:.1e} | {r['grad_err_smooth']:.1e} |"
                     f" {r['curve_err']:.1e} | {r['loss_first']:.4f} | {r['loss_last_A']:.4f} /"
                     f" {r['loss_last_B']:.4f} | {r['seconds_A']:.2f} / {r['seconds_B']:.2f} |"
                     f" {'yes' if r['ok'] else 'NO'} |")
    return head + "\n".join(lines) + "\n"


def main(argv=None):
    a = parse_args(argv)
    try:
        os.makedirs(a.out, exist_ok=True)
        rows = run(a)
        text = table(rows, a)
        with open(os.path.join(a.out, "agreement.md"), "w") as f:
            f.write(text)
        with open(os.path.join(a.out, "agreement.json"), "w") as f:
            json.dump({"config": vars(a), "rows": rows}, f, indent=1)
    except (DeviceError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(text)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
