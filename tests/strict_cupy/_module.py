"""The stand-in module itself: `cupy`'s names, each NumPy's function on the arrays' buffers.

A name the real CuPy 14 does not export raises AttributeError (tests/cupy14_names.json holds
CuPy's names). The rest, by the kind CuPy gives it:
- the very NumPy objects CuPy re-exports (`float32`, `dtype`, `finfo`, `newaxis`): themselves;
- ufuncs: operands are stand-in arrays or scalars; NumPy arrays and lists raise TypeError;
  the result is always a stand-in array (0-d for scalars), as CuPy's;
- host-to-device copies (`array`, `asarray`, `asanyarray`) accept NumPy data and copy it;
  `asnumpy` copies back;
- questions about types and shapes (`result_type`, `can_cast`, `ndim`, ...) take anything;
- every other function: NumPy's, with stand-in arrays unwrapped and NumPy arrays refused, and
  only with the parameters CuPy's function has (a ufunc: out, dtype, casting).
Dtypes are NumPy 2's, which CuPy 14 follows (NEP 50: Python scalars are weak).
"""
import types

import numpy as np

from . import _cuda, _memory
from ._array import check_call, dev, ndarray, operand, wrap
from .names import load

NAMES = load()
KINDS = NAMES["module"]
UFUNCS = frozenset(n for n, k in KINDS.items() if k == "ufunc")
UFUNC_METHODS = frozenset(NAMES["ufunc"])
UFUNC_KEYWORDS = frozenset({"out", "dtype", "casting"})
# functions that answer questions about types and shapes: arrays of either kind, host results
HOST_QUESTIONS = frozenset({"result_type", "can_cast", "common_type", "min_scalar_type",
                            "promote_types", "ndim", "shape", "size", "isscalar",
                            "iscomplexobj", "isrealobj", "isfortran"})


class ufunc:
    """A CuPy ufunc: NumPy's of the same name on stand-in arrays and scalars."""

    def __init__(self, name):
        self._np = getattr(np, name)
        self.__name__ = self.name = name
        self.nin, self.nout, self.nargs = self._np.nin, self._np.nout, self._np.nargs

    def _kwargs(self, kwargs):
        unknown = set(kwargs) - UFUNC_KEYWORDS
        if unknown:                 # NumPy's where=, order=, subok= ...: CuPy's ufuncs refuse
            raise TypeError(f"cupy.{self.name}: Wrong arguments {sorted(unknown)}")
        out = kwargs.get("out")
        if out is not None and not isinstance(out, (ndarray, tuple)):
            raise TypeError(f"{self.name}: out must be a device array")
        return {k: dev(v, self.name) for k, v in kwargs.items()}

    def __call__(self, *inputs, **kwargs):
        args = [operand(x, f"cupy.{self.name}") for x in inputs]
        r = self._np(*args, **self._kwargs(kwargs))
        out = kwargs.get("out")
        return out if isinstance(out, ndarray) else wrap(r)

    def __getattr__(self, name):
        """reduce, accumulate, outer, at, reduceat: where CuPy's ufuncs have them."""
        if name.startswith("_") or name not in UFUNC_METHODS:
            raise AttributeError(f"'cupy.ufunc' object has no attribute {name!r}")
        method = getattr(self._np, name)

        def call(*args, **kwargs):
            where = f"cupy.{self.name}.{name}"
            r = method(*[dev(a, where) if isinstance(a, tuple) else operand(a, where)
                         for a in args], **{k: dev(v, where) for k, v in kwargs.items()})
            return None if r is None else wrap(r)
        return call

    def __repr__(self):
        return f"<ufunc '{self.name}'>"


def _function(name):
    """cupy.<name>: NumPy's function, NumPy arrays refused, results as stand-in arrays."""
    fn = getattr(np, name)

    def call(*args, **kwargs):
        check_call(name, args, kwargs)
        where = f"cupy.{name}"
        r = fn(*dev(args, where), **{k: dev(v, where) for k, v in kwargs.items()})
        out = kwargs.get("out")
        return out if isinstance(out, ndarray) and r is out._a else wrap(r)
    call.__name__ = name
    return call


def _host_question(name):
    """cupy.result_type & co.: arrays of either module (CuPy passes a device array's dtype)."""
    fn = getattr(np, name)
    by_dtype = name not in ("ndim", "shape", "size")

    def call(*args, **kwargs):
        return fn(*[(a.dtype if by_dtype else a._a) if isinstance(a, ndarray) else a
                    for a in args], **kwargs)
    call.__name__ = name
    return call


