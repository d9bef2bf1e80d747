"""Containers wire children together; they hold no maths of their own.

A container's `forward(x, run)` calls `run(layer, x)` for each leaf layer in order and its
`backward(dy, back)` calls `back(layer, dy)` in exactly the reverse order. The training method
supplies `run` and `back`: it decides what each leaf computes and which caches are kept
(BPTT keeps everything, rate-based backprop keeps only statistics in its spike pass, ...).
"""
from .base import Module


class Container(Module):
    def forward(self, x, run):
        raise NotImplementedError

    def backward(self, dy, back):
        raise NotImplementedError


def call(child, x, run):
    """Forward through a child that may be a leaf or a container."""
    return child.forward(x, run) if isinstance(child, Container) else run(child, x)


def call_back(child, dy, back):
    """Backward through a child that may be a leaf or a container."""
    return child.backward(dy, back) if isinstance(child, Container) else back(child, dy)


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

    def backward(self, dy, back):
        for child in reversed(list(self.children.values())):
            dy = call_back(child, dy, back)
        return dy
