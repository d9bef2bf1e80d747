"""OTTT's CIFAR10-DVS transform (pipeline="ottt"): bytes, Pillow LA resize, pad-and-crop shared
by all frames of a sample, normalisation constants, no flip, orientation, the loader."""
import numpy as np
import pytest

from minirate.data.events.loader import EventLoader
from minirate.data.events.ottt_transform import (OTTT_MEAN, OTTT_STD, ottt_frames,
                                                 pil_resize_la, to_pil_bytes)

ZERO = [(0 - m) / s for m, s in zip(OTTT_MEAN, OTTT_STD)]      # a 0 byte after normalising


def test_constants():
    assert OTTT_MEAN == (0.2728, 0.1295) and OTTT_STD == (0.2225, 0.1290)


def test_bytes_wrap_like_topilimage():
    """trunc(255 c) mod 256: 1 -> 255, 2 -> 510 mod 256 = 254, 3 -> 253, 0.5 -> 127."""
    got = to_pil_bytes(np.array([0, 1, 2, 3, 0.5, 4], np.float32))
    assert got.tolist() == [0, 255, 254, 253, 127, 252] and got.dtype == np.uint8


def test_la_resize_drops_off_where_on_is_zero():
    """Pillow resizes LA premultiplied by alpha (the ON byte): OFF alone vanishes."""
    f = np.zeros((1, 2, 128, 128), np.uint8)
    f[0, 0] = 200                    # OFF (L) everywhere
    f[0, 1, :, 64:] = 255            # ON (alpha) on the right half only
    out = pil_resize_la(f, 48)
    assert out.shape == (1, 2, 48, 48)
    assert (out[0, 0, :, :20] == 0).all() and (out[0, 0, :, 30:] == 200).all()
    assert (out[0, 1, :, :20] == 0).all() and (out[0, 1, :, 30:] == 255).all()


def test_test_transform_shape_and_normalisation():
    x = np.zeros((3, 4, 2, 128, 128), np.float32)
    x[:, :, :, 60:70, 60:70] = 1                 # both channels: bytes 255, 255
    y = ottt_frames(x, train=False)
    assert y.shape == (3, 4, 2, 48, 48) and y.dtype == np.float32
    for c in range(2):
        assert np.allclose(y[:, :, c, 0, 0], ZERO[c])
        assert np.isclose(y[..., c, 24, 24], (1 - OTTT_MEAN[c]) / OTTT_STD[c]).all()


def test_orientation_is_a_quarter_turn():
    """Event raw (x, y) = (10, 20): minirate puts it at row 117, col 107; their reader at
    row raw_y = 20, col 127 - raw_x = 117."""
    x = np.zeros((1, 1, 2, 128, 128), np.float32)
    x[0, 0, 1, 117, 107] = 1
    y = ottt_frames(x, train=False, size=128)    # no resize: positions only
    hot = np.argwhere(y[0, 0, 1] > 0)
    assert hot.tolist() == [[20, 117]]


def test_one_crop_for_all_frames_and_no_flip():
    """Training output = the test output shifted by (y1 - 4, x1 - 4), zeros coming in,
    the same shift for every frame of a sample, offsets in 0..8, never mirrored."""
    rng = np.random.default_rng(0)
    B, T = 16, 3
    x = rng.integers(0, 2, (B, T, 2, 48, 48)).astype(np.float32)   # bytes 0 or 255
    test = ottt_frames(x, train=False, reorient=False)
    train = ottt_frames(x, np.random.default_rng(1), train=True, reorient=False)
    pad = np.broadcast_to(np.asarray(ZERO, np.float32)[:, None, None], (2, 56, 56))
    offsets = set()
    for b in range(B):
        found = []
        for y1 in range(9):
            for x1 in range(9):
                ok = True
                for t in range(T):
                    big = pad.copy()
                    big[:, 4:52, 4:52] = test[b, t]
                    if not np.allclose(big[:, y1:y1 + 48, x1:x1 + 48], train[b, t], atol=1e-6):
                        ok = False
                        break
                if ok:
                    found.append((y1, x1))
        assert found, f"sample {b}: no single crop of the padded frames gives its output"
        offsets.add(found[0])
    assert len(offsets) > 4


def test_seeds_reproduce():
    x = np.random.default_rng(3).integers(0, 3, (4, 2, 2, 128, 128)).astype(np.float32)
    a = ottt_frames(x, np.random.default_rng(7))
    assert np.array_equal(a, ottt_frames(x, np.random.default_rng(7)))
    assert a.shape == (4, 2, 2, 48, 48)


class FakeFrames:
    """The two things EventLoader reads from a cache: labels and per-sample frames."""

    def __init__(self, n, T, size):
        rng = np.random.default_rng(0)
        self.x = rng.integers(0, 3, (n, T, 2, size, size)).astype(np.float32)
        self.labels = np.arange(n) % 10

    def frames(self, i):
        return self.x[i]


def test_loader_applies_it_to_train_and_test_batches():
    frames = FakeFrames(8, 3, 128)
    train = EventLoader(frames, np.arange(8), 4, True, seed=0, pipeline="ottt", prefetch=1)
    test = EventLoader(frames, np.arange(8), 4, False, seed=0, pipeline="ottt", prefetch=1)
    (xb, yb), = [next(iter(train))]
    assert xb.shape == (3, 4, 2, 48, 48) and xb.dtype == np.float32 and yb.shape == (4,)
    xt, yt = next(iter(test))
    expect = ottt_frames(frames.x[:4], train=False).transpose(1, 0, 2, 3, 4)
    assert np.array_equal(xt, expect) and np.array_equal(yt, frames.labels[:4])
    default = EventLoader(frames, np.arange(8), 4, False, seed=0, prefetch=1)
    assert next(iter(default))[0].shape == (3, 4, 2, 128, 128)   # minirate's: untouched
    with pytest.raises(ValueError, match="pipeline"):
        EventLoader(frames, np.arange(8), 4, True, pipeline="tonic")
