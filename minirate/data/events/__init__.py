"""Event-camera data (CIFAR10-DVS, DVS128 Gesture) as T frames through an HDF5 frame cache.

    aedat2.py     jAER AEDAT 2.0 / DVS128 addresses (CIFAR10-DVS)
    aedat3.py     AEDAT 3.1 polarity packets (DVS128 Gesture)
    datasets.py   the data sets as distributed: recordings, labels, named splits
    frames.py     events -> (T, 2, H, W) counts (equal count or equal time), bilinear resize
    cache.py      the resumable HDF5 converter and the validated per-sample reader
    loader.py     prefetching, augmenting batches (T, B, 2, H, W)
    download.py   resumable, MD5-checked CIFAR10-DVS download
    synthetic.py  separable synthetic recordings in both formats

`event_loaders(...)` is what a training script calls; `python -m minirate.data.events` converts
or downloads from the command line.
"""
import numpy as np

from .cache import open_or_build
from .datasets import DEFAULT_SPLIT, NUM_CLASSES, SPLIT_NAMES, split_of
from .loader import EventLoader

EVENT_DATASETS = tuple(NUM_CLASSES)


def event_loaders(dataset, data_dir, T, batch_size, eval_batch_size, seed=0, flip=True, roll=5,
                  size=48, split_by="count", split=None, cache_dir=None, progress=True,
                  pipeline="minirate", split_order="number"):
    """(train_loader, test_loader) of `dataset` ('cifar10dvs' or 'dvsgesture') with T frames.

    The frame cache lives in cache_dir (default data_dir) and is built from the raw recordings
    in data_dir on first use (progress: show a bar). split: a named split (default: the data
    set's own, see datasets.py), its samples taken per class in `split_order` ('number', or
    'name': SpikingJelly's file-name order). pipeline: 'minirate' (flip and roll) or 'ottt'
    (loader.py). Samples with no events are left out of both splits (and said so).
    """
    frames = open_or_build(dataset, data_dir, cache_dir or data_dir, T, split_by, size, progress)
    try:
        is_test = split_of(dataset, frames.rank, frames.labels, frames.split,
                           split or DEFAULT_SPLIT[dataset], order=split_order)
    except BaseException:
        frames.close()
        raise
    skipped = frames.skipped()
    if skipped:
        print(f"note: {skipped}", flush=True)
    train = EventLoader(frames, np.flatnonzero((is_test == 0) & frames.usable), batch_size, True,
                        seed, flip, roll, pipeline=pipeline)
    test = EventLoader(frames, np.flatnonzero((is_test == 1) & frames.usable), eval_batch_size,
                       False, seed, pipeline=pipeline)
    return train, test


__all__ = ["EVENT_DATASETS", "NUM_CLASSES", "SPLIT_NAMES", "EventLoader", "event_loaders",
           "open_or_build"]
