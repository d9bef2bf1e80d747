"""Spikes kept as bits (minirate/methods/packing.py): exact round trips, exact byte counts, and
gradients bitwise equal to the unpacked methods'."""
import numpy as np
import pytest

from minirate.backend import to_numpy
from minirate.layers.base import cache_nbytes
from minirate.layers.batchnorm import BatchNorm2d
from minirate.layers.container import Sequential
from minirate.layers.conv import Conv2d, conv2d_forward
from minirate.layers.flatten import Flatten
from minirate.layers.lif import LIF
from minirate.layers.linear import Linear
from minirate.methods import make_method
from minirate.methods.packing import Packer, PackedSpikes, is_binary, pack, unpack, unpacked
from minirate.models import Net, build_model
from tests.nets import tiny_resnet


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5, 2), (2, 4, 9, 9)])
def test_round_trip_is_exact(xp, dtype, shape):
    rng = np.random.default_rng(sum(shape))
    s = (rng.random(shape) < 0.3).astype(dtype)
    a = xp.asarray(s)
    assert is_binary(a)
    p = pack(a)
    n = int(np.prod(shape))
    assert p.bits.dtype == np.uint8 and p.bits.size == -(-n // 8)
    back = unpack(p)
    assert back.dtype == dtype and back.shape == shape
    assert np.array_equal(to_numpy(back), s)
    assert np.signbit(to_numpy(back)).sum() == 0


def test_only_plus_zero_and_one_count_as_binary(xp):
    base = np.zeros(5000, np.float32)
    base[::3] = 1
    assert is_binary(xp.asarray(base))
    for value in (-0.0, 0.5, 2.0, np.nan, -1.0):
        a = base.copy()
        a[4999] = value                 # past the first look: the whole array is tested
        assert not is_binary(xp.asarray(a)), value
    assert not is_binary(xp.asarray(np.zeros(0, np.float32)))          # nothing to pack
    assert not is_binary(xp.asarray(np.ones(9, np.int32)))             # not floating


def test_packer_packs_spike_fields_and_leaves_the_rest(xp):
    rng = np.random.default_rng(0)
    x = xp.asarray((rng.random((2, 3, 5, 5)) < 0.5).astype(np.float32))
    W = xp.asarray(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    _, cache = conv2d_forward(x, W, None, 1, 1)
    kept = Packer(True, exclude=[W]).keep(cache)
    assert isinstance(kept.x, PackedSpikes) and kept.W is W
    assert cache_nbytes(kept, exclude=[W]) == -(-x.size // 8)
    back = unpacked(kept)
    assert back.W is W and np.array_equal(to_numpy(back.x), to_numpy(x))
    # a real-valued input is left as it is; a disabled packer changes nothing
    _, real = conv2d_forward(x + 0.25, W, None, 1, 1)
    assert Packer(True, exclude=[W]).keep(real) is real
    assert Packer(False).keep(cache) is cache


def _stack(seed=0):
    """conv-BN-LIF, conv-BN-LIF, flatten, linear: two spike tensors kept, by conv 2 and the
    linear layer (a view of the second LIF's output)."""
    rng = np.random.default_rng(seed)
    net = Net([("features", Sequential(Conv2d(3, 4, 3, 1, 1, bias=False, rng=rng), BatchNorm2d(4),
                                       LIF(), Conv2d(4, 5, 3, 1, 1, bias=False, rng=rng),
                                       BatchNorm2d(5), LIF())),
               ("flatten", Flatten()), ("classifier", Sequential(Linear(5 * 6 * 6, 3, rng=rng)))])
    net.children["features"].children["0"].params["weight"] *= 3     # make the LIFs fire
    return net


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_packed_byte_count_is_exact(step_mode):
    T, B = 3, 2
    x = np.random.default_rng(1).standard_normal((B, 3, 6, 6)).astype(np.float32)
    y = np.array([0, 2])
    kept = {}
    for packed in (False, True):
        m = make_method("bptt", _stack(), T, step_mode, pack_spikes=packed)
        m.step(x, y)
        kept[packed] = m.kept_bytes
    spikes = [4 * 6 * 6, 5 * 6 * 6]            # numbers per sample and step of the two tensors
    if step_mode == "m":                      # one tensor of T*B samples each
        float_bytes = sum(4 * T * B * n for n in spikes)
        bit_bytes = sum(-(-(T * B * n) // 8) for n in spikes)
    else:                                     # T tensors of B samples each
        float_bytes = sum(4 * T * B * n for n in spikes)
        bit_bytes = sum(T * -(-(B * n) // 8) for n in spikes)
    assert kept[True] == kept[False] - float_bytes + bit_bytes


def _grads(model):
    return [to_numpy(g).copy() for _, _, g, _ in model.parameters()]


def _step(make_model, method, x, y, dtype, **kw):
    model = make_model().to(np, dtype)
    m = make_method(method, model, kw.pop("T"), **kw)
    loss, logits = m.step(x.astype(dtype), y)
    return loss, to_numpy(logits), _grads(model), m.kept_bytes


CASES = [("bptt", dict(step_mode="m")), ("bptt", dict(step_mode="s")),
         ("bptt", dict(step_mode="m", per_step_loss=True)),
         ("tbptt", dict(step_mode="m", window=2)), ("tbptt", dict(step_mode="s", window=2)),
         ("bptt", dict(split_at=["layer1"])), ("tbptt", dict(window=2, split_at=["layer1"])),
         ("sltt", dict()), ("sltt", dict(sltt_k=2))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method,kw", CASES)
def test_gradients_bitwise_equal_unpacked(method, kw, dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 8, 8))
    y = np.array([1, 4])
    for make_model in (lambda: tiny_resnet(seed=2), lambda: build_model("small", 10, 0.25)):
        for T in (1, 3, 8):
            kw_T = {k: min(v, T) if k in ("window", "sltt_k") else v for k, v in kw.items()}
            plain = _step(make_model, method, x, y, dtype, T=T, **kw_T)
            packed = _step(make_model, method, x, y, dtype, T=T, pack_spikes=True, **kw_T)
            assert plain[0] == packed[0]
            assert np.array_equal(plain[1], packed[1])
            assert all(np.array_equal(a, b) for a, b in zip(plain[2], packed[2]))
            assert packed[3] < plain[3]


@pytest.mark.parametrize("method", ["rate_m", "rate_s", "ottt"])
def test_methods_without_spikes_in_their_caches_refuse_packing(method):
    with pytest.raises(ValueError, match="nothing to pack"):
        make_method(method, build_model("small", 10, 0.25), 2, pack_spikes=True)
