"""Containers wire children together; they hold no maths of their own.

A container's `forward(x, run)` calls `run(layer, x)` for each leaf layer in order and its
`backward(dy, back)` calls `back(layer, dy)` in exactly the reverse order. The training method
supplies `run` and `back`: it decides what each leaf computes and which caches are kept
(BPTT keeps everything, rate-based backprop keeps only statistics in its spike pass, ...).

Unused input gradients: `backward(dy, back, need_dx=False)` says that nobody reads the gradient
of the container's input (the network input, or a local block's input, which is a constant). It
returns None, and passes the same news on to the children that feed only that gradient:

    a child with parameters      still runs its backward, as `back(layer, dy, False)` for a leaf:
                                 its parameter gradients, without its input gradient
    a child without parameters   (LIF, pooling, an identity shortcut) is not run at all, and the
                                 child before it in forward order needs no input gradient either

A `back` callback that is only ever given need_dx=True may take two arguments.
"""
from .base import Module


class Container(Module):
    def forward(self, x, run):
        raise NotImplementedError

    def backward(self, dy, back, need_dx=True):
        raise NotImplementedError


def has_params(module):
    """True when `module` or any module inside it has a trainable array."""
    return any(m.params for _, m in module.named_modules())


def call(child, x, run):
    """Forward through a child that may be a leaf or a container."""
    return child.forward(x, run) if isinstance(child, Container) else run(child, x)


def call_back(child, dy, back, need_dx=True):
    """Backward through a child that may be a leaf or a container; with need_dx=False the
    child's input gradient is not computed (None), and a child without parameters not run."""
    if need_dx:
        return child.backward(dy, back) if isinstance(child, Container) else back(child, dy)
    if not has_params(child):
        return None
    return child.backward(dy, back, False) if isinstance(child, Container) else back(child, dy, False)


def backward_chain(children, dy, back, need_dx=True):
    """Backward through children run one after another in forward order (y = f_n(... f_1(x))):
    in reverse. With need_dx=False the first child computes no input gradient, nor does any
    child whose only reader is a child without parameters before it."""
    children = list(children)
    need = [need_dx]                   # need[i]: is child i's input gradient read by anyone?
    for child in children[:-1]:
        need.append(need[-1] or has_params(child))
    for child, need_i in zip(reversed(children), reversed(need)):
        dy = call_back(child, dy, back, need_i)
    return dy


class Sequential(Container):
    """Children named '0', '1', ... as torch.nn.Sequential; y = f_n(... f_1(x))."""

    def __init__(self, *layers):
        super().__init__()
        for i, layer in enumerate(layers):
            self.add_child(str(i), layer)

    def __len__(self):
        return len(self.children)

    def forward(self, x, run):
        for child in self.children.values():
            x = call(child, x, run)
        return x

    def backward(self, dy, back, need_dx=True):
        if not self.children:              # identity
            return dy if need_dx else None
        return backward_chain(self.children.values(), dy, back, need_dx)
