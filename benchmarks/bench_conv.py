"""Convolution speed for the resnet18 layer shapes, next to the machine's own GEMM ceiling.

    python benchmarks/bench_conv.py --batch 16 --repeats 5 [--algo im2col|winograd|both]
    python benchmarks/bench_conv.py --device cuda --algo both --batch 128 --repeats 3
    python -m tests.strict_run benchmarks/bench_conv.py --device strict --algo both --batch 2 \
        --repeats 1 --width 0.0625          # a dry run of the device path on the CuPy stand-in

For each distinct conv shape of resnet18 on 32x32 inputs: best time of conv2d_forward and of
conv2d_backward (input and weight gradient together), as GFLOP/s (forward 2·N·O·C·k²·Ho·Wo,
backward twice that), and as a percentage of a plain float32 matrix multiply measured in the same
run (the practical ceiling for an im2col convolution), run as minirate's convolutions run: one
product per CPU thread at once, each with single-threaded BLAS (the library holds BLAS to one
thread as soon as it knows its thread count). The last row sums all of resnet18's convolutions,
each shape counted as often as the network has it.

--device cuda runs the same code on CuPy arrays (the device synchronized before and after every
timed call; the ceiling is the same float32 multiply there). --width scales every channel count
but the input's 3, for a quick dry run.

--algo winograd times minirate/layers/winograd.py on the 3x3 stride-1 shapes (the other shapes
have no Winograd form and show im2col); its GFLOP/s are *effective*: the direct convolution's
FLOPs over the time, so they may exceed the ceiling. "f32 err" is the worst entry of forward,
dx and dW in float32 against the float64 im2col result, relative to the largest entry.
With both algorithms, "per pass" adds what `--conv-algo auto` can reach: each layer's forward
and backward each by the faster of the two, as measured here.

--torch (CPU, PyTorch installed; a benchmark-only comparison) times PyTorch's conv2d on the same
shapes and threads: forward, and backward as torch.autograd.grad for the input and the weight.
Its effective GFLOP/s, set against the same ceiling, say how far a fixed-FLOP convolution gets
past a plain matrix multiply on this machine.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minirate.backend import (cpu_map, cpu_threads, devices, get_xp, synchronize,  # noqa: E402
                              to_numpy)
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
    p.add_argument("--torch", action="store_true",
                   help="also time PyTorch's conv2d on the CPU (pip install torch==2.13.0)")
    a = p.parse_args()
    if a.batch < 1 or a.repeats < 1 or a.width <= 0:
        p.error("--batch and --repeats must be at least 1, --width above 0")
    torch = _torch(p) if a.torch else None
    if torch is not None and a.device != "cpu":
        p.error("--torch compares on the CPU only")
    xp = get_xp(a.device)
    rng = np.random.default_rng(0)
    A = xp.asarray(rng.normal(size=(512, 4608)).astype(np.float32))
    B = xp.asarray(rng.normal(size=(4608, 4096)).astype(np.float32))
    ceiling = _ceiling(xp, A, B, a.repeats)
    where = f"{cpu_threads()} CPU threads" if xp is np else f"device {a.device}"
    print(f"# conv2d, batch {a.batch}, float32, {where}; matmul ceiling "
          f"(512x4608 @ 4608x4096, one per thread at once): {ceiling:.1f} GFLOP/s"
          + (f"; channels x {a.width}" if a.width != 1 else "") + "\n")
    algos = ("im2col", "winograd") if a.algo == "both" else (a.algo,)
    if torch is not None:
        torch.set_num_threads(cpu_threads())
        algos += ("torch",)
    print("| C->O | HxW | k/s | algo | fwd ms | fwd GFLOP/s | fwd % ceiling | bwd ms | bwd GFLOP/s "
          "| bwd % ceiling | f32 err |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    total = {algo: np.zeros(4) for algo in algos}   # network: fwd flops, fwd s, bwd flops, bwd s
    per_pass = np.zeros(4)                             # each pass by the faster algorithm
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
        times = {}
        for name in algos:
            algo = name
            if algo == "torch":
                fwd, bwd = _torch_passes(torch, x, W, s, pad)
            elif algo == "winograd" and applies(W, s):
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
            times[name] = (tf, tb)
            _row(f"{C}->{O}", f"{H}x{H}", f"{k}/{s}", algo, flops, tf, tb, ceiling, f"{err:.1e}")
        if a.algo == "both":
            tf, tb = (min(times[n][i] for n in ("im2col", "winograd")) for i in (0, 1))
            per_pass += count * np.array([flops, tf, 2 * flops, tb])
    for algo in algos:
        t = total[algo]
        _row("resnet18, all", "", "", algo, t[0], t[1], t[3], ceiling, "")
    if a.algo == "both":
        _row("resnet18, all", "", "", "per pass", per_pass[0], per_pass[1], per_pass[3],
             ceiling, "")


def _torch(parser):
    """The torch module, or a one-line refusal when it is not installed."""
    try:
        import torch
    except ImportError:
        parser.error("--torch needs PyTorch: pip install torch==2.13.0")
    return torch


def _torch_passes(torch, x, W, stride, padding):
    """(forward, backward) callables of PyTorch's conv2d on copies of x and W: forward without
    a graph; backward = the gradients of input and weight for the upstream gradient dy (a
    NumPy array), from one forward kept with its graph, returned as NumPy arrays (None for a
    missing bias, as minirate returns)."""
    import torch.nn.functional as F
    xt = torch.from_numpy(np.array(x)).requires_grad_(True)
    Wt = torch.from_numpy(np.array(W)).requires_grad_(True)
    y = F.conv2d(xt, Wt, None, stride, padding)

    def forward():
        with torch.no_grad():
            out = F.conv2d(xt, Wt, None, stride, padding)
        return out.numpy(), None

    def backward(dy, _cache):
        dx, dW = torch.autograd.grad(y, (xt, Wt), torch.from_numpy(np.array(dy)),
                                     retain_graph=True)
        return dx.numpy(), dW.numpy(), None
    return forward, backward


def _ceiling(xp, A, B, repeats):
    """GFLOP/s of A @ B as the convolutions get it: on the CPU one product per thread of
    `cpu_map`, all at once (BLAS is single-threaded inside each); on a GPU one product."""
    threads = cpu_threads() if xp is np else 1
    t = best_time(lambda: cpu_map(lambda: A @ B, [()] * threads), repeats, xp)
    return threads * 2 * A.shape[0] * A.shape[1] * B.shape[1] / t / 1e9


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
