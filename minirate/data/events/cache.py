"""The HDF5 frame cache: one file per data set and frame setting, built once, read per sample.

File `<dataset>-T<T>-<split_by>-<size>px.h5` (h5py):

    frames  float32 (N, T, 2, size, size)  chunked one sample per chunk, lzf-compressed
    labels  int64 (N,)    split uint8 (N,) (0 train, 1 test, the data set's default split)
    rank    int64 (N,)    index of the sample within its class (for the other named splits)
    done    uint8 (N,)    1 once the sample's frames are written (conversion progress)
    attrs   format, version, dataset, T, split_by, size, num_classes, default_split,
            complete (True once every sample is done)

Conversion writes `<file>.partial` and renames it when complete. It is resumable: run it again
and it opens the partial file, checks that it was made with the same settings, and converts only
the samples whose `done` flag is 0. Every few samples the frames written so far are flushed to
the file, and only then are their flags set (and flushed): a process killed at any point leaves
no sample flagged whose frames did not reach the file -- an unflagged one is simply converted
again. (HDF5 writes small contiguous arrays such as `done` straight through but keeps chunks of
`frames` in its cache until a flush, so setting a flag with its frames would not be safe; a test
kills a conversion to check this. If a kill inside an HDF5 write leaves a partial file that no
longer opens, conversion says so and starts over.)

Opening validates: a missing, truncated or foreign file, or one made with other settings, is a
one-line DatasetError.
"""
import os

import numpy as np

from ...progress import Progress
from ..cifar import DatasetError
from .datasets import NUM_CLASSES, DEFAULT_SPLIT, list_samples, read_events, segment
from .frames import SPLITS, integrate, resize

FORMAT, VERSION = "minirate-event-frames", 1
FLUSH_EVERY = 16


def _h5py():
    try:
        import h5py      # imported on use: only event data needs it
    except ImportError:
        raise DatasetError("event data needs h5py: pip install -r requirements.txt") from None
    return h5py


def cache_name(dataset, T, split_by, size):
    return f"{dataset}-T{T}-{split_by}-{size}px.h5"


def settings(dataset, T, split_by, size):
    if split_by not in SPLITS:
        raise DatasetError(f"unknown frame split {split_by!r}; choose one of {', '.join(SPLITS)}")
    return dict(format=FORMAT, version=VERSION, dataset=dataset, T=int(T), split_by=split_by,
                size=int(size))


def sample_frames(events, T, split_by, size, sensor=128):
    """(t, x, y, on) of one sample -> float32 (T, 2, size, size)."""
    return resize(integrate(*events, T, sensor, sensor, split_by), size)


def _mismatch(attrs, want):
    for k, v in want.items():
        got = attrs.get(k)
        got = got.decode() if isinstance(got, bytes) else getattr(got, "item", lambda: got)()
        if got != v:
            return f"{k} is {got!r}, expected {v!r}"
    return None


def convert(dataset, data_dir, path, T, split_by="count", size=48, progress=None):
    """Build the cache at `path` from the raw recordings (resumable; see module docstring).

    progress(done, total): called after each sample is written; an exception it raises
    (KeyboardInterrupt from Ctrl-C included) stops the conversion, which can then be resumed.
    Returns `path`.
    """
    h5py = _h5py()
    want = settings(dataset, T, split_by, size)
    samples = list_samples(dataset, data_dir)
    n = len(samples)
    partial = path + ".partial"
    f = None
    if os.path.exists(partial):
        try:
            f = h5py.File(partial, "r+")
            why = _mismatch(f.attrs, want) or (
                None if f["frames"].shape == (n, T, 2, size, size) else "sample count differs")
        except (OSError, KeyError) as e:
            why = f"unreadable ({e})"
        if why:
            if f is not None:
                f.close()
                f = None
            print(f"{partial}: {why}; starting the conversion over", flush=True)
            os.remove(partial)
    if f is None:
        f = h5py.File(partial, "w")
        f.attrs.update(want)
        f.attrs.update(num_classes=NUM_CLASSES[dataset], default_split=DEFAULT_SPLIT[dataset],
                       complete=False)
        f.create_dataset("frames", (n, T, 2, size, size), np.float32,
                         chunks=(1, T, 2, size, size), compression="lzf", shuffle=True)
        f.create_dataset("labels", data=np.array([s.label for s in samples], np.int64))
        f.create_dataset("split", data=np.array([s.split for s in samples], np.uint8))
        f.create_dataset("rank", data=np.array([s.rank for s in samples], np.int64))
        f.create_dataset("done", (n,), np.uint8, fillvalue=0)
        f.flush()
    written = []                 # samples whose frames are written but not yet flagged done
    try:
        todo = np.flatnonzero(f["done"][:] == 0)
        cached = (None, None)                        # (recording, events): gesture segments
        for j, i in enumerate(todo):
            s = samples[i]
            if cached[0] != s.recording:
                cached = (s.recording, read_events(dataset, s.recording))
            f["frames"][i] = sample_frames(segment(cached[1], s.start, s.end), T, split_by, size)
            written.append(i)
            if len(written) == FLUSH_EVERY:
                _mark_done(f, written)
            if progress:
                progress(n - len(todo) + j + 1, n)
        _mark_done(f, written)
        f.attrs["complete"] = True
    finally:
        if written:                  # interrupted: keep the samples that were fully written
            _mark_done(f, written)
        f.close()
    os.replace(partial, path)
    return path


