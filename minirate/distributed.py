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

Arrays: NumPy buffers are reduced by MPI. With `--device cuda` each rank takes one GPU (its rank
on the node, modulo the GPUs there) and CuPy buffers are all-reduced by NCCL (`use_device`: rank 0
makes the NCCL id, MPI broadcasts it, every rank joins one NCCL communicator), in place on the
GPU. Where CuPy has no NCCL, or MINIRATE_NCCL=0, CuPy buffers are copied to the host, reduced by
MPI there and copied back (the MPI from PyPI is not CUDA-aware); the log says which, once.

One rank: `mpirun -n 1` is a single process with no reductions at all, unless MINIRATE_MPI_ALWAYS=1,
which keeps the communicator and runs every reduction (through NCCL on a GPU), so that the whole
reduction path can be checked on one device against a run without MPI.

A rank that stops: every reduction waits at most `timeout` seconds (a non-blocking all-reduce
polled against a deadline, since a blocking MPI call cannot be interrupted); then
`DistributedError` says which reduction got no answer (from which rank, where two ranks make
that certain; an all-reduce cannot tell otherwise) and what to do, and `fail` prints one line
and exits, which makes the launcher stop the other ranks. An uncaught exception under MPI prints its
traceback and exits at once too (no MPI_Finalize, which would wait for the others).
"""
import os
import sys
import time

import numpy as np

from .backend import get_array_module, nccl_module, share_cores, to_numpy
from .layers.batchnorm import BatchNorm1d, BatchNorm2d

# environment variables through which launchers tell a process the number of ranks
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
# ... and the number of ranks on this node
LOCAL_SIZE_VARIABLES = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE",
                        "MV2_COMM_WORLD_LOCAL_SIZE")
DEFAULT_TIMEOUT = 300.0
# what to do when a rank has stopped: its own output says why; the run continues from its
# last checkpoint
RERUN = ("see that rank's own message above for why, then run the same command again with "
         "--resume auto to continue from the last checkpoint")


class DistributedError(RuntimeError):
    """MPI cannot be used, or another rank stopped answering."""


def launched_size():
    """Number of ranks the MPI launcher started (1 when not started by one)."""
    for name in SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 1:
            return int(value)
    return 1


def _reduce_alone():
    """MINIRATE_MPI_ALWAYS=1 under an MPI launcher: one rank still runs every reduction."""
    launched = any(os.environ.get(name, "").isdigit() for name in SIZE_VARIABLES)
    return launched and os.environ.get("MINIRATE_MPI_ALWAYS", "") == "1"


def world(timeout=DEFAULT_TIMEOUT):
    """The Communicator of this process: all ranks under `mpirun -n N` (N > 1), else one."""
    size = launched_size()
    if size == 1 and not _reduce_alone():
        return Communicator()
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise DistributedError(f"started with {size} MPI ranks, but mpi4py cannot be imported "
                               f"({e}); install it with: pip install -r requirements-mpi.txt"
                               ) from None
    sys.excepthook = _exit_on_uncaught                # a crash must not wait in MPI_Finalize
    share_cores(launched_local_size() or size)        # the ranks on this node split its cores
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
    `nccl`: the NCCL communicator device arrays are reduced through (None: through the host).
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
        self.nccl = None

    @property
    def alone(self):
        """True when there is nothing to reduce: one process, no MPI communicator."""
        return self.size == 1 and self.mpi_comm is None

    # -- devices ------------------------------------------------------------------------------
    def use_device(self, xp):
        """Once the array module is chosen, before any array is made: on a GPU, take this rank's
        device and join an NCCL communicator. Returns a line for the log saying how device
        arrays are reduced, or None when there is nothing to say (one process, or the CPU).

        Every rank decides together: NCCL is used only when every rank can load it, so that no
        rank waits in NCCL for ranks that reduce through the host.
        """
        if self.mpi_comm is None or xp is np:
            return None
        devices = xp.cuda.runtime.getDeviceCount()
        device = launched_local_rank() % devices
        xp.cuda.Device(device).use()
        nccl, why = nccl_module(xp)
        if os.environ.get("MINIRATE_NCCL", "") == "0":
            nccl, why = None, "MINIRATE_NCCL=0"
        elif nccl is not None and (launched_local_size() or 1) > devices:
            nccl, why = None, (f"{launched_local_size()} ranks share this node's {devices} "
                               f"GPU(s), and NCCL takes one GPU per rank")
        everyone = self.mpi_comm.allreduce(0 if nccl is None else 1) == self.size
        if not everyone:
            why = why or "another rank cannot load NCCL"
            return (f"gradients and batchnorm statistics: all-reduced by MPI through host "
                    f"memory (NCCL not used: {why})")
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = self.mpi_comm.bcast(uid, root=0)
        try:
            self.nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        except Exception as e:            # NcclError: NCCL's own message, first line
            raise DistributedError(f"NCCL could not join the {self.size} ranks on GPU {device}: "
                                   f"{str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                                   f"MINIRATE_NCCL=0 reduces through host MPI instead"
                                   ) from None
        self._nccl_types = {np.dtype(np.float32): nccl.NCCL_FLOAT32,
                            np.dtype(np.float64): nccl.NCCL_FLOAT64}
        self._nccl_sum = nccl.NCCL_SUM
        return (f"gradients and batchnorm statistics: all-reduced by NCCL on the GPUs "
                f"({self.size} rank(s), this one on GPU {device})")

    # -- reductions -------------------------------------------------------------------------
    def allreduce_sum(self, a, what="all-reduce"):
        """Σ over ranks of array `a` (any shape), as a new array of `a`'s module and dtype."""
        if self.alone:
            return a
        xp = get_array_module(a)
        if self.nccl is not None and xp is not np:
            return self._nccl_allreduce_sum(xp, a, what)
        send = np.ascontiguousarray(to_numpy(a))
        recv = np.empty_like(send)
        t0 = time.perf_counter()
        request = self.mpi_comm.Iallreduce(send, recv)
        self._wait(lambda: self._test(request, what), what)
        self.seconds_reducing += time.perf_counter() - t0
        self.bytes_reduced += send.nbytes
        return recv if xp is np else xp.asarray(recv)

    def _nccl_allreduce_sum(self, xp, a, what):
        """allreduce_sum of a device array through NCCL, on the current stream, waited for
        against the timeout like MPI's (a stopped rank leaves NCCL spinning: abort it)."""
        send = xp.ascontiguousarray(a)
        recv = xp.empty_like(send)
        kind = self._nccl_types.get(send.dtype)
        if kind is None:
            raise DistributedError(f"{what}: NCCL path has no type for {send.dtype}")
        stream = xp.cuda.get_current_stream()
        t0 = time.perf_counter()
        self.nccl.allReduce(send.data.ptr, recv.data.ptr, send.size, kind, self._nccl_sum,
                            stream.ptr)
        try:
            self._wait(lambda: stream.done, f"{what}, NCCL")
        except DistributedError:
            self.nccl.abort()
            raise
        self.seconds_reducing += time.perf_counter() - t0
        self.bytes_reduced += send.nbytes
        return recv

    def _wait(self, done, what):
        """Poll `done()` until it is true (a non-blocking request completed, a stream's work
        finished), or raise DistributedError after `timeout` s."""
        deadline = time.monotonic() + self.timeout
        pause = 0.0
        while not done():
            if time.monotonic() > deadline:
                raise self._no_answer(what)
            time.sleep(pause)                       # spin first, then back off to 1 ms
            pause = min(1e-3, pause + 1e-5)

    def _test(self, request, what):
        """request.Test(), an MPI failure (a rank's connection lost) as DistributedError."""
        try:
            return request.Test()
        except Exception as e:            # mpi4py's MPI.Exception: the MPI library's own error
            raise DistributedError(f"{what} failed: {str(e).splitlines()[0]}; {RERUN}") from None

    def _no_answer(self, what):
        """The error of a reduction that got no answer in time. An all-reduce cannot tell who
        is missing, except that with two ranks it can only be the other one."""
        who = f"rank {1 - self.rank}" if self.size == 2 else "another rank"
        return DistributedError(f"no answer from {who} within {self.timeout:g} s ({what}); "
                                f"it has probably stopped: {RERUN}")

    def sum_numbers(self, *values):
        """Σ over ranks of a few Python numbers (float64), as a tuple of floats."""
        if self.alone:
            return tuple(float(v) for v in values)
        return tuple(float(v) for v in self.allreduce_sum(np.array(values, dtype=np.float64),
                                                          "sum of counters"))

    def average_gradients(self, params):
        """g ← (1/N) Σ_r g_r for every gradient of `params` (name, p, g, decay), in place.

        All gradients travel in one flat buffer: one all-reduce per step.
        """
        if self.alone:
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
# ... and this process's rank among those on its node
LOCAL_RANK_VARIABLES = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK",
                        "MV2_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID")


def launched_rank():
    """This process's rank as the MPI launcher told it (0 when not started by one)."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def launched_local_size():
    """Number of ranks on this node as the launcher told it (None when it did not)."""
    local = [os.environ[v] for v in LOCAL_SIZE_VARIABLES if os.environ.get(v, "").isdigit()]
    return int(local[0]) if local else None


def launched_local_rank():
    """This process's rank on its node as the launcher told it (0 when it did not): the GPU it
    takes, modulo the GPUs there."""
    for name in LOCAL_RANK_VARIABLES:
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
    if comm.alone:
        return
    for _, module in model.named_modules():
        if isinstance(module, (BatchNorm1d, BatchNorm2d)):
            module.reduce_sum = lambda a: comm.allreduce_sum(a, "batchnorm statistics")
