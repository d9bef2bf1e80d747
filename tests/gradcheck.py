"""Float64 central-difference gradient checks shared by the tests.

Always pair a function with a *random* upstream gradient `dy`: the scalar checked is
sum(f(x) * dy), whose gradient is the vector-Jacobian product a backward must return. Summing
the outputs instead (dy = 1) hides wrong batchnorm and softmax backwards.

Both helpers take NumPy or CuPy arrays (the array module comes from `x`), so the same checks run
on the GPU; `rel_error` compares arrays of either kind on the host.
"""
import numpy as np

from minirate.backend import get_array_module, to_numpy


def numerical_grad(f, x, dy, h=1e-6):
    """d sum(f() * dy) / d x by central differences; `f` reads `x`, which is perturbed in place."""
    xp = get_array_module(x)
    grad = xp.zeros_like(x)
    for i in np.ndindex(*x.shape):
        old = float(x[i])
        x[i] = old + h
        fp = float(xp.sum(f() * dy))
        x[i] = old - h
        fm = float(xp.sum(f() * dy))
        x[i] = old
        grad[i] = (fp - fm) / (2 * h)
    return grad


def rel_error(a, b):
    """Worst-case relative error max|a-b| / max(|a|+|b|), safe when both are near zero."""
    a, b = to_numpy(a).astype(np.float64), to_numpy(b).astype(np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a) + np.abs(b)), 1e-12))
