"""What one training step costs, counted from layer shapes: multiply-accumulates and memory traffic.

The counts need no method object, only (model, input shape, T, method name, window K, local
block boundaries), so that methods can be compared before they are run, or without running them.

Arithmetic, per sample and step, of the layers that multiply (aux heads included):

    conv      MACs = O · Ho · Wo · C · k · k    (dense: taps on the zero padding count too)
    linear    MACs = in · out
    forward   y  = W ⊛ x                        MACs, or ACs when x is a spike tensor
    backward  dx = Wᵀ ⊛ dy                      MACs (dy is real); not done where nothing needs
                                                dx: the network input, the first layers of a
                                                local block (no gradient crosses a block edge)
              dW = dy ⊛ x                       MACs, or ACs when x is a spike tensor

An AC (accumulate only) is a MAC whose multiplicand is 0 or 1: with a binary x, Σ W·x is a sum of
the weights where x = 1, as SNN papers count it. A layer's input is a spike tensor in a spiking
pass when it comes from a LIF layer through shape-only layers (flatten, max pooling); average
pooling makes it real. The rate pass of rate-based backprop feeds firing rates, so it is all MACs.
ACs are counted dense (every tap once, firing or not): a data-independent upper bound; with a
firing rate f an event-driven chip would do about f times as many. Batchnorm, LIF, pooling and the
residual add are elementwise (O(neurons), not O(synapses)): they cost no MACs here, only traffic.

Memory accesses: bytes read and written by each routine call, each operand array read once and
each result written once (an ideal fused kernel; minirate's NumPy passes do more), per element
of the call's input (in) / output (out) and once per call for the parameters (w):

    routine      conv / linear               batchnorm           LIF (per step)    pool / add
    fwd (BPTT)   R in + w, W out             R in + w, W 2 out   R 2 (I, u⁺),      R in, W out
                                             (y; x − μ kept)     W 3 (s, u⁺; u     (add: R 2 out)
                                                                 kept)
    spike pass   as fwd                      R in + w, W out     R 5, W 5; at the  as fwd
                                                                 end W 2 (r, e)
    rate fwd     as fwd                      as fwd              nothing (r given) as fwd
    bwd (BPTT)   R dy, x, w; W dx if         R dy, x − μ, w;     R 3 (ds, u, du⁺), R out, W in
                 needed; R w, W w for the    W dx; R w, W w for  W 2 (dI, du⁺)     (add: R 2 in,
                 gradient sums               the gradient sums                     W in)
    rate bwd     as bwd                      as bwd              R 2 (dr, e), W 1  as bwd
    spatial bwd  as bwd                      as bwd              R 2 (ds, u),      as bwd
    (sltt, ottt)                                                 W 1 (dI)
    trace (ottt) nothing                     nothing             R 2 (â, s), W 1   pool fed by
                                                                 (â)               spikes: R in,
                                                                                   W out

How each method calls the routines (B samples, T steps, windows of K steps):

    bptt m    fwd, bwd   on T·B rows, 1 call          bptt s   the same in T calls of B rows
    tbptt m   fwd, bwd   on T·B rows, ⌈T/K⌉ calls     tbptt s  T calls
    rate_m    spike pass on T·B rows, 1 call; rate pass fwd and bwd on B rows, 1 call
    rate_s    spike pass in T calls of B rows; rate pass as rate_m
    local     any of the above; the blocks' aux heads (global average pool + linear, per step)
              run with their block (not in the spike pass); first layers of blocks skip dx
    sltt      fwd in T calls of B rows; a spatial bwd after each (SLTT-K: after K of them)
    ottt      as sltt with every step's bwd, plus the trace update; a weight fed by spikes
              takes its gradient against the trace â, which is real: dW = dy ⊛ â is MACs

So truncation changes no arithmetic at all (every step is still forward and backward once), only
how often parameters are re-read; local blocks remove the dx at block edges and add the heads.
"""
from typing import NamedTuple

