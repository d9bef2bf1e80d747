"""Synthetic recordings written to each format's spec, separable by construction.

Class k's events form a bar on the sensor's vertical midline: at height row(k // 2) (the
ceil(K/2) heights spread evenly over rows 20..108), horizontal for even k and vertical for odd k
(Gaussian spreads of 12 and 4 px). ON events come in the first half of the recording and OFF in
the second (so the frames change over time), plus 20 % uniform background events. The classes
stay apart under the training augmentation (a horizontal flip maps each bar onto itself, a
small roll moves it less than the gap between heights), so a small network separates them.
Used by the tests, the benchmark and for trying the pipeline without the real data.
"""
import os

import numpy as np

from .aedat2 import SENSOR_SIZE, encode_dvs128, write_aedat2
from .aedat3 import write_aedat3_polarity
from .datasets import CIFAR10DVS_CLASSES, FOLDERS, GESTURE_CLASSES


def class_events(rng, k, K, n, t0=0, duration=1_000_000):
    """n events (t, x, y, on) of class k out of K, sorted by t, in frame coordinates."""
    t = np.sort(rng.integers(t0, t0 + duration, n))
    heights = np.linspace(20, 108, -(-K // 2))
    sx, sy = (12, 4) if k % 2 == 0 else (4, 12)
    x = np.rint(rng.normal(SENSOR_SIZE / 2, sx, n))
    y = np.rint(rng.normal(heights[k // 2], sy, n))
    noise = rng.random(n) < 0.2
    x[noise] = rng.integers(0, SENSOR_SIZE, noise.sum())
    y[noise] = rng.integers(0, SENSOR_SIZE, noise.sum())
    x = np.clip(x, 0, SENSOR_SIZE - 1).astype(np.int64)
    y = np.clip(y, 0, SENSOR_SIZE - 1).astype(np.int64)
    on = (t < t0 + duration // 2).astype(np.int64)
    return t, x, y, on


def write_cifar10dvs(data_dir, per_class=10, events=2000, seed=0):
    """data_dir/CIFAR10-DVS/<class>/cifar10_<class>_<i>.aedat, AEDAT 2.0. Returns data_dir."""
    rng = np.random.default_rng(seed)
    for k, cls in enumerate(CIFAR10DVS_CLASSES):
        folder = os.path.join(data_dir, FOLDERS["cifar10dvs"], cls)
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            t, x, y, on = class_events(rng, k, len(CIFAR10DVS_CLASSES), events)
            # inverse of cifar10dvs_xy (column = 127 - raw_y, row = 127 - raw_x)
            raw_x, raw_y = SENSOR_SIZE - 1 - y, SENSOR_SIZE - 1 - x
            write_aedat2(os.path.join(folder, f"cifar10_{cls}_{i}.aedat"), t,
                         encode_dvs128(raw_x, raw_y, on))
    return data_dir


def write_gesture(data_dir, users=(1, 2, 3, 4), test_users=(4,), lightings=("led", "natural"),
                  events=2000, seed=0):
    """data_dir/DvsGesture/ with AEDAT 3.1 recordings, label CSVs and the trials lists.

    Each recording (one user, one lighting) holds one segment per class, 1 s each with 0.2 s
    gaps, in a shuffled class order. Returns data_dir.
    """
    rng = np.random.default_rng(seed)
    root = os.path.join(data_dir, FOLDERS["dvsgesture"])
    os.makedirs(root, exist_ok=True)
    lists = {0: [], 1: []}
    for u in users:
        for light in lightings:
            name = f"user{u:02d}_{light}"
            parts, rows, t0 = [], ["class,startTime_usec,endTime_usec"], 5_000_000
            for k in rng.permutation(GESTURE_CLASSES):
                parts.append(class_events(rng, k, GESTURE_CLASSES, events, t0))
                rows.append(f"{k + 1},{t0},{t0 + 1_000_000}")
                t0 += 1_200_000
            t, x, y, on = (np.concatenate(a) for a in zip(*parts))
            write_aedat3_polarity(os.path.join(root, name + ".aedat"), t, x, y, on)
            with open(os.path.join(root, name + "_labels.csv"), "w") as f:
                f.write("\n".join(rows) + "\n")
            lists[int(u in test_users)].append(name + ".aedat")
    for split, names in lists.items():
        with open(os.path.join(root, f"trials_to_{('train', 'test')[split]}.txt"), "w") as f:
            f.write("\n".join(names) + "\n")
    return data_dir
