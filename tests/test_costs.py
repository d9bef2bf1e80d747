"""minirate.costs: MACs, ACs and memory traffic equal hand formulas for a conv and a linear layer,
a whole network's forward count equals a brute-force count of a direct convolution loop, and the
methods' totals fit together (rate = T spike forwards + one rate forward + one backward, ...)."""
import numpy as np
import pytest

from minirate.costs import (default_split, layer_costs, method_costs, routine_cost, split_blocks,
                            split_candidates, sum_costs, trace)
from minirate.layers.container import Sequential
from minirate.layers.conv import Conv2d
from minirate.layers.lif import LIF
from minirate.layers.linear import Linear
from minirate.models import build_model

F32 = 4


def test_conv_counts_equal_the_formulas():
    C, H, W, O, k, s, p = 3, 9, 9, 5, 3, 2, 1
    net = Sequential(Conv2d(C, O, k, s, p, bias=True, rng=np.random.default_rng(0)))
    (op,) = trace(net, (C, H, W))
    Ho = Wo = (H + 2 * p - k) // s + 1                          # = 5
    macs = O * Ho * Wo * C * k * k                              # per sample and step
    w = O * C * k * k + O                                       # weight and bias
    assert op.macs == macs == 5 * 25 * 27
    B, T, calls = 2, 3, 3                                       # single-step: T calls of B rows
    rows = B * T
    # forward on a real input: MACs; read x and the parameters once per call, write y
    assert routine_cost(op, "fwd", B, T, calls, F32) == (
        rows * macs, 0, (rows * C * H * W + calls * w) * F32, rows * O * Ho * Wo * F32)
    # the network input needs no gradient: backward is dW only (read dy, x, the gradient sum)
    assert not op.needs_dx
    assert routine_cost(op, "bwd", B, T, calls, F32) == (
        rows * macs, 0, (rows * O * Ho * Wo + rows * C * H * W + calls * w) * F32,
        calls * w * F32)
    # inside a network: dx as well (read W, write dx), twice the arithmetic
    inner = op._replace(needs_dx=True, spike_in=True)
    assert routine_cost(inner, "bwd", B, T, calls, F32) == (
        rows * macs, rows * macs,                               # dx MACs, dW on spikes: ACs
        (rows * O * Ho * Wo + rows * C * H * W + 2 * calls * w) * F32,
        (calls * w + rows * C * H * W) * F32)
    # a spike input makes the forward accumulate-only, except in the rate pass (rates are real)
    assert routine_cost(inner, "fwd", B, T, 1, F32)[:2] == (0, rows * macs)
    assert routine_cost(inner, "rate", B, 1, 1, F32)[:2] == (B * macs, 0)
    assert routine_cost(inner, "rate_bwd", B, 1, 1, F32)[:2] == (2 * B * macs, 0)


def test_linear_counts_equal_the_formulas():
    n_in, n_out, B, T = 7, 4, 3, 2
    net = Sequential(Linear(n_in, n_in, rng=np.random.default_rng(0)), LIF(),
                     Linear(n_in, n_out, bias=False, rng=np.random.default_rng(1)))
    ops = trace(net, (n_in,))
    fc = ops[-1]
    assert (fc.kind, fc.macs, fc.weights, fc.spike_in, fc.needs_dx) == (
        "linear", n_in * n_out, n_in * n_out, True, True)
    rows = B * T                                                # multi-step: one call
    assert routine_cost(fc, "fwd", B, T, 1, F32) == (
        0, rows * n_in * n_out, (rows * n_in + n_in * n_out) * F32, rows * n_out * F32)
    assert routine_cost(fc, "bwd", B, T, 1, F32) == (
        rows * n_in * n_out, rows * n_in * n_out,               # dx = dy W: MACs; dW = dyᵀ s: ACs
        (rows * n_out + rows * n_in + 2 * n_in * n_out) * F32,
        (n_in * n_out + rows * n_in) * F32)
    assert ops[0].macs == n_in * n_in and not ops[0].spike_in   # the first sees the real input
    # the LIF between them: per neuron and step, BPTT forward reads I and u⁺, writes s, u, u⁺
    assert routine_cost(ops[1], "fwd", B, T, 1, F32) == (0, 0, 2 * rows * n_in * F32,
                                                         3 * rows * n_in * F32)


def direct_conv(x, W, b, stride, padding):
    """Reference: the 6-loop convolution, counting every multiply-add it does (padding taps too).
    x (N, C, H, W) -> (y (N, O, Ho, Wo), count)."""
    N, C, H, Wd = x.shape
    O, _, k, _ = W.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (Wd + 2 * padding - k) // stride + 1
    y, count = np.zeros((N, O, Ho, Wo)), 0
    for o in range(O):
        for i in range(Ho):
            for j in range(Wo):
                for c in range(C):
                    for p in range(k):
                        for q in range(k):
                            tap = xp[:, c, stride * i + p, stride * j + q]
                            y[:, o, i, j] += W[o, c, p, q] * tap
                            count += N
    if b is not None:
        y += b[None, :, None, None]
    return y, count


