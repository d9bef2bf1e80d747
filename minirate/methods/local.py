"""Local block-wise training: each block of the network learns from its own classifier only.

The network's layers, in forward order, are cut into N consecutive blocks at named modules
(`split_at`, or N − 1 of the model's default `split_points`, see models.py). Every block but
the last gets an auxiliary classifier on its output o_b (per step, global average pool + linear,
torch's `Sequential(AdaptiveAvgPool2d(1), Flatten(), Linear(C_b, K))`); the last block ends with
the model's own classifier. One training step runs, for b = 1 … N:

1. block b's forward over all T steps on its input x_b (x_1 = the network input; x_{b+1} = o_b,
   block b's output spikes over time, (T, B, ...), fed as time-varying input),
2. its loss  L_b = CE( (1/T) Σ_t head_b(o_{b,t}) , y )  and backward through block b and its
   head only, adding ∂L_b/∂θ_b; x_b is a constant: no gradient crosses a block edge,
3. block b's caches are dropped before block b+1 starts.

Each block is trained by the base method (`bptt`, `tbptt`, `rate_m`, `rate_s`) exactly as that
method trains a whole network, with the block and its head as the network. So N = 1 is the base
method itself, and what is kept for backward at any time is one block's caches: `kept_bytes` is
the largest block's (`block_kept_bytes` lists them all). Between blocks only o_b, the next
block's input, is held.

A block's output over time is what its body produced for the first T·B samples it was run on:
every method's spiking forward (all steps at once, step by step, or window by window) comes
first and in time order; the rate pass that follows is not recorded. For rate methods the next
block's rate pass then sees the mean of o_b, which is the firing rate of its last LIF layer, as
in the whole-network rate pass.

With tbptt the schedule runs window by window, each window through every block in turn
(window w of block b+1 takes window w of o_b, each block carrying its own neuron state from
window to window): the same gradients as block by block, since no gradient crosses a window or
block edge, but only one window of o_b is ever held, so what is kept stays O(K). With
update='per-window' the optimizer steps after each window, once all blocks have run it.

The auxiliary classifiers are children of the model (`aux.{b}.2.weight`, `aux.{b}.2.bias`), so
checkpoints save them; the model's own forward (and `predict`) never runs them.

Split points are module names: a unit of the network (a leaf layer or a residual block, e.g.
`layer2.1`, `feature.8`) or a Sequential (its first unit, e.g. `layer2`), before the flatten
that leads to the classifier.
"""
import numpy as np

from ..backend import get_array_module
from ..layers.batchnorm import BatchNorm2d
from ..layers.container import Container, Sequential, backward_chain, call, call_back
from ..layers.conv import Conv2d
from ..layers.flatten import Flatten
from ..layers.linear import Linear
from ..layers.pool import AdaptiveAvgPool2d
from ..losses import cross_entropy
from .common import check_frames, input_at
from .tbptt import TBPTT, window_input


def units(model):
    """[(dotted name, module)]: the network's pieces in forward order, Sequentials opened up
    (residual blocks and leaf layers stay whole). The auxiliary classifiers are not included."""
    out = []

    def visit(prefix, module):
        if type(module) is Sequential:
            for name, child in module.children.items():
                visit(f"{prefix}.{name}", child)
        else:
            out.append((prefix, module))

    for name, child in model.children.items():
        if child in model.parts:
            visit(name, child)
    return out


def split_candidates(model):
    """{name: unit index} of every module name a block may start at (see the module docstring)."""
    names = units(model)
    last = next((i for i, (_, m) in enumerate(names) if isinstance(m, Flatten)), len(names))
    first = {}                                          # name -> index of its first unit
    for i, (name, _) in enumerate(names):
        parts = name.split(".")
        for j in range(1, len(parts) + 1):              # 'layer2.0' also answers to 'layer2'
            first.setdefault(".".join(parts[:j]), i)
    return {name: i for name, i in first.items() if 1 <= i < last}


