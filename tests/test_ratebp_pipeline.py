"""rate-BP's CIFAR pipeline (pipeline="ratebp"): each op that differs from minirate's against a
value worked out by hand, the policy table, the order of the pipeline, seeds."""
import numpy as np
import pytest

from minirate.data import ratebp_augment as R
from minirate.data.augment import CIFAR_STATS, augment_batch, normalize
from minirate.data.autoaugment import CIFAR10_POLICY
from minirate.data.autoaugment import apply_op as minirate_op

MEAN10 = (0.4914, 0.4822, 0.4465)
STD10 = (0.2023, 0.1994, 0.2010)


def test_constants():
    assert R.RATEBP_STATS["cifar10"] == (MEAN10, STD10)
    assert CIFAR_STATS["cifar10"][0] == MEAN10                 # same mean, other std
    assert CIFAR_STATS["cifar10"][1] == (0.2470, 0.2435, 0.2616)
    assert R.RATEBP_STATS["cifar100"] == ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))


def test_normalize_uses_their_std():
    x = np.zeros((1, 2, 2, 3), np.uint8)
    x[0, 0, 0] = (255, 128, 0)
    y = normalize(x, "cifar10", pipeline="ratebp")
    assert y.shape == (1, 3, 2, 2) and y.dtype == np.float32
    for c, v in enumerate((255, 128, 0)):
        assert abs(y[0, c, 0, 0] - (v / 255 - MEAN10[c]) / STD10[c]) < 1e-5
    assert normalize(x[0], pipeline="ratebp").shape == (3, 2, 2)
    default = normalize(x, "cifar10")
    assert abs(default[0, 0, 0, 0] - (1 - 0.4914) / 0.2470) < 1e-5
    with pytest.raises(ValueError, match="pipeline"):
        normalize(x, pipeline="torch")
    with pytest.raises(ValueError, match="mnist"):
        normalize(x, "mnist", pipeline="ratebp")


def test_policy_table():
    assert len(R.RATEBP_POLICY) == 25
    assert R.RATEBP_POLICY[16] == (("Equalize", 0.2, 8), ("Equalize", 0.8, 4))
    assert CIFAR10_POLICY[16] == (("Equalize", 0.2, 8), ("Equalize", 0.6, 4))
    differ = [i for i in range(25) if R.RATEBP_POLICY[i] != CIFAR10_POLICY[i]]
    assert differ == [16]
    assert set(R.RATEBP_OPS) >= {op for sub in R.RATEBP_POLICY for op, _, _ in sub}


def test_magnitude_tables():
    assert np.allclose(R.SHEAR[[0, 9]], [0, 0.3]) and np.allclose(R.ROTATE[[0, 9]], [0, 30])
    assert np.allclose(R.ENHANCE, 0.1 * np.arange(10))        # factor 1 +- 0.1 m
    assert abs(R.SOLARIZE[2] - (256 - 2 * 256 / 9)) < 1e-9     # 199.11, not rounded


def stripe_centre(row):
    """Centroid of the brightness above the grey background in one image row."""
    w = row.astype(float) - 128
    return (w * np.arange(len(row))).sum() / w.sum()


def test_shear_about_top_left_bicubic():
    """out(x, y) = in(x + s y, y), pixel centres at +0.5: a stripe centred on column 12.5
    appears at 12.5 - s (r + 0.5) in row r; s = +-0.3 at m = 9. (About the centre row, row 0
    would move by 0.3 * 15.5 = 4.65.)"""
    x = np.full((32, 32, 3), 128, np.uint8)
    x[:, 12:14] = 255
    seen = set()
    for seed in range(8):
        y = R.apply_op(x, "ShearX", 9, np.random.default_rng(seed))[..., 0]
        shift0, shift31 = stripe_centre(y[0]) - 12.5, stripe_centre(y[31]) - 12.5
        # bicubic rings and clips at 0/255, so the centroids are good to a few tenths
        assert abs(shift0) < 0.5
        assert abs(abs(shift31) - 0.3 * 31.5) < 0.5
        seen.add(np.sign(shift31))
        assert len(set(np.unique(y[31])) - {128, 255}) > 0     # bicubic: in-between values
    assert seen == {-1.0, 1.0}
    # minirate's shear is about the centre row: row 0 moves by 0.3 * 15.5
    y = minirate_op(x, "ShearX", 9, np.random.default_rng(0))[..., 0]
    assert abs(stripe_centre(y[0]) - 12.5) > 4


def test_shear_y_about_top_left():
    x = np.full((32, 32, 3), 128, np.uint8)
    x[12:14, :] = 255
    y = R.apply_op(x, "ShearY", 9, np.random.default_rng(0))[..., 0]
    assert abs(stripe_centre(y[:, 0]) - 12.5) < 0.5
    assert abs(abs(stripe_centre(y[:, 31]) - 12.5) - 0.3 * 31.5) < 0.5


