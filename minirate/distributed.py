"""Data-parallel training over MPI (mpi4py): one process per rank, one model copy each.

    mpirun -n N python train.py ...

Every rank builds the same model from the same seed and reads the same global batch; rank r
keeps its own contiguous shard of it (`shard`), so the data order is that of one process with
the global batch. After each backward the gradients are all-reduced and averaged
(`average_gradients`): with shards of equal size b = B/N and the loss a mean over the shard,

    (1/N) Σ_r ∇ L_r = ∇ (1/B) Σ_samples loss  = the single-process gradient,

provided every layer computes on its shard what it would on the whole batch. All layers but
batchnorm work sample by sample; batchnorm's statistics are made statistics of the global batch
by `sync_batchnorm` (the sums in minirate/layers/batchnorm.py go through `allreduce_sum`).

Only this module imports mpi4py, and only when the process was started by an MPI launcher with
more than one rank (the launcher's environment says so: PMI_SIZE for MPICH's Hydra and Slurm,
OMPI_COMM_WORLD_SIZE for Open MPI, MV2_COMM_WORLD_SIZE for MVAPICH). Otherwise `world()` is a
single process, every reduction is the identity, and nothing extra is imported.

CPU threads: the ranks on one node split its cores (backend.share_cores), unless
MINIRATE_NUM_THREADS is set.

Arrays: NumPy buffers are reduced in place by MPI. CuPy buffers are copied to the host, reduced
there and copied back (the MPI from PyPI is not CUDA-aware).

A rank that stops: every reduction waits at most `timeout` seconds (a non-blocking all-reduce
polled against a deadline, since a blocking MPI call cannot be interrupted); then
`DistributedError` says which reduction got no answer, and `fail` prints one line and exits,
which makes the launcher stop the other ranks. An uncaught exception under MPI prints its
traceback and exits at once too (no MPI_Finalize, which would wait for the others).
"""
import os
import sys
import time

import numpy as np

from .backend import get_array_module, share_cores, to_numpy
from .layers.batchnorm import BatchNorm1d, BatchNorm2d

# environment variables through which launchers tell a process the number of ranks
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
# ... and the number of ranks on this node
LOCAL_SIZE_VARIABLES = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE",
                        "MV2_COMM_WORLD_LOCAL_SIZE")
DEFAULT_TIMEOUT = 300.0


class DistributedError(RuntimeError):
    """MPI cannot be used, or another rank stopped answering."""


def launched_size():
    """Number of ranks the MPI launcher started (1 when not started by one)."""
    for name in SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 1:
            return int(value)
    return 1


def world(timeout=DEFAULT_TIMEOUT):
    """The Communicator of this process: all ranks under `mpirun -n N` (N > 1), else one."""
    size = launched_size()
    if size == 1:
        return Communicator()
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise DistributedError(f"started with {size} MPI ranks, but mpi4py cannot be imported "
                               f"({e}); install it with: pip install -r requirements-mpi.txt"
                               ) from None
    sys.excepthook = _exit_on_uncaught                # a crash must not wait in MPI_Finalize
    local = [os.environ[v] for v in LOCAL_SIZE_VARIABLES if os.environ.get(v, "").isdigit()]
    share_cores(int(local[0]) if local else size)     # the ranks on this node split its cores
    return Communicator(MPI.COMM_WORLD, timeout)


def _exit_on_uncaught(kind, value, tb):
    """Under MPI: print the traceback and exit at once. A normal exit would call MPI_Finalize,
    which waits for the other ranks while they wait in a reduction for this one."""
    sys.__excepthook__(kind, value, tb)
    sys.stderr.flush()
    os._exit(1)


