"""Convolution speed for the resnet18 layer shapes, next to the machine's own GEMM ceiling.

    python benchmarks/bench_conv.py --batch 16 --repeats 5 [--algo im2col|winograd|both]
    python benchmarks/bench_conv.py --device cuda --algo both --batch 128 --repeats 3
    python -m tests.strict_run benchmarks/bench_conv.py --device strict --algo both --batch 2 \
        --repeats 1 --width 0.0625          # a dry run of the device path on the CuPy stand-in

For each distinct conv shape of resnet18 on 32x32 inputs: best time of conv2d_forward and of
conv2d_backward (input and weight gradient together), as GFLOP/s (forward 2·N·O·C·k²·Ho·Wo,
backward twice that), and as a percentage of a plain float32 matrix multiply measured in the same
run (the practical ceiling for an im2col convolution), before any convolution and so with BLAS's
own threads over all cores (minirate's convolutions then run one thread per core, each with
single-threaded BLAS). The last row sums all of resnet18's convolutions, each shape counted as
often as the network has it.

--device cuda runs the same code on CuPy arrays (the device synchronized before and after every
timed call; the ceiling is the same float32 multiply there). --width scales every channel count
but the input's 3, for a quick dry run.

--algo winograd times minirate/layers/winograd.py on the 3x3 stride-1 shapes (the other shapes
have no Winograd form and show im2col); its GFLOP/s are *effective*: the direct convolution's
FLOPs over the time, so they may exceed the ceiling. "f32 err" is the worst entry of forward,
dx and dW in float32 against the float64 im2col result, relative to the largest entry.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minirate.backend import cpu_threads, devices, get_xp, synchronize, to_numpy  # noqa: E402
from minirate.layers.conv import conv2d_backward, conv2d_forward, conv_out_size  # noqa: E402
from minirate.layers.winograd import applies, winograd_backward, winograd_forward  # noqa: E402

# (in channels, out channels, input size, kernel, stride, padding): how many resnet18 has
SHAPES = {(3, 64, 32, 3, 1, 1): 1, (64, 64, 32, 3, 1, 1): 4, (64, 128, 32, 3, 2, 1): 1,
          (64, 128, 32, 1, 2, 0): 1, (128, 128, 16, 3, 1, 1): 3, (128, 256, 16, 3, 2, 1): 1,
          (128, 256, 16, 1, 2, 0): 1, (256, 256, 8, 3, 1, 1): 3, (256, 512, 8, 3, 2, 1): 1,
          (256, 512, 8, 1, 2, 0): 1, (512, 512, 4, 3, 1, 1): 3}


def best_time(fn, repeats, xp=np):
    """The fastest of `repeats` runs after a warm-up: on a shared machine the other jobs only
    ever add time, so the minimum is the measurement least disturbed by them. On a GPU each run
    is bracketed by synchronizations, so that it counts the queued work, not its launch."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(xp)
        t0 = time.perf_counter()
        fn()
        synchronize(xp)
        times.append(time.perf_counter() - t0)
    return min(times)


def scaled(channels, width):
    """A channel count times --width (at least 1); the input's 3 channels stay 3."""
    return channels if channels == 3 else max(1, int(round(channels * width)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16, help="N (use T*B for a multi-step layer)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--algo", choices=("im2col", "winograd", "both"), default="im2col")
    p.add_argument("--device", choices=devices(), default="cpu", help="cuda needs CuPy")
    p.add_argument("--width", type=float, default=1.0,
                   help="channel multiplier (input channels stay 3): below 1 for a dry run")
    a = p.parse_args()
    if a.batch < 1 or a.repeats < 1 or a.width <= 0:
        p.error("--batch and --repeats must be at least 1, --width above 0")
    xp = get_xp(a.device)
    rng = np.random.default_rng(0)
    A = xp.asarray(rng.normal(size=(512, 4608)).astype(np.float32))
    B = xp.asarray(rng.normal(size=(4608, 4096)).astype(np.float32))
    ceiling = 2 * 512 * 4608 * 4096 / best_time(lambda: A @ B, a.repeats, xp) / 1e9
    where = f"{cpu_threads()} CPU threads" if xp is np else f"device {a.device}"
    print(f"# conv2d, batch {a.batch}, float32, {where}; matmul ceiling "
          f"(512x4608 @ 4608x4096): {ceiling:.1f} GFLOP/s"
          + (f"; channels x {a.width}" if a.width != 1 else "") + "\n")
    algos = ("im2col", "winograd") if a.algo == "both" else (a.algo,)
    print("| C->O | HxW | k/s | algo | fwd ms | fwd GFLOP/s | fwd % ceiling | bwd ms | bwd GFLOP/s "
          "| bwd % ceiling | f32 err |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    total = {algo: np.zeros(4) for algo in algos}   # network: fwd flops, fwd s, bwd flops, bwd s
    for (C, O, H, k, s, pad), count in SHAPES.items():
        C, O = scaled(C, a.width), scaled(O, a.width)
        x = xp.asarray(rng.normal(size=(a.batch, C, H, H)).astype(np.float32))
        W = xp.asarray((rng.normal(size=(O, C, k, k)) / np.sqrt(C * k * k)).astype(np.float32))
        Ho = conv_out_size(H, k, s, pad)
        flops = 2 * a.batch * O * C * k * k * Ho * Ho
        dy = xp.asarray(rng.normal(size=(a.batch, O, Ho, Ho)).astype(np.float32))
        y64, cache64 = conv2d_forward(x.astype(np.float64), W.astype(np.float64), None, s, pad)
        ref = (y64,) + conv2d_backward(dy.astype(np.float64), cache64)[:2]
        del y64, cache64
        for name in algos:
            algo = name
            if algo == "winograd" and applies(W, s):
                fwd = lambda: winograd_forward(x, W, None, pad)             # noqa: E731
                bwd = winograd_backward
            else:
                fwd = lambda: conv2d_forward(x, W, None, s, pad)            # noqa: E731
                bwd = conv2d_backward
                algo = "im2col" if algo == "im2col" else "(im2col)"
            y, cache = fwd()
            err = max(_rel(g, r) for g, r in zip((y,) + bwd(dy, cache)[:2], ref))
            tf = best_time(fwd, a.repeats, xp)
            tb = best_time(lambda: bwd(dy, cache), a.repeats, xp)
            total[name] += count * np.array([flops, tf, 2 * flops, tb])
            _row(f"{C}->{O}", f"{H}x{H}", f"{k}/{s}", algo, flops, tf, tb, ceiling, f"{err:.1e}")
    for algo in algos:
        t = total[algo]
        _row("resnet18, all", "", "", algo, t[0], t[1], t[3], ceiling, "")


def _rel(a, b):
    a, b = to_numpy(a), to_numpy(b)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _row(channels, size, ks, algo, flops, tf, tb, ceiling, err):
    gf, gb = flops / tf / 1e9, 2 * flops / tb / 1e9
    print(f"| {channels} | {size} | {ks} | {algo} | {tf * 1e3:.1f} | {gf:.1f} | "
          f"{100 * gf / ceiling:.0f} % | {tb * 1e3:.1f} | {gb:.1f} | {100 * gb / ceiling:.0f} % "
          f"| {err} |", flush=True)


if __name__ == "__main__":
    main()
