"""Event data speed: decoding + frame integration per recording, and an HDF5 batch read beside a
vggsnn_dvs training step at the same batch, in one run.

    python benchmarks/bench_events.py
    python benchmarks/bench_events.py --events 200000 --batch-size 16 --T 10 --method rate_m

1. A CIFAR10-DVS-like recording of --events events (the synthetic classes of
   minirate/data/events/synthetic.py, written as AEDAT 2.0) is read from its file, decoded and
   integrated into T frames of 128x128 (then also resized to 48x48) on one core (BLAS limited
   to one thread); best and median of --repeats, in million events per second; the same events
   as AEDAT 3.1 (DVS128 Gesture's format) beside it. Target: >= 20 M events/s.
2. A frame cache of 40 such recordings (T frames, 48x48) is built (timed), and one training batch is
   read from it (--batch-size samples, each from its own chunk, augmented, transposed to
   (T, B, 2, H, W)); median of --repeats. Beside it, one vggsnn_dvs training step (--method) at
   the same batch and T after one warm-up step. Target: read < 10 % of the step.
"""
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minirate.cli import ArgumentParser, positive_float, positive_int  # noqa: E402
from minirate.data.events import event_loaders  # noqa: E402
from minirate.data.events.aedat3 import write_aedat3_polarity  # noqa: E402
from minirate.data.events.cache import sample_frames  # noqa: E402
from minirate.data.events.datasets import read_events  # noqa: E402
from minirate.data.events.frames import integrate  # noqa: E402
from minirate.data.events.synthetic import write_cifar10dvs  # noqa: E402
from minirate.methods import METHODS, make_method  # noqa: E402
from minirate.models import build_model  # noqa: E402


def times_of(fn, repeats):
    """(best, median) seconds of `repeats` calls. The best is the machine's own speed; the
    median also carries what other processes took from it (a shared machine)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.min(times)), float(np.median(times))


def main():
    p = ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--events", type=positive_int, default=200_000)
    p.add_argument("--T", type=positive_int, default=10)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--method", choices=METHODS, default="rate_m")
    p.add_argument("--width", type=positive_float, default=1.0,
                   help="vggsnn_dvs channel multiplier")
    p.add_argument("--repeats", type=positive_int, default=20)
    a = p.parse_args()
    if a.batch_size > 40:
        p.error(f"argument --batch-size: at most 40 (the cache holds 40 recordings), "
                f"got {a.batch_size}")
    tmp = tempfile.mkdtemp(prefix="bench-events-")
    try:
        data = write_cifar10dvs(tmp, per_class=4, events=a.events, seed=0)
        path = os.path.join(tmp, "CIFAR10-DVS", "airplane", "cifar10_airplane_0.aedat")
        rec = ("file", path)
        events = read_events("cifar10dvs", rec)
        n = len(events[0])
        rec3 = ("file", os.path.join(tmp, "same.aedat"))      # the same events in AEDAT 3.1
        write_aedat3_polarity(rec3[1], *events, events_per_packet=4096)
        with threadpool_limits(1):
            t_frame = times_of(lambda: integrate(*read_events("cifar10dvs", rec), a.T, 128, 128),
                               a.repeats)
            t_resize = times_of(lambda: sample_frames(read_events("cifar10dvs", rec), a.T, "count",
                                                      48), a.repeats)
            t_aedat3 = times_of(lambda: integrate(*read_events("dvsgesture", rec3), a.T, 128, 128),
                                a.repeats)
        print(f"# events: {n} events, {os.path.getsize(path)} bytes, T={a.T}, one core, "
              f"{a.repeats} repeats\n")
        print("| stage | ms per recording (best / median) | M events/s (best / median) |")
        print("|---|---|---|")
        for stage, (best, med) in (("AEDAT 2.0 read + decode + integrate (128x128)", t_frame),
                                   ("... + bilinear resize to 48x48", t_resize),
                                   ("AEDAT 3.1 (4096-event packets) read + decode + integrate",
                                    t_aedat3)):
            print(f"| {stage} | {1e3 * best:.2f} / {1e3 * med:.2f} | "
                  f"{n / best / 1e6:.1f} / {n / med / 1e6:.1f} |")

        t0 = time.perf_counter()
        train, _ = event_loaders("cifar10dvs", data, a.T, a.batch_size, a.batch_size,
                                 progress=False)
        t_convert = (time.perf_counter() - t0) / 40
        print(f"\nconversion into the HDF5 cache: {1e3 * t_convert:.1f} ms per recording "
              f"(10,000 such recordings: {t_convert * 1e4 / 60:.1f} min)")
        order = train.order(0)
        t_read = times_of(lambda: train.make_batch(0, 0, order), a.repeats)[1]
        xb, yb = train.make_batch(0, 0, order)
        model = build_model("vggsnn_dvs", 10, a.width, in_channels=2)
        method = make_method(a.method, model, a.T)
        steps = []
        for _ in range(2):                              # warm-up, then the timed step
            model.zero_grad()
            t0 = time.perf_counter()
            method.step(xb, yb)
            steps.append(time.perf_counter() - t0)
        print(f"\n# batch read vs vggsnn_dvs step: batch {a.batch_size}, T={a.T}, 48x48, "
              f"{a.method}, width {a.width}, cache {os.path.getsize(train.frames.file.filename)} "
              f"bytes for 40 samples\n")
        print("| batch read (ms) | training step (s) | read / step |")
        print("|---|---|---|")
        print(f"| {1e3 * t_read:.2f} | {steps[1]:.2f} | {t_read / steps[1] * 100:.3f} % |")
        train.frames.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
