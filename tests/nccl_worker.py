"""Run by tests/test_nccl.py under `mpirun -n 2`, on the strict CuPy stand-in: not a test file.

    python -m tests.nccl_worker nccl       every rank joins one NCCL communicator (the stand-in,
                                           tests/strict_nccl.py); data-parallel gradients and
                                           weights equal one NumPy process's, and every reduction
                                           went through NCCL
    python -m tests.nccl_worker host       the same where NCCL is not used (MINIRATE_NCCL=0, or
                                           more ranks than GPUs): reduced through host MPI
    python -m tests.nccl_worker no-bcast   every rank makes its own NCCL id: the stand-in must
                                           refuse the communicator, as NCCL would hang
    python -m tests.nccl_worker one-gpu    both ranks on GPU 0: refused, as NCCL refuses it

Prints `rank R ok: <how gradients were reduced>` on success; a failed check raises.
"""
import sys

from minirate.distributed import world
from tests import strict_nccl
from tests.mpi_worker import batches, train, worst_difference
from tests.strict_cupy import register

METHODS = (("bptt", "m"), ("rate_m", "m"))


def main(mode):
    strict = register()
    comm = world(timeout=60)
    if mode in ("no-bcast", "one-gpu"):
        nccl = strict.cuda.nccl
        strict.cuda.Device(comm.rank if mode == "no-bcast" else 0).use()
        uid = nccl.get_unique_id() if mode == "no-bcast" or comm.rank == 0 else None
        if mode == "one-gpu":
            uid = comm.mpi_comm.bcast(uid, root=0)
        try:
            nccl.NcclCommunicator(comm.size, uid, comm.rank)
        except nccl.NcclError as e:
            print(f"rank {comm.rank} ok: refused ({e})", flush=True)
            return
        raise AssertionError(f"{mode}: the NCCL stand-in made a communicator NCCL would refuse")
    how = comm.use_device(strict)
    assert how is not None and "all-reduced by" in how, how
    assert ("by NCCL" in how) == (mode == "nccl"), how
    for method_name, step_mode in METHODS:
        ref_grads, ref_state = train(None, method_name, step_mode, sync=False)
        before = strict_nccl.reductions
        grads, state = train(comm, method_name, step_mode, sync=True, xp=strict)
        assert worst_difference(ref_grads, grads) <= 1e-10, (method_name, "grads")
        assert worst_difference(ref_state, state) <= 1e-10, (method_name, "state")
        through_nccl = strict_nccl.reductions - before
        if mode == "nccl":     # one gradient all-reduce per step, batchnorm sums besides
            assert through_nccl > len(list(batches())), through_nccl
        else:
            assert through_nccl == 0, through_nccl
    print(f"rank {comm.rank} ok: {how}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
