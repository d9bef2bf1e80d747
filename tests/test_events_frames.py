"""Events -> frames (count and time splits) and the bilinear resize, against loops written
from the rules in frames.py, and small cases worked out by hand."""
import numpy as np
import pytest

from minirate.data.events.frames import bilinear_taps, integrate, resize


def _reference(t, x, y, on, T, H, W, split_by):
    """The obvious loop over events."""
    out = np.zeros((T, 2, H, W))
    n = len(t)
    for i in range(n):
        if split_by == "count":
            k = min(i // max(n // T, 1), T - 1)
        else:
            dt = max((t[-1] - t[0]) // T, 1)
            k = min((t[i] - t[0]) // dt, T - 1)
        out[k, on[i], y[i], x[i]] += 1
    return out


def test_by_hand():
    # 7 events, T = 3: count split puts 2, 2 and 3 (the remainder) events in the frames
    t = np.array([0, 1, 2, 3, 4, 5, 90])
    x = np.array([0, 1, 1, 0, 2, 2, 2])
    y = np.array([0, 0, 0, 1, 1, 1, 0])
    on = np.array([1, 0, 0, 1, 1, 1, 0])
    f = integrate(t, x, y, on, 3, 2, 3, "count")
    assert f.dtype == np.float32 and f.shape == (3, 2, 2, 3)
    assert f[0, 1, 0, 0] == 1 and f[0, 0, 0, 1] == 1 and f.sum(axis=(1, 2, 3)).tolist() == [2, 2, 3]
    assert f[2, 1, 1, 2] == 2 and f[2, 0, 0, 2] == 1
    # time split: dt = 90 // 3 = 30, so the first six events share frame 0, the last is frame 2
    g = integrate(t, x, y, on, 3, 2, 3, "time")
    assert g.sum(axis=(1, 2, 3)).tolist() == [6, 0, 1]


@pytest.mark.parametrize("split_by", ["count", "time"])
@pytest.mark.parametrize("n", [0, 2, 1003])
def test_against_loop(split_by, n):
    rng = np.random.default_rng(n)
    t = np.sort(rng.integers(0, 10 ** 6, n))
    x, y, on = rng.integers(0, 20, n), rng.integers(0, 16, n), rng.integers(0, 2, n)
    f = integrate(t, x, y, on, 5, 16, 20, split_by)
    assert np.array_equal(f, _reference(t, x, y, on, 5, 16, 20, split_by))
    assert f.sum() == n                                    # every event lands in one frame


def test_bilinear_weights_by_hand():
    # 128 -> 48: output 0 reads input position (0 + 0.5) * 128/48 - 0.5 = 5/6, output 47 reads
    # 47.5 * 8/3 - 0.5 = 126.1667
    i0, i1, w = bilinear_taps(128, 48)
    assert (i0[0], i1[0], i0[47], i1[47]) == (0, 1, 126, 127)
    assert np.allclose([w[0], w[47]], [5 / 6, 1 / 6])
    # halving averages neighbour pairs
    assert [list(a) for a in bilinear_taps(4, 2)] == [[0, 2], [1, 3], [0.5, 0.5]]
    # an upscale clamps at both edges: output 0 at position -0.25 -> 0, the last at 1.25 -> 1
    i0, i1, w = bilinear_taps(2, 4)
    assert (i0[0], w[0]) == (0, 0) and (i0[-1], i1[-1]) == (1, 1)


def test_resize_against_loop():
    rng = np.random.default_rng(0)
    frames = rng.random((2, 2, 128, 128)).astype(np.float32)
    out = resize(frames, 48)
    assert out.shape == (2, 2, 48, 48) and out.dtype == np.float32
    scale = 128 / 48
    for i, j in [(0, 0), (5, 17), (47, 47), (20, 33)]:
        sy, sx = max((i + 0.5) * scale - 0.5, 0), max((j + 0.5) * scale - 0.5, 0)
        y0, x0 = int(sy), int(sx)
        y1, x1 = min(y0 + 1, 127), min(x0 + 1, 127)
        wy, wx = sy - y0, sx - x0
        ref = ((1 - wy) * (1 - wx) * frames[..., y0, x0] + (1 - wy) * wx * frames[..., y0, x1]
               + wy * (1 - wx) * frames[..., y1, x0] + wy * wx * frames[..., y1, x1])
        assert np.allclose(out[..., i, j], ref, rtol=1e-5)
    assert np.array_equal(resize(frames, 128), frames)            # same size: untouched


# ----------------------------------------------------------------------------------------------
# CIFAR10-DVS split orders: by file number (minirate) and by file name (SpikingJelly)


def _spikingjelly_split(names_by_class, ratio):
    """SpikingJelly's split_to_train_test_set on a DatasetFolder, written from its rules: the
    files of each class in string order, the first ceil(ratio * n) train, no shuffle."""
    import math
    train = set()
    for names in names_by_class:
        ordered = sorted(names)
        train |= set(ordered[:math.ceil(len(ordered) * ratio)])
    return train


@pytest.mark.parametrize("n, split", [(1000, "9:1"), (37, "9:1"), (105, "8:2"), (12, "9:1")])
def test_split_by_name_reproduces_spikingjelly(n, split):
    from minirate.data.events.datasets import (CIFAR10DVS_CLASSES, CIFAR10DVS_SPLITS,
                                               _number_in, split_of)
    classes = CIFAR10DVS_CLASSES[:3]
    names_by_class = [[f"cifar10_{c}_{i}.aedat" for i in range(n)] for c in classes]
    rng = np.random.default_rng(n)
    ranks, labels, names = [], [], []
    for label, listing in enumerate(names_by_class):
        listing = list(rng.permutation(listing))             # as a directory lists them
        for rank, name in enumerate(sorted(listing, key=_number_in)):   # minirate's order
            ranks.append(rank)
            labels.append(label)
            names.append(name)
    ranks, labels = np.array(ranks), np.array(labels)
    by_number = (ranks >= np.round(CIFAR10DVS_SPLITS[split] * n)).astype(np.uint8)
    is_test = split_of("cifar10dvs", ranks, labels, by_number, split, order="name")
    train = {nm for nm, t in zip(names, is_test) if t == 0}
    assert train == _spikingjelly_split(names_by_class, CIFAR10DVS_SPLITS[split])
    assert np.array_equal(split_of("cifar10dvs", ranks, labels, by_number, split), by_number)


def test_split_by_name_by_hand():
    """12 files: name order 0 1 10 11 2 3 ... 9; ceil(0.9 * 12) = 11 train, so 9 is the test
    file (by number it would be 11, and round(10.8) = 11 train too)."""
    from minirate.data.events.datasets import name_ranks, split_of
    r, lab = np.arange(12), np.zeros(12, np.int64)
    assert name_ranks(r, lab).tolist() == [0, 1, 4, 5, 6, 7, 8, 9, 10, 11, 2, 3]
    is_test = split_of("cifar10dvs", r, lab, (r >= 11).astype(np.uint8), "9:1", order="name")
    assert np.flatnonzero(is_test).tolist() == [9]
    full = split_of("cifar10dvs", np.arange(1000), np.zeros(1000, np.int64), None, "9:1", "name")
    assert sorted(np.flatnonzero(full)) == list(range(91, 100)) + list(range(909, 1000))
    with pytest.raises(Exception, match="order"):
        split_of("cifar10dvs", r, lab, None, "9:1", order="random")
