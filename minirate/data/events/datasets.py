"""The two event data sets as distributed: which recordings, labels, splits; their events.

CIFAR10-DVS (Li et al. 2017): 10 classes x 1,000 DVS128 recordings, jAER AEDAT 2.0.
    DATA_DIR/CIFAR10-DVS/<class>/*.aedat             extracted class folders, or
    DATA_DIR/CIFAR10-DVS/<class>.zip                 the class archives as downloaded (read
                                                     in place, not extracted)
    Recordings are ordered by the number in their file name (cifar10_airplane_17.aedat -> 17).
    Splits, per class: '9:1' (default) = first 90 % train, last 10 % test (900 / 100); '8:2'.
    Split order (`split_of(..., order=)`): 'number' (default) takes "first" in that numeric
    order (the files 0..899 train, as OTTT's loader lists them by number,
    OTTT-SNN datasets/cifar10_dvs.py:252-263); 'name' reproduces SpikingJelly's
    split_to_train_test_set: the files of a class in name order (torchvision's DatasetFolder
    sorts the file names as strings, so ..._10 precedes ..._2), the first ceil(ratio * n)
    train, no shuffling (its default random_split=False; spikingjelly datasets/utils.py:
    1142-1167). Its test files of a class are then 91..99 and 909..999 (100), and the two
    900-file training sets share 891 recordings per class.

DVS128 Gesture (Amir et al. 2017): 11 gestures by 29 users under several lightings, AEDAT 3.1.
    DATA_DIR/DvsGesture/userNN_<lighting>.aedat + userNN_<lighting>_labels.csv
    (columns class, startTime_usec, endTime_usec; class 1..11 -> label 0..10), and the official
    user split trials_to_train.txt / trials_to_test.txt (one .aedat name per line). Each
    labelled segment [start, end) of a recording is one sample.

`list_samples` returns the samples in a fixed order; `read_events` returns the (t, x, y, on)
events of one recording in frame coordinates (x column, y row, 128 x 128).
"""
import os
import re
import zipfile
from typing import NamedTuple

import numpy as np

from ..cifar import DatasetError
from .aedat2 import AedatError, cifar10dvs_xy, decode_dvs128, read_aedat2
from .aedat3 import read_aedat3_polarity

SENSOR = 128
CIFAR10DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                      "ship", "truck")
CIFAR10DVS_SPLITS = {"9:1": 0.9, "8:2": 0.8}
GESTURE_CLASSES = 11
FOLDERS = {"cifar10dvs": "CIFAR10-DVS", "dvsgesture": "DvsGesture"}
DEFAULT_SPLIT = {"cifar10dvs": "9:1", "dvsgesture": "users"}
SPLIT_ORDERS = ("number", "name")
SPLIT_NAMES = {"cifar10dvs": tuple(CIFAR10DVS_SPLITS), "dvsgesture": ("users",)}
NUM_CLASSES = {"cifar10dvs": 10, "dvsgesture": GESTURE_CLASSES}
GESTURE_HINT = ("download DvsGesture.tar.gz from https://research.ibm.com/interactive/dvsgesture/ "
                "and extract it so that {root} holds user*.aedat, user*_labels.csv and "
                "trials_to_train.txt / trials_to_test.txt")


class Sample(NamedTuple):
    label: int          # class index
    rank: int           # position of the sample within its class (CIFAR10-DVS splits)
    split: int          # 0 train, 1 test under the data set's default split
    recording: tuple    # ('file', path) or ('zip', archive, member)
    start: int          # segment [start, end) in microseconds; -1, -1 = the whole recording
    end: int


def root_of(name, data_dir):
    return os.path.join(data_dir, FOLDERS[name])


def list_samples(name, data_dir):
    """All samples of data set `name` found under data_dir, in a fixed order."""
    if name == "cifar10dvs":
        return _cifar10dvs_samples(root_of(name, data_dir))
    if name == "dvsgesture":
        return _gesture_samples(root_of(name, data_dir))
    raise DatasetError(f"unknown event data set {name!r}; choose one of {', '.join(FOLDERS)}")


def _number_in(name):
    digits = re.findall(r"\d+", os.path.basename(name))
    return (int(digits[-1]) if digits else -1, name)