def _mark_done(f, written):
    """Flush the frames of `written` to the file first, and only then set their done flags:
    a process killed in between leaves them unflagged (converted again), never flagged with
    frames that did not reach the file."""
    f.flush()
    f["done"][sorted(written)] = 1
    f.flush()
    written.clear()


def convert_with_progress(dataset, data_dir, path, T, split_by, size, enabled=True):
    """`convert` with a progress bar on stderr."""
    bar = []

    def progress(done, total):
        if not bar:
            bar.append(Progress(total, f"convert {dataset}", every=100, enabled=enabled))
        bar[0].update(done)
    try:
        return convert(dataset, data_dir, path, T, split_by, size, progress)
    finally:
        if bar:
            bar[0].close()


class EventFrames:
    """A validated, open cache: `len`, `frames(i)` (float32 (T, 2, S, S)), labels, split flags."""

    def __init__(self, path, dataset, T, split_by, size):
        h5py = _h5py()
        if not os.path.isfile(path):
            raise DatasetError(f"frame cache {path} does not exist")
        try:
            self.file = h5py.File(path, "r")
        except OSError:
            raise DatasetError(f"{path} is truncated or not an HDF5 file; delete it to rebuild "
                               f"the cache") from None
        try:
            why = _mismatch(self.file.attrs, settings(dataset, T, split_by, size))
            if why is None and not self.file.attrs.get("complete", False):
                why = "conversion did not finish"
            if why is None:
                self._frames = self.file["frames"]
                self.labels = self.file["labels"][:]
                self.split = self.file["split"][:]
                self.rank = self.file["rank"][:]
                self.num_classes = int(self.file.attrs["num_classes"])
                n = len(self.labels)
                if (self._frames.shape != (n, T, 2, size, size) or self.split.shape != (n,)
                        or self.rank.shape != (n,) or not self.file["done"][:].all()):
                    why = "its arrays do not match each other"
        except (KeyError, OSError) as e:
            why = f"missing or unreadable part ({e})"
        if why:
            self.file.close()
            raise DatasetError(f"{path} is not a usable {dataset} frame cache: {why}")

    def __len__(self):
        return len(self.labels)

    def frames(self, i):
        """Sample i: float32 (T, 2, size, size), read from its own chunk."""
        return self._frames[int(i)]

    def close(self):
        self.file.close()


def open_or_build(dataset, data_dir, cache_dir, T, split_by="count", size=48, progress=True):
    """The cache for these settings, converted first when it does not exist yet."""
    path = os.path.join(cache_dir, cache_name(dataset, T, split_by, size))
    if not os.path.exists(path):
        list_samples(dataset, data_dir)         # missing recordings: fail before writing
        print(f"building the frame cache {path} (once; resumable if interrupted)", flush=True)
        try:
            os.makedirs(cache_dir, exist_ok=True)
            convert_with_progress(dataset, data_dir, path, T, split_by, size, progress)
        except OSError as e:
            raise DatasetError(f"cannot write the frame cache {path}: {e.strerror or e}") \
                from None
    return EventFrames(path, dataset, T, split_by, size)
