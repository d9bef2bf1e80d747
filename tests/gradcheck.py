"""Float64 central-difference gradient checks shared by the tests.

Always pair a function with a *random* upstream gradient `dy`: the scalar checked is
sum(f(x) * dy), whose gradient is the vector-Jacobian product a backward must return. Summing
the outputs instead (dy = 1) hides wrong batchnorm and softmax backwards.

Both helpers take NumPy or CuPy arrays (the array module comes from `x`), so the same checks run
on the GPU; `rel_error` compares arrays of either kind on the host.
"""
import numpy as np

from minirate.backend import get_array_module, to_numpy


def numerical_grad(f, x, dy, h=1e-6, entries=None):
    """d sum(f() * dy) / d x by central differences; `f` reads `x`, which is perturbed in place.
    Only at `entries` (index tuples, see `check_entries`) when given; zero elsewhere."""
    xp = get_array_module(x)
    grad = xp.zeros_like(x)
    for i in (np.ndindex(*x.shape) if entries is None else entries):
        old = float(x[i])
        x[i] = old + h
        fp = float((f() * dy).sum())        # .sum(): f may return a host scalar (a loss)
        x[i] = old - h
        fm = float((f() * dy).sum())
        x[i] = old
        grad[i] = (fp - fm) / (2 * h)
    return grad


def rel_error(a, b, entries=None):
    """Worst-case relative error max|a-b| / max(|a|+|b|), safe when both are near zero; over
    `entries` only, when given."""
    a, b = to_numpy(a).astype(np.float64), to_numpy(b).astype(np.float64)
    if entries is not None:
        at = tuple(np.array(entries).T)                  # [(i, j, ...)] -> ([i...], [j...], ...)
        a, b = a[at], b[at]
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a) + np.abs(b)), 1e-12))


GPU_ENTRIES = 16


def check_entries(x, seed=0):
    """The entries of `x` a whole-network check perturbs: every one for NumPy arrays (None); for
    CuPy arrays at most GPU_ENTRIES drawn at random. Each entry costs two whole training steps,
    and on a GPU a step of a tiny net is hundreds of launches; every entry is still checked on
    the CPU, and benchmarks/gpu_cpu_agreement.py compares every entry with the CPU's."""
    if get_array_module(x) is np or x.size <= GPU_ENTRIES:
        return None
    flat = np.random.default_rng(seed).choice(x.size, GPU_ENTRIES, replace=False)
    return [tuple(int(v) for v in np.unravel_index(i, x.shape)) for i in np.sort(flat)]


def check_method_gradients(net, method, x, y, loss_fn, dy, value=1, h=1e-5, tol=1e-6):
    """Every parameter gradient one `method.step(x, y, loss_fn)` adds, against central
    differences of sum(method.step(...)[value] * dy): `value` 1 (the logits) with a random `dy`
    for a random-upstream loss, or 0 (the loss itself) with dy = 1 for a real scalar loss.
    Each gradient must be non-zero somewhere, or the check would prove nothing. Returns the
    analytic gradients {name: array}."""
    net.zero_grad()
    method.step(x, y, loss_fn)
    analytic = {name: g.copy() for name, _, g, _ in net.parameters()}

    def f():
        net.zero_grad()
        return method.step(x, y, loss_fn)[value]

    for name, p, _, _ in net.parameters():
        entries = check_entries(p)
        num = numerical_grad(f, p, dy, h=h, entries=entries)
        err = rel_error(analytic[name], num, entries)
        assert err < tol, f"{name}: relative error {err:.2e}"
        assert float(abs(num).max()) > 0, f"{name}: zero gradient, the check would prove nothing"
    return analytic
