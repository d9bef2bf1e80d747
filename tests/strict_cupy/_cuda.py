"""`strict.cuda`: the device, streams, events, allocators and memory pool of the stand-in, and
`RawKernel`. One device (0); every operation is finished when it returns (NumPy), so streams
and events are always done, and an event's time is the host clock when it was recorded."""
import contextlib
import os
import time
import types

from . import _memory
from .names import load

NAMES = load()
# GPUs the stand-in pretends to have: 1, or STRICT_CUPY_DEVICES (tests of one GPU per MPI rank)
DEVICE_COUNT = int(os.environ.get("STRICT_CUPY_DEVICES", "1"))
_current = {"device": 0}        # the device of this process's last Device.use()


def current_device():
    """The id of the device last made current with Device(i).use() (0 before any)."""
    return _current["device"]


class CUDARuntimeError(RuntimeError):
    """What cupy.cuda.runtime raises (here: an invalid device)."""


def _check_device(i):
    if not 0 <= int(i) < DEVICE_COUNT:
        raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")
    return int(i)


class Device:
    """cupy.cuda.Device(device=None): None is the current device."""

    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)

    def use(self):
        _current["device"] = _check_device(self.id)

    def synchronize(self):
        _check_device(self.id)

    def __enter__(self):
        self.use()
        return self

    def __exit__(self, *exc):
        return False

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)


class Stream:
    """cupy.cuda.Stream: only the null stream (`Stream.null`, ptr 0) exists in the stand-in."""

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        if not null:
            raise NotImplementedError("the stand-in has only the null stream")
        self.ptr = 0

    @property
    def done(self):
        return True

    def synchronize(self):
        pass


Stream.null = Stream(null=True)


def get_current_stream(device_id=-1):
    return Stream.null


class Event:
    """cupy.cuda.Event(block=False, disable_timing=False, interprocess=False)."""

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.disable_timing, self._t = disable_timing, None

    def record(self, stream=None):
        self._t = time.perf_counter()

    def synchronize(self):
        pass

    @property
    def done(self):
        return True


def get_elapsed_time(start_event, end_event):
    """Milliseconds between two recorded events, as CuPy's."""
    for e in (start_event, end_event):
        if e._t is None or e.disable_timing:
            raise CUDARuntimeError("cudaErrorInvalidResourceHandle: event not recorded "
                                   "or made with disable_timing")
    return (end_event._t - start_event._t) * 1e3


@contextlib.contextmanager
def using_allocator(allocator=None):
    """Allocations in this thread go through `allocator(nbytes)` (None: no pool, each
    allocation on its own, as cupy.cuda.alloc)."""
    previous = getattr(_memory._local, "allocator", None)
    _memory._local.allocator = allocator or _memory.MemoryPool().malloc
    try:
        yield
    finally:
        if previous is None:
            del _memory._local.allocator
        else:
            _memory._local.allocator = previous


def get_allocator():
    return _memory.current_allocator()


runtime = types.SimpleNamespace(
    getDeviceCount=lambda: DEVICE_COUNT,
    CUDARuntimeError=CUDARuntimeError,
    deviceSynchronize=lambda: None,
)


def _nccl():
    """tests/strict_nccl.py as cuda.nccl, where that stand-in exists."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "strict_nccl.py")
    if not os.path.exists(path):
        raise AttributeError("module 'cupy.cuda' has no attribute 'nccl' (no NCCL stand-in)")
    from tests import strict_nccl
    return strict_nccl


class _CudaModule(types.ModuleType):
    """Only the names cupy.cuda has; those the stand-in lacks say so."""

    def __getattr__(self, name):
        if name == "nccl":
            return _nccl()
        if name in NAMES["submodules"]["cuda"]:
            raise AttributeError(f"cupy.cuda.{name} is not provided by the strict stand-in")
        raise AttributeError(f"module 'cupy.cuda' has no attribute {name!r}")


cuda = _CudaModule("cupy.cuda")
for _name, _obj in dict(Device=Device, Stream=Stream, Event=Event, runtime=runtime,
                        get_current_stream=get_current_stream, get_elapsed_time=get_elapsed_time,
                        using_allocator=using_allocator, get_allocator=get_allocator,
                        MemoryPool=_memory.MemoryPool, MemoryPointer=_memory.MemoryPointer,
                        Memory=_memory.Memory).items():
    assert _name in NAMES["submodules"]["cuda"], _name
    setattr(cuda, _name, _obj)
