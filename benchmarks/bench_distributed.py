"""Data-parallel step time over 1 and 2 MPI ranks on the CPU, and the bytes each rank reduces.

    python benchmarks/bench_distributed.py --arch resnet18 --width 0.5 --batch-size 16 --T 2

For each number of ranks N (--ranks), the script starts `mpirun -n N` on itself; each rank
trains on its shard of the same global batch (synchronised batchnorm, gradient all-reduce),
with the machine's cores split evenly between the ranks (backend.share_cores). Per method and
N: the median of --repeats timed steps after one warm-up step (forward, backward, all-reduce,
SGD update), the time inside all-reduces, and the bytes one rank puts into them per step
(gradients, and batchnorm statistics), side by side in one Markdown table. "In all-reduce"
includes waiting for the slower rank; "alone" is the gradient all-reduce after a
barrier. Then the on-paper
estimate for 8 GPUs: the gradient bytes of resnet18 and sew_resnet34 and a ring all-reduce's
time at PCIe and NVLink speeds.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from minirate.backend import cpu_threads  # noqa: E402
from minirate.data.augment import normalize  # noqa: E402
from minirate.data.cifar import DatasetError, load_cifar  # noqa: E402
from minirate.distributed import launched_size, sync_batchnorm, world  # noqa: E402
from minirate.methods import make_method  # noqa: E402
from minirate.models import build_model  # noqa: E402
from minirate.optim import SGD  # noqa: E402

# link speeds for the on-paper estimate, in bytes/s: what NCCL's all-reduce bus bandwidth
# reaches in practice (nccl-tests), not the links' peak
LINKS = {"PCIe 4.0 x16 (~22 GB/s)": 22e9, "NVLink 3, A100 SXM (~230 GB/s)": 230e9}


def worker(a):
    comm = world()
    rng = np.random.default_rng(0)
    try:
        x, y, *_ = load_cifar("cifar10", a.data_dir, download=False)
        x, y = normalize(x[:a.batch_size]), y[:a.batch_size]
    except DatasetError:
        x = rng.normal(size=(a.batch_size, 3, 32, 32)).astype(np.float32)
        y = rng.integers(0, 10, a.batch_size)
    x, y = comm.shard(x), comm.shard(y)
    rows = []
    for name in a.methods:
        model = build_model(a.arch, 10, a.width)
        sync_batchnorm(model, comm)
        method = make_method(name, model, a.T)
        params = model.parameters()
        opt = SGD(params, 0.01)
        times, reduce_s, reduced = [], [], []
        for i in range(a.repeats + 1):
            b0, s0, t0 = comm.bytes_reduced, comm.seconds_reducing, time.perf_counter()
            model.zero_grad()
            method.step(x, y)
            comm.average_gradients(params)
            opt.step()
            if i:                                            # step 0 is the warm-up
                times.append(time.perf_counter() - t0)
                reduce_s.append(comm.seconds_reducing - s0)
                reduced.append(comm.bytes_reduced - b0)
        grad_bytes = sum(p.nbytes for _, p, _, _ in params) if comm.size > 1 else 0
        bare = []                           # the gradient all-reduce alone, ranks lined up first
        for _ in range(a.repeats if comm.size > 1 else 0):
            comm.mpi_comm.Barrier()
            s0 = comm.seconds_reducing
            comm.average_gradients(params)
            bare.append(comm.seconds_reducing - s0)
        rows.append(dict(method=name, ranks=comm.size, step_s=float(np.median(times)),
                         reduce_s=float(np.median(reduce_s)), bytes=int(np.median(reduced)),
                         grad_bytes=grad_bytes, threads=cpu_threads(),
                         bare_s=float(np.median(bare)) if bare else 0.0))
    if comm.rank == 0:
        print("RESULT " + json.dumps(rows), flush=True)


def ring_seconds(nbytes, n, bandwidth):
    """Ring all-reduce: each rank sends (and receives) 2 (n − 1)/n of the buffer."""
    return 2 * (n - 1) / n * nbytes / bandwidth


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=16, help="global batch")
    p.add_argument("--T", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=["bptt", "rate_m"])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data",
                                                      "cifar10-subset"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker or launched_size() > 1:
        return worker(a)
    cores = len(os.sched_getaffinity(0))
    results = {}
    for n in a.ranks:
        env = dict(os.environ)
        env.pop("MINIRATE_NUM_THREADS", None)        # the ranks split the cores themselves
        cmd = ["mpirun", "-n", str(n), sys.executable, os.path.abspath(__file__), "--worker",
               *sys.argv[1:]]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        if out.returncode != 0:
            sys.exit(f"error: mpirun -n {n} failed: {out.stderr.strip().splitlines()[-1:]}")
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][0]
        for row in json.loads(line[len("RESULT "):]):
            results[(row["method"], n)] = row
    print(f"{a.arch} width {a.width}, global batch {a.batch_size}, T={a.T}, {cores} cores "
          f"split between the ranks\n")
    print("| method | ranks | threads/rank | step (s) | speed-up | in all-reduce (s) | "
          "gradient all-reduce alone (s) | reduced per step and rank (MiB) | "
          "of which gradients (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (name, n), r in results.items():
        base = results.get((name, a.ranks[0]))
        print(f"| {name} | {n} | {r['threads']} | {r['step_s']:.3f} | "
              f"{base['step_s'] / r['step_s']:.2f} | {r['reduce_s']:.3f} | {r['bare_s']:.3f} | "
              f"{r['bytes'] / 2**20:.2f} | {r['grad_bytes'] / 2**20:.2f} |")
    print("\nOn paper, 8 GPUs, float32 gradients, one ring all-reduce per step:\n")
    print("| model | parameters | gradient MiB | " + " | ".join(LINKS) + " |")
    print("|---|---|---|" + "---|" * len(LINKS))
    for arch, classes in (("resnet18", 10), ("sew_resnet34", 1000)):
        n_params = sum(int(p.size) for _, p, _, _ in build_model(arch, classes).parameters())
        cells = " | ".join(f"{ring_seconds(4 * n_params, 8, bw) * 1e3:.1f} ms"
                           for bw in LINKS.values())
        print(f"| {arch} ({classes} classes) | {n_params:,} | {4 * n_params / 2**20:.1f} | "
              f"{cells} |")


if __name__ == "__main__":
    main()
