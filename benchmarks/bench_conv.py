"""Convolution speed for the resnet18 layer shapes, next to the machine's own GEMM ceiling.

    python benchmarks/bench_conv.py --batch 16 --repeats 5

For each distinct conv shape of resnet18 on 32x32 inputs: best time of conv2d_forward and of
conv2d_backward (input and weight gradient together), as GFLOP/s (forward 2·N·O·C·k²·Ho·Wo,
backward twice that), and as a percentage of a plain float32 matrix multiply measured in the same
run (the practical ceiling for an im2col convolution), before any convolution and so with BLAS's
own threads over all cores (minirate's convolutions then run one thread per core, each with
single-threaded BLAS). The last row sums all of resnet18's convolutions, each shape counted as
often as the network has it.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minirate.backend import cpu_threads  # noqa: E402
from minirate.layers.conv import conv2d_backward, conv2d_forward, conv_out_size  # noqa: E402

# (in channels, out channels, input size, kernel, stride, padding): how many resnet18 has
SHAPES = {(3, 64, 32, 3, 1, 1): 1, (64, 64, 32, 3, 1, 1): 4, (64, 128, 32, 3, 2, 1): 1,
          (64, 128, 32, 1, 2, 0): 1, (128, 128, 16, 3, 1, 1): 3, (128, 256, 16, 3, 2, 1): 1,
          (128, 256, 16, 1, 2, 0): 1, (256, 256, 8, 3, 1, 1): 3, (256, 512, 8, 3, 2, 1): 1,
          (256, 512, 8, 1, 2, 0): 1, (512, 512, 4, 3, 1, 1): 3}


def best_time(fn, repeats):
    """The fastest of `repeats` runs after a warm-up: on a shared machine the other jobs only
    ever add time, so the minimum is the measurement least disturbed by them."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16, help="N (use T*B for a multi-step layer)")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    A = rng.normal(size=(512, 4608)).astype(np.float32)
    B = rng.normal(size=(4608, 4096)).astype(np.float32)
    ceiling = 2 * 512 * 4608 * 4096 / best_time(lambda: A @ B, a.repeats) / 1e9
    print(f"# conv2d, batch {a.batch}, float32, {cpu_threads()} CPU threads; matmul ceiling "
          f"(512x4608 @ 4608x4096): {ceiling:.1f} GFLOP/s\n")
    print("| C->O | HxW | k/s | fwd ms | fwd GFLOP/s | fwd % ceiling | bwd ms | bwd GFLOP/s "
          "| bwd % ceiling |")
    print("|---|---|---|---|---|---|---|---|---|")
    total = np.zeros(4)                             # network: fwd flops, fwd s, bwd flops, bwd s
    for (C, O, H, k, s, pad), count in SHAPES.items():
        x = rng.normal(size=(a.batch, C, H, H)).astype(np.float32)
        W = rng.normal(size=(O, C, k, k)).astype(np.float32)
        Ho = conv_out_size(H, k, s, pad)
        flops = 2 * a.batch * O * C * k * k * Ho * Ho
        y, cache = conv2d_forward(x, W, None, s, pad)
        dy = rng.normal(size=y.shape).astype(np.float32)
        tf = best_time(lambda: conv2d_forward(x, W, None, s, pad), a.repeats)
        tb = best_time(lambda: conv2d_backward(dy, cache), a.repeats)
        total += count * np.array([flops, tf, 2 * flops, tb])
        _row(f"{C}->{O}", f"{H}x{H}", f"{k}/{s}", flops, tf, tb, ceiling)
    _row("resnet18, all", "", "", total[0], total[1], total[3], ceiling)


def _row(channels, size, ks, flops, tf, tb, ceiling):
    gf, gb = flops / tf / 1e9, 2 * flops / tb / 1e9
    print(f"| {channels} | {size} | {ks} | {tf * 1e3:.1f} | {gf:.1f} | {100 * gf / ceiling:.0f} % | "
          f"{tb * 1e3:.1f} | {gb:.1f} | {100 * gb / ceiling:.0f} % |", flush=True)


if __name__ == "__main__":
    main()
