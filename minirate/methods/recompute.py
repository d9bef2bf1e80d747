"""BPTT that recomputes instead of storing: the same gradients, to the bit, in less memory.

BPTT keeps every layer's cache for every step: O(T) numbers per neuron. Two ways to keep less
and do forward work again inside backward instead:

Recomputation in depth (`blocks=True`). The network is cut into segments (`segments`): each
residual block, and in a plain stack each conv or linear layer with what follows it up to the
next one (batchnorm, LIF, pooling, ...). Forward keeps only each segment's input, over all T
steps (spikes: with packing, one bit each), and no cache. Backward takes the segments last to
first: runs the segment's forward again from its input, keeping its caches this time, and
backpropagates through it at once. Held at the fullest: the inputs of the segments not yet
done, and one segment's caches.

Recomputation in time (`window=K`, single-step mode). Forward keeps, at the start of every
window of K steps, the network's state (u⁺ of every LIF layer), and each step's output for the
loss; no cache. Backward takes the windows last to first: runs the window's K steps again from
its state, keeping their caches, and backpropagates through them, dL/du⁺ carried from window to
window exactly as from step to step. Held: ⌈T/K⌉ states and one window's caches, O(T/K + K)
per neuron instead of O(T) (K ≈ √T: O(√T)). Multi-step mode cannot do this: its batchnorm takes
statistics over all T steps at once, so no window can be run again on its own.

Together, a window run again keeps each step's segment inputs (and the LIF states each segment
starts the step from) instead of its caches, and each segment is run a third time in backward.
Packed spikes (packing.py) apply to everything kept from one pass to another: segment inputs,
window states and caches, the trailing segments' caches. A segment's caches made again in
backward are used at once and dropped: they stay unpacked, which would cost a pass over them
for bytes held only while that one segment backpropagates.

Why bitwise: a forward run again does the same arithmetic on the same numbers (the segment's
input, or the window's state), in the same order and on as many rows, so its caches equal the
first run's. Only the running statistics of batchnorm would differ, updated by every training
forward: they are put back to what the first forward left. A layer that draws random numbers
at every forward (Dropout) would draw different ones: refused. The price is forward work: one
more forward of the whole network per step for either option, two with both (costs.py counts it).
"""
from typing import NamedTuple

from ..layers.base import cache_nbytes
from ..layers.container import Container, backward_chain, call
from ..layers.dropout import Dropout
from ..layers.lif import LIF
from ..losses import cross_entropy
from .bptt import BPTT
from .common import (back_through_step, check_frames, input_at, input_over_time, leaf_backward,
                     run_forward_only, run_keeping_step)
from .local import units
from .packing import unpacked


class Segment(Container):
    """Units of a network run one after another; a view over modules the model owns (it adds
    no names to the model's state dict)."""

    def __init__(self, units):
        super().__init__()
        self.units = list(units)

    def forward(self, x, run):
        for unit in self.units:
            x = call(unit, x, run)
        return x

    def backward(self, dy, back, need_dx=True):
        return backward_chain(self.units, dy, back, need_dx)


def _starts_segment(unit):
    """A residual block (any container left whole) or a layer with a matrix or filter weight
    (conv, linear) starts a segment; batchnorm, LIF, pooling, flatten join the one before."""
    weight = unit.params.get("weight") if not isinstance(unit, Container) else None
    return isinstance(unit, Container) or (weight is not None and weight.ndim >= 2)


def segments(model):
    """`model` cut into Segments where recomputation in depth restarts (module docstring)."""
    out = []
    for _, unit in units(model):
        if not out or _starts_segment(unit):
            out.append([])
        out[-1].append(unit)
    return [Segment(units) for units in out]


def trailing_segments(sizes):
    """Where the segments that keep their caches in the first forward start: the last ones,
    as many as hold together at most the bytes of the largest segment's caches. Held at the
    fullest then stays under twice the largest segment's caches (and the inputs), and the
    segments that cost least memory, at the network's end, are not run again."""
    start, total = len(sizes), 0
    while start > 0 and total + sizes[start - 1] <= max(sizes):
        start -= 1
        total += sizes[start]
    return start


def running_buffers(model):
    """Copies of every buffer (batchnorm running statistics), to put back with `restore`."""
    return [(m.buffers, k, v.copy()) for _, m in model.named_modules() for k, v in m.buffers.items()]


def restore(saved):
    for buffers, k, v in saved:
        buffers[k][...] = v


class StepRecord(NamedTuple):
    inputs: list       # each segment's input at this step (packed when spikes), or None once used
    u_before: dict     # LIF layer -> u⁺ of the step before (what the step starts from)


