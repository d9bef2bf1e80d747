"""CIFAR augmentations: pad-and-crop, horizontal flip, normalisation, Cutout.

All randomness comes from an explicit `numpy.random.Generator`, so the same generator state
gives the same images. Crop and flip work on uint8 HWC images, a batch (N, H, W, C) or a single
(H, W, C); `normalize` turns them into float32 CHW; `cutout` works on the normalised float
(N, C, H, W) batch. Every op is vectorised over the batch (no Python loop over images).

Training pipeline (`augment_batch`), in the order used by the AutoAugment and Cutout papers:

    [AutoAugment policy] -> pad 4 + random 32x32 crop -> random flip -> normalise -> [Cutout]

`pipeline` selects whose pipeline `augment_batch` and `normalize` run:

    "minirate"  the above (default), CIFAR_STATS below;
    "ratebp"    rate-BP's published code, op for op (ratebp_augment.py): crop -> flip ->
                [their AutoAugment policy] -> [Cutout, black hole] -> normalise with their
                std (0.2023, 0.1994, 0.2010).
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

PIPELINES = ("minirate", "ratebp")

# Per-channel mean and standard deviation of the training images, pixel values in [0, 1].
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar10-sample": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),   # as CIFAR-10
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _as_batch(x):
    """(H, W, C) -> (1, H, W, C); a batch passes through. Returns (batch, was_single)."""
    x = np.asarray(x)
    if x.ndim == 3:
        return x[None], True
    if x.ndim != 4:
        raise ValueError(f"expected an image (H, W, C) or a batch (N, H, W, C), got {x.shape}")
    return x, False


def _check_pipeline(pipeline):
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown CIFAR pipeline {pipeline!r}; choose one of "
                         f"{', '.join(PIPELINES)}")


def normalize(x, dataset="cifar10", pipeline="minirate"):
    """uint8 HWC images -> float32 CHW, standardised per channel.

        y[n, c, h, w] = (x[n, h, w, c] / 255 - mean[c]) / std[c]

    with the pipeline's constants (CIFAR_STATS, or ratebp_augment.RATEBP_STATS).
    x: uint8 (N, H, W, C) or (H, W, C). Returns float32 (N, C, H, W) or (C, H, W).
    """
    _check_pipeline(pipeline)
    if pipeline == "ratebp":
        from minirate.data.ratebp_augment import ratebp_normalize
        return ratebp_normalize(x, dataset)
    if dataset not in CIFAR_STATS:
        raise ValueError(f"no normalisation statistics for {dataset!r}; "
                         f"choose one of {', '.join(CIFAR_STATS)}")
    mean, std = (np.asarray(v, dtype=np.float32) for v in CIFAR_STATS[dataset])
    xb, single = _as_batch(x)
    scale = (1.0 / (255.0 * std))[:, None, None]  # (C, 1, 1): one multiply-add per pixel
    offset = (-mean / std)[:, None, None]
    # (N, H, W, C) -> (N, C, H, W), converted to a C-contiguous float32 copy in one pass
    y = xb.transpose(0, 3, 1, 2).astype(np.float32, order="C")
    y *= scale
    y += offset
    return y[0] if single else y


def random_crop(x, rng, padding=4):
    """Zero-pad each side by `padding` pixels, then take a random window of the original size.

    out[n, i, j] = x_pad[n, i + oy[n], j + ox[n]], with oy, ox uniform in {0, ..., 2*padding}
    (so a shift of up to `padding` pixels in each direction, zeros coming in from the border).

    x: (N, H, W, C) or (H, W, C), any dtype. Returns the same shape and dtype.
    """
    xb, single = _as_batch(x)
    N, H, W, C = xb.shape
    p = padding
    x_pad = np.zeros((N, H + 2 * p, W + 2 * p, C), dtype=xb.dtype)
    x_pad[:, p:p + H, p:p + W] = xb
    oy = rng.integers(0, 2 * p + 1, size=N)
    ox = rng.integers(0, 2 * p + 1, size=N)
    # All H x W windows of each padded image as a view, then one gather picks window
    # (oy[n], ox[n]) of image n for the whole batch (much faster than per-pixel fancy indexing).
    windows = sliding_window_view(x_pad, (H, W), axis=(1, 2))  # (N, 2p+1, 2p+1, C, H, W)
    out = windows[np.arange(N), oy, ox]                         # (N, C, H, W) copy
    out = out.transpose(0, 2, 3, 1)                             # (N, C, H, W) -> (N, H, W, C)
    return out[0] if single else out


def random_flip(x, rng, p=0.5):
    """Mirror each image left-right with probability p: out[n, i, j] = x[n, i, W-1-j].

    x: (N, H, W, C) or (H, W, C). Returns a new array of the same shape and dtype.
    """
    xb, single = _as_batch(x)
    flip = rng.random(len(xb)) < p
    out = xb.copy()
    out[flip] = xb[flip, :, ::-1]
    return out[0] if single else out


def cutout(x, rng, size=16):
    """Cutout (DeVries & Taylor, 2017): zero one size x size square per image.

    The square's centre (cy, cx) is uniform over all pixels, so the square may hang over the
    border and is clipped there (a corner centre leaves an 8x8 square for size 16):

        out[n, :, i, j] = 0   for max(cy-size//2, 0) <= i < min(cy-size//2+size, H),
                                  likewise for j with cx;   out = x elsewhere.

    Applied to the *normalised* images, as in the paper's reference code: the square becomes
    0 after standardisation, i.e. the data set's mean colour, not black.

    x: float (N, C, H, W) or (C, H, W). Returns a new array of the same shape and dtype.
    """
    x = np.asarray(x)
    single = x.ndim == 3
    xb = x[None] if single else x
    N, _, H, W = xb.shape
    cy = rng.integers(0, H, size=N)
    cx = rng.integers(0, W, size=N)
    y0 = cy - size // 2
    x0 = cx - size // 2
    # Half-open interval tests do the clipping: indices outside [0, H) never exist.
    i = np.arange(H)
    j = np.arange(W)
    in_rows = (i[None, :] >= y0[:, None]) & (i[None, :] < (y0 + size)[:, None])  # (N, H)
    in_cols = (j[None, :] >= x0[:, None]) & (j[None, :] < (x0 + size)[:, None])  # (N, W)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])                          # (N, H, W)
    out = xb * keep[:, None].astype(xb.dtype)                                   # (N, 1, H, W)
    return out[0] if single else out


def augment_batch(x, rng, dataset="cifar10", crop=True, flip=True, cutout_size=0,
                  autoaugment=False, pipeline="minirate"):
    """Full training transform of a uint8 batch.

    x: uint8 (N, H, W, C). Returns float32 (N, C, H, W).
    Order ("minirate"): AutoAugment (if set) -> crop -> flip -> normalise -> Cutout (if
    cutout_size > 0).  pipeline="ratebp": ratebp_augment.ratebp_augment_batch.
    """
    _check_pipeline(pipeline)
    if pipeline == "ratebp":
        from minirate.data.ratebp_augment import ratebp_augment_batch
        return ratebp_augment_batch(x, rng, dataset, crop=crop, flip=flip,
                                    cutout_size=cutout_size, autoaugment=autoaugment)
    if autoaugment:
        from minirate.data.autoaugment import autoaugment_batch  # Pillow only when asked for
        x = autoaugment_batch(x, rng)
    if crop:
        x = random_crop(x, rng)
    if flip:
        x = random_flip(x, rng)
    y = normalize(x, dataset)
    if cutout_size:
        y = cutout(y, rng, cutout_size)
    return y
