"""The one place that chooses between NumPy (CPU) and CuPy (GPU), and sets CPU threads.

No other file imports CuPy. Op bodies ask `get_array_module(x)` for the array module of their
inputs and stay generic; the device itself is an explicit choice (`--device cpu|cuda`).

Test devices: the tests register a host-memory stand-in for CuPy (`register_test_device`, e.g.
"strict", tests/strict_cupy) that refuses what CuPy refuses; once registered in a process,
`get_xp`, `get_array_module`, `to_numpy`, `to_device`, `synchronize` and the `--device` options
of train.py and the study (`devices()`) know it like "cuda". Nothing in minirate registers one.

CPU threads: NumPy's own loops (the copies of im2col, elementwise maths) run on one core, and
only its BLAS spreads a matrix multiply over several. The heavy layers (convolution,
batchnorm, LIF) therefore split their work into one contiguous range per core (`cpu_ranges`:
samples for convolution and batchnorm, neurons for LIF) and run the ranges on `cpu_threads()` threads at once (`cpu_map`),
each with single-threaded BLAS: then the copies and the elementwise maths run in parallel too.
threadpoolctl, the maintained way to set a loaded BLAS's thread count at run time, holds BLAS to
one thread for the whole process as soon as more than one thread is chosen (at get_xp('cpu') or
the first CPU operation), so that every operation of a run sums in the same order, however the
run was started or resumed (set MINIRATE_NUM_THREADS=1 to keep BLAS's own threading instead). Without threadpoolctl everything runs on one thread of
Python and BLAS keeps its own threads.
"""
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:
    from threadpoolctl import ThreadpoolController
except ImportError:  # optional: without it, cpu_map runs its calls one after another
    ThreadpoolController = None

try:  # CuPy is optional: without it everything runs on the CPU and nothing is said.
    import cupy as _cupy
except Exception:  # ImportError, or a CuPy that cannot find its CUDA libraries
    _cupy = None

DEVICES = ("cpu", "cuda")
_test_devices = {}          # name -> (array module, its array class), see register_test_device


class DeviceError(RuntimeError):
    """The requested device cannot be used (no CuPy, or no GPU)."""


def register_test_device(name, module, array_type):
    """Tests only: make device `name` the CuPy-like array `module` whose arrays are of class
    `array_type` (a stand-in for CuPy in host memory), in this process."""
    if name in DEVICES:
        raise ValueError(f"{name!r} is a real device")
    _test_devices[name] = (module, array_type)


def devices():
    """The device names --device accepts: cpu, cuda, and any test device registered."""
    return DEVICES + tuple(_test_devices)


def get_xp(device):
    """Array module for a device name: numpy for 'cpu', cupy for 'cuda', a registered test
    device's module by its name."""
    if device == "cpu":
        cpu_threads()           # settle the threads (and BLAS's) before the first operation
        return np
    if device in _test_devices:
        return _test_devices[device][0]
    if device != "cuda":
        raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(devices())}")
    if _cupy is None:
        raise DeviceError("--device cuda needs CuPy (pip install cupy-cuda12x or cupy-cuda13x), "
                          "which is not installed")
    try:
        n = _cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # driver missing or broken
        raise DeviceError(f"--device cuda: no usable GPU ({e})") from None
    if n < 1:
        raise DeviceError("--device cuda: no GPU found")
    return _cupy


def _test_module(x):
    """The registered test module whose array `x` is, or None."""
    for module, array_type in _test_devices.values():
        if isinstance(x, array_type):
            return module
    return None


def get_array_module(x):
    """numpy or cupy (or a registered test module), whichever owns array `x`."""
    test_module = _test_module(x) if _test_devices else None
    if test_module is not None:
        return test_module
    if _cupy is not None:
        return _cupy.get_array_module(x)
    return np


def to_numpy(x):
    """A NumPy copy of `x` (no copy when it already is a NumPy array)."""
    if _cupy is not None and isinstance(x, _cupy.ndarray):
        return _cupy.asnumpy(x)
    test_module = _test_module(x) if _test_devices else None
    if test_module is not None:
        return test_module.asnumpy(x)
    return np.asarray(x)


def to_device(x, xp):
    """`x` as an array of module `xp` (numpy or cupy)."""
    if xp is np:
        return to_numpy(x)
    return xp.asarray(x)


def synchronize(xp):
    """Wait for queued GPU work (for honest timings); nothing on the CPU."""
    if xp is not np:
        xp.cuda.Device().synchronize()


# -- CPU threads ----------------------------------------------------------------------------
_cpu = {"threads": None, "pool": None, "blas": None}


def _available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_threads():
    """Threads for `cpu_map`: set_cpu_threads(n), else $MINIRATE_NUM_THREADS, else the cores this
    process may use; 1 without threadpoolctl."""
    if ThreadpoolController is None:
        return 1
    if _cpu["threads"] is None:
        _cpu["threads"] = _threads_from_environment() or _available_cores()
        if _cpu["threads"] > 1:
            _hold_blas_to_one_thread()
    return _cpu["threads"]


