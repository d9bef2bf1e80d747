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
"""
import numpy as np

from ..loader import Loader


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


class EventLoader(Loader):
    """Iterate (float32 (T, B, 2, H, W), int64 (B,)) batches of the samples `index` of `frames`.

    frames: an open cache (cache.EventFrames).  index: the sample numbers of this split.
    flip, roll: augmentation when train (roll = largest shift in pixels, 0 = off).
    """

    def __init__(self, frames, index, batch_size, train, seed=0, flip=True, roll=5,
                 drop_last=None, prefetch=2):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
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
        if self.train:
            rng = np.random.default_rng(
                np.random.SeedSequence(self.seed, spawn_key=(epoch, 1, b)))
            xb = augment_frames(xb, rng, self.flip, self.roll)
        return np.ascontiguousarray(xb.transpose(1, 0, 2, 3, 4)), self.y[pos]   # -> (T, B, ...)
