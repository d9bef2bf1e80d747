"""Fused GPU kernels: when to use them, how to compile and launch them.

On a GPU every NumPy-style call is a kernel launch; a LIF layer looping over T in Python, or a
batchnorm of several elementwise passes, is launch-bound. The layers therefore carry, beside
each NumPy function, the CUDA C source of one kernel doing the same work in one launch (the
loop over T inside it, one thread per neuron or per element). The NumPy function stays the
specification: NumPy arrays never reach a kernel.

- `use_fused(xp)`: True when `xp` is a GPU array module (not NumPy, has `RawKernel`) and the
  environment variable MINIRATE_FUSED is not "0" (set it to compare with the unfused path).
- `fusable(xp, *arrays)`: use_fused, and the arrays (None skipped) share float32 or float64 and
  are small enough for 32-bit indices; otherwise the layer takes its unfused path.
- `launch(xp, code, name, n, dtype, *args)`: compiles `code` once per (module, source, name,
  dtype), with `typedef float real;` or `typedef double real;` in front, and launches it with
  blocks of BLOCK threads, enough of them for n threads (the kernels loop grid-stride).

Kernels are compiled with --fmad=false: a multiply followed by an add is rounded twice, as in
NumPy and in CuPy's separate elementwise kernels, so the fused and unfused paths give the same
numbers up to the math library (exp, atan), and a spike never flips between them for rounding.
This module gets the array module from its caller (backend.get_array_module); it imports no
GPU library itself.
"""
import os

import numpy as np

BLOCK = 256                    # threads per block
MAX_GRID = 65535               # blocks per launch at most; kernels loop grid-stride beyond
MAX_SIZE = 2**31 - 1           # kernels index with 32-bit integers
OPTIONS = ("--fmad=false",)
REAL = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

_compiled = {}


def use_fused(xp):
    """Whether ops on arrays of module `xp` take their fused kernels."""
    return (xp is not np and hasattr(xp, "RawKernel")
            and os.environ.get("MINIRATE_FUSED", "1").strip() != "0")


def fusable(xp, *arrays):
    """use_fused(xp), and the arrays given (None skipped) share a float dtype a kernel has and
    fit 32-bit indices."""
    arrays = [a for a in arrays if a is not None]
    if not use_fused(xp) or not arrays:
        return False
    dtype = arrays[0].dtype
    return dtype in REAL and all(a.dtype == dtype and a.size <= MAX_SIZE for a in arrays)


def real(dtype, value):
    """`value` as the scalar type of `real` for arrays of `dtype` (np.float32 or np.float64)."""
    return np.dtype(dtype).type(value)


def source(code, dtype):
    """The source compiled for `dtype`: the `real` typedef, then `code`."""
    return f"typedef {REAL[np.dtype(dtype)]} real;\n{code}"


def kernel(xp, code, name, dtype):
    """xp.RawKernel for kernel `name` of `code` with `real` = dtype, compiled once."""
    key = (xp, code, name, np.dtype(dtype))
    if key not in _compiled:
        _compiled[key] = xp.RawKernel(source(code, dtype), name, options=OPTIONS)
    return _compiled[key]


def grid(n):
    """Blocks for n threads (at least one, at most MAX_GRID)."""
    return max(1, min(MAX_GRID, (n + BLOCK - 1) // BLOCK))


def launch(xp, code, name, n, dtype, *args):
    """Run kernel `name` of `code` for n threads. args: arrays (C-contiguous, pointer
    parameters) and NumPy scalars of the parameter's exact type (np.int32, np.float32,
    np.float64), in the kernel's order. Nothing is launched for n = 0."""
    for i, a in enumerate(args):
        if not isinstance(a, np.generic) and not a.flags.c_contiguous:
            raise ValueError(f"{name}: argument {i} is not C-contiguous")
    if n > 0:
        kernel(xp, code, name, dtype)((grid(n),), (BLOCK,), args)