def _threads_from_environment():
    """MINIRATE_NUM_THREADS as a positive count; None when unset or not one (with a warning)."""
    env = os.environ.get("MINIRATE_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    if env:
        sys.stderr.write(f"warning: MINIRATE_NUM_THREADS={env!r} is not a positive integer; "
                         f"ignored\n")
    return None


def _hold_blas_to_one_thread():
    """From now on, for the whole process (see the module docstring). Set as soon as the thread
    count is known, before any operation: were BLAS multi-threaded for a process's first
    operations only, a resumed run would sum in another order than the run it continues."""
    if _cpu["blas"] is None and ThreadpoolController is not None:
        _cpu["blas"] = ThreadpoolController().limit(limits=1, user_api="blas")


def set_cpu_threads(n):
    """Use n threads for CPU work from now on (n >= 1)."""
    if int(n) < 1:
        raise ValueError(f"need at least one CPU thread, got {n}")
    _cpu["threads"] = int(n)
    if n > 1:
        _hold_blas_to_one_thread()
    if _cpu["pool"] is not None:
        _cpu["pool"].shutdown()
        _cpu["pool"] = None


def share_cores(n_processes):
    """This process shares the machine's cores with n_processes − 1 others (data-parallel ranks
    on one node): cpu_threads() becomes cores // n_processes, unless MINIRATE_NUM_THREADS says
    otherwise, and with one thread left BLAS is held to one thread too (several ranks each
    running a BLAS pool as wide as the machine would oversubscribe it many times over)."""
    if _threads_from_environment():
        return
    n = max(1, _available_cores() // max(1, int(n_processes)))
    set_cpu_threads(n)
    if n == 1:
        _hold_blas_to_one_thread()


MIN_THREAD_BYTES = 2**20   # a thread takes a range only if it holds this many bytes of work


def cpu_ranges(xp, n, item_bytes):
    """Contiguous ranges (a, b) covering 0..n, one per CPU thread, for `cpu_map`.

    A range gets at least MIN_THREAD_BYTES of work (item_bytes per item): handing a thread less
    costs more than it saves (tiny layers, gradient checks). On a GPU: one range, 0..n.
    """
    parts = min(cpu_threads(), n, n * item_bytes // MIN_THREAD_BYTES) if xp is np else 1
    parts = max(1, parts)
    bounds = [n * i // parts for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def cpu_map(fn, arg_tuples):
    """[fn(*args) for args in arg_tuples], the calls on `cpu_threads()` threads at once.

    NumPy releases the interpreter lock inside copies, ufuncs and BLAS, so the threads really
    run together. BLAS is held to one thread, so that they do not each start a pool of their own:
    from the first call that uses threads on, for the whole process. A single call runs in the
    calling thread. The threads handle floating-point errors as the caller does (np.seterr is
    per thread).
    """
    if len(arg_tuples) < 2 or cpu_threads() < 2:
        return [fn(*args) for args in arg_tuples]
    if _cpu["pool"] is None:
        _cpu["pool"] = ThreadPoolExecutor(cpu_threads(), thread_name_prefix="minirate-cpu")
    _hold_blas_to_one_thread()
    err = np.geterr()

    def call(args):
        with np.errstate(**err):
            return fn(*args)

    return list(_cpu["pool"].map(call, arg_tuples))


def nccl_module(xp):
    """(nccl, None): the NCCL binding of device array module `xp` (cupy.cuda.nccl); or
    (None, why) when there is none to use (NumPy, a CuPy built without NCCL, no libnccl)."""
    if xp is np:
        return None, "NumPy arrays are reduced by MPI"
    try:
        with warnings.catch_warnings():          # CuPy warns when it cannot load libnccl
            warnings.simplefilter("ignore")
            if _cupy is not None and xp is _cupy:
                import cupy.cuda.nccl as nccl
            else:
                nccl = xp.cuda.nccl              # a stand-in module registered by the tests
    except Exception as e:                       # ImportError, AttributeError
        return None, f"no NCCL binding ({e})"
    if not getattr(nccl, "available", False):
        return None, "CuPy cannot load the NCCL library (pip install nvidia-nccl-cu13)"
    return nccl, None


def available_memory(xp):
    """(bytes this process may still allocate for arrays of module `xp`, where that figure comes
    from), or None when it cannot be told.

    CPU: the smallest of /proc/meminfo's MemAvailable, what RLIMIT_AS leaves above the address
    space already in use, and what the cgroup's memory.max leaves above memory.current. GPU:
    the device's free memory (cudaMemGetInfo) plus what CuPy's pool holds unused.
    """
    if xp is not np:
        try:
            free = int(xp.cuda.runtime.memGetInfo()[0])
            pool = int(xp.get_default_memory_pool().free_bytes())
        except (AttributeError, RuntimeError):      # a stand-in without these calls
            return None
        return free + pool, "free on the GPU"
    found = []
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f if ":" in line)
        found.append((int(info["MemAvailable"].split()[0]) * 1024, "MemAvailable"))
    except (OSError, KeyError, ValueError):
        pass
    try:
        import resource
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit != resource.RLIM_INFINITY:
            with open("/proc/self/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            used = int(status["VmSize"].split()[0]) * 1024
            found.append((max(0, limit - used), "under RLIMIT_AS"))
    except (ImportError, OSError, KeyError, ValueError):
        pass
    try:
        with open("/proc/self/cgroup") as f:     # cgroup v2: the line "0::/path"
            path = next(line.strip()[3:] for line in f if line.startswith("0::"))
        folder = "/sys/fs/cgroup" + path.rstrip("/")
        with open(os.path.join(folder, "memory.max")) as f:
            limit = f.read().strip()
        if limit != "max":
            with open(os.path.join(folder, "memory.current")) as f:
                used = int(f.read().strip())
            found.append((max(0, int(limit) - used), "under the cgroup's memory.max"))
    except (OSError, StopIteration, ValueError):
        pass
    return min(found) if found else None
