"""One rank through the whole data-parallel reduction path, against a run without MPI.

    python benchmarks/nccl_check.py --device cuda --out runs/nccl_check     # on a GPU machine

Trains the same few steps twice, from the same seed, in float64:

  plain   python train.py ...                                    (one process, no reductions)
  reduced mpirun -n 1 python train.py ...  with MINIRATE_MPI_ALWAYS=1
          (one rank that still all-reduces its gradients and synchronises batchnorm; with
          --device cuda through an NCCL communicator of one GPU)

and compares every weight, batchnorm buffer and optimizer buffer of the two final checkpoints.
A one-rank sum is the value itself and the average divides by 1, so the two must be equal: the
check passes when the largest relative difference is at most --tolerance (default 0, bitwise).
It also says how the reduced run reduced (the train.py log line: NCCL or host MPI) and fails
when --expect nccl is given and NCCL was not used. Writes nccl_check.md and .json to --out.
"""
import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ["--dataset", "cifar10-sample", "--arch", "small", "--width", "0.25", "--T", "2",
         "--batch-size", "32", "--epochs", "1", "--max-steps", "4", "--method", "rate",
         "--dtype", "float64", "--no-progress", "--overwrite"]


def mpirun():
    """mpirun beside this Python (the MPICH wheel puts it there), else the one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpirun")
    return here if os.access(here, os.X_OK) else shutil.which("mpirun")


def run(cmd, env, log):
    with open(log, "w") as f:
        f.write("$ " + " ".join(map(shlex.quote, cmd)) + "\n\n")
        f.flush()
        r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    text = open(log).read()
    if r.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd[:4])} ... failed (exit {r.returncode}); "
                         f"see {log}:\n" + "\n".join(text.splitlines()[-15:]))
    return text


def compare(a_path, b_path):
    """Largest |a − b| / max(|a|, tiny) over every array two checkpoints share, and its key."""
    a, b = np.load(a_path), np.load(b_path)
    worst, where = 0.0, None
    for key in sorted(set(a.files) & set(b.files) - {"__meta__"}):   # meta: paths, times
        x, y = a[key], b[key]
        if x.dtype.kind not in "fc" or x.shape != y.shape:
            if not np.array_equal(x, y):
                return float("inf"), key
            continue
        d = float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-300), initial=0.0))
        if d > worst:
            worst, where = d, key
    return worst, where


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="train.py's --device (default cuda)")
    ap.add_argument("--out", required=True, help="folder for the two runs and the report")
    ap.add_argument("--python", default=sys.executable,
                    help="the command that runs train.py (default this Python); a test may "
                         "name a launcher that registers a test device first")
    ap.add_argument("--tolerance", type=float, default=0.0,
                    help="largest relative difference allowed (default 0: bitwise equal)")
    ap.add_argument("--expect", choices=["nccl", "any"], default="any",
                    help="nccl: fail unless the reduced run all-reduced through NCCL")
    args = ap.parse_args(argv)
    launcher = mpirun()
    if launcher is None:
        raise SystemExit("error: no mpirun beside Python or on PATH "
                         "(pip install -r requirements-mpi.txt)")
    os.makedirs(args.out, exist_ok=True)
    out = os.path.abspath(args.out)
    python = shlex.split(args.python)
    common = ["train.py", "--device", args.device] + TRAIN
    env = {k: v for k, v in os.environ.items() if k != "MINIRATE_MPI_ALWAYS"}
    run(python + common + ["--out", f"{out}/plain"], env, f"{out}/plain.log")
    log = run([launcher, "-n", "1"] + python + common + ["--out", f"{out}/reduced"],
              dict(env, MINIRATE_MPI_ALWAYS="1"), f"{out}/reduced.log")
    how = [line for line in log.splitlines() if "all-reduced by" in line]
    via = ("NCCL" if how and "by NCCL" in how[0] else
           "host MPI" if args.device != "cpu" else "MPI (NumPy arrays)")
    worst, key = compare(f"{out}/plain/last.npz", f"{out}/reduced/last.npz")
    ok = worst <= args.tolerance and (args.expect == "any" or via == "NCCL")
    result = {"device": args.device, "reduced_via": via, "log_line": how[0] if how else None,
              "max_rel_difference": worst, "at": key, "tolerance": args.tolerance, "ok": ok}
    with open(f"{out}/nccl_check.json", "w") as f:
        json.dump(result, f, indent=1)
    table = ("| device | one rank reduced via | max rel. difference (at) | tolerance | status |\n"
             "|---|---|---|---|---|\n"
             f"| {args.device} | {via} | {worst:.3g} ({key}) | {args.tolerance:g} | "
             f"{'ok' if ok else 'FAILED'} |\n")
    with open(f"{out}/nccl_check.md", "w") as f:
        f.write(table)
    print(table + (how[0] if how else "(train.py named no reduction path)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