def _cifar10dvs_samples(root):
    if not os.path.isdir(root):
        raise DatasetError(f"CIFAR10-DVS not found at {root}; run `python -m minirate.data.events "
                           f"download cifar10dvs --data-dir ...` or place the 10 class folders "
                           f"(or class .zip archives) there")
    samples = []
    for label, cls in enumerate(CIFAR10DVS_CLASSES):
        folder, archive = os.path.join(root, cls), os.path.join(root, cls + ".zip")
        if os.path.isdir(folder):
            recs = [("file", os.path.join(folder, f))
                    for f in sorted(os.listdir(folder), key=_number_in)
                    if f.endswith(".aedat")]
        elif os.path.isfile(archive):
            try:
                with zipfile.ZipFile(archive) as z:
                    names = [n for n in z.namelist() if n.endswith(".aedat")]
            except (zipfile.BadZipFile, OSError) as e:
                raise DatasetError(f"{archive} is not a readable zip archive ({e})") from None
            recs = [("zip", archive, n) for n in sorted(names, key=_number_in)]
        else:
            raise DatasetError(f"CIFAR10-DVS class '{cls}' missing: no folder {folder} and no "
                               f"archive {archive}")
        if not recs:
            raise DatasetError(f"CIFAR10-DVS class '{cls}' has no .aedat recordings")
        n_train = round(CIFAR10DVS_SPLITS["9:1"] * len(recs))
        samples += [Sample(label, r, int(r >= n_train), rec, -1, -1) for r, rec in enumerate(recs)]
    return samples


def _read_lines(path):
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from None


def _gesture_samples(root):
    lists = [os.path.join(root, f"trials_to_{s}.txt") for s in ("train", "test")]
    if not all(os.path.isfile(p) for p in lists):
        raise DatasetError(f"DVS128 Gesture not found at {root}; " + GESTURE_HINT.format(root=root))
    samples, rank = [], [0] * GESTURE_CLASSES
    for split, path in enumerate(lists):
        for trial in _read_lines(path):
            aedat = os.path.join(root, trial)
            csv = aedat[:-len(".aedat")] + "_labels.csv"
            if not os.path.isfile(aedat) or not os.path.isfile(csv):
                raise DatasetError(f"{path} lists {trial}, but {aedat} or its labels {csv} "
                                   f"is missing")
            for cls, start, end in _read_labels(csv):
                samples.append(Sample(cls, rank[cls], split, ("file", aedat), start, end))
                rank[cls] += 1
    if not samples:
        raise DatasetError(f"DVS128 Gesture at {root}: trials_to_train.txt and "
                           f"trials_to_test.txt list no labelled segments")
    return samples


def _read_labels(csv):
    rows = []
    for i, line in enumerate(_read_lines(csv)):
        if i == 0 and not line[0].isdigit():
            continue                                  # header: class,startTime_usec,endTime_usec
        try:
            cls, start, end = (int(v) for v in line.split(","))
        except ValueError:
            raise DatasetError(f"{csv} line {i + 1}: expected 'class,start,end' integers, "
                               f"got {line!r}") from None
        if not 1 <= cls <= GESTURE_CLASSES or end <= start:
            raise DatasetError(f"{csv} line {i + 1}: class {cls} outside 1..{GESTURE_CLASSES} "
                               f"or empty segment [{start}, {end})")
        rows.append((cls - 1, start, end))
    return rows


def recording_name(recording):
    """A file path, or `archive.zip:member` for a recording read from a zip archive."""
    return recording[1] if recording[0] == "file" else f"{recording[1]}:{recording[2]}"


def sample_name(sample):
    """The recording of a sample, with its segment when it is one of several."""
    name = recording_name(sample.recording)
    return name if sample.start < 0 else f"{name} [{sample.start}, {sample.end}) us"


def read_bytes(recording):
    try:
        if recording[0] == "zip":
            with zipfile.ZipFile(recording[1]) as z:
                return z.read(recording[2])
        with open(recording[1], "rb") as f:
            return f.read()
    except (OSError, zipfile.BadZipFile, KeyError) as e:
        raise DatasetError(f"cannot read {recording_name(recording)}: {e}") from None


