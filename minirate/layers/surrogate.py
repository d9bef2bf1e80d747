"""Surrogate derivatives of the spike function s = H(x), x = u - θ.

The forward spike is a hard step; backward replaces its derivative (a Dirac delta) with a smooth
bump `grad(x)`. Each surrogate also names its `smooth(x)`: the function whose exact derivative is
`grad(x)`. Gradient-check tests run the network with `smooth` as the spike function, so finite
differences see exactly the graph that backward differentiates.

    sigmoid   (α=4): grad = α σ(αx)(1 − σ(αx))             smooth = σ(αx)
    atan      (α=2): grad = (α/2) / (1 + (π α x / 2)²)      smooth = atan(π α x / 2)/π + 1/2
    triangle  (α=1): grad = max(0, 1 − |x|/α) / α           smooth = piecewise quadratic ramp 0 → 1
    rectangle (α=1): grad = 1[|x| < α/2] / α                smooth = clip(x/α + 1/2, 0, 1)

α sets the sharpness (sigmoid, atan) or the width (triangle, rectangle).
"""
import math

from ..backend import get_array_module

DEFAULT_ALPHA = {"sigmoid": 4.0, "atan": 2.0, "triangle": 1.0, "rectangle": 1.0}


def _sigmoid(xp, z):
    # 1/(1+exp(-z)) written to avoid overflow warnings for large |z|
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _sigmoid_grad(xp, x, alpha):
    """α σ(αx)(1 − σ(αx)) = α e / (1 + e)² with e = exp(−α|x|).

    The bump is even in x, so writing it through exp(−α|x|) ≤ 1 never overflows. It is on the
    hot path of every LIF backward: two temporaries, updated in place.
    """
    e = xp.abs(x)
    e *= -alpha
    xp.exp(e, out=e)
    d = e + 1
    d *= d
    e /= d
    e *= alpha
    return e


def surrogate_grad(x, name, alpha):
    """Surrogate derivative dH/dx evaluated at x = u − θ."""
    xp = get_array_module(x)
    if name == "sigmoid":
        return _sigmoid_grad(xp, x, alpha)
    if name == "atan":
        return (alpha / 2) / (1 + (math.pi / 2 * alpha * x) ** 2)
    if name == "triangle":
        return xp.maximum(0, 1 - xp.abs(x) / alpha) / alpha
    if name == "rectangle":
        return (xp.abs(x) < alpha / 2).astype(x.dtype) / alpha
    raise ValueError(f"unknown surrogate {name!r}; choose one of {', '.join(DEFAULT_ALPHA)}")


def surrogate_smooth(x, name, alpha):
    """A smooth spike function whose exact derivative is `surrogate_grad` (for tests)."""
    xp = get_array_module(x)
    if name == "sigmoid":
        return _sigmoid(xp, alpha * x)
    if name == "atan":
        return xp.arctan(math.pi / 2 * alpha * x) / math.pi + 0.5
    if name == "triangle":
        z = xp.clip(x / alpha, -1, 1)
        return xp.where(z < 0, (1 + z) ** 2 / 2, 1 - (1 - z) ** 2 / 2)
    if name == "rectangle":
        return xp.clip(x / alpha + 0.5, 0, 1)
    raise ValueError(f"unknown surrogate {name!r}; choose one of {', '.join(DEFAULT_ALPHA)}")
