"""The HDF5 frame cache: one file per data set and frame setting, built once, read per sample.

File `<dataset>-T<T>-<split_by>-<size>px.h5` (h5py):

    frames  float32 (N, T, 2, size, size)  chunked one sample per chunk, lzf-compressed, each
            chunk with a Fletcher-32 checksum (h5py `fletcher32`)
    labels  int64 (N,)    split uint8 (N,) (0 train, 1 test, the data set's default split)
    rank    int64 (N,)    index of the sample within its class (for the other named splits)
    source  str (N,)      the recording of each sample (and its segment), named in messages
    done    uint8 (N,)    conversion progress: 0 to do, 1 frames written, 2 no events (skipped)
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

A recording (or labelled segment) with no event on the sensor -- a header only, or only special
or non-polarity events -- would be an all-zero sample that teaches nothing: it is flagged 2 and
left out of both splits, and conversion and every opening print how many and which. Frames are
checked when written (finite, non-negative counts). Ctrl-C or SIGTERM stops a conversion after
the sample in hand (the partial file kept, KeyboardInterrupt raised; a second signal stops at
once), and `<file>.lock` (lock.py) makes a second conversion of the same file wait for the first.

Opening validates: a missing, truncated or foreign file, or one made with other settings, is a
one-line DatasetError; so is a sample whose chunk fails its checksum when read. Caches written
before checksums existed (no `source`, no filter) are read as they are.
"""
import contextlib
import os
import threading
from types import SimpleNamespace

import numpy as np

from ...interrupt import GracefulStop
from ...progress import Progress
from ..cifar import DatasetError
from .datasets import (NUM_CLASSES, DEFAULT_SPLIT, list_samples, read_events, sample_name,
                       segment)
from .frames import SPLITS, integrate, resize
from .lock import ConversionLock

FORMAT, VERSION = "minirate-event-frames", 1
FLUSH_EVERY = 16
WRITTEN, EMPTY = 1, 2           # `done` flags
_SAMPLES = {"cifar10dvs": "recordings", "dvsgesture": "labelled segments"}


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
    with ConversionLock(path), _stop_signals() as stop:
        if os.path.exists(path):                 # another conversion finished it meanwhile
            return path
        f = _open_partial(h5py, path + ".partial", want, samples)
        try:
            _convert_samples(f, samples, T, split_by, size, progress, stop)
        finally:
            f.close()
        os.replace(path + ".partial", path)
    return path


def _stop_signals():
    """Ctrl-C / SIGTERM set `requested` (checked between samples) instead of raising wherever
    the interpreter happens to be: raised inside an h5py callback, a KeyboardInterrupt is
    printed and lost, and the conversion would go on."""
    if threading.current_thread() is not threading.main_thread():
        return contextlib.nullcontext(SimpleNamespace(requested=False))
    return GracefulStop("stopping after the current sample; press Ctrl-C again to quit at once")


def _open_partial(h5py, partial, want, samples):
    """The partial file to continue (same settings), or a new one."""
    n, shape = len(samples), (len(samples), want["T"], 2, want["size"], want["size"])
    f = None
    if os.path.exists(partial):
        try:
            f = h5py.File(partial, "r+")
            why = _mismatch(f.attrs, want) or (
                None if f["frames"].shape == shape else "sample count differs")
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
        f.attrs.update(num_classes=NUM_CLASSES[want["dataset"]],
                       default_split=DEFAULT_SPLIT[want["dataset"]], complete=False)
        f.create_dataset("frames", shape, np.float32, chunks=(1,) + shape[1:], compression="lzf",
                         shuffle=True, fletcher32=True)
        f.create_dataset("labels", data=np.array([s.label for s in samples], np.int64))
        f.create_dataset("split", data=np.array([s.split for s in samples], np.uint8))
        f.create_dataset("rank", data=np.array([s.rank for s in samples], np.int64))
        f.create_dataset("source", data=[sample_name(s) for s in samples],
                         dtype=h5py.string_dtype())
        f.create_dataset("done", (n,), np.uint8, fillvalue=0)
        f.flush()
    return f


