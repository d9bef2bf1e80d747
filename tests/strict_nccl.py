"""A host-memory stand-in for `cupy.cuda.nccl`, reached as `strict.cuda.nccl` (tests only).

It has the real binding's names and call signatures (CuPy 14 with NCCL 2.x) and carries out
each collective with MPI on the host buffers behind the stand-in arrays' `.data.ptr`. Like the
strict array module it refuses what NCCL would do wrong or refuse:

- a communicator whose ranks did not all join with the same id (the id was not broadcast), or
  whose `ndev` is not the number of ranks, or whose ranks are not 0 … ndev − 1, or two of whose
  ranks use the same GPU of one machine (the stand-in's `Device(i).use()`);
- buffers passed as arrays instead of device pointers (the binding takes `intptr_t`);
- a type or reduction code it does not know.

`reductions` counts the all-reduces done, so a test can tell that NCCL, not host MPI, moved
the data. The enum values are NCCL's own (nccl.h), which the real binding exports unchanged.
"""
import ctypes
import os

import numpy as np

available = True

NCCL_INT8 = NCCL_CHAR = 0
NCCL_UINT8 = 1
NCCL_INT32 = NCCL_INT = 2
NCCL_UINT32 = 3
NCCL_INT64 = 4
NCCL_UINT64 = 5
NCCL_FLOAT16 = NCCL_HALF = 6
NCCL_FLOAT32 = NCCL_FLOAT = 7
NCCL_FLOAT64 = NCCL_DOUBLE = 8
NCCL_BFLOAT16 = 9
NCCL_SUM, NCCL_PROD, NCCL_MAX, NCCL_MIN, NCCL_AVG = 0, 1, 2, 3, 4

# what the stand-in can carry out: NCCL type code -> NumPy dtype, reduction code -> MPI op name
_DTYPES = {NCCL_INT8: np.int8, NCCL_UINT8: np.uint8, NCCL_INT32: np.int32,
           NCCL_UINT32: np.uint32, NCCL_INT64: np.int64, NCCL_UINT64: np.uint64,
           NCCL_FLOAT16: np.float16, NCCL_FLOAT32: np.float32, NCCL_FLOAT64: np.float64}
_OPS = {NCCL_SUM: "SUM", NCCL_PROD: "PROD", NCCL_MAX: "MAX", NCCL_MIN: "MIN"}

reductions = 0          # all-reduces carried out by every communicator of this process


class NcclError(RuntimeError):
    """What the real binding raises for a failed NCCL call."""


def get_version():
    return 23206


def get_unique_id():
    """A fresh id (bytes, 128 of them as ncclUniqueId), to be sent to the other ranks."""
    return os.urandom(128)


def _host_view(ptr, count, dtype):
    """The `count` values of `dtype` at host address `ptr`, as a NumPy array (no copy)."""
    if count == 0:
        return np.empty(0, dtype)
    buf = (ctypes.c_char * (count * np.dtype(dtype).itemsize)).from_address(ptr)
    return np.frombuffer(buf, dtype=dtype, count=count)


def _pointer(value, name):
    if type(value) is not int:            # the binding's intptr_t: arrays are refused
        raise TypeError(f"NcclCommunicator: {name} must be a device pointer (int, e.g. "
                        f"a.data.ptr), got {type(value).__name__}")
    return value


class NcclCommunicator:
    """NcclCommunicator(ndev, commId, rank, config=None): one rank of `ndev`, over MPI."""

    def __init__(self, ndev, commId, rank, config=None):
        from mpi4py import MPI
        if not isinstance(commId, bytes) or len(commId) != 128:
            raise TypeError("NcclCommunicator: commId must be the 128 bytes of get_unique_id()")
        from tests.strict_cupy._cuda import current_device
        self._mpi, self._op = MPI.COMM_WORLD, MPI
        joined = self._mpi.allgather((commId, int(rank), int(ndev)))
        devices = self._mpi.allgather((MPI.Get_processor_name(), current_device()))
        if len(set(devices)) != len(devices):
            raise NcclError("two ranks on one GPU: NCCL takes one GPU per rank "
                            "(Device(i).use() with a different i on each rank)")
        if len({c for c, _, _ in joined}) != 1:
            raise NcclError("ranks joined with different ids: get_unique_id() was called on "
                            "more than one rank instead of being broadcast from one")
        if sorted(r for _, r, _ in joined) != list(range(len(joined))) or \
                any(n != len(joined) for _, _, n in joined):
            raise NcclError(f"ranks {[r for _, r, _ in joined]} with ndev "
                            f"{[n for _, _, n in joined]} do not make one communicator of "
                            f"{len(joined)} ranks")
        self._rank, self._size, self._alive = int(rank), int(ndev), True

    def size(self):
        return self._size

    def rank_id(self):
        return self._rank

    def device_id(self):
        return 0

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        global reductions
        if not self._alive:
            raise NcclError("communicator used after abort() or destroy()")
        send, recv = _pointer(sendbuf, "sendbuf"), _pointer(recvbuf, "recvbuf")
        _pointer(stream, "stream")
        if datatype not in _DTYPES or op not in _OPS:
            raise NcclError(f"unsupported datatype {datatype} or op {op}")
        src = _host_view(send, int(count), _DTYPES[datatype])
        dst = _host_view(recv, int(count), _DTYPES[datatype])
        self._mpi.Allreduce(src.copy() if send == recv else src, dst,
                            op=getattr(self._op, _OPS[op]))
        reductions += 1

    def abort(self):
        self._alive = False

    def destroy(self):
        self._alive = False
