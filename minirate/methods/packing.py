"""Spikes kept as bits: caches whose 0/1 tensors are stored bit-packed until backward needs them.

A spike tensor holds only 0 and 1, yet a cache keeps it as float32 (4 bytes a spike) or float64:
the LIF output s that the next conv or linear layer keeps for its weight gradient dW = dy ⊛ s,
max-pooled or flattened spikes (still 0/1), a dropout mask. Packed, one spike is one bit,
32 (or 64) times smaller:

    pack      bits = packbits(s == 1)              (⌈n/8⌉ bytes for n numbers)
    unpack    s    = unpackbits(bits)[:n] as the float dtype, reshaped

Unpacking gives back exactly the numbers that were packed, so every gradient is bitwise the
same as without packing. A method packs what it keeps (`Packer.keep`, on each cache as it is
stored) and unpacks before the layer's backward (`unpacked`); layers never see a packed array.

What is packed is decided by value, not by which layer made it: a floating array of a cache is
packed when every number in it is +0.0 or 1.0 (tested on its bits, so −0.0 stays as it is;
`try_pack`). A first look at a few numbers rules out most real-valued arrays at once. The parameters a cache
refers to (W, γ) are never looked at. Real-valued caches (batchnorm's x − μ, a LIF layer's u,
firing rates, OTTT's traces) stay as they are, so a method without spikes in its caches packs
nothing.
"""
from typing import NamedTuple

import numpy as np

from ..backend import get_array_module

FIRST_LOOK = 4096           # numbers looked at before a whole array is tested


class PackedSpikes(NamedTuple):
    bits: object       # (⌈n/8⌉,) uint8: the n numbers in C order, 8 to a byte, first in the top bit
    shape: tuple       # shape of the original array
    dtype: object      # its floating dtype


def try_pack(a):
    """PackedSpikes of the floating array `a` when it holds only +0.0 and 1.0, else None.

    One pass finds the ones, s1 = (a == 1); `a` is 0/1 exactly when the numbers whose bits are
    not all zero are just those ones (so −0.0 and NaN are not 0/1). A first look at a few
    numbers turns most real-valued arrays away before any pass over the whole.
    """
    xp = get_array_module(a)
    uint = {4: xp.uint32, 8: xp.uint64, 2: xp.uint16}.get(a.dtype.itemsize)
    if uint is None or a.size == 0 or a.dtype.kind != "f":
        return None

    def nonzero_bits(v):
        return int(xp.count_nonzero(xp.ascontiguousarray(v).reshape(-1).view(uint)))

    first = a.reshape(-1)[:FIRST_LOOK] if a.ndim == 1 else a[:1]     # a view: no copy of a
    if nonzero_bits(first) != int(xp.count_nonzero(first == 1)):
        return None
    ones = (a == 1).reshape(-1)
    if nonzero_bits(a) != int(xp.count_nonzero(ones)):
        return None
    return PackedSpikes(xp.packbits(ones), a.shape, a.dtype)


def is_binary(a):
    """True when the floating array `a` holds only +0.0 and 1.0 (compared as bit patterns)."""
    return try_pack(a) is not None


def pack(a):
    """A floating 0/1 array as PackedSpikes."""
    xp = get_array_module(a)
    return PackedSpikes(xp.packbits(a.reshape(-1) == 1), a.shape, a.dtype)


def unpack(p):
    """The array that `pack` was given, as a new array."""
    xp = get_array_module(p.bits)
    n = int(np.prod(p.shape, dtype=np.int64))
    return xp.unpackbits(p.bits)[:n].astype(p.dtype).reshape(p.shape)


def _is_floating_array(v):
    return hasattr(v, "dtype") and hasattr(v, "shape") and v.dtype.kind == "f"


class Packer:
    """Stores caches with their spike tensors packed (`keep`), or as they are when `enabled` is
    False. `exclude`: arrays never to pack or test (the model's parameters)."""

    def __init__(self, enabled=False, exclude=()):
        self.enabled = enabled
        self.exclude = {id(a) for a in exclude}

    def keep(self, cache):
        """`cache` with each 0/1 floating array field (also inside nested caches) packed."""
        if not self.enabled or not isinstance(cache, tuple) or not hasattr(cache, "_fields"):
            return cache
        changes = {}
        for name, v in zip(cache._fields, cache):
            if isinstance(v, tuple) and hasattr(v, "_fields"):
                packed = self.keep(v)
                if packed is not v:
                    changes[name] = packed
            elif _is_floating_array(v) and id(v) not in self.exclude:
                packed = try_pack(v)
                if packed is not None:
                    changes[name] = packed
        return cache._replace(**changes) if changes else cache

    def array(self, a):
        """A single array to keep (a block's input): packed when it is 0/1."""
        packed = try_pack(a) if self.enabled and _is_floating_array(a) else None
        return a if packed is None else packed


def unpacked(cache):
    """`cache` (or a single kept array) with every PackedSpikes field unpacked; as it is when
    nothing in it was packed."""
    if isinstance(cache, PackedSpikes):
        return unpack(cache)
    if not isinstance(cache, tuple) or not hasattr(cache, "_fields"):
        return cache
    changes = {}
    for name, v in zip(cache._fields, cache):
        if isinstance(v, PackedSpikes):
            changes[name] = unpack(v)
        elif isinstance(v, tuple) and hasattr(v, "_fields"):
            inner = unpacked(v)
            if inner is not v:
                changes[name] = inner
    return cache._replace(**changes) if changes else cache