def _convert_samples(f, samples, T, split_by, size, progress, stop):
    dataset, n = f.attrs["dataset"], len(samples)
    written = []           # (sample, flag) whose frames are written but not yet flagged done
    try:
        todo = np.flatnonzero(f["done"][:] == 0)
        cached = (None, None)                        # (recording, events): gesture segments
        for j, i in enumerate(todo):
            s = samples[i]
            if cached[0] != s.recording:
                cached = (s.recording, read_events(dataset, s.recording))
            events = segment(cached[1], s.start, s.end)
            if len(events[0]) == 0:
                written.append((i, EMPTY))           # its frames stay 0 and are never read
            else:
                x = sample_frames(events, T, split_by, size)
                if not (np.isfinite(x).all() and x.min() >= 0):
                    raise DatasetError(f"{sample_name(s)}: its frames hold non-finite or "
                                       f"negative counts; not written to the frame cache")
                f["frames"][i] = x
                written.append((i, WRITTEN))
            if len(written) == FLUSH_EVERY:
                _mark_done(f, written)
            if progress:
                progress(n - len(todo) + j + 1, n)
            if stop.requested:
                raise KeyboardInterrupt
        _mark_done(f, written)
        f.attrs["complete"] = True
    finally:
        if written:                  # interrupted: keep the samples that were fully written
            _mark_done(f, written)
    skipped = np.flatnonzero(f["done"][:] == EMPTY)
    if len(skipped):
        print(f"skipped {_name_some(f['source'].asstr(), skipped, _SAMPLES[dataset])} (left "
              f"out of both splits)", flush=True)


def _name_some(sources, index, what, most=5):
    """'3 recordings with no events: a, b, c' (the first `most` named)."""
    names = [sources[int(i)] for i in index[:most]]
    more = f", and {len(index) - most} more" if len(index) > most else ""
    what = what if len(index) > 1 else what[:-1]           # '1 recording', '2 recordings'
    return f"{len(index)} {what} with no events: {', '.join(names)}{more}"


def _mark_done(f, written):
    """Flush the frames of `written` to the file first, and only then set their done flags:
    a process killed in between leaves them unflagged (converted again), never flagged with
    frames that did not reach the file."""
    f.flush()
    for flag in (WRITTEN, EMPTY):
        index = sorted(i for i, fl in written if fl == flag)
        if index:
            f["done"][index] = flag
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
    """A validated, open cache: `len`, `frames(i)` (float32 (T, 2, S, S)), labels, split flags.

    usable: bool (N,), False for the samples skipped for having no events (left out of both
    splits by event_loaders).
    """

    def __init__(self, path, dataset, T, split_by, size, data_dir="DIR"):
        h5py = _h5py()
        if not os.path.isfile(path):
            raise DatasetError(f"frame cache {path} does not exist")
        try:
            self.file = h5py.File(path, "r")
        except OSError:
            raise DatasetError(f"{path} is truncated or not an HDF5 file; delete it to rebuild "
                               f"the cache") from None
        self.path = path
        self.rebuild = (f"delete {path} and run the same command again to rebuild it (or "
                        f"`python -m minirate.data.events convert {dataset} --data-dir {data_dir} "
                        f"--cache-dir {os.path.dirname(path) or '.'} --T {T} --split-by "
                        f"{split_by} --frame-size {size}`)")
        try:
            why = _mismatch(self.file.attrs, settings(dataset, T, split_by, size))
            if why is None and not self.file.attrs.get("complete", False):
                why = "conversion did not finish"
            if why is None:
                self._frames = self.file["frames"]
                self.labels = self.file["labels"][:]
                self.split = self.file["split"][:]
                self.rank = self.file["rank"][:]
                done = self.file["done"][:]
                self.usable = done == WRITTEN
                self.sources = self.file["source"].asstr() if "source" in self.file else None
                self.num_classes = int(self.file.attrs["num_classes"])
                n = len(self.labels)
                if (self._frames.shape != (n, T, 2, size, size) or self.split.shape != (n,)
                        or self.rank.shape != (n,) or done.shape != (n,) or not done.all()
                        or (self.sources is not None and self.sources.shape != (n,))):
                    why = "its arrays do not match each other"
        except (KeyError, OSError) as e:
            why = f"missing or unreadable part ({e})"
        if why:
            self.file.close()
            raise DatasetError(f"{path} is not a usable {dataset} frame cache: {why}")

    def __len__(self):
        return len(self.labels)

    def name(self, i):
        """'sample i (its recording)', for messages; older caches name no recording."""
        i = int(i)
        if self.sources is not None:
            return f"sample {i} ({self.sources[i]})"
        return f"sample {i} (class {self.labels[i]}, number {self.rank[i]} in its class)"

    def skipped(self):
        """What was left out for having no events, as a line; None when nothing was."""
        index = np.flatnonzero(~self.usable)
        if not len(index):
            return None
        sources = self.sources if self.sources is not None else [str(i) for i in range(len(self))]
        return (f"{self.path}: {_name_some(sources, index, _SAMPLES[self.file.attrs['dataset']])}"
                f" left out of both splits")

    def frames(self, i):
        """Sample i: float32 (T, 2, size, size), read from its own chunk (checksum verified)."""
        try:
            return self._frames[int(i)]
        except OSError as e:
            raise DatasetError(f"{self.path}: {self.name(i)} cannot be read, the file is "
                               f"damaged (h5py: {e}); {self.rebuild}") from None

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
    return EventFrames(path, dataset, T, split_by, size, data_dir)