class RecomputedBPTT(BPTT):
    """BPTT (bptt.py) that keeps less and recomputes: `blocks` (in depth) and/or `window` K
    (in time, step mode 's'). Gradients, loss and logits bitwise equal to BPTT's."""

    def __init__(self, model, T, step_mode="m", per_step_loss=False, pack_spikes=False,
                 window=None, blocks=False):
        super().__init__(model, T, step_mode, per_step_loss, pack_spikes)
        if window is not None and step_mode != "s":
            raise ValueError("recomputation in time needs step mode s: in step mode m batchnorm "
                             "takes its statistics over all T steps at once, so a window cannot "
                             "be run again on its own")
        if window is not None and not 1 <= window <= T:
            raise ValueError(f"the recompute window K must lie in 1..T={T}, got {window}")
        if any(type(m) is Dropout and m.p > 0 for _, m in model.named_modules()):
            raise ValueError("recomputation would draw new dropout masks; a network with "
                             "Dropout trains with plain BPTT")
        self.window, self.blocks = window, blocks
        self.segments = segments(model) if blocks else None
        # multi-step: segments from keep_from on keep their caches in the first forward, and are
        # not run again (`trailing_segments`, from the segments' caches in the first step; None
        # until then, when every segment is run again)
        self.keep_from = None

    def step(self, x, y, loss_fn=cross_entropy):
        self.saved = None                       # buffers as the first forward leaves them
        loss, logits = super().step(x, y, loss_fn)
        restore(self.saved)
        self.saved = None
        return loss, logits

    def _note_kept(self, *held):
        self.kept_bytes = max(self.kept_bytes,
                              cache_nbytes(*held, exclude=self.model.params_list()))

    # -- multi-step: every segment over all T steps at once ----------------------------------
    def _step_multi(self, x, y, loss_fn):
        T, keep, segs = self.T, self.packer, self.segments
        caches = [dict() for _ in segs]          # caches[i]: segment i's, while it has them
        keep_from = len(segs) if self.keep_from is None else self.keep_from
        run = run_forward_only(T)

        def run_keeping(i, pack=True):           # pack: caches held past segment i's backward
            def run(layer, h):
                out, cache = layer.forward(h, T) if isinstance(layer, LIF) else layer.forward(h)
                caches[i][layer] = keep.keep(cache) if pack else cache
                return out
            return run

        def back(i):
            def back(layer, dh, need_dx=True):
                return leaf_backward(layer.backward, dh, unpacked(caches[i].pop(layer)), need_dx)
            return back

        h, inputs = input_over_time(x, T), []    # inputs[i]: segment i's input, (T*B, ...)
        for i, seg in enumerate(segs):           # the last ones keep their caches at once
            inputs.append(keep.array(h) if i < keep_from else None)
            h = seg.forward(h, run if i < keep_from else run_keeping(i))
        self.saved = running_buffers(self.model)
        self.kept_bytes = 0
        self._note_kept(inputs, caches)
        loss, logits, dh = self.output_gradient(h, y, loss_fn)
        sizes = []                               # bytes of each segment's caches, last first
        for i in reversed(range(len(segs))):
            if inputs[i] is not None:
                segs[i].forward(unpacked(inputs[i]), run_keeping(i, pack=False))
                inputs[i] = None
                self._note_kept(inputs, caches)
            if self.keep_from is None:           # every segment is run again, caches unpacked
                sizes.append(cache_nbytes(caches[i], exclude=self.model.params_list()))
            dh = segs[i].backward(dh, back(i), need_dx=i > 0)
        if self.keep_from is None:
            self.keep_from = trailing_segments(sizes[::-1])
        return loss, logits

    # -- single-step: steps, windows of steps, segments of a step --------------------------------
    def _step_single(self, x, y, loss_fn):
        T = self.T
        check_frames(x, T)
        K = self.window or T
        u_post, states, records, outs = {}, {}, [None] * T, []
        for t in range(T):
            if self.window is not None and t % K == 0:
                states[t] = dict(u_post)         # the state window [t, t + K) starts from
            out, records[t] = self._forward_step(input_at(x, t), u_post,
                                                 keep=self.window is None)
            outs.append(out)
        u_post.clear()
        self.saved = running_buffers(self.model)
        self.kept_bytes = 0
        self._note_kept(records, states)
        loss, logits, douts = self.steps_output_gradient(outs, y, loss_fn)
        du_post = {}                             # LIF layer -> dL/du⁺ flowing from step t+1
        for t0 in reversed(range(0, T, K)):
            t1 = min(t0 + K, T)
            if self.window is not None:          # run the window again, keeping what backward needs
                u = dict(states.pop(t0))
                for t in range(t0, t1):
                    records[t] = self._forward_step(input_at(x, t), u, keep=True)[1]
                self._note_kept(records, states)
            for t in reversed(range(t0, t1)):
                self._backward_step(douts[t], records, t, states, du_post)
                records[t] = None
        return loss, logits

    def _forward_step(self, x_t, u_post, keep):
        """One step from the state u_post (updated to the step's end): (output, what is kept
        for its backward: its caches, its segments' inputs (StepRecord), or None)."""
        if not keep:
            return self.model.forward(x_t, _run_step(u_post)), None
        if not self.blocks:
            caches = {}
            return self.model.forward(x_t, run_keeping_step(caches, u_post, self.packer.keep)), caches
        record, h = StepRecord([], dict(u_post)), x_t
        for seg in self.segments:
            record.inputs.append(self.packer.array(h))
            h = seg.forward(h, _run_step(u_post))
        return h, record

    def _backward_step(self, dout, records, t, states, du_post):
        """Backward of step t from what its forward kept (records[t])."""
        record = records[t]
        if not isinstance(record, StepRecord):
            self.model.backward(dout, back_through_step(record, du_post), need_dx=False)
            return
        for i in reversed(range(len(self.segments))):
            caches, u = {}, dict(record.u_before)
            self.segments[i].forward(unpacked(record.inputs[i]),
                                     run_keeping_step(caches, u))
            record.inputs[i] = None
            self._note_kept(records, states, caches)
            dout = self.segments[i].backward(dout, back_through_step(caches, du_post),
                                             need_dx=i > 0)


def _run_step(u_post):
    """Forward callback of one step that keeps nothing; LIF layers carry u⁺ in `u_post`."""
    def run(layer, h):
        if isinstance(layer, LIF):
            s, u_post[layer], _ = layer.step(h, u_post.get(layer))
            return s
        return layer.forward(h)[0]
    return run
