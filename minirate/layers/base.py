"""Module: the parameter, gradient and buffer bookkeeping shared by every layer.

A leaf layer (conv, batchnorm, LIF, ...) offers

    y, cache = layer.forward(x)      # cache: a NamedTuple of exactly what backward needs
    dx = layer.backward(dy, cache)   # adds parameter gradients into layer.grads
    layer.backward(dy, cache, need_dx=False)   # a layer with parameters whose input gradient
                                               # nobody reads: the same, dx not computed (None)

A container (Sequential, BasicBlock) only wires children together; see `container.py`.
Training methods (`minirate/methods/`) decide which caches to keep; layers never know the method.

Names follow PyTorch: the state dict of a minirate model uses the keys that the equivalent
`torch.nn` model uses (`layer1.0.bn1.running_mean`), so weights move between the two by name.
"""
from collections import OrderedDict

import numpy as np

from ..backend import get_array_module, to_device, to_numpy


class StateDictError(ValueError):
    """A state dict that does not fit the model (missing, extra or wrong-shaped entries)."""


class Module:
    def __init__(self):
        self.params = OrderedDict()    # local name -> trainable array
        self.grads = OrderedDict()     # local name -> gradient array, same shape as the parameter
        self.buffers = OrderedDict()   # local name -> saved, non-trainable array (running stats)
        self.children = OrderedDict()  # local name -> Module
        self.no_decay = set()          # local parameter names that get no weight decay
        self.training = True

    # -- building -------------------------------------------------------------------------
    def add_param(self, name, value, decay=True):
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)
        if not decay:
            self.no_decay.add(name)

    def add_child(self, name, module):
        self.children[str(name)] = module
        return module

    # -- walking the tree -----------------------------------------------------------------
    def named_modules(self, prefix=""):
        """(dotted name, module) for this module and every descendant, parents first."""
        yield prefix, self
        for name, child in self.children.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def parameters(self):
        """List of (dotted name, param, grad, decay) for every trainable array."""
        out = []
        for mname, m in self.named_modules():
            for pname, p in m.params.items():
                full = f"{mname}.{pname}" if mname else pname
                out.append((full, p, m.grads[pname], pname not in m.no_decay))
        return out

    def params_list(self):
        """Every parameter array (not the gradients), e.g. to leave out of byte counts."""
        return [p for _, p, _, _ in self.parameters()]

    def zero_grad(self):
        for _, m in self.named_modules():
            for g in m.grads.values():
                g[...] = 0

    def train(self, mode=True):
        for _, m in self.named_modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    def new_sequence(self, batch_size):
        """A new batch of `batch_size` sequences starts: every module in the tree that keeps
        something for a whole sequence (a neuron dropout's mask) is told by its
        `begin_sequence(batch_size)`. Training methods call this once per batch."""
        for _, m in self.named_modules():
            if hasattr(m, "begin_sequence"):
                m.begin_sequence(batch_size)

    def to(self, xp, dtype=None):
        """Move every array to array module `xp` (numpy/cupy); floats cast to `dtype` if given."""
        for _, m in self.named_modules():
            for d in (m.params, m.grads, m.buffers):
                for k, v in d.items():
                    if dtype is not None and np.issubdtype(v.dtype, np.floating):
                        v = v.astype(dtype)
                    d[k] = to_device(v, xp)
        return self

    @property
    def xp(self):
        for _, p, _, _ in self.parameters():
            return get_array_module(p)
        return np

    # -- state dict -----------------------------------------------------------------------
    def _entries(self):
        """(dotted name, owning dict, local key) for every parameter and buffer, torch order."""
        for mname, m in self.named_modules():
            for d in (m.params, m.buffers):
                for k in d:
                    yield (f"{mname}.{k}" if mname else k), d, k

    def state_dict(self):
        """OrderedDict of dotted name -> NumPy copy, named as the equivalent torch.nn model."""
        return OrderedDict((name, to_numpy(d[k]).copy()) for name, d, k in self._entries())

    def load_state_dict(self, state):
        """Copy arrays from `state` in place; raise StateDictError naming any mismatch."""
        entries = {name: (d, k) for name, d, k in self._entries()}
        check_state_keys(state, {n: tuple(d[k].shape) for n, (d, k) in entries.items()}, "model")
        for name, (d, k) in entries.items():
            xp = get_array_module(d[k])
            d[k][...] = xp.asarray(np.asarray(state[name]), dtype=d[k].dtype)


def check_state_keys(state, shapes, what):
    """Raise StateDictError naming every missing, unexpected or wrong-shaped key of `state`
    against the expected `shapes` ({name: shape}); `what` names the receiver in the message."""
    missing = [k for k in shapes if k not in state]
    extra = [k for k in state if k not in shapes]
    wrong = [f"{k} {tuple(np.shape(state[k]))} vs {shapes[k]}" for k in shapes
             if k in state and tuple(np.shape(state[k])) != tuple(shapes[k])]
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(_short(missing)))
    if extra:
        problems.append("unexpected keys: " + ", ".join(_short(extra)))
    if wrong:
        problems.append(f"wrong shapes (given vs {what}): " + "; ".join(_short(wrong)))
    if problems:
        raise StateDictError("; ".join(problems))


def _short(items, n=5):
    items = list(items)
    return items[:n] + ([f"... ({len(items) - n} more)"] if len(items) > n else [])


def cache_nbytes(*caches, exclude=()):
    """Bytes held by the arrays inside caches (NamedTuples, tuples, lists, dicts).

    An array reachable from several caches is counted once (by the memory it views), so the
    total is what backward really keeps alive. Arrays in `exclude` (the model's parameters,
    which exist anyway) are not counted.
    """
    seen = {id(a) for a in exclude}
    total = 0

    def visit(obj):
        nonlocal total
        if obj is None or isinstance(obj, (int, float, str, bool)):
            return
        if hasattr(obj, "nbytes") and hasattr(obj, "dtype"):
            base = obj
            while getattr(base, "base", None) is not None:
                base = base.base
            if id(base) not in seen:
                seen.add(id(base))
                total += base.nbytes
            return
        if isinstance(obj, dict):
            for v in obj.values():
                visit(v)
        elif isinstance(obj, (tuple, list)):
            for v in obj:
                visit(v)

    for c in caches:
        visit(c)
    return total
