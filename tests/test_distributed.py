"""Data-parallel training: two MPI ranks against one process, a rank that dies, and one process
without MPI (minirate/distributed.py).

The two-rank tests start `mpirun -n 2` in a subprocess with a timeout; they are skipped, saying
why, where mpi4py or an MPI launcher is missing (pip install -r requirements-mpi.txt).
"""
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from minirate.distributed import Communicator, sync_batchnorm
from minirate.layers.batchnorm import BatchNorm2d
from tests.mpi_worker import train, worst_difference
from tests.nets import tiny_resnet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _without_launcher_env():
    return {k: v for k, v in os.environ.items()
            if k not in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")}


def _mpirun():
    """Path of mpirun, or skip the test naming what is missing."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install -r requirements-mpi.txt)")
    here = os.path.join(os.path.dirname(sys.executable), "mpirun")  # the MPI of this Python
    launcher = here if os.access(here, os.X_OK) else shutil.which("mpirun")
    if launcher is None:
        pytest.skip("no mpirun beside Python or on PATH (pip install -r requirements-mpi.txt)")
    return launcher


def _run(args, timeout=120, env=None):
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env or _without_launcher_env())


def test_two_ranks_match_one_process():
    """bptt (m, s), rate_m, rate_s: averaged gradients of the first step and weights plus
    batchnorm running statistics after 3 SGD steps equal one process's on the whole batch to
    1e-10 (float64), and differ without synchronised batchnorm (checked in the worker)."""
    r = _run([_mpirun(), "-n", "2", sys.executable, "-m", "tests.mpi_worker", "same"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(" ok") == 2, r.stdout


def test_a_dead_rank_ends_the_others_with_one_line():
    """Rank 1 exits mid-run without a word; rank 0, inside a reduction, ends after its timeout
    with one line. Hydra's -disable-auto-cleanup keeps the launcher from killing rank 0 itself,
    as a launcher that does not watch its ranks would."""
    launcher = _mpirun()
    version = _run([launcher, "--version"], timeout=30).stdout
    env = dict(_without_launcher_env(), MINIRATE_MPI_TIMEOUT="2")
    if "HYDRA" in version:
        args = [launcher, "-disable-auto-cleanup", "-n", "2"]
    else:
        args = [launcher, "-n", "2"]
    r = _run(args + [sys.executable, "-m", "tests.mpi_worker", "die"], timeout=60, env=env)
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    if "HYDRA" in version:
        assert errors == ["error: rank 0: no answer from rank 1 within 2 s (batchnorm "
                          "statistics); it has probably stopped: see that rank's own message "
                          "above for why, then run the same command again with --resume auto "
                          "to continue from the last checkpoint"], r.stderr
    assert "Traceback" not in r.stderr
    # with the launcher's own clean-up (the default) the run ends at once as well
    r = _run([launcher, "-n", "2", sys.executable, "-m", "tests.mpi_worker", "die"], timeout=60,
             env=env)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    # an uncaught exception on rank 1: its traceback, and no wait (the timeout is 300 s here)
    r = _run([launcher, "-n", "2", sys.executable, "-m", "tests.mpi_worker", "crash"], timeout=60)
    assert r.returncode != 0 and "RuntimeError: a bug on rank 1" in r.stderr


def test_one_process_imports_nothing_and_changes_nothing():
    code = ("import sys; from minirate.distributed import world; c = world(); "
            "print(c.rank, c.size, 'mpi4py' in sys.modules)")
    r = _run([sys.executable, "-c", code], timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "1", "False"]
    comm = Communicator()
    a = np.arange(5.0)
    assert comm.allreduce_sum(a) is a
    assert comm.shard(a) is not None and np.array_equal(comm.shard(a), a)
    net = tiny_resnet()
    sync_batchnorm(net, comm)
    assert all(m.reduce_sum is None for _, m in net.named_modules() if isinstance(m, BatchNorm2d))
    grads = [g.copy() for _, _, g, _ in net.parameters()]
    comm.average_gradients(net.parameters())
    assert all(np.array_equal(a, g) for a, (_, _, g, _) in zip(grads, net.parameters()))


def test_launched_without_mpi4py_says_what_to_install():
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "from minirate.distributed import world, DistributedError\n"
            "try:\n    world()\nexcept DistributedError as e:\n    print(e)")
    r = _run([sys.executable, "-c", code], timeout=60,
             env=dict(_without_launcher_env(), PMI_SIZE="2", PMI_RANK="0"))
    assert "started with 2 MPI ranks, but mpi4py cannot be imported" in r.stdout
    assert "requirements-mpi.txt" in r.stdout


@pytest.mark.parametrize("n", [7, 8])
def test_shards_cover_the_batch_in_order(n):
    """The shards of all ranks, in rank order, are the global batch: the data order of one
    process."""
    parts = []
    for rank in range(3):
        c = Communicator()
        c.rank, c.size = rank, 3
        parts.append(c.shard(np.arange(n)))
    assert np.array_equal(np.concatenate(parts), np.arange(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_train_script_over_two_ranks(tmp_path):
    """train.py under mpirun -n 2: the weights of one process (float64), one metrics line from
    rank 0 only, resuming over the same number of ranks, and a clear refusal for another."""
    launcher = _mpirun()
    args = ["--dataset", "cifar10-sample", "--arch", "small", "--width", "0.25", "--T", "2",
            "--batch-size", "8", "--epochs", "1", "--dtype", "float64", "--method", "bptt",
            "--eval-batch-size", "100", "--no-progress"]
    train = [sys.executable, os.path.join(ROOT, "train.py")] + args
    two = [launcher, "-n", "2"] + train
    one_out, two_out = tmp_path / "one", tmp_path / "two"
    r = _run(train + ["--max-steps", "2", "--out", str(one_out)])
    assert r.returncode == 0, r.stderr
    r = _run(two + ["--max-steps", "2", "--out", str(two_out)])
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("done:") == 1 and "2 ranks, 4 images each" in r.stdout
    a, b = np.load(one_out / "last.npz"), np.load(two_out / "last.npz")
    weights = [k for k in a.files if k.startswith("model/")]
    assert len(weights) > 20
    assert max(float(np.abs(a[k] - b[k]).max()) for k in weights) <= 1e-10
    assert len((two_out / "metrics.jsonl").read_text().splitlines()) == 1
    # same number of ranks: continues
    r = _run(two + ["--max-steps", "3", "--out", str(two_out), "--resume", "auto"])
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stderr
    # another number of ranks: one line naming both
    r = _run(two + ["--max-steps", "3", "--out", str(one_out), "--resume", "auto"])
    assert r.returncode != 0 and "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "over 1 rank(s), this run has 2" in lines[0], r.stderr
    # a global batch that cannot be split evenly
    r = _run(two + ["--batch-size", "7", "--out", str(tmp_path / "odd")])
    assert r.returncode != 0 and "multiple of the 2 ranks" in r.stderr


def test_imagenet_over_two_ranks_matches_one_process(tmp_path):
    """Each rank decodes only its shard of every ImageNet batch (per-image seeds): the trained
    weights are one process's (sew_resnet34, rate_m, float64)."""
    from tests.test_imagenet import make_imagenet
    launcher = _mpirun()
    data = make_imagenet(str(tmp_path / "imagenet"), n_train=4, n_val=2)
    train = [sys.executable, os.path.join(ROOT, "train.py"), "--dataset", "imagenet",
             "--data-dir", data, "--arch", "sew_resnet34", "--width", "0.0625", "--image-size",
             "32", "--T", "2", "--batch-size", "4", "--epochs", "1", "--workers", "1",
             "--method", "rate_m", "--dtype", "float64", "--no-progress"]
    r = _run(train + ["--out", str(tmp_path / "one")])
    assert r.returncode == 0, r.stderr
    r = _run([launcher, "-n", "2"] + train + ["--out", str(tmp_path / "two")])
    assert r.returncode == 0, r.stderr
    a, b = np.load(tmp_path / "one" / "last.npz"), np.load(tmp_path / "two" / "last.npz")
    weights = [k for k in a.files if k.startswith("model/")]
    assert "model/layer4.0.downsample.0.weight" in weights
    assert max(float(np.abs(a[k] - b[k]).max()) for k in weights) <= 1e-10


class ThreadRank(Communicator):
    """A rank that is a thread of this process: all-reduce through shared slots and a barrier.
    A stand-in for MPI, so synchronised batchnorm is checked where mpi4py is not installed."""

    def __init__(self, rank, slots, barrier):
        super().__init__()
        self.rank, self.size, self.slots, self.barrier = rank, len(slots), slots, barrier

    def allreduce_sum(self, a, what="all-reduce"):
        self.slots[self.rank] = a.copy()
        self.barrier.wait()
        total = sum(self.slots[1:], self.slots[0].copy())      # the same order on every rank
        self.barrier.wait()
        return total


@pytest.mark.parametrize("method, step_mode", [("bptt", "m"), ("rate_m", "m")])
def test_synchronised_batchnorm_without_mpi(method, step_mode):
    """Two thread ranks, each on half the batch: first-step gradients and the state after 3 SGD
    steps equal one process's (float64, 1e-10); with per-rank batchnorm they do not."""
    ref_grads, ref_state = train(None, method, step_mode, sync=False)
    for sync in (True, False):
        slots, barrier, results = [None, None], threading.Barrier(2, timeout=60), [None, None]

        def run(rank):
            results[rank] = train(ThreadRank(rank, slots, barrier), method, step_mode, sync)

        threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for grads, state in results:
            if sync:
                assert worst_difference(ref_grads, grads) <= 1e-10
                assert worst_difference(ref_state, state) <= 1e-10
            else:
                assert worst_difference(ref_grads, grads) > 1e-6


def test_ctrl_c_at_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    """SIGINT reaching one rank only: the ranks agree through the per-step sum, so all stop
    after the same step and rank 0 saves it, instead of one rank waiting in a reduction that
    the other never joins."""
    import signal
    import time
    from minirate.checkpoint import load_checkpoint
    launcher = _mpirun()
    out = tmp_path / "o"
    args = [launcher, "-n", "2", sys.executable, os.path.join(ROOT, "train.py"),
            "--dataset", "cifar10-sample", "--arch", "small", "--width", "0.25", "--T", "2",
            "--batch-size", "8", "--epochs", "50", "--no-progress", "--save-every", "1",
            "--out", str(out), "--mpi-timeout", "60"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        t0 = time.time()
        while not (out / "last.npz").exists():
            assert proc.poll() is None and time.time() - t0 < 120, proc.communicate()
            time.sleep(0.05)
        ranks = []
        for pid in os.listdir("/proc"):
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            except (OSError, ValueError):
                continue
            if str(out).encode() in cmd and os.path.basename(cmd[0]) != b"mpirun":
                ranks.append(int(pid))
        assert len(ranks) == 2, ranks
        os.kill(max(ranks), signal.SIGINT)        # one rank, not the launcher
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted: saved" in err and "Traceback" not in err
    pos = load_checkpoint(out / "last.npz")[1]["position"]
    assert pos["step"] == pos["epoch"] * 125 + pos["batch"] and pos["step"] >= 1
