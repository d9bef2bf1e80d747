"""The names the real CuPy exports, which are all the strict stand-in may expose.

    python -m tests.strict_cupy.names    # rewrite tests/cupy14_names.json from the installed cupy

`derive(cupy)` reads them from an imported cupy package: the module's public names with their
kind, the attributes of `cupy.ndarray` and of a ufunc (whether `add.at` exists), the names of
the submodules and classes the stand-in imitates, and the parameter names of CuPy's functions
and array methods (so that a keyword only NumPy takes is refused). tests/test_strict_cupy.py
checks, wherever cupy is installed, that the file equals what `derive` reads from it.
"""
import ast
import inspect
import json
import os
import pkgutil
import sys

import numpy as np

PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "cupy14_names.json")

# the classes (dotted paths below cupy) whose public attributes the stand-in may have
CLASSES = ("ndarray", "RawKernel", "cuda.Device", "cuda.Event", "cuda.Stream",
           "cuda.MemoryPool", "cuda.MemoryPointer")
# the submodules whose public names are recorded
SUBMODULES = ("cuda", "cuda.runtime", "random", "linalg")


def _kind(name, obj):
    """How the stand-in must provide cupy.<name>: the very NumPy object, a ufunc, a function,
    a class, a submodule, or a plain value."""
    if getattr(np, name, None) is obj and not isinstance(obj, (int, float)):
        return "numpy"
    if type(obj).__name__ == "ufunc":
        return "ufunc"
    if inspect.ismodule(obj) or type(obj).__name__ == "_LazyModule":
        return "module"
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "function"
    return "value"


def _resolve(cupy, dotted):
    obj = cupy
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _public(obj):
    return sorted(n for n in dir(obj) if not n.startswith("_"))


def _parameters(fn):
    """{'names': [...], 'varargs', 'varkw'} of a callable's parameters, from its signature or,
    for Cython methods, the signature line their docstring starts with; None if neither."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        line = (getattr(fn, "__doc__", None) or "").strip().split("\n")[0]
        head, _, rest = line.partition("(")
        if not rest or " " in head.strip():
            return None
        try:
            tree = ast.parse(f"def f({rest.rpartition(')')[0]}): pass")
        except SyntaxError:
            return None
        a = tree.body[0].args
        names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
        return {"names": [n for n in names if n != "self"], "varargs": a.vararg is not None,
                "varkw": a.kwarg is not None}
    kinds = inspect.Parameter
    return {"names": [n for n, p in sig.parameters.items()
                      if p.kind not in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD) and n != "self"],
            "varargs": any(p.kind == kinds.VAR_POSITIONAL for p in sig.parameters.values()),
            "varkw": any(p.kind == kinds.VAR_KEYWORD for p in sig.parameters.values())}


def derive(cupy):
    """{'version', 'module': {name: kind}, 'ndarray_dunders', 'ufunc', 'classes', 'submodules'}
    read from the imported package `cupy`."""
    module = {n: _kind(n, getattr(cupy, n)) for n in _public(cupy)}
    submodules = {}
    for dotted in SUBMODULES:
        sub = _resolve(cupy, dotted)
        names = set(_public(sub))
        if hasattr(sub, "__path__"):      # a package: its submodules too (cuda.nccl is lazy)
            names |= {m.name for m in pkgutil.iter_modules(sub.__path__)
                      if not m.name.startswith("_")}
        submodules[dotted] = sorted(names)
    signatures = {n: _parameters(getattr(cupy, n)) for n, k in module.items()
                   if k == "function"}
    signatures.update({f"ndarray.{n}": _parameters(getattr(cupy.ndarray, n))
                       for n in _public(cupy.ndarray) if callable(getattr(cupy.ndarray, n))})
    return {
        "version": cupy.__version__,
        "signatures": {n: v for n, v in signatures.items() if v is not None},
        "module": module,
        "ndarray_dunders": sorted(n for n in dir(cupy.ndarray) if n.startswith("__")),
        "ufunc": _public(cupy.add),
        "classes": {dotted: _public(_resolve(cupy, dotted)) for dotted in CLASSES},
        "submodules": submodules,
    }


def load():
    with open(PATH) as f:
        return json.load(f)


def write(names, path=PATH):
    with open(path, "w") as f:
        json.dump(names, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    import cupy
    write(derive(cupy))
    sys.stdout.write(f"wrote {PATH} from cupy {cupy.__version__}\n")
