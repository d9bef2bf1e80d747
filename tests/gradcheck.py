"""Float64 central-difference gradient checks shared by the tests.

Always pair a function with a *random* upstream gradient `dy`: the scalar checked is
sum(f(x) * dy), whose gradient is the vector-Jacobian product a backward must return. Summing
the outputs instead (dy = 1) hides wrong batchnorm and softmax backwards.
"""
import numpy as np


def numerical_grad(f, x, dy, h=1e-6):
    """d sum(f() * dy) / d x by central differences; `f` reads `x`, which is perturbed in place."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        fp = np.sum(f() * dy)
        x[i] = old - h
        fm = np.sum(f() * dy)
        x[i] = old
        grad[i] = (fp - fm) / (2 * h)
        it.iternext()
    return grad


def rel_error(a, b):
    """Worst-case relative error max|a-b| / max(|a|+|b|), safe when both are near zero."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a) + np.abs(b)), 1e-12))
