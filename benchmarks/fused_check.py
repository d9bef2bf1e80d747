"""The fused GPU kernels against the unfused path, on a GPU: the same numbers, and the time of each.

    python benchmarks/fused_check.py --out runs/fused_check             # CuPy and a GPU
    python benchmarks/fused_check.py --device cpu --batch 2 --size 4 --out /tmp/fc   # dry run
    python -m tests.strict_run benchmarks/fused_check.py --device strict --batch 2 --size 4 --out /tmp/fc
                                            # the kernels compiled for the host, on the CPU

Every op that has a kernel (minirate/fused.py) runs twice on the same random inputs, fused and
unfused (MINIRATE_FUSED=1 / 0), at resnet18-like sizes: by default a CIFAR resnet18's first
stage, (T·B, C, H, W) = (4·128, 64, 32, 32). For each op and dtype:

- diff: max|fused − unfused| / max|unfused| over the op's outputs; float64 must be ≤ 1e-12
  (both paths round every operation alike, --fmad=false: a larger difference is a wrong kernel);
  float32 is reported (a spike that flips for rounding would show here as a large number, and
  in `spikes`, the count of spikes that differ).
- time: median over --repeat runs (after one warm-up) of the op alone, CUDA events on a GPU
  (wall clock on the CPU), for both paths, and their ratio.

Writes OUT/fused_check.md (the table) and OUT/fused_check.json (every number) and prints the
table. Exit status 0 when every float64 row is within 1e-12, 1 otherwise. On the CPU both paths
are NumPy's (nothing there is fused): the dry run only checks this script.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minirate.backend import DeviceError, devices, get_xp, synchronize  # noqa: E402
from minirate.cli import ArgumentParser, positive_int  # noqa: E402
from minirate.layers import batchnorm as bn  # noqa: E402
from minirate.layers.lif import (LIFParams, LIFStepCache, lif_backward, lif_forward,  # noqa: E402
                                 lif_forward_rate, lif_rate_step, lif_step, lif_step_backward,
                                 lif_step_traced)

F64_TOL = 1e-12
NEURONS = {"default": LIFParams(),
           "hard-atan": LIFParams(reset="hard", detach_reset=False, surrogate="atan", alpha=2.0)}


def op_table(T):
    """{name: (neuron or None, fn(xp, data, p) -> tuple of output arrays)}; data holds the
    random inputs (make_data)."""
    def steps(fn):              # T single steps, as single-step BPTT / SLTT / rate_s run them
        def run(xp, d, p):
            I, outs, state = d["I"].reshape(T, -1, *d["I"].shape[1:]), [], None
            for t in range(T):
                s, state = fn(I[t], state, p)
                outs.append(s)
            return tuple(outs) + tuple(a for a in state if hasattr(a, "shape"))
        return run

    def step_u(I, state, p):
        s, u_post, _ = lif_step(I, None if state is None else state[0], p)
        return s, (u_post,)

    def step_traced(I, state, p):
        u, a = (None, None) if state is None else state
        s, u_post, _, a = lif_step_traced(I, u, a, p)
        return s, (u_post, a)

    def step_backward(xp, d, p):
        B = d["I"].shape[0] // T
        cache = LIFStepCache(u=d["I"][:B])
        return lif_step_backward(d["ds"][:B], d["ds"][B:2 * B], cache, p)

    def lif_cache(d, p):        # the forward's cache, made once (unfused), for the backward
        if ("lif", p) not in d:
            d[("lif", p)] = with_fused("0", lif_forward, d["I"], T, p)[1]
        return d[("lif", p)]

    def bn_layer(xp, d):
        layer = bn.BatchNorm2d(d["I"].shape[1]).to(xp, d["I"].dtype)
        layer.params["weight"][:] = d["gamma"]
        return layer

    def bn_forward(xp, d, p):   # training mode: batch statistics, centring, affine map
        return (bn_layer(xp, d).forward(d["I"])[0],)

    def bn_backward(xp, d, p):
        layer = bn_layer(xp, d)
        if "bn" not in d:
            d["bn"] = with_fused("0", layer.forward, d["I"])[1]
        return (layer.backward(d["ds"], d["bn"]),)

    ops = {}
    for name, p in NEURONS.items():
        ops[f"lif_forward/{name}"] = (p, lambda xp, d, p: (lambda r: (r[0], r[1].u))(
            lif_forward(d["I"], T, p)))
        ops[f"lif_backward/{name}"] = (p, lambda xp, d, p: (lif_backward(
            d["ds"], lif_cache(d, p), p),))
        ops[f"lif_forward_rate/{name}"] = (p, lambda xp, d, p: lif_forward_rate(d["I"], T, p))
        ops[f"lif_rate_step/{name}"] = (p, steps(lif_rate_step))
        ops[f"lif_step/{name}"] = (p, steps(step_u))
        ops[f"lif_step_traced/{name}"] = (p, steps(step_traced))
        ops[f"lif_step_backward/{name}"] = (p, step_backward)
    ops["batchnorm_normalize"] = (None, lambda xp, d, p: (bn.batchnorm_normalize(
        d["I"], d["gamma"], d["beta"], d["mean"], d["var"], 1e-5),))
    ops["batchnorm_forward"] = (None, bn_forward)
    ops["batchnorm_backward"] = (None, bn_backward)
    return ops


def make_data(xp, shape, dtype, seed=0):
    """Random inputs on module xp: currents I (T·B, C, H, W) around the threshold, an upstream
    gradient ds like I, per-channel γ, β, μ, σ²."""
    rng = np.random.default_rng(seed)
    C = shape[1]
    host = {"I": rng.normal(0.6, 1.0, shape), "ds": rng.normal(size=shape),
            "gamma": rng.normal(1, 0.2, C), "beta": rng.normal(0, 0.2, C),
            "mean": rng.normal(0.6, 0.1, C), "var": rng.uniform(0.5, 1.5, C)}
    return {k: xp.asarray(v.astype(dtype)) for k, v in host.items()}


def with_fused(flag, fn, *args):
    """fn(*args) with MINIRATE_FUSED set to flag ("1" or "0"), restored after."""
    old = os.environ.get("MINIRATE_FUSED")
    os.environ["MINIRATE_FUSED"] = flag
    try:
        return fn(*args)
    finally:
        if old is None:
            del os.environ["MINIRATE_FUSED"]
        else:
            os.environ["MINIRATE_FUSED"] = old


def rel_diff(xp, got, want):
    """max over outputs of max|got − want| / max|want| (max|got − want| where want is zero)."""
    worst = 0.0
    for a, b in zip(got, want):
        scale = float(xp.abs(b).max()) if b.size else 0.0
        diff = float(xp.abs(a - b).max()) if b.size else 0.0
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def spikes_differing(xp, got, want, is_lif):
    """Spikes (outputs holding only 0 and 1, LIF ops) that differ between the two paths."""
    if not is_lif:
        return 0
    n = 0
    for a, b in zip(got, want):
        if bool(((b == 0) | (b == 1)).all()):
            n += int((a != b).sum())
    return n


def time_ms(xp, fn, repeat):
    """Median milliseconds of fn() over `repeat` runs after one warm-up: CUDA events where xp
    has them, the wall clock otherwise."""
    fn()
    synchronize(xp)
    times = []
    for _ in range(repeat):
        if hasattr(xp, "cuda"):
            start, end = xp.cuda.Event(), xp.cuda.Event()
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(xp.cuda.get_elapsed_time(start, end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def check_op(xp, name, op, data, repeat):
    """One row: the difference and the times of op on data, fused against unfused."""
    p, fn = op
    fused = with_fused("1", fn, xp, data, p)
    unfused = with_fused("0", fn, xp, data, p)
    dtype = str(data["I"].dtype)
    row = {"op": name, "dtype": dtype, "diff": rel_diff(xp, fused, unfused),
           "spikes": spikes_differing(xp, fused, unfused, name.startswith("lif_")),
           "fused_ms": time_ms(xp, lambda: with_fused("1", fn, xp, data, p), repeat),
           "unfused_ms": time_ms(xp, lambda: with_fused("0", fn, xp, data, p), repeat)}
    row["speedup"] = row["unfused_ms"] / row["fused_ms"] if row["fused_ms"] > 0 else float("nan")
    row["ok"] = dtype != "float64" or row["diff"] <= F64_TOL
    return row


def markdown(rows, a):
    lines = [f"Fused against unfused, (T·B, C, H, W) = ({a.T}·{a.batch}, {a.channels}, {a.size}, "
             f"{a.size}), device {a.device}, median of {a.repeat}.", "",
             "| op | dtype | diff | spikes differing | fused ms | unfused ms | speedup | ok |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['dtype']} | {r['diff']:.3g} | {r['spikes']} | "
                     f"{r['fused_ms']:.3f} | {r['unfused_ms']:.3f} | {r['speedup']:.2f} | "
                     f"{'yes' if r['ok'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = ArgumentParser(prog="fused_check.py", description=__doc__.split("\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=devices(), default="cuda",
                   help="cuda; cpu runs NumPy on both sides (a dry run); the tests' strict "
                        "stand-in runs the kernels compiled for the host")
    p.add_argument("--batch", type=positive_int, default=128)
    p.add_argument("--T", type=positive_int, default=4)
    p.add_argument("--channels", type=positive_int, default=64)
    p.add_argument("--size", type=positive_int, default=32, help="H = W of the feature maps")
    p.add_argument("--repeat", type=positive_int, default=10, help="timed runs per path")
    p.add_argument("--ops", type=lambda s: s.split(","), default=None,
                   help="comma-separated op names (default: all)")
    p.add_argument("--out", required=True, help="folder for fused_check.md and .json")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    ops = op_table(a.T)
    if a.ops:
        unknown = set(a.ops) - set(ops)
        if unknown:
            sys.exit(f"error: unknown --ops {', '.join(sorted(unknown))}; choose from "
                     f"{', '.join(ops)}")
        ops = {k: v for k, v in ops.items() if k in a.ops}
    try:
        xp = get_xp(a.device)
    except DeviceError as e:
        sys.exit(f"error: {e}")
    shape = (a.T * a.batch, a.channels, a.size, a.size)
    rows = []
    for dtype in (np.float64, np.float32):
        data = make_data(xp, shape, dtype)
        for name, op in ops.items():
            rows.append(check_op(xp, name, op, data, a.repeat))
            print(f"{name} {rows[-1]['dtype']}: diff {rows[-1]['diff']:.3g}", file=sys.stderr)
        del data
    os.makedirs(a.out, exist_ok=True)
    table = markdown(rows, a)
    with open(os.path.join(a.out, "fused_check.md"), "w") as f:
        f.write(table)
    with open(os.path.join(a.out, "fused_check.json"), "w") as f:
        json.dump({"config": vars(a), "shape": shape, "f64_tol": F64_TOL, "rows": rows}, f,
                  indent=1)
    print(table)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
