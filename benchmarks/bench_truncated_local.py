"""BPTT beside truncated BPTT and local block-wise training: accuracy, memory and step time.

    python benchmarks/bench_truncated_local.py --arch alexnet --width 0.25 --T 4 --epochs 3

Each configuration trains the same network (same seed, same batches, SGD with momentum and a
cosine schedule) for --epochs on the real CIFAR-10 subset, then reports its test accuracy, the
exact bytes kept for backward, the peak memory of one step (tracemalloc, one CPU thread, the
same test batch for every configuration, nothing else running) and the step time: after all
trainings, every configuration steps on that same batch in turn, --repeats rounds, median per
configuration (interleaved, so a busy machine slows all of them alike). Ratios are against
BPTT. --epochs 0 skips training (memory and time only). Prints a Markdown table.
"""
import argparse
import gc
import os
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minirate.backend import cpu_threads, set_cpu_threads  # noqa: E402
from minirate.data.augment import normalize  # noqa: E402
from minirate.data.cifar import load_cifar  # noqa: E402
from minirate.data.loader import Loader  # noqa: E402
from minirate.methods import make_method, predict  # noqa: E402
from minirate.models import build_model  # noqa: E402
from minirate.optim import SGD, cosine_lr  # noqa: E402

CONFIGS = [("bptt", {}), ("tbptt", dict(window=2)), ("tbptt", dict(window=1)),
           ("tbptt", dict(window=2, update="per-window")),
           ("bptt", dict(local_blocks=2)), ("bptt", dict(local_blocks=4)),
           ("tbptt", dict(window=2, local_blocks=4))]


def label(name, kw):
    return " ".join([name] + [f"{k}={kw[v]}" for k, v in (("K", "window"), ("N", "local_blocks"))
                              if v in kw] + [kw.get("update", "")]).strip()


def plain_step(method, x, y):
    """One step with the optimizer left out (per-window: a callback that only clears)."""
    if getattr(method, "update", "per-batch") == "per-window":
        return method.step(x, y, after_window=method.model.zero_grad)
    return method.step(x, y)


def peak_bytes(method, x, y):
    """Peak bytes allocated during one step on (x, y), traced alone: no loader thread, garbage
    collected first, one CPU thread (the same allocations in the same order every time)."""
    threads = cpu_threads()
    set_cpu_threads(1)
    try:
        plain_step(method, x, y)                           # warm up
        gc.collect()
        tracemalloc.start()
        plain_step(method, x, y)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        set_cpu_threads(threads)


def run(name, kw, a, data):
    x_train, y_train, x_test, y_test = data
    model = build_model(a.arch, 10, a.width, seed=0)
    method = make_method(name, model, a.T, **kw)
    opt = SGD(model.parameters(), a.lr, 0.9, weight_decay=5e-4)
    loader = Loader(x_train, y_train, a.batch_size, train=True, seed=0)
    total, step = a.epochs * len(loader), 0
    for epoch in range(a.epochs):
        for xb, yb in loader.iter_epoch(epoch):
            opt.lr = cosine_lr(a.lr, step, total)
            model.zero_grad()
            if kw.get("update") == "per-window":            # an optimizer step per window
                method.step(xb, yb, after_window=lambda: (opt.step(), model.zero_grad()))
            else:
                method.step(xb, yb)
                opt.step()
            step += 1
    acc = None
    if a.epochs:
        model.eval()
        correct = 0
        for xb, yb in Loader(x_test, y_test, 200, train=False).iter_epoch(0):
            correct += int((predict(model, xb, a.T).argmax(1) == yb).sum())
        acc = correct / len(y_test)
        model.train()
    peak = peak_bytes(method, normalize(x_test[:a.batch_size]), y_test[:a.batch_size])
    print(f"{label(name, kw)}: trained", file=sys.stderr, flush=True)
    return acc, method.kept_bytes, peak, method


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="alexnet")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--data-dir", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                      "shared", "data", "cifar10-subset"))
    a = p.parse_args()
    x_train, y_train, x_test, y_test, _ = load_cifar("cifar10", a.data_dir, download=False)
    data = (x_train, y_train, x_test, y_test)
    results = [run(name, kw, a, data) for name, kw in CONFIGS]
    xb, yb = normalize(x_test[:a.batch_size]), y_test[:a.batch_size]
    times = [[] for _ in CONFIGS]
    for _ in range(a.repeats):                      # interleaved rounds
        for i, (*_, method) in enumerate(results):
            t0 = time.perf_counter()
            plain_step(method, xb, yb)
            times[i].append(time.perf_counter() - t0)
    print(f"# {a.arch} width {a.width}, T {a.T}, batch {a.batch_size}, {a.epochs} epochs, "
          f"{len(y_train)} train / {len(y_test)} test CIFAR-10 images, CPU\n")
    print("| method | test acc | kept for backward | kept / BPTT | peak of a step | peak / BPTT "
          "| step time (s) | time / BPTT |")
    print("|---|---|---|---|---|---|---|---|")
    base = None
    for (name, kw), (acc, kept, peak, _), ts in zip(CONFIGS, results, times):
        t = float(np.median(ts))
        base = base or (kept, peak, t)
        acc = "-" if acc is None else f"{acc:.3f}"
        print(f"| {label(name, kw)} | {acc} | {kept / 2**20:.1f} MiB | {kept / base[0]:.2f} | "
              f"{peak / 2**20:.1f} MiB | {peak / base[1]:.2f} | {t:.3f} | {t / base[2]:.2f} |")


if __name__ == "__main__":
    main()
