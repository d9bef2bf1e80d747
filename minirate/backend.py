"""The one place that chooses between NumPy (CPU) and CuPy (GPU).

No other file imports CuPy. Op bodies ask `get_array_module(x)` for the array module of their
inputs and stay generic; the device itself is an explicit choice (`--device cpu|cuda`).
"""
import numpy as np

try:  # CuPy is optional: without it everything runs on the CPU and nothing is said.
    import cupy as _cupy
except Exception:  # ImportError, or a CuPy that cannot find its CUDA libraries
    _cupy = None

DEVICES = ("cpu", "cuda")


class DeviceError(RuntimeError):
    """The requested device cannot be used (no CuPy, or no GPU)."""


def get_xp(device):
    """Array module for a device name: numpy for 'cpu', cupy for 'cuda'."""
    if device == "cpu":
        return np
    if device != "cuda":
        raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
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


def get_array_module(x):
    """numpy or cupy, whichever owns array `x`."""
    if _cupy is not None:
        return _cupy.get_array_module(x)
    return np


def to_numpy(x):
    """A NumPy copy of `x` (no copy when it already is a NumPy array)."""
    if _cupy is not None and isinstance(x, _cupy.ndarray):
        return _cupy.asnumpy(x)
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