class Communicator:
    """This rank's view of the data-parallel group: `rank`, `size`, and sums over the ranks.

    `mpi_comm` None: a single process (rank 0 of 1), every reduction returns its input.
    `bytes_reduced` counts the payload this rank has put into all-reduces, `seconds_reducing` the
    time it spent in them (waiting for the slowest rank included).
    """

    def __init__(self, mpi_comm=None, timeout=DEFAULT_TIMEOUT):
        self.mpi_comm = mpi_comm
        self.rank = 0 if mpi_comm is None else mpi_comm.Get_rank()
        self.size = 1 if mpi_comm is None else mpi_comm.Get_size()
        self.timeout = float(timeout)
        self.bytes_reduced = 0
        self.seconds_reducing = 0.0

    # -- reductions -------------------------------------------------------------------------
    def allreduce_sum(self, a, what="all-reduce"):
        """Σ over ranks of array `a` (any shape), as a new array of `a`'s module and dtype."""
        if self.size == 1:
            return a
        xp = get_array_module(a)
        send = np.ascontiguousarray(to_numpy(a))
        recv = np.empty_like(send)
        t0 = time.perf_counter()
        self._wait(self.mpi_comm.Iallreduce(send, recv), what)
        self.seconds_reducing += time.perf_counter() - t0
        self.bytes_reduced += send.nbytes
        return recv if xp is np else xp.asarray(recv)

    def _wait(self, request, what):
        """Complete a non-blocking request, or raise DistributedError after `timeout` s."""
        deadline = time.monotonic() + self.timeout
        pause = 0.0
        while not self._test(request, what):
            if time.monotonic() > deadline:
                raise DistributedError(
                    f"no answer from the other ranks within {self.timeout:g} s "
                    f"({what}); one of them has probably stopped")
            time.sleep(pause)                       # spin first, then back off to 1 ms
            pause = min(1e-3, pause + 1e-5)

    def _test(self, request, what):
        """request.Test(), an MPI failure (a rank's connection lost) as DistributedError."""
        try:
            return request.Test()
        except Exception as e:            # mpi4py's MPI.Exception: the MPI library's own error
            raise DistributedError(f"{what} failed: {str(e).splitlines()[0]}") from None

    def sum_numbers(self, *values):
        """Σ over ranks of a few Python numbers (float64), as a tuple of floats."""
        if self.size == 1:
            return tuple(float(v) for v in values)
        return tuple(float(v) for v in self.allreduce_sum(np.array(values, dtype=np.float64),
                                                          "sum of counters"))

    def average_gradients(self, params):
        """g ← (1/N) Σ_r g_r for every gradient of `params` (name, p, g, decay), in place.

        All gradients travel in one flat buffer: one all-reduce per step.
        """
        if self.size == 1:
            return
        grads = [g for _, _, g, _ in params]
        xp = get_array_module(grads[0])
        flat = xp.concatenate([g.ravel() for g in grads])
        flat = self.allreduce_sum(flat, "gradient all-reduce") / self.size
        i = 0
        for g in grads:
            g[...] = flat[i:i + g.size].reshape(g.shape)
            i += g.size

    # -- data ---------------------------------------------------------------------------------
    def shard_bounds(self, n):
        """[lo, hi) of this rank's contiguous share of n items (sizes differ by at most one)."""
        return n * self.rank // self.size, n * (self.rank + 1) // self.size

    def shard(self, a):
        """This rank's part of a global batch along axis 0."""
        lo, hi = self.shard_bounds(len(a))
        return a[lo:hi]


RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def launched_rank():
    """This process's rank as the MPI launcher told it (0 when not started by one)."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def fail(message, code=1):
    """Print `error: message` as one line on stderr and end this process.

    Under MPI an error that every rank meets would print N lines: the ranks other than 0 wait a
    moment, so that rank 0, when it has the error too, ends the run first (the launcher then
    stops the rest); a rank that alone has an error still reports it. The exit skips
    MPI_Finalize, which would wait for ranks that may be inside a reduction.
    """
    size, rank = launched_size(), launched_rank()
    if size == 1:
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(code)
    if rank != 0:
        time.sleep(1.0)
    print(f"error: rank {rank}: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)


def sync_batchnorm(model, comm):
    """Synchronised batchnorm: every batchnorm layer of `model` takes its statistics over all
    ranks (per-channel sums through comm.allreduce_sum). Nothing to do for one process."""
    if comm.size == 1:
        return
    for _, module in model.named_modules():
        if isinstance(module, (BatchNorm1d, BatchNorm2d)):
            module.reduce_sum = lambda a: comm.allreduce_sum(a, "batchnorm statistics")