import numpy as np

from .layers.batchnorm import BatchNorm1d, BatchNorm2d
from .layers.block import BasicBlock
from .layers.conv import Conv2d
from .layers.flatten import Flatten
from .layers.lif import LIF
from .layers.linear import Linear
from .layers.pool import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from .layers.nf_block import NFBlock
from .layers.residual import PreActBlock, SEWBlock, SpikePreActBlock
from .methods.local import spread_evenly
from .methods.recompute import trailing_segments

COST_METHODS = ("bptt", "tbptt", "rate", "rate_m", "rate_s", "sltt", "ottt")
FORWARD, BACKWARD = ("fwd", "spike", "rate", "trace"), ("bwd", "rate_bwd", "sbwd", "tbwd")
SHAPED = (Conv2d, Linear, AvgPool2d, MaxPool2d, AdaptiveAvgPool2d, Flatten)   # run in `trace`
RESIDUAL_BLOCKS = (BasicBlock, SEWBlock, PreActBlock, SpikePreActBlock, NFBlock)  # sums inside


class LayerOp(NamedTuple):
    name: str          # dotted module name; 'layer1.0.add' for a residual add, 'aux.0.*' heads
    kind: str          # 'conv', 'linear', 'bn', 'lif', 'add', 'pool' (and any other layer)
    in_shape: tuple    # per sample and step (for 'add': the block input, whose gradients it sums)
    out_shape: tuple   # per sample and step
    weights: int       # parameter elements (weight + bias; batchnorm γ, β)
    macs: int          # multiply-accumulates per sample and step (conv, linear; else 0)
    spike_in: bool     # input is a spike tensor in a spiking pass
    src: object        # name of the op whose output is the input; None: the network input
    block: int = 0     # local block index
    needs_dx: bool = True   # its input gradient is used by someone
    aux: bool = False  # part of an auxiliary head


def _size(shape):
    return int(np.prod(shape, dtype=np.int64))


def trace(model, input_shape, spike_input=False, pooled_spikes=False):
    """The leaf layers of `model` in forward order, with shapes, from a forward on one zero sample.

    input_shape: (C, H, W) of one sample. Only layers that change the shape run (conv, linear,
    pooling, flatten); the others (batchnorm, LIF, dropout) are copied through, so the trace
    changes no state of the model (running statistics, random generators). Returns a list of
    LayerOp: one block, no aux heads; only the layers that read the network input need no dx.

    Two counting choices, both off by default: spike_input, the network input is itself 0/1
    (binary event frames); pooled_spikes, average-pooled spikes count as spikes (the pool is
    additions of spikes, and its scale 1/k² folds into the next layer's weights).
    """
    dtype = model.params_list()[0].dtype if model.params_list() else np.float32
    x = model.xp.zeros((1,) + tuple(input_shape), dtype=dtype)
    ops, made_by, spikes, keep = [], {id(x): None}, {id(x)} if spike_input else set(), [x]
    blocks = _residual_block_names(model)
    names = {id(m): name for name, m in model.named_modules()}

    def run(layer, h):
        out = layer.forward(h)[0] if isinstance(layer, SHAPED) else h.copy()
        keep.extend((h, out))                   # ids stay unique while the trace runs: a
        # residual sum made inside a block would otherwise be freed, and its id reused
        name, src = names[id(layer)], made_by.get(id(h), "?")
        if id(h) not in made_by and ops:        # no traced layer made h: a residual sum
            src = _residual_add(ops, blocks, h) or src
            made_by[id(h)] = src
        spike_in = id(h) in spikes
        kind, weights, macs = "pool", 0, 0
        if isinstance(layer, Conv2d):
            W = layer.params["weight"]
            kind, macs = "conv", _size(out.shape[1:]) * _size(W.shape[1:])
        elif isinstance(layer, Linear):
            kind, macs = "linear", layer.in_features * layer.out_features
        elif isinstance(layer, (BatchNorm1d, BatchNorm2d)):
            kind = "bn"
        elif isinstance(layer, LIF):
            kind = "lif"
            spikes.add(id(out))
        elif spike_in and (isinstance(layer, (Flatten, MaxPool2d)) or pooled_spikes):
            spikes.add(id(out))                 # shape-only layers keep spikes spikes
        if isinstance(layer, Flatten):          # a view: no op of its own
            made_by[id(out)] = made_by.get(id(h), "?")
            return out
        weights = sum(p.size for p in layer.params.values())
        ops.append(LayerOp(name, kind, tuple(h.shape[1:]), tuple(out.shape[1:]), int(weights),
                           int(macs), spike_in, src, needs_dx=src is not None))
        made_by[id(out)] = name
        return out

    model.forward(x, run)
    return ops


