"""Device arrays reduced through NCCL under MPI (minirate/distributed.py), on the CPU: two ranks
on the strict CuPy stand-in with its NCCL stand-in (tests/strict_nccl.py, the collectives done
by MPI on the host buffers behind the device pointers), the host-MPI fallback, and one rank that
reduces through NCCL against a run without MPI (benchmarks/nccl_check.py)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from minirate.distributed import Communicator, DistributedError
from tests import strict_nccl
from tests.strict_cupy import register
from tests.test_distributed import _mpirun, _run, _without_launcher_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _two_ranks(mode, **env):
    r = _run([_mpirun(), "-n", "2", sys.executable, "-m", "tests.nccl_worker", mode],
             env=dict(_without_launcher_env(), **env), timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(" ok") == 2, r.stdout
    return r.stdout


def test_two_ranks_through_nccl_match_one_process():
    """One GPU per rank: gradients and batchnorm statistics go through NCCL (the stand-in counts
    them) and the result equals one NumPy process on the whole batch (bptt, rate_m)."""
    out = _two_ranks("nccl", STRICT_CUPY_DEVICES="2")
    assert "all-reduced by NCCL on the GPUs (2 rank(s), this one on GPU 1)" in out


@pytest.mark.parametrize("env, why", [
    ({"STRICT_CUPY_DEVICES": "2", "MINIRATE_NCCL": "0"}, "MINIRATE_NCCL=0"),
    ({"STRICT_CUPY_DEVICES": "1"}, "2 ranks share this node's 1 GPU(s)"),
])
def test_host_mpi_when_nccl_is_not_used(env, why):
    """Switched off, or fewer GPUs than ranks: host MPI, the same numbers, and the log says why."""
    out = _two_ranks("host", **env)
    assert "all-reduced by MPI through host memory" in out and why in out


def test_nccl_stand_in_refuses_what_nccl_refuses():
    """An id each rank made itself (not broadcast), and two ranks on one GPU."""
    out = _two_ranks("no-bcast", STRICT_CUPY_DEVICES="2")
    assert "get_unique_id() was called on more than one rank" in out
    out = _two_ranks("one-gpu", STRICT_CUPY_DEVICES="2")
    assert "two ranks on one GPU" in out


def test_one_rank_through_nccl_equals_the_run_without_mpi(tmp_path):
    """benchmarks/nccl_check.py on the stand-in: mpirun -n 1 with MINIRATE_MPI_ALWAYS=1 reduces
    every gradient and batchnorm statistic through a one-GPU NCCL communicator; the final
    checkpoint is bitwise the plain run's."""
    _mpirun()
    r = subprocess.run([sys.executable, "benchmarks/nccl_check.py", "--device", "strict",
                        "--python", f"{sys.executable} -m tests.strict_run",
                        "--expect", "nccl", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=240,
                       env=_without_launcher_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "| strict | NCCL | 0 (None) | 0 | ok |" in r.stdout
    assert "data-parallel: 1 rank," in (tmp_path / "reduced.log").read_text()


def test_nccl_check_catches_a_difference(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import nccl_check
    a = {"w": np.array([1.0, 2.0]), "n": np.array(3), "__meta__": np.zeros(2, np.uint8)}
    np.savez(tmp_path / "a.npz", **a)
    np.savez(tmp_path / "b.npz", **dict(a, w=np.array([1.0, 2.0 + 2e-16 * 2])))
    np.savez(tmp_path / "c.npz", **dict(a, n=np.array(4), __meta__=np.ones(2, np.uint8)))
    assert nccl_check.compare(tmp_path / "a.npz", tmp_path / "a.npz") == (0.0, None)
    worst, key = nccl_check.compare(tmp_path / "a.npz", tmp_path / "b.npz")
    assert key == "w" and 1e-16 < worst < 1e-15
    assert nccl_check.compare(tmp_path / "a.npz", tmp_path / "c.npz") == (float("inf"), "n")


class _Stuck:
    """A stream whose work never finishes (a rank that stopped leaves NCCL spinning)."""
    ptr, done = 0, False


class _NcclComm:
    def __init__(self):
        self.calls, self.aborted = [], False

    def allReduce(self, *args):
        self.calls.append(args)

    def abort(self):
        self.aborted = True


def test_a_stuck_nccl_reduction_times_out_and_aborts(monkeypatch):
    strict = register()
    comm = Communicator(timeout=0.05)
    comm.size, comm.mpi_comm = 2, object()          # as if one of two ranks
    comm.nccl = _NcclComm()
    comm._nccl_types = {np.dtype(np.float32): strict_nccl.NCCL_FLOAT32}
    comm._nccl_sum = strict_nccl.NCCL_SUM
    monkeypatch.setattr(strict.cuda, "get_current_stream", lambda: _Stuck())
    a = strict.arange(6, dtype=np.float32)
    with pytest.raises(DistributedError, match=r"within 0.05 s \(gradient all-reduce, NCCL\)"):
        comm.allreduce_sum(a, "gradient all-reduce")
    assert comm.nccl.aborted
    send, recv, count, kind, op, stream = comm.nccl.calls[0]
    assert type(send) is int and type(recv) is int and count == 6
    assert (kind, op) == (strict_nccl.NCCL_FLOAT32, strict_nccl.NCCL_SUM)


def test_nccl_stand_in_has_the_real_binding_names():
    """Where CuPy can load libnccl: every name and constant of the stand-in is the real one's."""
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import cupy.cuda.nccl as real
    except Exception as e:
        pytest.skip(f"no CuPy NCCL binding here ({e})")
    if not real.available:
        pytest.skip("CuPy cannot load libnccl here (pip install nvidia-nccl-cu13)")
    ours = {k for k in dir(strict_nccl) if not k.startswith("_")} - {
        "ctypes", "os", "np", "reductions"}
    assert ours <= set(dir(real)), ours - set(dir(real))
    for k in ours:
        if k.startswith("NCCL_"):
            assert getattr(strict_nccl, k) == getattr(real, k), k
    for k in ("allReduce", "abort", "destroy", "size", "rank_id", "device_id"):
        assert hasattr(real.NcclCommunicator, k)


class _FakeMPI:
    """The two collectives use_device makes, as one rank of `size` sees them: `others` is the
    number of other ranks that can load NCCL."""

    def __init__(self, size, others):
        self.size, self.others = size, others

    def Get_rank(self):
        return 0

    def Get_size(self):
        return self.size

    def allreduce(self, value):
        return value + self.others

    def bcast(self, value, root=0):
        return value


def test_nccl_only_when_every_rank_can_load_it(monkeypatch):
    """A rank that cannot load NCCL sends every rank through host MPI (none waits in NCCL for
    it); one that can, but fails to join, is one line naming the way around."""
    strict = register()
    monkeypatch.delenv("MINIRATE_NCCL", raising=False)
    comm = Communicator(_FakeMPI(size=2, others=0))
    assert comm.use_device(strict) == ("gradients and batchnorm statistics: all-reduced by MPI "
                                       "through host memory (NCCL not used: another rank "
                                       "cannot load NCCL)")
    assert comm.nccl is None

    def refuse(*args):
        raise strict_nccl.NcclError("ncclInvalidUsage: invalid usage\nmore detail")

    monkeypatch.setattr(strict_nccl, "NcclCommunicator", refuse)
    comm = Communicator(_FakeMPI(size=2, others=1))
    with pytest.raises(DistributedError) as e:
        comm.use_device(strict)
    assert str(e.value) == ("NCCL could not join the 2 ranks on GPU 0: ncclInvalidUsage: "
                            "invalid usage; MINIRATE_NCCL=0 reduces through host MPI instead")
    assert Communicator().use_device(strict) is None          # one process: nothing to do
    assert Communicator(_FakeMPI(size=2, others=1)).use_device(np) is None    # the CPU
