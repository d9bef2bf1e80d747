"""Mini-batch loader with background prefetching and reproducible, resumable randomness.

Determinism: nothing depends on thread timing. For epoch e the data order comes from a
generator seeded with (seed, e), and batch b of that epoch is augmented by its own generator
seeded with (seed, e, b) (NumPy `SeedSequence` spawn keys). So the same seed gives the same
batches, and `iter_epoch(e, start_batch=k)` gives exactly batches k, k+1, ... of the full epoch,
which is what resuming a run from a checkpoint at (epoch, batch index) needs.

Prefetching: one daemon thread builds the next batches into a small queue while the training
step runs (the heavy NumPy work releases the GIL). Stopping early (break, an exception, or
`close()` on the iterator) tells the thread to stop and joins it; an exception raised while
building a batch is re-raised in the consumer.
"""
import queue
import threading

import numpy as np

from minirate.data.augment import augment_batch, normalize

_DONE = object()  # sentinel put by the worker after the last batch


class _WorkerError:
    """Carries an exception from the worker thread to the consumer."""

    def __init__(self, exc):
        self.exc = exc


def epoch_order(n, seed, epoch, train):
    """The order in which n samples are served in epoch `epoch`: a permutation drawn from
    (seed, epoch) when training, 0..n-1 otherwise. Every loader uses this one rule, so the data
    order of a run depends only on the seed, never on how the samples are read."""
    if not train:
        return np.arange(n)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch, 0)))
    return rng.permutation(n)


class Loader:
    """Iterate (float32 (B, C, H, W) normalised images, int64 (B,) labels) batches.

    Args:
        x: uint8 images (N, H, W, C).   y: integer labels (N,).
        batch_size: images per batch.
        train: shuffle every epoch and augment; otherwise the data set order, no augmentation.
        seed: int, or a numpy Generator from which one base seed is drawn at construction.
        crop, flip: pad-4 random crop and horizontal flip (train only).
        cutout: Cutout square size in pixels (16 for CIFAR-10, 8 for CIFAR-100), 0/False = off.
            True means 16.
        autoaugment: AutoAugment CIFAR-10 policy before crop/flip (train only).
        dataset: 'cifar10' or 'cifar100', picks the normalisation statistics.
        pipeline: whose augmentation and normalisation: 'minirate' or 'ratebp' (augment.py).
        drop_last: drop the last incomplete batch; default: True when train, False otherwise.
        prefetch: batches prepared ahead (queue depth).

    `iter(loader)` runs epoch `loader.epoch` and advances it; `iter_epoch(e, start_batch)` runs
    a given epoch from a given batch.
    """

    def __init__(self, x, y, batch_size, train, seed=0, crop=True, flip=True, cutout=0,
                 autoaugment=False, dataset="cifar10", drop_last=None, prefetch=2,
                 pipeline="minirate"):
        x = np.asarray(x)
        y = np.asarray(y)
        if x.ndim != 4 or x.dtype != np.uint8:
            raise ValueError(f"x should be uint8 (N, H, W, C), got {x.dtype} {x.shape}")
        if y.shape != (len(x),):
            raise ValueError(f"y should have shape ({len(x)},), got {y.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        normalize(x[:1], dataset, pipeline)  # fails early on an unknown data set or pipeline
        if isinstance(seed, np.random.Generator):
            seed = int(seed.integers(2 ** 63))
        if int(seed) < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")

        self.x = x
        self.y = y.astype(np.int64)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.crop, self.flip, self.autoaugment = bool(crop), bool(flip), bool(autoaugment)
        self.cutout = 16 if cutout is True else int(cutout or 0)
        self.dataset, self.pipeline = dataset, pipeline
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.prefetch = max(1, int(prefetch))
        self.epoch = 0

    def __len__(self):
        n, b = len(self.x), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        return self.iter_epoch(epoch)

    def order(self, epoch):
        """Indices of the images in epoch `epoch`, in the order they are served."""
        return epoch_order(len(self.x), self.seed, epoch, self.train)

    def make_batch(self, epoch, b, order):
        """Batch b of an epoch given that epoch's order: (float32 (B, C, H, W), int64 (B,))."""
        idx = order[b * self.batch_size:(b + 1) * self.batch_size]
        xb = self.x[idx]
        if self.train:
            rng = np.random.default_rng(
                np.random.SeedSequence(self.seed, spawn_key=(epoch, 1, b)))
            xb = augment_batch(xb, rng, self.dataset, crop=self.crop, flip=self.flip,
                               cutout_size=self.cutout, autoaugment=self.autoaugment,
                               pipeline=self.pipeline)
        else:
            xb = normalize(xb, self.dataset, self.pipeline)
        return xb, self.y[idx]

    def iter_epoch(self, epoch, start_batch=0):
        """Iterator over batches start_batch, ..., len(self)-1 of epoch `epoch`.

        The worker thread starts on the first `next()`; closing the iterator (break, garbage
        collection, `.close()`) stops and joins it.
        """
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} outside [0, {len(self)}]")
        return self._run(epoch, start_batch)

    def _run(self, epoch, start_batch):
        order = self.order(epoch)
        q = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        # The worker gets only what it needs (not this generator), so dropping the generator
        # runs its `finally` and the thread is told to stop.
        worker = threading.Thread(target=_produce, daemon=True, name=f"loader-epoch-{epoch}",
                                  args=(self.make_batch, epoch, order, start_batch, len(self),
                                        q, stop))
        worker.start()
        try:
            while True:
                item = q.get()
                if item is _DONE:
                    return
                if isinstance(item, _WorkerError):
                    raise item.exc
                yield item
        finally:
            stop.set()
            while True:  # unblock a worker waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    break
            worker.join(timeout=10.0)


def _produce(make_batch, epoch, order, start_batch, n_batches, q, stop):
    """Worker thread: put batches, then _DONE (or a _WorkerError) on q, unless told to stop."""
    try:
        for b in range(start_batch, n_batches):
            if stop.is_set():
                return
            if not _put(q, make_batch(epoch, b, order), stop):
                return
        _put(q, _DONE, stop)
    except BaseException as e:  # handed to the consumer, which re-raises it
        _put(q, _WorkerError(e), stop)


def _put(q, item, stop):
    """q.put that gives up when `stop` is set; returns whether the item was queued."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False