def spread_evenly(candidates, num_blocks):
    """The N − 1 block starts N blocks take from M candidate starts, spread evenly: start i
    (1 ≤ i < N) is candidate ⌊i (M + 1) / N⌋ − 1."""
    M = len(candidates)
    return [candidates[i * (M + 1) // num_blocks - 1] for i in range(1, num_blocks)]


def resolve_splits(model, num_blocks=1, split_at=None):
    """Unit indices where blocks 2..N start, from explicit names or N evenly spread defaults.

    Raises ValueError with one line naming what is wrong.
    """
    if split_at:
        allowed = split_candidates(model)
        unknown = [s for s in split_at if s not in allowed]
        if unknown:
            raise ValueError(f"unknown split point {unknown[0]!r}; choose module names such as "
                             f"{', '.join(model.split_points or list(allowed)[:6])}")
        starts = [allowed[s] for s in split_at]
        if starts != sorted(set(starts)):
            raise ValueError(f"split points {','.join(split_at)} must be distinct and in "
                             f"forward order")
        if num_blocks not in (1, len(starts) + 1):
            raise ValueError(f"{len(starts)} split points make {len(starts) + 1} blocks, "
                             f"not {num_blocks}")
        return starts
    M = len(model.split_points)
    if not 1 <= num_blocks <= M + 1:
        raise ValueError(f"local blocks must be between 1 and {M + 1} for this network "
                         f"(block starts: {', '.join(model.split_points) or 'none'})")
    chosen = spread_evenly(model.split_points, num_blocks)
    return resolve_splits(model, 1, chosen) if chosen else []


def _channels(pieces):
    """Channels of the output of `pieces` (units): those of the last conv or batchnorm in them."""
    for _, unit in reversed(pieces):
        for _, m in reversed(list(unit.named_modules())):
            if isinstance(m, Conv2d):
                return m.out_channels
            if isinstance(m, BatchNorm2d):
                return m.num_features
    raise ValueError("a block before a split point holds no convolution")


def attach_aux_heads(model, channels, seed=0):
    """Give the model `aux`: one GAP + linear classifier per entry of `channels`, on the model's
    device and dtype; kept as they are if the model already has heads of these shapes."""
    num_classes = [m for _, m in units(model) if isinstance(m, Linear)][-1].out_features
    rng = np.random.default_rng(seed)
    heads = Sequential(*[Sequential(AdaptiveAvgPool2d(1), Flatten(), Linear(c, num_classes, rng=rng))
                         for c in channels])
    old = model.children.get("aux")
    if old is not None and [v.shape for v in old.state_dict().values()] == \
            [v.shape for v in heads.state_dict().values()]:
        return old
    p = model.params_list()[0]
    heads.to(get_array_module(p), p.dtype)
    return model.add_child("aux", heads)


class Block(Container):
    """Units [a, b) of a network and a head; forward records the body's output (see docstring)."""

    def __init__(self, pieces, head=None, record=False):
        super().__init__()
        self.body = [m for _, m in pieces]
        for i, m in enumerate(self.body):
            self.add_child(str(i), m)
        self.head = head
        if head is not None:
            self.add_child("head", head)
        self.record, self.outputs = record, []

    def forward(self, x, run):
        for m in self.body:
            x = call(m, x, run)
        if self.record:
            self.outputs.append(x)
        return x if self.head is None else call(self.head, x, run)

    def backward(self, dy, back, need_dx=True):
        if self.head is not None:
            dy = call_back(self.head, dy, back)
        return backward_chain(self.body, dy, back, need_dx)

    def take_output(self, T, B):
        """The body's output over the first T·B samples it was run on: (T, B, ...)."""
        xp = get_array_module(self.outputs[0])
        o = self.outputs[0] if len(self.outputs) == 1 else xp.concatenate(self.outputs)
        self.outputs = []
        return o[:T * B].reshape(T, B, *o.shape[1:])       # (T*B, ...) -> (T, B, ...)


class LocalBlocks:
    """Trains each block of `model` with its own method, built by `make_base(block)`; the
    auxiliary classifiers are initialised from `seed`."""

    def __init__(self, model, T, make_base, num_blocks=1, split_at=None, seed=0):
        starts = resolve_splits(model, num_blocks, split_at)
        pieces = units(model)
        edges = [0] + starts + [len(pieces)]
        heads = attach_aux_heads(model, [_channels(pieces[:s]) for s in starts], seed)
        self.model, self.T = model, T
        # the module names where blocks 2..N start (what the cost count splits at)
        self.split_at = list(split_at) if split_at else spread_evenly(model.split_points,
                                                                      num_blocks)
        self.blocks = [Block(pieces[a:b], heads.children[str(i)] if b < len(pieces) else None,
                             record=b < len(pieces))
                       for i, (a, b) in enumerate(zip(edges[:-1], edges[1:]))]
        self.methods = [make_base(block) for block in self.blocks]
        self.name = f"{self.methods[0].name}+local{len(self.blocks)}"
        self.kept_bytes = 0
        self.block_kept_bytes = [0] * len(self.blocks)
        self.block_losses = [0.0] * len(self.blocks)

    def step(self, x, y, loss_fn=cross_entropy, after_window=None):
        """Each block's forward and backward in turn; adds every block's gradient.
        Returns the last block's (loss, logits): the network's own readout.
        `after_window`: tbptt with update='per-window' only (see `_step_windows`)."""
        self.model.new_sequence(input_at(x, 0).shape[0])     # per-sequence state: dropout masks
        if isinstance(self.methods[0], TBPTT):
            return self._step_windows(x, y, loss_fn, after_window)
        B = input_at(x, 0).shape[0]
        for b, (block, method) in enumerate(zip(self.blocks, self.methods)):
            self.block_losses[b], logits = method.step(x, y, loss_fn)
            self.block_kept_bytes[b] = method.kept_bytes
            if block.record:
                x = block.take_output(self.T, B)     # the next block's input, a constant
        self.kept_bytes = max(self.block_kept_bytes)
        return self.block_losses[-1], logits

    def _step_windows(self, x, y, loss_fn, after_window):
        """tbptt blocks: window by window, and within a window block by block (window w of block
        b+1 takes window w of block b's output), then `after_window()` in per-window mode. Each
        block carries its own neuron state from window to window."""
        tbptt = self.methods[0]
        if (tbptt.update == "per-window") != (after_window is not None):
            raise ValueError("after_window is the optimizer step of tbptt's update='per-window' "
                             "and is given exactly in that mode")
        check_frames(x, self.T)
        B, T = input_at(x, 0).shape[0], self.T
        states = [{} for _ in self.blocks]             # per block: LIF layer -> u⁺
        self.block_kept_bytes = [0] * len(self.blocks)
        losses, z_sum = [[] for _ in self.blocks], 0      # losses[b]: block b's window losses
        for t0, t1 in tbptt.windows():
            k, h = t1 - t0, window_input(x, t0, t1)
            for b, (block, method) in enumerate(zip(self.blocks, self.methods)):
                loss, z, kept = method.window_step(h, k, y, loss_fn, states[b], carry=t1 < T)
                self.block_kept_bytes[b] = max(self.block_kept_bytes[b], kept)
                losses[b].append(loss)
                if block.record:
                    h = block.take_output(k, B)        # this window's input of block b+1
            z_sum = z_sum + z * k
            if after_window is not None:
                after_window()
        self.block_losses = [sum(ls) / len(ls) for ls in losses]
        self.kept_bytes = max(self.block_kept_bytes)
        return self.block_losses[-1], z_sum / T
