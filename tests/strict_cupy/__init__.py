"""A strict host-memory stand-in for CuPy, for the tests (`--device strict`, the `xp`
fixture's `strict` half).

`cupy` is a module object with CuPy 14's names whose arrays (`ndarray`) live in host memory as
NumPy buffers but refuse whatever a CuPy array refuses: implicit conversion to NumPy
(`np.asarray(a)`), mixing with NumPy arrays (`a + numpy_array`, `a[...] = numpy_array`), NumPy
functions on them, and every name CuPy does not have. A test that passes on it can fail on a
GPU only for numerical or performance reasons. `register()` makes it minirate's device
"strict". What it refuses beyond CuPy, and why: tests/strict_cupy/_array.py's docstring.

    cupy        the module (strict.cupy.zeros, strict.cupy.cuda.Device, ...)
    ndarray     its array class
    register()  backend.register_test_device("strict", cupy, ndarray); returns the module
"""
from ._array import ndarray
from ._module import module as cupy

DEVICE = "strict"


def register():
    """Make `--device strict` (and get_xp('strict')) this stand-in, in this process."""
    from minirate import backend
    backend.register_test_device(DEVICE, cupy, ndarray)
    return cupy


__all__ = ["cupy", "ndarray", "register", "DEVICE"]