def test_rotate_always_counter_clockwise():
    """Pixel (row 16, col 26), i.e. (10.5, 0.5) from the centre (16, 16) with y down, turned
    30 degrees counter-clockwise on screen: (10.5 cos + 0.5 sin, -10.5 sin + 0.5 cos)
    = (9.34, -4.82) -> row 11, col 25. Every seed: no random sign."""
    x = np.zeros((32, 32, 3), np.uint8)
    x[16, 26] = 200
    for seed in range(8):
        y = R.apply_op(x, "Rotate", 9, np.random.default_rng(seed))
        assert np.argwhere(y[..., 0] == 200).tolist() == [[11, 25]]
        assert (y[0, 0] == 128).all()                          # grey where the frame was left
    turns = {tuple(np.argwhere(minirate_op(x, "Rotate", 9, np.random.default_rng(s))[..., 0]
                               == 200)[0]) for s in range(8)}
    assert len(turns) == 2                                     # minirate's draws a sign


def test_solarize_float_threshold():
    """m = 2: threshold 256 - 512/9 = 199.1, so 199 stays and 200 -> 55; minirate rounds the
    threshold to 199 and inverts 199 too."""
    x = np.zeros((2, 2, 3), np.uint8)
    x[..., 0], x[..., 1], x[..., 2] = 199, 200, 30
    y = R.apply_op(x, "Solarize", 2, np.random.default_rng(0))
    assert y[0, 0].tolist() == [199, 55, 30]
    assert minirate_op(x, "Solarize", 2, np.random.default_rng(0))[0, 0].tolist() == [56, 55, 30]
    y8 = R.apply_op(np.full((1, 1, 3), 28, np.uint8) + np.array([0, 1, 2], np.uint8),
                    "Solarize", 8, np.random.default_rng(0))   # threshold 28.4
    assert y8[0, 0].tolist() == [28, 226, 225]


@pytest.mark.parametrize("m", [0, 5, 9])
def test_brightness_factor_one_plus_minus_tenth_m(m):
    """Brightness blends with black: 100 * (1 +- 0.1 m) exactly, both signs drawn."""
    x = np.full((4, 4, 3), 100, np.uint8)
    got = {int(R.apply_op(x, "Brightness", m, np.random.default_rng(s))[0, 0, 0])
           for s in range(16)}
    assert got == {round(100 * (1 + 0.1 * m)), round(100 * (1 - 0.1 * m))}


def test_contrast_m0_is_identity():
    """Factor 1 +- 0: unchanged (the paper's 0.1 + 1.8 m/9 would give 0.1 at m = 0)."""
    x = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for op in ("Contrast", "Color", "Brightness", "Sharpness"):
        assert np.array_equal(R.apply_op(x, op, 0, np.random.default_rng(1)), x)


def test_cutout_hole_is_black_before_normalising():
    """A white image, no crop/flip/AutoAugment: every pixel is (1 - mean)/std or, in the hole,
    (0 - mean)/std; the hole is a clipped 16 x 16 square."""
    x = np.full((16, 32, 32, 3), 255, np.uint8)
    y = augment_batch(x, np.random.default_rng(0), crop=False, flip=False, cutout_size=16,
                      pipeline="ratebp")
    for c in range(3):
        hole = (0 - MEAN10[c]) / STD10[c]
        white = (1 - MEAN10[c]) / STD10[c]
        assert np.all(np.isclose(y[:, c], hole, atol=1e-5) | np.isclose(y[:, c], white, atol=1e-5))
    in_hole = np.isclose(y[:, 0], (0 - MEAN10[0]) / STD10[0], atol=1e-5)     # (N, H, W)
    assert in_hole.any(axis=(1, 2)).all()
    rows, cols = in_hole.any(axis=2).sum(1), in_hole.any(axis=1).sum(1)
    assert (rows <= 16).all() and (cols <= 16).all() and (rows >= 8).all() and (cols >= 8).all()
    assert np.array_equal(in_hole.sum((1, 2)), rows * cols)                 # a rectangle


def test_autoaugment_runs_on_the_cropped_image(monkeypatch):
    """crop -> flip -> AutoAugment: the policy receives 32x32 images with the crop's zero
    strips, and what it returns is what gets normalised (nothing is cropped after it)."""
    seen = []

    def fake_policy(x, rng):
        seen.append(x.copy())
        return np.full_like(x, 255)

    monkeypatch.setattr(R, "ratebp_autoaugment_batch", fake_policy)
    x = np.full((32, 32, 32, 3), 100, np.uint8)
    y = augment_batch(x, np.random.default_rng(0), autoaugment=True, pipeline="ratebp")
    assert seen[0].shape == (32, 32, 32, 3) and (seen[0] == 0).any()
    assert np.allclose(y[:, 0], (1 - MEAN10[0]) / STD10[0], atol=1e-5)


def test_seeds_reproduce_and_shapes():
    x = np.random.default_rng(1).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    kw = dict(cutout_size=16, autoaugment=True, pipeline="ratebp")
    a = augment_batch(x, np.random.default_rng(5), **kw)
    b = augment_batch(x, np.random.default_rng(5), **kw)
    c = augment_batch(x, np.random.default_rng(6), **kw)
    assert a.shape == (12, 3, 32, 32) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert augment_batch(x, np.random.default_rng(5)).shape == (12, 3, 32, 32)   # default


def test_every_op_runs_at_every_magnitude():
    x = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for name in R.RATEBP_OPS:
        for m in range(10):
            y = R.apply_op(x, name, m, np.random.default_rng(m))
            assert y.shape == x.shape and y.dtype == np.uint8
