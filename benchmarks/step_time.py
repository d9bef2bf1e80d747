"""The best-of-N time of one training step (forward + backward, no optimizer), per method, of
the minirate found at --repo (default: this checkout). Run it on two checkouts in turn to see
whether a change made the step slower, on a shared machine where only a side-by-side,
alternating comparison means anything:

    for r in 1 2 3; do python benchmarks/step_time.py --repo OLD; python benchmarks/step_time.py; done

A method written NAME+localN trains in N local blocks (`--local-blocks N`), e.g. bptt+local2.
--peak adds each method's peak bytes of one more step, above the level before it (tracemalloc,
to which NumPy reports its buffers; untimed, since tracing slows the step).
"""
import argparse
import os
import sys
import time
import tracemalloc

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
p.add_argument("--arch", default="resnet18")
p.add_argument("--batch-size", type=int, default=16)
p.add_argument("--T", type=int, default=4)
p.add_argument("--methods", default="bptt,rate_m",
               help="comma-separated; NAME+localN: NAME in N local blocks")
p.add_argument("--repeats", type=int, default=3)
p.add_argument("--conv-algo", default="im2col", choices=("im2col", "winograd", "auto"),
               help="3x3 stride-1 convolutions (a --repo without Winograd: im2col only)")
p.add_argument("--peak", action="store_true", help="also the peak bytes of one step")
a = p.parse_args()
sys.path.insert(0, os.path.abspath(a.repo))

import numpy as np  # noqa: E402
from minirate.backend import get_xp  # noqa: E402
from minirate.methods import make_method  # noqa: E402
from minirate.models import build_model  # noqa: E402

get_xp("cpu")
rng = np.random.default_rng(0)
x = rng.normal(size=(a.batch_size, 3, 32, 32)).astype(np.float32)
y = rng.integers(0, 10, a.batch_size)
cells = []
for name in a.methods.split(","):
    model = build_model(a.arch, 10, 1.0, seed=0)
    model.to(np, np.float32)
    if a.conv_algo != "im2col":
        from minirate.layers.winograd import set_conv_algo
        set_conv_algo(model, a.conv_algo)
    base, _, blocks = name.partition("+local")
    method = make_method(base, model, a.T, local_blocks=int(blocks) if blocks else 1)
    model.zero_grad()
    method.step(x, y)                       # warm-up
    times = []
    for _ in range(a.repeats):
        model.zero_grad()
        t0 = time.perf_counter()
        method.step(x, y)
        times.append(time.perf_counter() - t0)
    cell = f"{name} {min(times):.3f} s"
    if a.peak:
        model.zero_grad()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        method.step(x, y)
        cell += f" (peak {(tracemalloc.get_traced_memory()[1] - before) / 2**20:.1f} MiB)"
        tracemalloc.stop()
    cells.append(cell)
print(f"{a.repo}: {a.arch}, batch {a.batch_size}, T={a.T}, {a.conv_algo}: " + ", ".join(cells),
      flush=True)