# -- copies between host and device ---------------------------------------------------------
def _host_data(a, dtype, order):
    """A new buffer holding `a` (NumPy data, Python data, or stand-in arrays in a list)."""
    return np.array(dev(a) if isinstance(a, (list, tuple)) else a, dtype=dtype,
                    order=order or "K", copy=True)


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    if isinstance(obj, ndarray):
        return wrap(np.array(obj._a, dtype=dtype, copy=copy, order=order, ndmin=ndmin))
    return wrap(np.array(_host_data(obj, dtype, order), ndmin=ndmin, copy=False))


def asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else wrap(a._a.astype(dtype))
    return wrap(_host_data(a, dtype, order))


asanyarray = asarray


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return np.asarray(a, order=order)


def ascontiguousarray(a, dtype=None):
    if not isinstance(a, ndarray):
        raise TypeError(f"cupy.ascontiguousarray: Argument 'a' has incorrect type (expected "
                        f"cupy.ndarray, got {type(a).__name__})")
    r = np.ascontiguousarray(a._a, dtype=dtype)
    return a if r is a._a else wrap(r)


def get_array_module(*args):
    return module if any(isinstance(a, ndarray) for a in args) else np


def get_default_memory_pool():
    return _memory.default_pool


class RawKernel:
    """cupy.RawKernel(code, name, options=()): run on the host by tests/host_cuda.py.

    A call `k(grid, block, args, shared_mem=0)` takes tuples for grid and block (as CuPy), and
    is stricter than CuPy about `args`: only NumPy scalars (np.int32, np.float32, ...) and
    C-contiguous stand-in arrays. CuPy would pass a NumPy array as a pointer to host memory
    and a Python int or float as a 64-bit value whatever the kernel's parameter type; both
    read garbage on a GPU.
    """
    _compiled = {}                     # (code, name, options) -> HostKernel

    def __init__(self, code, name, options=(), backend="nvrtc", translate_cucomplex=False,
                 *, enable_cooperative_groups=False, jitify=False):
        self.code, self.name, self.options = code, name, tuple(options)
        self.backend = backend
        self.enable_cooperative_groups = enable_cooperative_groups

    @property
    def kernel(self):
        key = (self.code, self.name, self.options)
        if key not in RawKernel._compiled:
            from tests.host_cuda import HostKernel
            RawKernel._compiled[key] = HostKernel(self.code, self.name, self.options)
        return RawKernel._compiled[key]

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None,
                 enable_cooperative_groups=False):
        if not isinstance(grid, tuple) or not isinstance(block, tuple):
            raise TypeError(f"{self.name}: grid and block must be tuples, got "
                            f"{type(grid).__name__} and {type(block).__name__}")
        host_args = []
        for i, x in enumerate(args):
            if isinstance(x, ndarray):
                if not x._a.flags.c_contiguous:
                    raise ValueError(f"{self.name}: argument {i} is not C-contiguous; the kernel "
                                     f"would read it as if it were")
                host_args.append(x._a)
            elif isinstance(x, np.generic):
                host_args.append(x)
            elif isinstance(x, np.ndarray):
                raise TypeError(f"{self.name}: argument {i} is a NumPy array (host memory); "
                                f"pass a device array")
            else:
                raise TypeError(f"{self.name}: argument {i} is a Python {type(x).__name__}; "
                                f"pass a NumPy scalar of the kernel's type (np.int32, "
                                f"np.float32, ...)")
        self.kernel(grid, block, tuple(host_args))


# -- the module object ----------------------------------------------------------------------
_WRITTEN = dict(ndarray=ndarray, array=array, asarray=asarray, asanyarray=asanyarray,
                asnumpy=asnumpy, ascontiguousarray=ascontiguousarray,
                get_array_module=get_array_module,
                get_default_memory_pool=get_default_memory_pool, RawKernel=RawKernel,
                cuda=_cuda.cuda, __version__=NAMES["version"])


class _StrictCupy(types.ModuleType):
    """The stand-in for the `cupy` module (see this file's docstring)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        kind = KINDS.get(name)
        if kind is None:
            raise AttributeError(f"module 'cupy' has no attribute {name!r}")
        if kind == "numpy":
            value = getattr(np, name)
        elif kind == "ufunc":
            value = ufunc(name)
        elif name in HOST_QUESTIONS:
            value = _host_question(name)
        elif kind == "function" and callable(getattr(np, name, None)):
            value = _function(name)
        else:
            raise AttributeError(f"cupy.{name} is not provided by the strict stand-in")
        setattr(self, name, value)           # made once
        return value

    def __dir__(self):
        return sorted(KINDS)


module = _StrictCupy("cupy", __doc__)
for _name, _obj in _WRITTEN.items():
    assert _name == "__version__" or _name in KINDS, _name
    setattr(module, _name, _obj)