def _residual_add(ops, blocks, h):
    """Append the 'add' op of the residual sum h, made by the block that holds the last traced
    op (BasicBlock: feeding its last LIF; SEW and pre-activation blocks: their output). Its
    in_shape and src are those of the block input, whose gradients it sums. Returns its name,
    or None when h is no block's sum."""
    last = ops[-1].name
    inside = [b for b in blocks if last.startswith(b + ".")]
    if not inside:
        return None
    block = max(inside, key=len)
    first = next(op for op in ops if op.name.startswith(block + "."))
    ops.append(LayerOp(f"{block}.add", "add", first.in_shape, tuple(h.shape[1:]), 0, 0, False,
                       first.src, needs_dx=first.src is not None))
    return f"{block}.add"


def split_candidates(ops):
    """Names where a local block may start: each ResNet stage (top-level child after the stem)
    and, in a plain conv stack, each convolution that follows a pooling layer."""
    out, prev = [], None
    for op in ops:
        top = op.name.split(".")[0]
        if prev is not None and op.kind == "conv":
            if top != prev.name.split(".")[0] and top.startswith("layer"):
                out.append(top)
            elif prev.kind == "pool" and top == prev.name.split(".")[0]:
                out.append(op.name)
        prev = op
    return out


def model_split_candidates(model, ops):
    """Where blocks of `model` may start: its own `split_points` if it lists them, else
    `split_candidates(ops)` (ops: its trace)."""
    own = getattr(model, "split_points", None)
    return list(own) if own is not None else split_candidates(ops)


def default_split(ops, local_blocks, candidates=None):
    """N − 1 block starts spread evenly over the M candidates, as the local method picks them:
    start i (1 ≤ i < N) is candidate ⌊i (M + 1) / N⌋ − 1. candidates: the model's own list of
    block starts (`model.split_points` where the model has one), else `split_candidates(ops)`."""
    if local_blocks <= 1:
        return []
    cands = list(candidates) if candidates is not None else split_candidates(ops)
    if local_blocks - 1 > len(cands):
        raise ValueError(f"{local_blocks} local blocks need {local_blocks - 1} split points; "
                         f"this model has {len(cands)}: {', '.join(cands) or 'none'}")
    return spread_evenly(cands, local_blocks)


def _start(ops, name):
    for i, op in enumerate(ops):
        if op.name == name or op.name.startswith(name + "."):
            return i
    raise ValueError(f"no layer named {name!r} to split at")


def split_blocks(ops, local_blocks=1, split_at=None, candidates=None):
    """ops with block indices, `needs_dx` and an aux head (global average pool + linear to the
    class count) after every block but the last. split_at: module names where blocks start
    (default: `default_split` among `candidates`). One block: the ops as they are."""
    if split_at is None:
        split_at = default_split(ops, local_blocks, candidates)
    starts = [_start(ops, name) for name in split_at]
    if starts != sorted(set(starts)) or (starts and starts[0] == 0):
        raise ValueError(f"split points {', '.join(split_at)} are not in forward order")
    block_of, out = {}, []
    for i, op in enumerate(ops):
        b = sum(i >= s for s in starts)
        if out and b > block_of[out[-1].name]:
            num_classes = next(op.out_shape[-1] for op in reversed(ops) if op.kind == "linear")
            out += _aux_head(out[-1], block_of[out[-1].name], num_classes)
        block_of[op.name] = b
        out.append(op._replace(block=b, needs_dx=op.src is not None and
                               block_of.get(op.src, b) == b))
    return out


