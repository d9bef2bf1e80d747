"""Exact gradients in less memory: BPTT with packed spikes and recomputation beside plain BPTT
and rate_m, alternating in one run.

For each method spec (as the studies take them: bptt, bptt:pack, bptt:blocks:pack,
bptt:mode=s:recompute=2, rate_m, ...) and each round, the median step time of `--steps` steps
after one untimed step, and the bytes kept for backward (`method.kept_bytes`, exact). Rounds
alternate the methods, so a busy machine slows them alike; each round's ratios to the first
spec are printed, then the medians over rounds.

    python benchmarks/bench_exact_memory.py --arch resnet18 --batch-size 16 --T 8
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minirate.backend import cpu_threads                      # noqa: E402
from minirate.data.cifar import load_cifar                   # noqa: E402
from minirate.data.augment import normalize                  # noqa: E402
from minirate.models import build_model                      # noqa: E402
from minirate.study.common import build_method, method_specs  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", type=method_specs,
                   default="bptt,bptt:pack,bptt:blocks,bptt:blocks:pack,bptt:mode=s,"
                           "bptt:mode=s:recompute=3,rate_m")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--T", type=int, default=8)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)

    x, y, *_ = load_cifar("cifar10-sample", None)           # real images, bundled
    xb = normalize(x[:a.batch_size]).astype(np.float32)
    yb = y[:a.batch_size]
    print(f"{a.arch} width {a.width:g}, batch {a.batch_size}, T={a.T}, {cpu_threads()} threads; "
          f"{a.steps} timed steps after 1 untimed, {a.rounds} alternating rounds")
    times = {s.label: [] for s in a.methods}
    kept = {}
    for r in range(a.rounds):
        for spec in a.methods:
            model = build_model(a.arch, 10, a.width, seed=0)
            method = build_method(spec, model, a.T)
            method.step(xb, yb)
            steps = []
            for _ in range(a.steps):
                model.zero_grad()
                t0 = time.perf_counter()
                method.step(xb, yb)
                steps.append(time.perf_counter() - t0)
            times[spec.label].append(statistics.median(steps))
            kept[spec.label] = method.kept_bytes
        first = a.methods[0].label
        print(f"round {r + 1}: " + ", ".join(f"{s.label} {times[s.label][-1]:.2f} s "
                                              f"({times[s.label][-1] / times[first][-1]:.2f}x)"
                                              for s in a.methods))
    first = a.methods[0].label
    print(f"\n{'method':>26}  {'kept MiB':>9}  {'kept ratio':>10}  {'step s':>7}  "
          f"{'step ratio per round':>22}")
    for spec in a.methods:
        ratios = [t / b for t, b in zip(times[spec.label], times[first])]
        print(f"{spec.label:>26}  {kept[spec.label] / 2**20:9.1f}  "
              f"{kept[spec.label] / kept[first]:10.3f}  {statistics.median(times[spec.label]):7.2f}"
              f"  {', '.join(f'{q:.2f}' for q in ratios):>22}")


if __name__ == "__main__":
    main()