def test_whole_model_forward_equals_a_brute_force_count():
    """BPTT's forward on the small ResNet: every conv and linear redone by a direct loop that
    counts its multiply-adds; those whose input really is all 0/1 are the ACs."""
    model = build_model("small", 10, 0.25, seed=0).to(np, np.float64)
    B, T, H = 2, 2, 8
    x = np.random.default_rng(0).normal(size=(B, 3, H, H)) * 3
    macs = acs = 0

    def run(layer, h):
        nonlocal macs, acs
        out, cache = layer.forward(h, T) if isinstance(layer, LIF) else layer.forward(h)
        if isinstance(layer, (Conv2d, Linear)):
            if isinstance(layer, Conv2d):
                y, n = direct_conv(h, layer.params["weight"], layer.params.get("bias"),
                                   layer.stride, layer.padding)
            else:
                y = h @ layer.params["weight"].T + layer.params["bias"]
                n = h.size * layer.out_features
            np.testing.assert_allclose(y, out, rtol=1e-10, atol=1e-10)
            binary = np.isin(h, (0.0, 1.0)).all()
            macs, acs = macs + (0 if binary else n), acs + (n if binary else 0)
        return out

    model.forward(np.broadcast_to(x, (T,) + x.shape).reshape(T * B, 3, H, H), run)
    counted = method_costs(model, x.shape, T, "bptt")
    assert acs > 0 and macs > 0
    assert (counted["fwd_macs"], counted["fwd_acs"]) == (macs, acs)


@pytest.fixture(scope="module")
def small():
    return build_model("small", 10, 0.25, seed=0)


