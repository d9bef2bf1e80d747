"""Run by tests/test_distributed.py under `mpirun -n 2`: not a test file itself.

    python -m tests.mpi_worker same     every rank: data-parallel gradients and weights after a
                                        few SGD steps equal one process's on the whole batch
    python -m tests.mpi_worker die      rank 1 stops without a word after one step; rank 0 must
                                        end with one line instead of waiting for ever
    python -m tests.mpi_worker crash    rank 1 raises an uncaught exception: the run ends at once

Prints `rank R ok` on success; any failed check raises (non-zero exit).
"""
import os
import sys

import numpy as np

from minirate.backend import to_numpy
from minirate.distributed import DistributedError, fail, sync_batchnorm, world
from minirate.methods import make_method
from minirate.optim import SGD
from tests.nets import tiny_resnet

T, B, STEPS = 2, 4, 3


def batches(seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(STEPS):
        yield rng.normal(0.5, 1.0, size=(B, 3, 8, 8)), rng.integers(0, 5, size=B)


def train(comm, method_name, step_mode, sync, xp=np):
    """Grads after the first step and the state after STEPS SGD steps, on array module `xp`;
    comm None = one process."""
    net = tiny_resnet(seed=3, xp=xp)
    if comm is not None and sync:
        sync_batchnorm(net, comm)
    method = make_method(method_name, net, T, step_mode)
    params = net.parameters()
    opt = SGD(params, lr=0.5, momentum=0.9)
    first = None
    for x, y in batches():
        if comm is not None:
            x, y = comm.shard(x), comm.shard(y)
        net.zero_grad()
        method.step(xp.asarray(x), xp.asarray(y))
        if comm is not None:
            comm.average_gradients(params)
        if first is None:
            first = {name: to_numpy(g).copy() for name, _, g, _ in params}
        opt.step()
    return first, net.state_dict()


def worst_difference(a, b):
    return max(float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64))))
               for k in a)


def same(comm):
    for method_name, step_mode in (("bptt", "m"), ("bptt", "s"), ("rate_m", "m"), ("rate_s", "s")):
        ref_grads, ref_state = train(None, method_name, step_mode, sync=False)
        grads, state = train(comm, method_name, step_mode, sync=True)
        assert all(np.abs(g).max() > 0 for g in ref_grads.values()), "zero gradient: void check"
        dg, dw = worst_difference(ref_grads, grads), worst_difference(ref_state, state)
        assert dg <= 1e-10, f"{method_name}/{step_mode}: gradients differ by {dg:.3g}"
        assert dw <= 1e-10, f"{method_name}/{step_mode}: weights/statistics differ by {dw:.3g}"
        # without synchronised batchnorm the shards' statistics differ: the check can fail
        grads, _ = train(comm, method_name, step_mode, sync=False)
        assert worst_difference(ref_grads, grads) > 1e-6, "unsynchronised BN matched: check is void"
        print(f"rank {comm.rank} {method_name}/{step_mode}: gradients within {dg:.1e}, "
              f"weights within {dw:.1e}", flush=True)
    print(f"rank {comm.rank} ok", flush=True)


def die(comm):
    net = tiny_resnet(seed=3)
    sync_batchnorm(net, comm)
    method = make_method("bptt", net, T)
    try:
        for step, (x, y) in enumerate(batches()):
            if comm.rank == 1 and step == 1:
                os._exit(3)                      # as a crash would: no message, no MPI call
            net.zero_grad()
            method.step(comm.shard(x), comm.shard(y))
            comm.average_gradients(net.parameters())
    except DistributedError as e:
        fail(str(e))


def crash(comm):
    if comm.rank == 1:
        raise RuntimeError("a bug on rank 1")
    comm.allreduce_sum(np.ones(3))


if __name__ == "__main__":
    comm = world(timeout=float(os.environ.get("MINIRATE_MPI_TIMEOUT", "300")))
    assert comm.size == 2, f"run me with mpirun -n 2, got {comm.size} rank(s)"
    {"same": same, "die": die, "crash": crash}[sys.argv[1]](comm)
