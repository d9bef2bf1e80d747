"""The stand-in's `ndarray`: a NumPy array in host memory that refuses what a CuPy array refuses.

It is not a NumPy array (no subclass): NumPy functions and ufuncs, implicit conversion and
mixing with NumPy arrays raise TypeError, and only attributes `cupy.ndarray` has exist. The
maths is NumPy's, on the wrapped buffer; every result is a stand-in array (a reduction or a full
integer index gives a 0-d array, as in CuPy, never a NumPy scalar).

Stricter than CuPy, on purpose (each is an implicit host-to-device copy on a GPU, which the
library never means to make):
- NumPy *functions and ufuncs* on a stand-in array (`np.exp(a)`, `np.sum(a)`) are refused.
  CuPy's `__array_ufunc__`/`__array_function__` hand them to the CuPy function of that name
  when one exists, so they would run; in minirate they mean an op that is not generic.
  Accepted, as on CuPy: a NumPy scalar's operator (`np.float32(2) * a`, `np.int64(3) < a`):
  NumPy turns it into the ufunc call (scalar, a) -- two operands, one a NumPy scalar (for a
  comparison NumPy passes it as a 0-d array, whose item() CuPy takes), no keywords -- and the
  stand-in computes it. An explicit `np.multiply(np.float32(2), a)` or `np.less(a, 0-d NumPy
  array)` looks the same to it and is accepted too; with a Python scalar (`np.multiply(a, 2.0)`)
  it is refused, since no NumPy scalar operator produces that call.
- NumPy arrays as indices (`a[np.array([0, 2])]`): CuPy copies them to the device. Lists of
  Python ints are accepted, as CuPy does.
- NumPy arrays as values assigned through an advanced index (`a[idx] = numpy_array`): CuPy
  copies them; through a basic index CuPy refuses non-0-d NumPy arrays, as the stand-in does
  for every index.
"""
import numbers
import weakref

import numpy as np

from . import _memory
from .names import load

NAMES = load()
_owners = {}        # id(NumPy buffer) -> weak reference to the stand-in array that owns it
_ATTRIBUTES = frozenset(NAMES["classes"]["ndarray"])
_SIGNATURES = NAMES["signatures"]

COMPARISONS = ("greater", "greater_equal", "less", "less_equal", "equal", "not_equal")
IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
            "construct a NumPy array explicitly.")


def check_call(key, args, kwargs):
    """Refuse arguments CuPy's `key` (a function name, or 'ndarray.<method>') does not take:
    NumPy's functions take keywords CuPy's lack (`where=`, `initial=`, ...)."""
    sig = _SIGNATURES.get(key)
    if sig is None:
        return
    if not sig["varargs"] and len(args) > len(sig["names"]):
        raise TypeError(f"cupy {key}() takes at most {len(sig['names'])} positional arguments")
    unknown = set(kwargs) - set(sig["names"])
    if unknown and not sig["varkw"]:
        raise TypeError(f"cupy {key}() got unexpected keyword arguments {sorted(unknown)} "
                        f"(it takes {sig['names']})")


def _scalar(x):
    """A Python or NumPy scalar, which CuPy passes to a kernel by value."""
    return isinstance(x, (np.generic, numbers.Number)) and not isinstance(x, np.ndarray)


def refuse_numpy(x, where):
    raise TypeError(f"{where}: Unsupported type {type(x)} (a NumPy array on the host; move it "
                    f"explicitly with xp.asarray)")


