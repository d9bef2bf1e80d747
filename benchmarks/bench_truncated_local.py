"""BPTT beside truncated BPTT and local block-wise training: accuracy, memory, costs, step time.

    python benchmarks/bench_truncated_local.py --arch alexnet --width 0.25 --T 4 --epochs 3
    python benchmarks/bench_truncated_local.py --synthetic 30 --T 8 --frame-size 48 --epochs 3
    python benchmarks/bench_truncated_local.py --dataset cifar10dvs --data-dir DIR --T 10

Each configuration trains the same network (same seed, same batches, SGD with momentum and a
cosine schedule) for --epochs, then reports its test accuracy, the exact bytes kept for
backward, the peak memory of one step (tracemalloc, one CPU thread, the same test batch for
every configuration, nothing else running), the MACs, ACs and memory accesses of one step
counted from the layer shapes (minirate/costs.py) and the step time: after all trainings, every
configuration steps on that same batch in turn, --repeats rounds, median per configuration
(interleaved, so a busy machine slows all of them alike). Ratios are against BPTT. --epochs 0
skips training (memory, costs and time only). Prints a Markdown table.

Data: the real CIFAR-10 subset (--dataset cifar10, images fed at every step), or event frames
(--dataset cifar10dvs or dvsgesture, (T, B, 2, H, W) batches from the HDF5 frame cache built in
--data-dir, with train.py's frame options and its event augmentation: flip, roll 5) that go to
the methods as they are. --synthetic N first writes N synthetic CIFAR10-DVS recordings per
class (data/events/synthetic.py, separable by construction) into --data-dir, or into a
temporary folder removed afterwards when --data-dir is not given.
"""
import contextlib
import gc
import os
import shutil
import sys
import tempfile
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minirate.backend import cpu_threads, set_cpu_threads  # noqa: E402
from minirate.cli import ArgumentParser, nonnegative_int, positive_float, positive_int  # noqa: E402
from minirate.costs import method_costs  # noqa: E402
from minirate.data.augment import normalize  # noqa: E402
from minirate.data.cifar import DatasetError, load_cifar  # noqa: E402
from minirate.data.events import (EVENT_DATASETS, NUM_CLASSES, SPLIT_NAMES,  # noqa: E402
                                  event_loaders)
from minirate.data.events.datasets import FOLDERS  # noqa: E402
from minirate.data.events.synthetic import write_cifar10dvs  # noqa: E402
from minirate.data.loader import Loader  # noqa: E402
from minirate.methods import make_method, predict  # noqa: E402
from minirate.models import ARCHS, build_model  # noqa: E402
from minirate.optim import SGD, cosine_lr  # noqa: E402

CONFIGS = [("bptt", {}), ("tbptt", dict(window=2)), ("tbptt", dict(window=1)),
           ("tbptt", dict(window=2, update="per-window")),
           ("bptt", dict(local_blocks=2)), ("bptt", dict(local_blocks=4)),
           ("tbptt", dict(window=2, local_blocks=4))]
# event data (longer T): the windows K = 2 and 4 of the paper's design space
EVENT_CONFIGS = [("bptt", {}), ("tbptt", dict(window=2)), ("tbptt", dict(window=4)),
                 ("bptt", dict(local_blocks=2)), ("bptt", dict(local_blocks=4)),
                 ("tbptt", dict(window=2, local_blocks=4))]
SHARED_CIFAR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                            "cifar10-subset")


class UsageError(Exception):
    """A bad command line or data folder: one line on stderr, exit status 1."""


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


class Data:
    """What every configuration trains and is measured on: loaders, one fixed test batch (x
    (B, C, H, W) images or (T, B, C, H, W) frames, y (B,)), the class count and a description."""

    def __init__(self, train, test, batch, num_classes, title):
        self.train, self.test, self.batch = train, test, batch
        self.num_classes, self.title = num_classes, title

    @property
    def in_channels(self):
        return self.batch[0].shape[-3]