def _aux_head(last, b, num_classes):
    """Global average pool over the block output (C, H, W) -> (C,), then linear C -> classes."""
    C = last.out_shape[0]
    pool = LayerOp(f"aux.{b}.pool", "pool", last.out_shape, (C,), 0, 0, False, last.name, b,
                   True, True)
    fc = LayerOp(f"aux.{b}.linear", "linear", (C,), (num_classes,), C * num_classes + num_classes,
                 C * num_classes, False, pool.name, b, True, True)
    return [pool, fc]


def routine_cost(op, routine, batch, steps, calls, itemsize):
    """(macs, acs, bytes read, bytes written) of `calls` calls of `routine` on `op` that process
    batch·steps sample-steps in all (see the module docstring's table)."""
    rows = batch * steps
    n_in, n_out, w = rows * _size(op.in_shape), rows * _size(op.out_shape), calls * op.weights
    dx = op.needs_dx
    macs = acs = r = wr = 0
    if routine == "trace":                                          # OTTT's â_t = λ â_{t−1} + s_t
        if op.kind == "lif":
            r, wr = 2 * n_in, n_in
        elif op.kind == "pool" and op.spike_in:
            r, wr = n_in, n_out
    elif op.kind in ("conv", "linear"):
        spikes = op.spike_in and routine in ("fwd", "spike", "bwd", "sbwd")
        work = rows * op.macs
        if routine in FORWARD:
            acs, macs = (work, 0) if spikes else (0, work)
            r, wr = n_in + w, n_out
        else:
            acs, macs = (work, 0) if spikes else (0, work)          # dW = dy ⊛ x
            macs += work if dx else 0                                # dx = Wᵀ ⊛ dy
            r, wr = n_out + n_in + (w if dx else 0) + w, w + (n_in if dx else 0)
    elif op.kind == "bn":
        if routine in FORWARD:
            r, wr = n_in + w, (1 if routine == "spike" else 2) * n_out
        else:
            r, wr = 2 * n_out + 2 * w, n_in + w
    elif op.kind == "lif":
        per = {"fwd": (2, 3), "spike": (5, 5), "rate": (0, 0), "bwd": (3, 2), "rate_bwd": (2, 1),
               "sbwd": (2, 1), "tbwd": (2, 1)}
        r, wr = (k * n_in for k in per[routine])
        if routine == "spike":
            wr += 2 * batch * _size(op.in_shape)                     # r and e, once
    elif op.kind == "pool":
        r, wr = (n_in, n_out) if routine in FORWARD else (n_out, n_in if dx else 0)
    elif op.kind == "add":
        if routine in FORWARD:
            r, wr = 2 * n_out, n_out
        elif dx:
            r, wr = 2 * n_in, n_in
    return macs, acs, r * itemsize, wr * itemsize


