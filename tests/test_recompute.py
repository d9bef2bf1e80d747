"""BPTT with recomputation in time and in depth (minirate/methods/recompute.py): loss, logits,
every gradient and the running statistics bitwise equal to BPTT's, with less kept."""
import numpy as np
import pytest

from minirate.backend import to_numpy
from minirate.costs import method_costs, step_memory
from minirate.layers.dropout import Dropout
from minirate.layers.container import Sequential
from minirate.methods import make_method
from minirate.methods.recompute import RecomputedBPTT, segments
from minirate.models import Net, build_model
from tests.nets import tiny_resnet
from tests.test_train import quick, run_train

NETS = {"small": lambda: build_model("small", 10, 0.25, seed=1), "residual": lambda: tiny_resnet(2)}

# (step mode, options): every option alone and every combination
OPTIONS = [("m", dict(recompute_blocks=True)),
           ("m", dict(recompute_blocks=True, pack_spikes=True)),
           ("s", dict(recompute_blocks=True)),
           ("s", dict(recompute_blocks=True, pack_spikes=True)),
           ("s", dict(recompute_window=1)),
           ("s", dict(recompute_window=2)),
           ("s", dict(recompute_window=3, pack_spikes=True)),
           ("s", dict(recompute_window=2, recompute_blocks=True)),
           ("s", dict(recompute_window=2, recompute_blocks=True, pack_spikes=True))]


def _run(make_model, T, step_mode, dtype, x, y, per_step_loss=False, **options):
    model = make_model().to(np, dtype)
    method = make_method("bptt", model, T, step_mode, per_step_loss=per_step_loss, **options)
    method.step(x.astype(dtype), y)       # the first step learns which segments keep caches
    loss, logits = method.step(x.astype(dtype), y)
    grads = [to_numpy(g).copy() for _, _, g, _ in model.parameters()]
    return loss, to_numpy(logits), grads, model.state_dict(), method.kept_bytes


def _assert_bitwise(a, b):
    assert a[0] == b[0]
    assert np.array_equal(a[1], b[1])
    assert all(np.array_equal(g, h) for g, h in zip(a[2], b[2]))
    assert all(np.array_equal(a[3][k], b[3][k]) for k in a[3])     # running statistics too


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("step_mode,options", OPTIONS)
def test_bitwise_equal_to_bptt(step_mode, options, net, dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 3, 8, 8))
    y = np.array([0, 3, 4])
    for T in (1, 3, 8):
        opts = dict(options, **({"recompute_window": min(options["recompute_window"], T)}
                                if "recompute_window" in options else {}))
        reference = _run(NETS[net], T, step_mode, dtype, x, y)
        got = _run(NETS[net], T, step_mode, dtype, x, y, **opts)
        _assert_bitwise(reference, got)


@pytest.mark.parametrize("step_mode,options", [("m", dict(recompute_blocks=True)),
                                               ("s", dict(recompute_window=2, pack_spikes=True))])
def test_per_step_loss_and_event_frames(step_mode, options):
    rng = np.random.default_rng(6)
    frames = (rng.random((4, 2, 3, 8, 8)) < 0.3).astype(np.float64)     # (T, B, C, H, W)
    y = np.array([1, 2])
    reference = _run(NETS["residual"], 4, step_mode, np.float64, frames, y, per_step_loss=True)
    got = _run(NETS["residual"], 4, step_mode, np.float64, frames, y, per_step_loss=True,
               **options)
    _assert_bitwise(reference, got)


def test_less_is_kept_and_window_memory_follows_T_over_K_plus_K():
    x = np.random.default_rng(7).standard_normal((2, 3, 16, 16))
    y = np.array([0, 1])
    kept = {}
    for T in (4, 16):
        for name, mode, opts in [("bptt", "s", {}), ("window", "s", dict(recompute_window=4)),
                                 ("blocks", "m", dict(recompute_blocks=True)),
                                 ("both", "m", dict(recompute_blocks=True, pack_spikes=True))]:
            kept[name, T] = _run(NETS["small"], T, mode, np.float32, x, y, **opts)[4]
    assert kept["blocks", 16] < 0.7 * kept["bptt", 16]
    assert kept["both", 16] <= kept["blocks", 16]     # at its fullest: one segment made again
    # BPTT grows as T; windows of K = 4 keep T/K states and one window's caches
    assert kept["bptt", 16] > 3.9 * kept["bptt", 4]
    assert kept["window", 4] == kept["bptt", 4]                   # one window: all of it
    assert kept["window", 16] < 1.5 * kept["window", 4]
    assert kept["window", 16] < 0.4 * kept["bptt", 16]