def test_method_totals_fit_together(small):
    B, T, shape = 4, 4, (4, 3, 16, 16)
    bptt = method_costs(small, shape, T, "bptt")
    # the multiply-adds of one step per sample: forward F, backward G (dW and dx)
    F = (bptt["fwd_macs"] + bptt["fwd_acs"]) // (T * B)
    G = (bptt["bwd_macs"] + bptt["bwd_acs"]) // (T * B)
    assert F * T * B == bptt["fwd_macs"] + bptt["fwd_acs"] and G < 2 * F
    first = trace(small, shape[1:])[0]
    assert G == 2 * F - first.macs                          # no dx for the input image
    for name in ("rate_m", "rate_s"):
        rate = method_costs(small, shape, T, name)
        # spike pass: T forwards on spikes; rate pass: one forward and one backward, all MACs
        assert rate["fwd_acs"] == bptt["fwd_acs"]
        assert rate["fwd_macs"] == bptt["fwd_macs"] + F * B
        assert (rate["bwd_macs"], rate["bwd_acs"]) == (G * B, 0)
    # single-step re-reads parameters once per step; arithmetic unchanged
    single = method_costs(small, shape, T, "bptt", step_mode="s")
    assert single["macs"] == bptt["macs"] and single["acs"] == bptt["acs"]
    assert single["write_bytes"] > bptt["write_bytes"] and single["read_bytes"] > bptt["read_bytes"]
    # truncation: K = T is BPTT; K < T the same arithmetic, parameters read once per window
    assert method_costs(small, shape, T, "tbptt", window=T) == bptt
    ops = trace(small, shape[1:])
    for K in (1, 2, 3):
        tb = method_costs(small, shape, T, "tbptt", window=K)
        assert (tb["macs"], tb["acs"]) == (bptt["macs"], bptt["acs"])
        windows = -(-T // K)
        per_call = sum(routine_cost(op, r, B, 0, 1, F32)[2] + routine_cost(op, r, B, 0, 1, F32)[3]
                       for op in ops for r in ("fwd", "bwd"))       # 0 rows: parameters only
        assert tb["mem_bytes"] - bptt["mem_bytes"] == (windows - 1) * per_call


def test_local_blocks_drop_dx_at_edges_and_add_heads(small):
    B, T, shape = 4, 2, (4, 3, 16, 16)
    ops = trace(small, shape[1:])
    assert split_candidates(ops) == ["layer1", "layer2"]
    assert default_split(ops, 3) == ["layer1", "layer2"]
    bptt = method_costs(small, shape, T, "bptt")
    local = method_costs(small, shape, T, "bptt", local_blocks=2, split_at=["layer2"])
    blocks = split_blocks(ops, 2, ["layer2"])
    edge = [op for op in blocks if op.block == 1 and op.kind == "conv" and not op.needs_dx]
    assert [op.name for op in edge] == ["layer2.0.conv1", "layer2.0.shortcut.0"]
    C = blocks[[op.name for op in blocks].index("layer2.0.conv1")].in_shape[0]
    head = C * 10                                           # aux linear C -> 10 classes
    # forward: + the head; backward: − dx of the edge convolutions, + the head's dW and dx
    assert local["fwd_macs"] - bptt["fwd_macs"] == T * B * head
    assert local["bwd_macs"] - bptt["bwd_macs"] == T * B * (2 * head - sum(op.macs for op in edge))
    assert local["acs"] == bptt["acs"]
    assert method_costs(small, shape, T, "bptt", local_blocks=1) == bptt
    # by default N − 1 of the candidates, spread evenly; a model's own list of starts wins
    assert default_split(ops, 2) == ["layer1"]
    listed = build_model("small", 10, 0.25, seed=0)
    listed.split_points = ["layer2"]
    assert method_costs(listed, shape, T, "bptt", local_blocks=2) == local
    with pytest.raises(ValueError, match="split points"):
        method_costs(small, shape, T, "bptt", local_blocks=4)


def test_frames_cost_what_a_static_image_costs(small):
    # (T, B, C, H, W) frames: the same layers on the same number of samples per step
    assert method_costs(small, (3, 4, 3, 16, 16), 3, "rate_s") == \
        method_costs(small, (4, 3, 16, 16), 3, "rate_s")
    two = build_model("small", 10, 0.25, seed=0, in_channels=2)   # event frames: 2 polarities
    first = trace(two, (2, 16, 16))[0]
    assert first.macs == 4 * 16 * 16 * 2 * 3 * 3                   # O Ho Wo C k k


def test_counting_choices_for_event_input_and_pooled_spikes():
    vgg = build_model("vggsnn_cifar", 10, 0.125, seed=0)
    shape, T = (2, 3, 32, 32), 2
    strict = {op.name: op for op in trace(vgg, shape[1:])}
    assert not strict["feature.0"].spike_in and strict["feature.3"].spike_in
    assert not strict["feature.7"].spike_in                  # after AvgPool2d: real values
    events = {op.name: op for op in trace(vgg, shape[1:], spike_input=True)}
    assert events["feature.0"].spike_in and not events["feature.7"].spike_in
    pooled = {op.name: op for op in trace(vgg, shape[1:], pooled_spikes=True)}
    assert pooled["feature.7"].spike_in and not pooled["feature.0"].spike_in
    # the same products in all three; only their split into MACs and ACs moves
    counts = [method_costs(vgg, shape, T, "bptt", spike_input=e, pooled_spikes=p)
              for e, p in ((False, False), (True, False), (False, True))]
    assert len({c["macs"] + c["acs"] for c in counts}) == 1
    first = strict["feature.0"].macs * T * shape[0]          # forward and dW of the first conv
    assert counts[0]["macs"] - counts[1]["macs"] == 2 * first == counts[1]["acs"] - counts[0]["acs"]
    assert counts[2]["macs"] < counts[0]["macs"]


def test_layer_costs_sum_to_the_totals(small):
    ops = split_blocks(trace(small, (3, 16, 16)), 2)
    rows = layer_costs(ops, 4, 3, "rate_s", itemsize=F32)
    assert {r["routine"] for r in rows} == {"spike", "rate", "rate_bwd"}
    assert not any(r["name"].startswith("aux.") and r["routine"] == "spike" for r in rows)
    assert sum_costs(rows) == method_costs(small, (4, 3, 16, 16), 3, "rate_s", local_blocks=2)


@pytest.mark.parametrize("arch", ["sew_resnet34", "preact_resnet34"])
def test_residual_adds_of_every_block_kind_are_traced(arch):
    """SEW and pre-activation blocks end in their residual sum (no layer after it inside the
    block): each sum is an 'add' op, and the layers reading it know where their input comes
    from, so that a local block edge drops their input gradient as for BasicBlock."""
    model = build_model(arch, 10, 1 / 16, seed=0)
    ops = trace(model, (3, 32, 32))
    names = [op.name for op in ops]
    assert all(op.src in names or op.src is None for op in ops)     # no unknown producer
    adds = [op for op in ops if op.kind == "add"]
    assert len(adds) == 3 + 4 + 6 + 3                                # one per block of ResNet-34
    first = next(op for op in ops if op.name.startswith("layer2.0."))
    assert names[names.index(first.name) - 1] == "layer1.2.add" and first.src == "layer1.2.add"
    for add in adds:                         # it sums the gradients at its block's input
        block = add.name[:-len(".add")]
        block_first = next(op for op in ops if op.name.startswith(block + "."))
        assert (add.in_shape, add.src) == (block_first.in_shape, block_first.src)
    blocks = split_blocks(ops, 2, ["layer2"])
    edge = {op.name for op in blocks if op.block == 1 and not op.needs_dx}
    reads_stream = {op.name for op in blocks if op.src == "layer1.2.add" and op.block == 1}
    assert reads_stream and edge == reads_stream
    local = method_costs(model, (2, 3, 32, 32), 2, "bptt", split_at=["layer2"])
    bptt = method_costs(model, (2, 3, 32, 32), 2, "bptt")
    dropped = sum(op.macs for op in blocks if op.name in edge)
    head = next(op for op in blocks if op.name == "aux.0.linear").macs
    assert bptt["bwd_macs"] + bptt["bwd_acs"] - (local["bwd_macs"] + local["bwd_acs"]) == \
        2 * 2 * (dropped - 2 * head)