def image_data(a):
    x_train, y_train, x_test, y_test, _ = load_cifar("cifar10", a.data_dir, download=False)
    batch = normalize(x_test[:a.batch_size]), y_test[:a.batch_size]
    return Data(Loader(x_train, y_train, a.batch_size, train=True, seed=0),
                Loader(x_test, y_test, 200, train=False), batch, 10,
                f"{len(y_train)} train / {len(y_test)} test CIFAR-10 images")


def event_data(a):
    with contextlib.redirect_stdout(sys.stderr):            # the cache notice is not a result
        train, test = event_loaders(a.dataset, a.data_dir, a.T, a.batch_size, a.batch_size,
                                    seed=0, size=a.frame_size, split_by=a.split_by,
                                    split=a.event_split or None, cache_dir=a.cache_dir or None,
                                    progress=False)
    if len(train) == 0 or len(test.index) == 0:
        raise UsageError(f"{a.dataset} in {a.data_dir}: {len(train.index)} training and "
                         f"{len(test.index)} test samples, too few for batches of "
                         f"{a.batch_size}")
    batches = test.iter_epoch(0)
    batch = next(batches)                                    # the first test batch
    batches.close()
    kind = "synthetic " if a.synthetic else ""
    return Data(train, test, batch, NUM_CLASSES[a.dataset],
                f"{len(train.index)} train / {len(test.index)} test {kind}{a.dataset} samples "
                f"as {a.T} frames of 2x{a.frame_size}x{a.frame_size} (by {a.split_by})")


def run(name, kw, a, data):
    model = build_model(a.arch, data.num_classes, a.width, seed=0, in_channels=data.in_channels)
    method = make_method(name, model, a.T, **kw)
    opt = SGD(model.parameters(), a.lr, 0.9, weight_decay=5e-4)
    total, step = a.epochs * len(data.train), 0
    for epoch in range(a.epochs):
        for xb, yb in data.train.iter_epoch(epoch):
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
        correct = seen = 0
        for xb, yb in data.test.iter_epoch(0):
            correct += int((predict(model, xb, a.T).argmax(1) == yb).sum())
            seen += len(yb)
        acc = correct / seen
        model.train()
    peak = peak_bytes(method, *data.batch)
    costs = method_costs(model, data.batch[0].shape, a.T, name, window=kw.get("window"),
                         local_blocks=kw.get("local_blocks", 1))
    print(f"{label(name, kw)}: trained", file=sys.stderr, flush=True)
    return dict(label=label(name, kw), acc=acc, kept=method.kept_bytes, peak=peak,
                macs=costs["macs"], acs=costs["acs"], mem=costs["mem_bytes"], method=method)


def table(a, data):
    """One row per configuration (see `run`), with the median step time added as 'time'."""
    configs = EVENT_CONFIGS if a.dataset in EVENT_DATASETS else CONFIGS
    rows = [run(name, kw, a, data) for name, kw in configs]
    times = [[] for _ in rows]
    for _ in range(a.repeats):                      # interleaved rounds
        for row, ts in zip(rows, times):
            t0 = time.perf_counter()
            plain_step(row["method"], *data.batch)
            ts.append(time.perf_counter() - t0)
    for row, ts in zip(rows, times):
        row["time"] = float(np.median(ts))
    return rows