def test_segments_cover_the_network_in_order():
    model = build_model("small", 10, 0.25)
    segs = segments(model)
    # stem conv-BN-LIF; a residual block; a residual block with the pooling and flatten after
    # it; the classifier
    assert [len(s.units) for s in segs] == [3, 1, 3, 1]
    units = [u for s in segs for u in s.units]
    leaves = [m for _, m in model.named_modules() if not m.children]
    assert [m for u in units for _, m in u.named_modules() if not m.children] == leaves


def test_refusals():
    model = build_model("small", 10, 0.25)
    with pytest.raises(ValueError, match="step mode s"):
        RecomputedBPTT(model, 4, "m", window=2)
    with pytest.raises(ValueError, match="1..T"):
        RecomputedBPTT(model, 4, "s", window=5)
    with pytest.raises(ValueError, match="whole network"):
        make_method("bptt", model, 4, local_blocks=2, recompute_blocks=True)
    with pytest.raises(ValueError, match="whole network"):
        make_method("rate_m", model, 4, recompute_blocks=True)
    dropped = Net([("body", Sequential(Dropout(0.5))), ("c", model)])
    with pytest.raises(ValueError, match="dropout"):
        RecomputedBPTT(dropped, 4, "m", blocks=True)


def test_costs_count_the_forwards_run_again():
    model = build_model("small", 10, 0.25)
    B, T = 4, 3
    shape = (B, 3, 32, 32)
    plain = method_costs(model, shape, T, "bptt", "s")

    def extra(costs, key):
        return costs[key] - plain[key]

    window = method_costs(model, shape, T, "bptt", "s", recompute_window=2)
    both = method_costs(model, shape, T, "bptt", "s", recompute_window=2, recompute_blocks=True)
    for key in ("fwd_macs", "fwd_acs"):
        assert extra(window, key) == plain[key] > 0      # every step's forward once more
        assert extra(both, key) == 2 * plain[key]        # and every segment's once more again
    assert window["bwd_macs"] == plain["bwd_macs"]
    # step mode m: the segments after the first two keep their caches (`trailing_segments`, as
    # the method found after its first step), so only the stem conv (3 -> 4 channels, real
    # input) and the first residual block (4 -> 8 channels, 1x1 conv shortcut; spike inputs)
    # are run again: per sample and step, at 32x32
    method = make_method("bptt", model, T, recompute_blocks=True)
    x = np.random.default_rng(9).standard_normal(shape).astype(np.float32)
    method.step(x, np.arange(B))
    assert method.keep_from == 2
    blocks = method_costs(model, shape, T, "bptt", "m", recompute_blocks=True)
    m_plain = method_costs(model, shape, T, "bptt", "m")
    stem, block = 4 * 32 * 32 * 3 * 9, 8 * 32 * 32 * (4 * 9 + 8 * 9 + 4)
    assert blocks["fwd_macs"] - m_plain["fwd_macs"] == stem * B * T
    assert blocks["fwd_acs"] - m_plain["fwd_acs"] == block * B * T


def test_train_resumes_unaffected(tmp_path, synth):
    """Plain BPTT for 5 steps equals plain BPTT stopped after 2, then resumed with packed spikes
    and recomputation (they change nothing but memory, so resuming with them is allowed)."""
    full = run_train(*quick(tmp_path / "full", synth, "--max-steps", "5"))
    assert full.returncode == 0, full.stderr
    half = run_train(*quick(tmp_path / "half", synth, "--max-steps", "2"))
    assert half.returncode == 0, half.stderr
    resumed = run_train(*quick(tmp_path / "half", synth, "--max-steps", "5", "--resume", "auto",
                               "--pack-spikes", "--recompute-blocks"))
    assert resumed.returncode == 0, resumed.stderr
    a, b = (np.load(tmp_path / d / "last.npz") for d in ("full", "half"))
    assert all(np.array_equal(a[k], b[k]) for k in a.files if k != "__meta__")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from minirate.data.cifar import make_synthetic_cifar
    return make_synthetic_cifar(str(tmp_path_factory.mktemp("synth")), n_train=48, n_test=24)


@pytest.mark.parametrize("arch", ["small", "vgg11"])
@pytest.mark.parametrize("step_mode,options", OPTIONS + [("m", dict(pack_spikes=True))])
def test_estimated_kept_bytes_are_a_close_floor(arch, step_mode, options):
    """costs.step_memory, counted from shapes, against what the method really keeps."""
    x = np.random.default_rng(8).standard_normal((2, 3, 32, 32)).astype(np.float32)
    model = build_model(arch, 10, 0.125)
    method = make_method("bptt", model, 3, step_mode, **options)
    for _ in range(2):                    # the second step as every later one
        method.step(x, np.array([0, 1]))
    est = step_memory(model, x.shape, 3, "bptt", step_mode, **options)["kept"]
    assert 0.8 * method.kept_bytes <= est <= 1.0 * method.kept_bytes, (est, method.kept_bytes)
