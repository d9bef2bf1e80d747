"""Where one training step's time goes: convolutions, LIF, batchnorm, the rest, and launches.

    python benchmarks/profile_step.py --device cuda --arch resnet18 --batch-size 128 --T 4
    python benchmarks/profile_step.py --device cpu --arch small --batch-size 8 --T 2

Every call of a layer's forward/backward (and of the LIF rate-pass backward) is bracketed, on the
GPU with CUDA events on the current stream, on the CPU with the wall clock; nested calls count
once, for the outermost. Per category and step it reports

    device ms  on the GPU, the time between the bracketing events: the GPU's time in the
               category, including any gaps where it waited for the host to launch the next
               kernel (on the CPU: the wall time)
    host ms    wall time of the Python calls themselves, which only enqueue work on the GPU:
               when host ms is close to device ms, the category is launch-bound (many small
               kernels), and fusing its kernels (the loop over T inside one kernel) is what pays

and for the whole step the wall time, the GPU time (cupyx.profiler.benchmark's gpu_times on the
GPU) and the share of the step outside every category ("other": loss, residual additions, the
input's repetition over T, Python between layers). Writes the table to stdout and, with --json,
every number to a file.
"""
import argparse
import json
import os
import sys
import time
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minirate.backend import DeviceError, get_xp, synchronize  # noqa: E402
from minirate.cli import ArgumentParser, positive_int  # noqa: E402
from minirate.layers import batchnorm, conv, lif, linear, pool, scaled_ws  # noqa: E402
from minirate.methods import METHODS, make_method, rate  # noqa: E402
from minirate.layers.winograd import ALGOS, set_conv_algo  # noqa: E402
from minirate.models import ARCHS, build_model  # noqa: E402

# category -> [(owner, attribute names)]: the calls bracketed
CATEGORIES = {
    "conv": [(conv.Conv2d, ("forward", "backward")),
             (scaled_ws.ScaledWSConv2d, ("forward", "backward"))],
    "batchnorm": [(batchnorm._BatchNorm, ("forward", "backward", "batch_stats_count",
                                          "update_running", "normalize", "forward_fixed_stats",
                                          "backward_fixed_stats"))],
    "lif": [(lif.LIF, ("forward", "backward", "step", "step_backward", "rate_step",
                       "forward_rate")),
            (rate, ("lif_rate_backward",))],
    "linear": [(linear.Linear, ("forward", "backward"))],
    "pool": [(pool.AvgPool2d, ("forward", "backward")), (pool.MaxPool2d, ("forward", "backward")),
             (pool.AdaptiveAvgPool2d, ("forward", "backward"))],
}


class Timers:
    """Brackets calls by category: GPU time from events, host time from the wall clock."""

    def __init__(self, xp):
        self.xp, self.depth, self.active = xp, 0, False
        self.pending = []                       # (category, start event, end event)
        self.gpu = defaultdict(float)           # category -> seconds
        self.host = defaultdict(float)
        self.calls = defaultdict(int)

    def wrap(self, category, fn):
        timers = self

        def timed(*args, **kwargs):
            if not timers.active or timers.depth:
                timers.depth += timers.active
                try:
                    return fn(*args, **kwargs)
                finally:
                    timers.depth -= timers.active
            timers.depth = 1
            start = timers.event()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timers.host[category] += time.perf_counter() - t0
                timers.pending.append((category, start, timers.event()))
                timers.calls[category] += 1
                timers.depth = 0
        return timed

    def event(self):
        if self.xp is np:
            return time.perf_counter()
        e = self.xp.cuda.Event()
        e.record()
        return e

    def collect(self):
        """Turn the recorded events into seconds (waits for the GPU)."""
        synchronize(self.xp)
        for category, start, end in self.pending:
            if self.xp is np:
                self.gpu[category] += end - start
            else:
                self.gpu[category] += self.xp.cuda.get_elapsed_time(start, end) / 1e3
        self.pending.clear()


