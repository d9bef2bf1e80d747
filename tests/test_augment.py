"""Crop, flip, normalisation, Cutout and the AutoAugment policy, on small crafted images."""
import time

import numpy as np
import pytest

from minirate.data.augment import (CIFAR_STATS, augment_batch, cutout, normalize, random_crop,
                                   random_flip)
from minirate.data.autoaugment import (CIFAR10_POLICY, OPS, apply_op, autoaugment_batch,
                                       autoaugment_image)


def distinct_images(n, h=32, w=32, seed=0):
    """uint8 (n, h, w, 3) with no zero pixel, so zero padding is recognisable."""
    rng = np.random.default_rng(seed)
    return rng.integers(1, 256, size=(n, h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------
# Normalisation


def test_normalize_values():
    x = np.zeros((2, 4, 5, 3), dtype=np.uint8)
    x[0] = (0, 128, 255)
    x[1, 2, 3] = (10, 20, 30)
    y = normalize(x, "cifar10")
    assert y.shape == (2, 3, 4, 5) and y.dtype == np.float32 and y.flags.c_contiguous
    mean, std = CIFAR_STATS["cifar10"]
    for n in range(2):
        for c in range(3):
            for i in range(4):
                for j in range(5):
                    expected = (x[n, i, j, c] / 255.0 - mean[c]) / std[c]
                    assert abs(y[n, c, i, j] - expected) < 1e-5
    assert abs(y[0, 2, 0, 0] - (1 - 0.4465) / 0.2616) < 1e-5
    y100 = normalize(x[0], "cifar100")  # single image -> (C, H, W)
    assert y100.shape == (3, 4, 5)
    assert abs(y100[0, 0, 0] - (0 - 0.5071) / 0.2673) < 1e-5
    with pytest.raises(ValueError, match="mnist"):
        normalize(x, "mnist")


def test_normalize_real_statistics():
    """The CIFAR-10 statistics standardise real images: mean ~ 0, std ~ 1 per channel."""
    from minirate.data.cifar import load_cifar
    x = load_cifar("cifar10-sample", None)[0]
    y = normalize(x)
    assert np.abs(y.mean(axis=(0, 2, 3))).max() < 0.05
    assert np.abs(y.std(axis=(0, 2, 3)) - 1).max() < 0.05


# ----------------------------------------------------------------------------------------------
# Flip


def test_flip_mirrors():
    x = distinct_images(64)
    rng = np.random.default_rng(0)
    assert np.array_equal(random_flip(x, rng, p=1.0), x[:, :, ::-1])
    assert np.array_equal(random_flip(x, rng, p=0.0), x)
    out = random_flip(x, rng)
    flipped = [np.array_equal(out[n], x[n, :, ::-1]) for n in range(64)]
    kept = [np.array_equal(out[n], x[n]) for n in range(64)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 16 < sum(flipped) < 48
    # A single image: left-right, so column j goes to W-1-j, rows unchanged.
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert np.array_equal(random_flip(img, rng, p=1.0)[:, 0], img[:, 2])


# ----------------------------------------------------------------------------------------------
# Crop


def crop_by_loops(x, dy, dx, p=4):
    """Reference: window of the zero-padded image at offset (dy, dx) in [0, 2p]."""
    H, W, C = x.shape
    out = np.zeros_like(x)
    for i in range(H):
        for j in range(W):
            si, sj = i + dy - p, j + dx - p
            if 0 <= si < H and 0 <= sj < W:
                out[i, j] = x[si, sj]
    return out


def test_crop_is_shifted_window_with_zero_padding():
    x = distinct_images(200, h=12, w=10)
    out = random_crop(x, np.random.default_rng(3))
    assert out.shape == x.shape and out.dtype == np.uint8
    # The loop reference is slow; check a padded-slice shortcut against it once, then use that.
    x_pad = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
    assert np.array_equal(x_pad[0, 3:15, 7:17], crop_by_loops(x[0], 3, 7))
    seen = set()
    for n in range(len(x)):
        matches = [(dy, dx) for dy in range(9) for dx in range(9)
                   if np.array_equal(out[n], x_pad[n, dy:dy + 12, dx:dx + 10])]
        assert len(matches) == 1, n
        seen.add(matches[0])
    assert len(seen) > 60  # offsets spread over the 81 possibilities
    assert {0, 8} <= {d for d, _ in seen} and {0, 8} <= {d for _, d in seen}


def test_crop_single_image_and_padding_size():
    x = distinct_images(1, h=6, w=6)[0]
    out = random_crop(x, np.random.default_rng(1), padding=2)
    assert out.shape == (6, 6, 3)
    assert any(np.array_equal(out, crop_by_loops(x, dy, dx, p=2))
               for dy in range(5) for dx in range(5))


# ----------------------------------------------------------------------------------------------
# Cutout


def test_cutout_zeroes_a_clipped_square():
    N = 500
    x = np.ones((N, 3, 32, 32), dtype=np.float32) * 2.5
    out = cutout(x, np.random.default_rng(0), size=16)
    assert out.dtype == np.float32 and np.all(x == 2.5)  # input untouched
    zero = out == 0
    assert np.array_equal(zero, np.broadcast_to(zero[:, :1], zero.shape))  # all channels alike
    assert np.all(out[~zero] == 2.5)
    areas = []
    for n in range(N):
        rows = np.flatnonzero(zero[n, 0].any(1))
        cols = np.flatnonzero(zero[n, 0].any(0))
        h, w = len(rows), len(cols)
        assert 8 <= h <= 16 and 8 <= w <= 16  # a centre anywhere keeps at least half the side
        assert zero[n, 0].sum() == h * w  # a filled rectangle
        assert rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w
        # Clipping only happens at the border.
        if h < 16:
            assert rows[0] == 0 or rows[-1] == 31
        if w < 16:
            assert cols[0] == 0 or cols[-1] == 31
        areas.append(h * w)
    assert max(areas) == 256 and min(areas) < 256


def test_cutout_single_image():
    out = cutout(np.ones((3, 32, 32)), np.random.default_rng(2), size=8)
    assert out.shape == (3, 32, 32) and 16 <= (out[0] == 0).sum() <= 64


# ----------------------------------------------------------------------------------------------
# Pipeline


def test_augment_batch_deterministic_and_fast():
    x = distinct_images(128)
    a = augment_batch(x, np.random.default_rng(5), cutout_size=16)
    b = augment_batch(x, np.random.default_rng(5), cutout_size=16)
    c = augment_batch(x, np.random.default_rng(6), cutout_size=16)
    assert a.shape == (128, 3, 32, 32) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    plain = augment_batch(x, np.random.default_rng(5), crop=False, flip=False)
    assert np.array_equal(plain, normalize(x))

    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for _ in range(10):
        augment_batch(x, rng, cutout_size=16)
    per_batch = (time.perf_counter() - t) / 10
    assert per_batch < 0.05, f"crop+flip+cutout took {per_batch * 1e3:.1f} ms for 128 images"


# ----------------------------------------------------------------------------------------------
# AutoAugment


def test_policy_shape():
    assert len(CIFAR10_POLICY) == 25
    for sub_policy in CIFAR10_POLICY:
        assert len(sub_policy) == 2
        for name, prob, magnitude in sub_policy:
            assert name in OPS and 0 <= prob <= 1 and magnitude in range(10)
    assert set(OPS) == {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
                        "AutoContrast", "Invert", "Equalize", "Solarize", "Posterize",
                        "Contrast", "Color", "Brightness", "Sharpness"}


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_runs(name):
    x = distinct_images(1)[0]
    for m in (0, 5, 9):
        out = apply_op(x, name, m, np.random.default_rng(m))
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_op_semantics():
    x = distinct_images(1)[0]
    rng = np.random.default_rng(0)
    assert np.array_equal(apply_op(x, "Invert", 0, rng), 255 - x)
    assert np.array_equal(apply_op(x, "Solarize", 0, rng), x)  # threshold 256: no change
    assert np.array_equal(apply_op(x, "Solarize", 9, rng), 255 - x)  # threshold 0: all inverted
    assert np.all(apply_op(x, "Posterize", 9, rng) % 16 == 0)  # 4 bits kept
    assert np.array_equal(apply_op(x, "Posterize", 0, rng), x)  # 8 bits kept
    for name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
        assert np.array_equal(apply_op(x, name, 0, rng), x), name
    # Brightness at magnitude 0 is factor 0.1: a much darker image.
    assert apply_op(x, "Brightness", 0, rng).mean() < 0.2 * x.mean()
    # Translate at magnitude 9 shifts by 14.5 px: 14 or 15 grey columns come in on one side.
    out = apply_op(x, "TranslateX", 9, rng)
    grey = np.all(out == 128, axis=(0, 2))
    k = int(grey.sum())
    assert k in (14, 15)
    if grey[-1]:  # content moved left
        assert grey[32 - k:].all() and np.array_equal(out[:, :32 - k], x[:, k:])
    else:         # content moved right
        assert grey[:k].all() and np.array_equal(out[:, k:], x[:, :32 - k])


def test_autoaugment_deterministic():
    x = distinct_images(64)
    a = autoaugment_batch(x, np.random.default_rng(7))
    b = autoaugment_batch(x, np.random.default_rng(7))
    c = autoaugment_batch(x, np.random.default_rng(8))
    assert a.shape == x.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    changed = [not np.array_equal(a[n], x[n]) for n in range(64)]
    assert 20 < sum(changed) < 64  # most images are changed; some sub-policy draws do nothing
    single = autoaugment_image(x[0], np.random.default_rng(1))
    assert single.shape == (32, 32, 3) and single.dtype == np.uint8


def test_autoaugment_in_pipeline():
    x = distinct_images(16)
    a = augment_batch(x, np.random.default_rng(3), autoaugment=True, cutout_size=16)
    b = augment_batch(x, np.random.default_rng(3), autoaugment=True, cutout_size=16)
    c = augment_batch(x, np.random.default_rng(3), autoaugment=False, cutout_size=16)
    assert a.shape == (16, 3, 32, 32) and np.array_equal(a, b) and not np.array_equal(a, c)