def method_passes(method, T, step_mode="m", window=None):
    """[(routine, steps, calls, with aux heads)] of one training step of `method` (per batch)."""
    if method == "bptt" or (method == "tbptt" and (window is None or window >= T)):
        calls = 1 if step_mode == "m" else T
        return [("fwd", T, calls, True), ("bwd", T, calls, True)]
    if method == "tbptt":
        calls = -(-T // window) if step_mode == "m" else T       # ⌈T/K⌉ windows
        return [("fwd", T, calls, True), ("bwd", T, calls, True)]
    if method in ("rate", "rate_m", "rate_s"):
        calls = T if method == "rate_s" else 1
        return [("spike", T, calls, False), ("rate", 1, 1, True), ("rate_bwd", 1, 1, True)]
    if method == "sltt":                        # window: SLTT-K, K steps with a backward
        K = T if window is None else min(window, T)
        return [("fwd", T, T, True), ("sbwd", K, K, True)]
    if method == "ottt":
        return [("fwd", T, T, True), ("trace", T, T, True), ("tbwd", T, T, True)]
    raise ValueError(f"no cost model for method {method!r}; choose one of "
                     f"{', '.join(COST_METHODS)}")


def layer_costs(ops, batch, T, method="bptt", step_mode="m", window=None, itemsize=4,
                again=None):
    """One dict per (op, routine): name, routine, macs, acs, read_bytes, write_bytes.
    again: {op name: forwards of it run again in backward} (bptt's recomputation,
    `recomputed_forwards`): each is one more 'fwd' row."""
    rows = []
    for routine, steps, calls, with_aux in method_passes(method, T, step_mode, window):
        for op in ops:
            if op.aux and not with_aux:
                continue
            macs, acs, r, w = routine_cost(op, routine, batch, steps, calls, itemsize)
            runs = 1 + (again or {}).get(op.name, 0) if routine == "fwd" else 1
            rows += [dict(name=op.name, routine=routine, macs=macs, acs=acs, read_bytes=r,
                          write_bytes=w) for _ in range(runs)]
    return rows


def recomputed_forwards(ops, blocks, step_mode, itemsize, recompute_window=None,
                        recompute_blocks=False):
    """{op name: times its forward runs again in backward} under bptt's recomputation
    (methods/recompute.py): every op once for a window; for blocks, the ops of every segment
    (in step mode m all but the trailing ones that keep their caches), once more."""
    again = {op.name: int(recompute_window is not None) for op in ops}
    if recompute_blocks:
        segs = _segments(ops, blocks)
        k = len(segs)
        if step_mode == "m":              # as the method finds them: caches made again, unpacked
            k = trailing_segments([_cache_bytes(seg, itemsize, itemsize) for seg in segs])
        for seg in segs[:k]:
            for op in seg:
                again[op.name] += 1
    return again


def sum_costs(rows):
    """Totals of layer_costs rows: fwd_/bwd_ macs and acs, macs, acs, read/write/mem bytes."""
    tot = dict(fwd_macs=0, fwd_acs=0, bwd_macs=0, bwd_acs=0, read_bytes=0, write_bytes=0)
    for row in rows:
        side = "fwd" if row["routine"] in FORWARD else "bwd"
        tot[f"{side}_macs"] += row["macs"]
        tot[f"{side}_acs"] += row["acs"]
        tot["read_bytes"] += row["read_bytes"]
        tot["write_bytes"] += row["write_bytes"]
    tot.update(macs=tot["fwd_macs"] + tot["bwd_macs"], acs=tot["fwd_acs"] + tot["bwd_acs"],
               mem_bytes=tot["read_bytes"] + tot["write_bytes"])
    return tot


def method_costs(model, input_shape, T, method="bptt", step_mode="m", window=None,
                 local_blocks=1, split_at=None, itemsize=None, spike_input=False,
                 pooled_spikes=False, recompute_window=None, recompute_blocks=False):
    """Totals for one training step (see `sum_costs`) of `method` on a batch of `input_shape`:
    (B, C, H, W) static or (T, B, C, H, W) frames. window: K for tbptt, or SLTT-K's K for sltt;
    local_blocks / split_at:
    local training (split_at: module names where blocks start; default `default_split`, among
    `model.split_points` where the model lists them).
    itemsize: bytes per number (default: the model's parameter dtype). spike_input,
    pooled_spikes: counting choices, see `trace`. recompute_window, recompute_blocks: bptt's
    recomputation (the forwards run again, `recomputed_forwards`; packing changes no count)."""
    shape = tuple(input_shape)[1:] if len(input_shape) == 5 else tuple(input_shape)
    ops = trace(model, shape[1:], spike_input, pooled_spikes)
    ops = split_blocks(ops, local_blocks, split_at, model_split_candidates(model, ops))
    if itemsize is None:
        itemsize = model.params_list()[0].dtype.itemsize
    again = recomputed_forwards(ops, _residual_block_names(model), step_mode, itemsize,
                                recompute_window, recompute_blocks)
    return sum_costs(layer_costs(ops, shape[0], T, method, step_mode, window, itemsize, again))


# -- memory of a step, from shapes -----------------------------------------------------------
# Numbers each routine keeps for backward, per sample and step, counted from the caches:
# a conv or linear keeps its input x (a reference: the spikes of the LIF before it, counted once
# where a shortcut reads them too), batchnorm x − μ, a LIF layer its potentials u. Pools keep
# shapes (max pooling a small argmax, left out); the network input is counted once, as the batch
# (single-step methods keep it once for all steps). Beyond one pass's caches, per LIF neuron: the
# rate methods keep r and e in place of u (and the rate pass keeps less), sltt u⁺, ottt u⁺
KEPT_IN, KEPT_OUT = ("conv", "linear", "lif"), ("bn",)
KEPT_PER_LIF = {"sltt": 1, "ottt": 1}


def _kept_numbers(ops):
    """Numbers kept for backward per sample and step by one pass over `ops`: (real-valued,
    spikes (inputs of conv and linear layers fed by spikes), the LIF neurons among them)."""
    real = spikes = lif = 0
    read = set()                          # inputs already counted (a block input and its shortcut)
    for op in ops:
        if op.kind in KEPT_IN and op.src is not None and (op.kind == "lif" or op.src not in read):
            if op.kind != "lif" and op.spike_in:
                spikes += _size(op.in_shape)
            else:
                real += _size(op.in_shape)
            if op.kind != "lif":
                read.add(op.src)
        elif op.kind in KEPT_OUT:
            real += _size(op.out_shape)
        if op.kind == "lif":
            lif += _size(op.in_shape)
    return real, spikes, lif


def _cache_bytes(ops, itemsize, spike_size):
    """Bytes per sample of one step's caches of `ops`, spikes at spike_size bytes each."""
    real, spikes, _ = _kept_numbers(ops)
    return real * itemsize + spikes * spike_size


def _residual_block_names(model):
    return [name for name, m in model.named_modules() if isinstance(m, RESIDUAL_BLOCKS)]


def _segments(ops, blocks):
    """ops cut as recomputation in depth cuts the network (methods/recompute.py): each residual
    block whole (`blocks`: their names), elsewhere a new segment at each conv or linear layer."""
    out, current = [], None
    for op in ops:
        block = next((b for b in blocks if op.name.startswith(b + ".")), None)
        key = block if block is not None else op.name
        if not out or (block is not None and key != current) or (
                block is None and op.kind in ("conv", "linear")):
            out.append([])
        out[-1].append(op)
        current = key if block is not None else None
    return out


def _kept_bytes(ops, blocks, T, base, step_mode, window, itemsize, pack_spikes,
                recompute_window, recompute_blocks):
    """Bytes per sample held for backward at the fullest, by one local block's `ops`."""
    steps = {"bptt": T, "tbptt": min(window or T, T)}.get(base, 1)
    spike_size = 1 / 8 if pack_spikes else itemsize

    def caches(ops_):                     # one step's caches of ops_
        return _cache_bytes(ops_, itemsize, spike_size)

    lif = _kept_numbers(ops)[2] * itemsize
    if not (recompute_window or recompute_blocks):
        return caches(ops) * steps + KEPT_PER_LIF.get(base, 0) * lif
    if recompute_blocks:
        segs = _segments(ops, blocks)
        inputs = [0 if seg[0].src is None else
                  _size(seg[0].in_shape) * (spike_size if seg[0].spike_in else itemsize)
                  for seg in segs]
        # a segment's caches made again in backward stay unpacked; held while segment i is run
        # again: the inputs of the segments before it, and its caches
        fresh = [_cache_bytes(seg, itemsize, itemsize) for seg in segs]
        moments = [sum(inputs[:i]) + fresh[i] for i in range(len(segs))]
        if step_mode == "m":              # the trailing segments keep their caches at once
            k = trailing_segments(fresh)
            trailing = sum(caches(seg) for seg in segs[k:])
            return T * max([sum(inputs[:k]) + trailing] + moments[:k])
        record = sum(inputs)              # a step's segment inputs (and the state it starts from)
    K = min(recompute_window or T, T)
    most = 0
    for w, t0 in enumerate(range(0, T, K)):      # window w is run again (states of 1..w-1 held)
        t1 = min(t0 + K, T)
        held = max(w - 1, 0) * lif
        if not recompute_blocks:
            most = max(most, held + (t1 - t0) * caches(ops))
            continue
        held += sum(record + (lif if t >= 1 else 0) for t in range(t0, t1 - 1))
        last = lif if t1 - 1 >= 1 else 0         # the last step's own state, then its segments
        most = max(most, held + last + max(moments))
    return most


def step_memory(model, input_shape, T, method="bptt", step_mode="m", window=None,
                local_blocks=1, split_at=None, itemsize=None, optimizer_copies=2, ops=None,
                pack_spikes=False, recompute_window=None, recompute_blocks=False):
    """Bytes one training step of `method` needs, counted from the layer shapes (no allocation
    beyond `trace`'s one sample): a floor, not a ceiling (temporaries such as im2col columns
    and the allocator's slack come on top).

        kept         what backward needs, the largest local block's (see the methods' docstrings):
                     bptt T steps of every cache; tbptt K steps; rate methods one pass's
                     caches (r, e in place of u); sltt and ottt one step's plus u⁺. With
                     pack_spikes spikes count a bit each; bptt's recomputation (recompute.py)
                     keeps segment inputs and window states, and one segment's or window's caches
        activations  the largest layer output and its gradient, for the rows one call processes
        input        the batch itself, (B, C, H, W) or (T, B, C, H, W)
        params       weights, their gradients and `optimizer_copies` optimizer buffers per weight
        total        their sum

    input_shape: (B, C, H, W) or (T, B, C, H, W); ops: `trace(model, (C, H, W))` if already made.
    """
    shape = tuple(input_shape)
    frames = len(shape) == 5
    B, sample = (shape[1], shape[2:]) if frames else (shape[0], shape[1:])
    if itemsize is None:
        itemsize = model.params_list()[0].dtype.itemsize
    ops = trace(model, sample) if ops is None else ops
    ops = split_blocks(ops, local_blocks, split_at, model_split_candidates(model, ops))
    base = "rate" if method.startswith("rate") else method
    blocks = _residual_block_names(model)
    kept = max(_kept_bytes([op for op in ops if op.block == b], blocks, T, base, step_mode,
                           window, itemsize, pack_spikes, recompute_window, recompute_blocks)
               for b in sorted({op.block for op in ops}))
    steps = {"bptt": T, "tbptt": min(window or T, T)}.get(base, 1)
    rows = steps if step_mode == "m" and base in ("bptt", "tbptt") else 1
    largest = max([_size(op.out_shape) for op in ops] + [_size(sample)])
    params = sum(p.size for p in model.params_list()) * (2 + optimizer_copies)
    out = dict(kept=int(kept * B), activations=2 * largest * rows * B * itemsize,
               input=(T if frames else 1) * B * _size(sample) * itemsize,
               params=int(params) * itemsize)
    out["total"] = sum(out.values())
    return out