def dev(x, where="cupy"):
    """The NumPy buffer behind stand-in array `x`; NumPy arrays are refused; lists and tuples
    are unwrapped element by element; anything else (scalars, dtypes, shapes) passes."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        refuse_numpy(x, where)
    if isinstance(x, (list, tuple)):
        return type(x)(dev(v, where) for v in x)
    return x


def operand(x, where):
    """An operand of a ufunc: a stand-in array or a scalar (CuPy's _preprocess_args)."""
    if isinstance(x, ndarray):
        return x._a
    if _scalar(x):
        return x
    if isinstance(x, np.ndarray):
        refuse_numpy(x, where)
    raise TypeError(f"{where}: Unsupported type {type(x)}")


def wrap(r):
    """NumPy results as stand-in arrays: arrays, scalars (as 0-d arrays), tuples and lists of
    them; anything else (None, dtypes, Python numbers from item()) unchanged."""
    if isinstance(r, np.ndarray):
        return ndarray._from_numpy(r)
    if isinstance(r, np.generic):
        return ndarray._from_numpy(np.asarray(r))
    if isinstance(r, (tuple, list)):
        return type(r)(wrap(v) for v in r)
    return r


def _index(key):
    """An index with stand-in arrays unwrapped; NumPy arrays refused (see the module docstring)."""
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    if isinstance(key, ndarray):
        return key._a
    if isinstance(key, np.ndarray):
        raise TypeError("index: a NumPy array used as an index of a device array (CuPy would "
                        "copy it to the device on every use); make it with xp.asarray")
    if isinstance(key, list):
        return [_index(k) for k in key]
    return key


def _binary(ufunc, reflected=False):
    def op(self, other):
        if not (isinstance(other, (ndarray, np.ndarray)) or _scalar(other)):
            return NotImplemented
        where = f"operator {ufunc.__name__}"
        a, b = self._a, operand(other, where)
        return wrap(ufunc(b, a) if reflected else ufunc(a, b))
    return op


def _inplace(ufunc):
    def op(self, other):
        ufunc(self._a, operand(other, f"operator {ufunc.__name__}="), out=self._a)
        return self
    return op


def _unary(ufunc):
    def op(self):
        return wrap(ufunc(self._a))
    return op


class ndarray:
    """cupy.ndarray(shape, dtype=float, memptr=None, strides=None, order='C').

    `_a` is the NumPy buffer (or a view of one); `_base` the stand-in array that owns the
    buffer when this is a view (None when it owns it: then `_mem` is its pool block)."""

    __slots__ = ("_a", "_mem", "_base", "__weakref__")
    __array_priority__ = 100
    __hash__ = None

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise NotImplementedError("the stand-in makes new arrays only")
        self._own(np.empty(shape, dtype, order=order))

    def _own(self, arr):
        self._a, self._base, self._mem = arr, None, _memory.allocate(arr.nbytes)
        _owners[id(arr)] = weakref.ref(self, lambda _, key=id(arr): _owners.pop(key, None))

    @classmethod
    def _from_numpy(cls, arr):
        """Wrap NumPy array `arr` (no copy): a buffer the stand-in owns, never a caller's. A view
        of a buffer a stand-in array owns is a view of that array; a new buffer is a new array
        (a block from the allocator); the very buffer of an array is that array."""
        root = arr
        while isinstance(root.base, np.ndarray):
            root = root.base
        ref = _owners.get(id(root))
        owner = ref() if ref is not None else None
        if owner is not None and owner._a is not root:
            owner = None                   # a stale entry: that buffer's id was reused
        if owner is None:
            owner = cls.__new__(cls)
            owner._own(root)
        if arr is root:
            return owner
        view = cls.__new__(cls)
        view._a, view._base, view._mem = arr, owner, None
        return view

    @property
    def base(self):
        return self._base

    # -- what CuPy refuses ------------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError(IMPLICIT)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        from . import _module
        others = [x for x in inputs if x is not self]
        comparison = ufunc.__name__ in COMPARISONS
        numpy_scalar_operator = (
            method == "__call__" and not kwargs and len(inputs) == 2 and len(others) == 1
            and (isinstance(others[0], np.generic)
                 # NumPy hands a scalar's comparison over as a 0-d array; CuPy takes its item()
                 or comparison and isinstance(others[0], np.ndarray) and others[0].ndim == 0))
        if numpy_scalar_operator and ufunc.__name__ in _module.UFUNCS:
            if comparison:
                inputs = tuple(x.item() if isinstance(x, np.ndarray) else x for x in inputs)
            return getattr(_module.module, ufunc.__name__)(*inputs)
        raise TypeError(f"numpy.{ufunc.__name__} (method {method!r}) called on a device array: "
                        f"use the array module's own function (xp = get_array_module(x)). "
                        + IMPLICIT)

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} called on a device array: use the array "
                        f"module's own function (xp = get_array_module(x)). " + IMPLICIT)

    def __getattr__(self, name):
        """Attributes of cupy.ndarray not written out below: NumPy's, results wrapped."""
        if name.startswith("_") or name not in _ATTRIBUTES:
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r}")
        value = getattr(self._a, name)
        if not callable(value):
            return wrap(value)

        def method(*args, **kwargs):
            check_call(f"ndarray.{name}", args, kwargs)
            out = kwargs.get("out")
            r = value(*dev(args, f"ndarray.{name}"),
                      **{k: dev(v, f"ndarray.{name}") for k, v in kwargs.items()})
            return out if out is not None and r is dev(out) else wrap(r)
        method.__name__ = name
        return method

    # -- explicit copies and host values ----------------------------------------------------
    def get(self, stream=None, order="C", out=None, blocking=True):
        if out is not None:
            out[...] = self._a
            return out
        return np.array(self._a, order=order, copy=True)

    def set(self, arr, stream=None):
        if not isinstance(arr, np.ndarray) or arr.shape != self.shape:
            raise ValueError("set: needs a NumPy array of the same shape")
        self._a[...] = arr

    @property
    def data(self):
        mem = self._mem if self._base is None else self._base._mem
        return _memory.MemoryPointer(mem, self._a.ctypes.data if self._a.size else 0)

    @property
    def device(self):
        from ._cuda import Device
        return Device(0)

    def item(self):
        return self._a.item()

    def tolist(self):
        return self._a.tolist()

    def __float__(self):
        return float(self.get())

    def __int__(self):
        return int(self.get())

    def __complex__(self):
        return complex(self.get())

    def __bool__(self):
        return bool(self.get())

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self._a)))

    def __repr__(self):
        return repr(self._a)

    def __str__(self):
        return str(self._a)

    def __format__(self, spec):
        return format(self.get(), spec)

    def __copy__(self):
        return wrap(self._a.copy())

    def __deepcopy__(self, memo):
        return wrap(self._a.copy())

    def __reduce__(self):          # pickling copies, as CuPy's does
        return (_unpickle, (self._a.copy(),))

    # -- indexing ---------------------------------------------------------------------------
    def __getitem__(self, key):
        key = _index(key)
        r = self._a[key]
        if not isinstance(r, np.ndarray):          # a full integer index: a 0-d view, as CuPy
            keys = key if isinstance(key, tuple) else (key,)
            r = self._a[keys + (Ellipsis,)]
        return ndarray._from_numpy(r)

    def __setitem__(self, key, value):
        if isinstance(value, ndarray):
            value = value._a
        elif isinstance(value, np.ndarray) and value.ndim > 0:
            raise TypeError("assignment of a NumPy array into a device array: CuPy refuses it "
                            "(non-scalar numpy.ndarray cannot be used for fill); copy it with "
                            "xp.asarray first")
        elif not (_scalar(value) or isinstance(value, np.ndarray)):
            raise ValueError(f"cannot assign a {type(value).__name__} into a device array "
                             f"(non-scalar values must be device arrays)")
        self._a[_index(key)] = value

    # -- operators --------------------------------------------------------------------------
    __add__, __radd__, __iadd__ = _binary(np.add), _binary(np.add, True), _inplace(np.add)
    __sub__, __rsub__, __isub__ = (_binary(np.subtract), _binary(np.subtract, True),
                                   _inplace(np.subtract))
    __mul__, __rmul__, __imul__ = (_binary(np.multiply), _binary(np.multiply, True),
                                   _inplace(np.multiply))
    __truediv__, __rtruediv__, __itruediv__ = (_binary(np.true_divide),
                                               _binary(np.true_divide, True),
                                               _inplace(np.true_divide))
    __floordiv__, __rfloordiv__, __ifloordiv__ = (_binary(np.floor_divide),
                                                  _binary(np.floor_divide, True),
                                                  _inplace(np.floor_divide))
    __mod__, __rmod__, __imod__ = (_binary(np.remainder), _binary(np.remainder, True),
                                   _inplace(np.remainder))
    __pow__, __rpow__, __ipow__ = (_binary(np.power), _binary(np.power, True),
                                   _inplace(np.power))
    __matmul__, __rmatmul__ = _binary(np.matmul), _binary(np.matmul, True)
    __and__, __rand__, __iand__ = (_binary(np.bitwise_and), _binary(np.bitwise_and, True),
                                   _inplace(np.bitwise_and))
    __or__, __ror__, __ior__ = (_binary(np.bitwise_or), _binary(np.bitwise_or, True),
                                _inplace(np.bitwise_or))
    __xor__, __rxor__, __ixor__ = (_binary(np.bitwise_xor), _binary(np.bitwise_xor, True),
                                   _inplace(np.bitwise_xor))
    __lshift__, __rlshift__, __ilshift__ = (_binary(np.left_shift),
                                            _binary(np.left_shift, True),
                                            _inplace(np.left_shift))
    __rshift__, __rrshift__, __irshift__ = (_binary(np.right_shift),
                                            _binary(np.right_shift, True),
                                            _inplace(np.right_shift))
    __lt__, __le__ = _binary(np.less), _binary(np.less_equal)
    __gt__, __ge__ = _binary(np.greater), _binary(np.greater_equal)
    __eq__, __ne__ = _binary(np.equal), _binary(np.not_equal)
    __neg__, __pos__, __abs__ = _unary(np.negative), _unary(np.positive), _unary(np.absolute)
    __invert__ = _unary(np.invert)

    def __divmod__(self, other):
        return wrap(np.divmod(self._a, operand(other, "divmod")))

    def __rdivmod__(self, other):
        return wrap(np.divmod(operand(other, "divmod"), self._a))


def _unpickle(arr):
    return ndarray._from_numpy(arr)


# every dunder written above must be one cupy.ndarray has
_EXTRA = {n for n in vars(ndarray) if n.startswith("__") and n.endswith("__")} \
    - set(NAMES["ndarray_dunders"]) - {"__slots__", "__weakref__", "__getattr__", "__module__",
                                       "__qualname__", "__firstlineno__", "__static_attributes__"}
assert not _EXTRA, f"stand-in ndarray defines what cupy.ndarray lacks: {sorted(_EXTRA)}"
