"""Mini-batches of event frames from the HDF5 cache, augmented, prefetched.

`EventLoader` is the CIFAR `Loader` (same epoch order, per-batch seeding, resumable
`iter_epoch(e, start_batch)`, background prefetch thread) with a batch built from the cache:
each sample is read from its own HDF5 chunk, so memory holds only the batches in flight.

Batches are (float32 (T, B, 2, H, W) frames, int64 (B,) labels): time first, the layout the
methods take (methods/common.py); the loader does the (B, T, ...) -> (T, B, ...) transpose.

Augmentation (training only), the rate-BP recipe for event frames, per sample, the same for
all T frames of a sample: random horizontal flip (p = 1/2), then a random circular shift of
dy, dx in {-roll, ..., roll} pixels (numpy.roll over y and x). No normalisation: the frames are
event counts.

pipeline="ottt" replaces all of that, for training and test batches alike, by OTTT's transform
(ottt_transform.py): bytes as torchvision's ToPILImage makes them, Pillow resize to 48, pad 4
and one random 48 crop per sample (training), normalised with OTTT's constants; flip and roll
are not used.
"""
import numpy as np

from ..cifar import DatasetError
from ..loader import Loader
from .ottt_transform import ottt_frames

PIPELINES = ("minirate", "ottt")


def augment_frames(x, rng, flip=True, roll=5):
    """x: (B, T, 2, H, W) -> the same shape, flipped and rolled per sample (a new array)."""
    x = x.copy()
    B = len(x)
    if flip:
        m = rng.random(B) < 0.5
        x[m] = x[m, ..., ::-1]
    if roll:
        shifts = rng.integers(-roll, roll + 1, size=(B, 2))       # (dy, dx) per sample
        for b in range(B):                                        # loop over samples only
            x[b] = np.roll(x[b], tuple(shifts[b]), axis=(-2, -1))
    return x


def check_counts(xb, samples, frames):
    """Raise DatasetError naming the first sample of the batch xb (B, T, 2, H, W) whose frames
    are not finite, non-negative counts. Two passes over the batch when all is well: a NaN read
    from a damaged cache is a data problem to name, not a diverged gradient to chase."""
    if np.isfinite(xb).all() and xb.min() >= 0:
        return
    flat = xb.reshape(len(xb), -1)                                     # (B, T*2*H*W)
    bad = int(np.argmin(np.isfinite(flat).all(1) & (np.nan_to_num(flat).min(1) >= 0)))
    raise DatasetError(f"{frames.path}: {frames.name(samples[bad])} holds NaN, infinite or "
                       f"negative values, which conversion never writes: the file is damaged or "
                       f"was not written by minirate; {frames.rebuild}")


class EventLoader(Loader):
    """Iterate (float32 (T, B, 2, H, W), int64 (B,)) batches of the samples `index` of `frames`.

    frames: an open cache (cache.EventFrames).  index: the sample numbers of this split.
    flip, roll: augmentation when train (roll = largest shift in pixels, 0 = off).
    pipeline: "minirate" (flip and roll above) or "ottt" (ottt_transform.ottt_frames, on
    training and test batches; flip and roll unused).
    """

    def __init__(self, frames, index, batch_size, train, seed=0, flip=True, roll=5,
                 drop_last=None, prefetch=2, pipeline="minirate"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if pipeline not in PIPELINES:
            raise ValueError(f"unknown event pipeline {pipeline!r}; choose one of "
                             f"{', '.join(PIPELINES)}")
        self.pipeline = pipeline
        self.frames, self.index = frames, np.asarray(index, np.int64)
        self.x = self.index                 # Loader counts samples with len(self.x)
        self.y = frames.labels[self.index]
        self.batch_size, self.train, self.seed = int(batch_size), bool(train), int(seed)
        self.flip, self.roll = bool(flip), int(roll)
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.prefetch = max(1, int(prefetch))
        self.epoch = 0

    def make_batch(self, epoch, b, order):
        pos = order[b * self.batch_size:(b + 1) * self.batch_size]
        xb = np.stack([self.frames.frames(i) for i in self.index[pos]])    # (B, T, 2, H, W)
        check_counts(xb, self.index[pos], self.frames)
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(epoch, 1, b)))
        if self.pipeline == "ottt":
            xb = ottt_frames(xb, rng, self.train)                         # (B, T, 2, 48, 48)
        elif self.train:
            xb = augment_frames(xb, rng, self.flip, self.roll)
        return np.ascontiguousarray(xb.transpose(1, 0, 2, 3, 4)), self.y[pos]   # -> (T, B, ...)