def markdown(a, data, rows):
    B = data.batch[1].shape[0]
    lines = [f"# {a.arch} width {a.width}, T {a.T}, batch {a.batch_size} (fixed batch {B}), "
             f"{a.epochs} epochs, {data.title}, CPU\n",
             "| method | test acc | kept for backward | kept / BPTT | peak of a step | peak / BPTT "
             "| GMAC | GAC | memory accesses | mem / BPTT | step time (s) | time / BPTT |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = rows[0]
    for r in rows:
        acc = "-" if r["acc"] is None else f"{r['acc']:.3f}"
        lines.append(f"| {r['label']} | {acc} | {r['kept'] / 2**20:.1f} MiB | "
                     f"{r['kept'] / base['kept']:.2f} | {r['peak'] / 2**20:.1f} MiB | "
                     f"{r['peak'] / base['peak']:.2f} | {r['macs'] / 1e9:.2f} | "
                     f"{r['acs'] / 1e9:.2f} | {r['mem'] / 2**20:.0f} MiB | "
                     f"{r['mem'] / base['mem']:.2f} | {r['time']:.3f} | "
                     f"{r['time'] / base['time']:.2f} |")
    return "\n".join(lines)


def parse(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--arch", choices=ARCHS, default="alexnet")
    p.add_argument("--width", type=positive_float, default=0.25)
    p.add_argument("--T", type=positive_int, default=4)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--epochs", type=nonnegative_int, default=3)
    p.add_argument("--lr", type=positive_float, default=0.05)
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--dataset", choices=("cifar10",) + EVENT_DATASETS, default=None,
                   help="default: cifar10, or cifar10dvs with --synthetic")
    p.add_argument("--data-dir", default=None,
                   help="default: ../shared/data/cifar10-subset for cifar10; a temporary folder "
                        "with --synthetic")
    p.add_argument("--synthetic", type=positive_int, default=None, metavar="N",
                   help="first write N synthetic CIFAR10-DVS recordings per class")
    g = p.add_argument_group("event data (as train.py)")
    g.add_argument("--frame-size", type=positive_int, default=None, help="frames N x N (48)")
    g.add_argument("--split-by", choices=("count", "time"), default=None,
                   help="events into T frames by equal count (default) or equal time")
    g.add_argument("--event-split", default=None, help="named train/test split")
    g.add_argument("--cache-dir", default=None, help="HDF5 frame cache (default: --data-dir)")
    a = p.parse_args(argv)
    a.dataset = a.dataset or ("cifar10dvs" if a.synthetic else "cifar10")
    events = a.dataset in EVENT_DATASETS
    if a.synthetic and a.dataset != "cifar10dvs":
        p.error(f"argument --synthetic: writes CIFAR10-DVS recordings, not {a.dataset}")
    frame_options = dict(frame_size=48, split_by="count", event_split="", cache_dir="")
    if not events and any(getattr(a, k) is not None for k in frame_options):
        p.error("--frame-size, --split-by, --event-split and --cache-dir are for event data")
    for k, default in frame_options.items():
        setattr(a, k, default if getattr(a, k) is None else getattr(a, k))
    blocks = 1 + len(build_model(a.arch, width=1 / 16).split_points)
    if blocks < 4:
        p.error(f"--arch {a.arch}: this table cuts the network into 4 local blocks; "
                f"{a.arch} has at most {blocks}")
    if events and a.event_split and a.event_split not in SPLIT_NAMES[a.dataset]:
        p.error(f"argument --event-split: {a.event_split!r} is not a split of {a.dataset} "
                f"({', '.join(SPLIT_NAMES[a.dataset])})")
    if events and a.data_dir is None and not a.synthetic:
        p.error(f"--dataset {a.dataset} needs --data-dir (or --synthetic N)")
    if a.synthetic and a.data_dir and os.path.exists(os.path.join(a.data_dir,
                                                                  FOLDERS["cifar10dvs"])):
        p.error(f"argument --synthetic: {a.data_dir} already holds {FOLDERS['cifar10dvs']}/; "
                f"drop --synthetic to use those recordings")
    if a.data_dir is None and not events:
        a.data_dir = SHARED_CIFAR
    return a


def main(argv=None):
    a = parse(argv)
    temporary = a.synthetic and a.data_dir is None
    if temporary:
        a.data_dir = tempfile.mkdtemp(prefix="minirate-synthetic-")
    try:
        if a.synthetic:
            write_cifar10dvs(a.data_dir, a.synthetic)
        data = event_data(a) if a.dataset in EVENT_DATASETS else image_data(a)
        try:
            rows = table(a, data)
        finally:
            for loader in (data.train, data.test):
                if hasattr(loader, "frames"):
                    loader.frames.close()
        print(markdown(a, data, rows))
        return rows
    finally:
        if temporary:
            shutil.rmtree(a.data_dir, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except (DatasetError, UsageError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