def read_events(name, recording):
    """(t, x, y, on) of one recording, sorted by t, in 128 x 128 frame coordinates.

    t: int64 microseconds; x (column), y (row), on (1 ON, 0 OFF): small unsigned integers.
    The file's format is checked before anything is decoded (aedat2.check_version); a file of
    another format is a one-line DatasetError naming it. External, special and off-sensor
    events are dropped, so a recording may come back with no events at all.
    """
    data = read_bytes(recording)
    try:
        if name == "cifar10dvs":
            t, addr = read_aedat2(data)
            raw_x, raw_y, on, keep = decode_dvs128(addr)
            if not keep.all():                     # external events: rare, drop them
                t, raw_x, raw_y, on = t[keep], raw_x[keep], raw_y[keep], on[keep]
            x, y = cifar10dvs_xy(raw_x, raw_y)
        else:
            t, x, y, on = read_aedat3_polarity(data)
            keep = (x < SENSOR) & (y < SENSOR)
            if not keep.all():
                t, x, y, on = t[keep], x[keep], y[keep], on[keep]
    except AedatError as e:
        raise DatasetError(f"{recording_name(recording)}: {e}") from None
    if len(t) > 1 and np.any(t[1:] < t[:-1]):
        order = np.argsort(t, kind="stable")
        t, x, y, on = t[order], x[order], y[order], on[order]
    return t, x, y, on


def segment(events, start, end):
    """The events with start <= t < end (the whole recording when start < 0)."""
    if start < 0:
        return events
    t = events[0]
    lo, hi = np.searchsorted(t, start, "left"), np.searchsorted(t, end, "left")
    return tuple(a[lo:hi] for a in events)


def name_key(number):
    """Sort key of recording `number` of a class in file-name order. All names of a class share
    the prefix cifar10_<class>_, so the order is that of the strings '<number>.': '.' sorts
    before every digit, as the '.aedat' / '.npz' suffix does ('1.' < '10.' < '2.')."""
    return f"{int(number)}."


def name_ranks(samples_rank, labels):
    """Position of each sample within its class in file-name order (int64 (N,)).

    samples_rank: the by-number position stored in the cache. The distributed files of a class
    are numbered 0..n-1 (cifar10_<class>_0 ... _999), so the by-number position is the number.
    """
    samples_rank, labels = np.asarray(samples_rank), np.asarray(labels)
    out = np.empty(len(samples_rank), np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        order = sorted(range(len(idx)), key=lambda i: name_key(samples_rank[idx[i]]))
        out[idx[order]] = np.arange(len(idx))
    return out


def split_of(name, samples_rank, labels, default_split, split, order="number"):
    """Train/test flag per sample (0 train, 1 test) under the named split.

    order (CIFAR10-DVS): 'number' = the first round(ratio * n) by file number; 'name' = the
    first ceil(ratio * n) by file name, SpikingJelly's split_to_train_test_set.
    """
    if order not in SPLIT_ORDERS:
        raise DatasetError(f"unknown split order {order!r}; choose one of "
                           f"{', '.join(SPLIT_ORDERS)}")
    if name == "cifar10dvs" and order == "name" and split in CIFAR10DVS_SPLITS:
        counts = np.bincount(labels, minlength=NUM_CLASSES[name])
        # ceil(ratio * n) as math.ceil does (utils.py:1164); 0.9 * 1000 is exactly 900.0
        n_train = np.ceil(CIFAR10DVS_SPLITS[split] * counts).astype(np.int64)
        return (name_ranks(samples_rank, labels) >= n_train[labels]).astype(np.uint8)
    if split == DEFAULT_SPLIT[name]:
        return np.asarray(default_split)
    if name == "cifar10dvs" and split in CIFAR10DVS_SPLITS:
        counts = np.bincount(labels, minlength=NUM_CLASSES[name])
        n_train = np.round(CIFAR10DVS_SPLITS[split] * counts).astype(np.int64)
        return (np.asarray(samples_rank) >= n_train[labels]).astype(np.uint8)
    raise DatasetError(f"unknown split {split!r} for {name}; choose one of "
                       f"{', '.join(SPLIT_NAMES[name])}")