def install(timers):
    """Wrap every call of CATEGORIES; returns the originals, for `uninstall`."""
    originals = []
    for category, owners in CATEGORIES.items():
        for owner, names in owners:
            for name in names:
                if name in vars(owner):
                    fn = vars(owner)[name]
                    originals.append((owner, name, fn))
                    setattr(owner, name, timers.wrap(category, fn))
    return originals


def uninstall(originals):
    for owner, name, fn in originals:
        setattr(owner, name, fn)


def step_times(xp, fn, repeats):
    """(wall s, GPU s) per call: cupyx.profiler.benchmark on the GPU, the wall clock on the CPU."""
    if xp is np:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return float(np.median(times)), float(np.median(times))
    from cupyx.profiler import benchmark   # GPU only: part of CuPy
    r = benchmark(fn, n_repeat=repeats, n_warmup=0)
    return float(np.median(r.cpu_times)), float(np.median(r.gpu_times[0]))


def profile(a, xp, name, T):
    model = set_conv_algo(build_model(a.arch, 10, a.width).to(xp), a.conv_algo)
    method = make_method(name, model, T)
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.normal(size=(a.batch_size, 3, 32, 32)).astype(np.float32))
    y = xp.asarray(rng.integers(0, 10, a.batch_size))

    def step():
        model.zero_grad()
        method.step(x, y)

    step()                                          # warm-up: kernels compiled, pool filled
    synchronize(xp)
    wall, gpu = step_times(xp, step, a.repeats)
    timers = Timers(xp)
    originals = install(timers)
    try:
        timers.active = True
        profiled = 0.0
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            step()
            synchronize(xp)
            profiled += time.perf_counter() - t0
            timers.collect()
    finally:
        uninstall(originals)
    n = a.repeats
    rows = [{"category": c, "calls": timers.calls[c] // n, "gpu_s": timers.gpu[c] / n,
             "host_s": timers.host[c] / n} for c in CATEGORIES if timers.calls[c]]
    covered = sum(r["gpu_s"] for r in rows)
    rows.append({"category": "other", "calls": 0, "gpu_s": max(0.0, profiled / n - covered),
                 "host_s": None})
    return {"method": name, "T": T, "wall_s": wall, "gpu_s": gpu, "profiled_s": profiled / n,
            "rows": rows}


def print_result(res):
    print(f"\n{res['method']}, T={res['T']}: step {1e3 * res['wall_s']:.1f} ms wall, "
          f"{1e3 * res['gpu_s']:.1f} ms on the device; {1e3 * res['profiled_s']:.1f} ms wall "
          f"with the brackets (the shares' whole)\n")
    print("| part | calls/step | device ms | share of step | host ms |")
    print("|---|---|---|---|---|")
    for r in res["rows"]:
        host = "-" if r["host_s"] is None else f"{1e3 * r['host_s']:.1f}"
        print(f"| {r['category']} | {r['calls']} | {1e3 * r['gpu_s']:.1f} | "
              f"{r['gpu_s'] / res['profiled_s']:.0%} | {host} |")


def parse_args(argv=None):
    p = ArgumentParser(prog="profile_step.py", description=__doc__.split("\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--arch", choices=ARCHS, default="resnet18")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--T", type=positive_int, nargs="+", default=[4])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=["bptt", "rate_m"])
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--conv-algo", choices=ALGOS, default="im2col",
                   help="3x3 stride-1 convolutions (auto: chosen in the warm-up step)")
    p.add_argument("--json", default=None, help="also write every number to this file")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    try:
        xp = get_xp(a.device)
    except DeviceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"# {a.arch} x{a.width}, batch {a.batch_size}, float32, {a.device}; "
          f"mean of {a.repeats} profiled steps after a warm-up")
    results = []
    for name in a.methods:
        for T in a.T:
            try:
                results.append(profile(a, xp, name, T))
            except Exception as e:      # the other methods' profiles still come
                print(f"\n{name}, T={T}: failed: {type(e).__name__}: {e}")
                results.append({"method": name, "T": T, "error": f"{type(e).__name__}: {e}"})
                continue
            print_result(results[-1])
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"config": vars(a), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
