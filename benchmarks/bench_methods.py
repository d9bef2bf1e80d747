"""Step time and bytes kept for backward, per training method and T, side by side in one run.

    python benchmarks/bench_methods.py --arch small --batch-size 16 --T 1 2 4 8
    python benchmarks/bench_methods.py --arch resnet18 --batch-size 16 --T 1 2 4 8 --repeats 2

Each (method, T) cell: one warm-up step, then the median of --repeats timed steps, on real
CIFAR-10 images when --data-dir has them (random images otherwise). Prints a Markdown table;
ratios are against BPTT at the same T.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minirate.backend import get_xp, synchronize  # noqa: E402
from minirate.data.augment import normalize  # noqa: E402
from minirate.data.cifar import DatasetError, load_cifar  # noqa: E402
from minirate.methods import make_method  # noqa: E402
from minirate.models import build_model  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="small")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--T", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--methods", nargs="+", default=["bptt", "rate_m", "rate_s"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                      "shared", "data", "cifar10-subset"))
    a = p.parse_args()
    xp = get_xp(a.device)
    try:
        x, y, *_ = load_cifar("cifar10", a.data_dir, download=False)
        x, y, source = normalize(x[:a.batch_size]), y[:a.batch_size], "CIFAR-10 subset"
    except DatasetError:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(a.batch_size, 3, 32, 32)).astype(np.float32)
        y, source = rng.integers(0, 10, a.batch_size), "random images"
    x, y = xp.asarray(x), xp.asarray(y)
    print(f"# {a.arch} width {a.width}, batch {a.batch_size}, {a.device}, {source}\n")
    print("| method | T | step time (s) | time / BPTT | bytes kept for backward | bytes / BPTT |")
    print("|---|---|---|---|---|---|")
    for T in a.T:
        base = {}
        for name in a.methods:
            model = build_model(a.arch, 10, a.width).to(xp)
            method = make_method(name, model, T)
            times = []
            for i in range(a.repeats + 1):
                model.zero_grad()
                synchronize(xp)
                t0 = time.perf_counter()
                method.step(x, y)
                synchronize(xp)
                if i:                       # the first step warms up
                    times.append(time.perf_counter() - t0)
            t, kept = float(np.median(times)), method.kept_bytes
            base.setdefault("t", t)
            base.setdefault("kept", kept)
            print(f"| {name} | {T} | {t:.3f} | {t / base['t']:.2f} | {kept / 2**20:.1f} MiB | "
                  f"{kept / base['kept']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
