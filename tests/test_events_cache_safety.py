"""The frame cache under damage and concurrency: a chunk that fails its checksum is one line
(also from the loader's thread and from train.py); caches without checksums still read; a
second conversion of the same cache waits for the first and continues it; Ctrl-C stops a
conversion after the current sample, keeps the partial file and exits 130, and the same
command finishes it."""
import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

from minirate.data.cifar import DatasetError
from minirate.data.events import event_loaders
from minirate.data.events.cache import EventFrames, cache_name, convert
from minirate.data.events.synthetic import write_cifar10dvs
from tests.conftest import ROOT
from tests.test_train import _one_line_error, run_train

T, SIZE = 2, 24            # the frame size train.py is run with below


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Synthetic CIFAR10-DVS, 10 recordings per class, and its frame cache built once."""
    d = str(tmp_path_factory.mktemp("ev"))
    write_cifar10dvs(d, per_class=10, events=300)
    ref = os.path.join(d, "reference.h5")
    convert("cifar10dvs", d, ref, T, "count", SIZE)
    return d, ref


def _copy(src, dst):
    with open(src, "rb") as f, open(dst, "wb") as g:
        g.write(f.read())
    return str(dst)


def _flip_bytes_in_chunk(path, i):
    """Invert 4 bytes in the middle of sample i's chunk, on disk, behind h5py's back."""
    with h5py.File(path, "r") as f:
        info = f["frames"].id.get_chunk_info_by_coord((i, 0, 0, 0, 0))
    with open(path, "r+b") as f:
        f.seek(info.byte_offset + info.size // 2)
        b = f.read(4)
        f.seek(info.byte_offset + info.size // 2)
        f.write(bytes(x ^ 0xFF for x in b))


def test_damaged_chunk_is_one_line_from_the_loader_thread(data, tmp_path):
    d, ref = data
    path = _copy(ref, tmp_path / cache_name("cifar10dvs", T, "count", SIZE))
    with h5py.File(path, "r") as f:
        assert f["frames"].fletcher32
    _flip_bytes_in_chunk(path, 57)            # 'dog' number 7: a training sample
    train, test = event_loaders("cifar10dvs", d, T, 10, 10, size=SIZE, progress=False,
                                cache_dir=str(tmp_path))
    assert len(list(test.iter_epoch(0))) == 1          # the other chunks read as before
    with pytest.raises(DatasetError) as e:
        list(train.iter_epoch(0))                      # read in the prefetch thread
    msg = str(e.value)
    assert msg.startswith(f"{path}: sample 57 ({os.path.join(d, 'CIFAR10-DVS', 'dog')}"), msg
    assert "cifar10_dog_7.aedat) cannot be read, the file is damaged" in msg
    assert f"delete {path} and run the same command again to rebuild it" in msg
    assert (f"python -m minirate.data.events convert cifar10dvs --data-dir {d} --cache-dir "
            f"{tmp_path} --T 2 --split-by count --frame-size 24`)") in msg and "\n" not in msg


def test_damaged_chunk_in_training_is_one_line(data, tmp_path):
    d, ref = data
    path = _copy(ref, tmp_path / cache_name("cifar10dvs", T, "count", SIZE))
    _flip_bytes_in_chunk(path, 3)
    r = run_train("--dataset", "cifar10dvs", "--data-dir", d, "--cache-dir", tmp_path,
                  "--arch", "vggsnn_cifar", "--width", "0.125", "--T", "2", "--frame-size", "24",
                  "--batch-size", "30", "--epochs", "1", "--out", tmp_path / "o",
                  "--no-progress")
    _one_line_error(r, 1, f"{path}: sample 3 (", "cifar10_airplane_3.aedat) cannot be read",
                    "damaged")


def test_cache_without_checksums_still_reads(data, tmp_path):
    """A cache as written before checksums: frames without the filter, no `source`."""
    d, ref = data
    path = str(tmp_path / cache_name("cifar10dvs", T, "count", SIZE))
    with h5py.File(ref, "r") as f, h5py.File(path, "w") as g:
        g.attrs.update(f.attrs)
        g.create_dataset("frames", data=f["frames"][:], chunks=(1, T, 2, SIZE, SIZE),
                         compression="lzf", shuffle=True)
        for k in ("labels", "split", "rank", "done"):
            g[k] = f[k][:]
    old, new = EventFrames(path, "cifar10dvs", T, "count", SIZE), EventFrames(
        ref, "cifar10dvs", T, "count", SIZE)
    assert all(np.array_equal(old.frames(i), new.frames(i)) for i in range(len(old)))
    assert old.name(12) == "sample 12 (class 1, number 2 in its class)"


# A conversion that pauses inside its 5th sample (sleeping SLOW_SLEEP seconds after printing
# 'ready'), run as `python -c SLOW <module or script> <its arguments>`.
SLOW = """
import os, runpy, sys, time
import minirate.data.events.cache as cache
real, calls = cache.sample_frames, []
def slow(*args):
    calls.append(1)
    if len(calls) == 5:
        print("ready", flush=True)
        time.sleep(float(os.environ["SLOW_SLEEP"]))
    return real(*args)
cache.sample_frames = slow
target, sys.argv = sys.argv[1], sys.argv[1:]
if target.endswith(".py"):
    runpy.run_path(target, run_name="__main__")
else:
    runpy.run_module(target, run_name="__main__", alter_sys=True)
"""


def _start_slow(args, sleep):
    p = subprocess.Popen([sys.executable, "-c", SLOW, *map(str, args)], cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(os.environ, SLOW_SLEEP=str(sleep)))
    for line in p.stdout:                              # until it is inside sample 5
        if line.strip() == "ready":
            return p
    p.wait(timeout=30)
    raise AssertionError(f"the conversion ended early: {p.stderr.read()}")


def _cli(d, cache_dir):
    return ["minirate.data.events", "convert", "cifar10dvs", "--data-dir", d, "--cache-dir",
            cache_dir, "--T", str(T), "--frame-size", str(SIZE), "--no-progress"]


def _same_as_reference(path, ref):
    with h5py.File(path, "r") as f, h5py.File(ref, "r") as g:
        assert f.attrs["complete"] and f["done"][:].tolist() == g["done"][:].tolist()
        assert np.array_equal(f["frames"][:], g["frames"][:])
        assert f["source"].asstr()[:].tolist() == g["source"].asstr()[:].tolist()


def test_second_conversion_waits_for_the_first_and_continues_it(data, tmp_path):
    d, ref = data
    path = str(tmp_path / cache_name("cifar10dvs", T, "count", SIZE))
    first = _start_slow(_cli(d, tmp_path), sleep=3)
    second = subprocess.Popen([sys.executable, "-m", *_cli(d, tmp_path)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert second.stdout.readline().strip() == (
            f"waiting for the conversion of {path} by another process (pid {first.pid} on "
            f"{os.uname().nodename}, lock file {path}.lock) to end")
        assert first.poll() is None                    # the first is still converting
    finally:
        first.send_signal(signal.SIGINT)               # it stops after sample 5
        first.wait(timeout=60)
    assert first.returncode == 130
    out, err = second.communicate(timeout=60)          # the second continues its partial file
    assert second.returncode == 0 and out.strip() == f"done: {path}", out + err
    assert not os.path.exists(path + ".lock")
    _same_as_reference(path, ref)


def test_ctrl_c_stops_the_converter_after_the_current_sample(data, tmp_path):
    d, ref = data
    path = str(tmp_path / cache_name("cifar10dvs", T, "count", SIZE))
    p = _start_slow(_cli(d, tmp_path), sleep=1)
    p.send_signal(signal.SIGINT)                       # while inside sample 5
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "stopping after the current sample" in err and "run the same command again" in err
    assert not os.path.exists(path)
    with h5py.File(path + ".partial", "r") as f:       # sample 5 finished, nothing after it
        assert f["done"][:].tolist() == [1] * 5 + [0] * 95
    r = subprocess.run([sys.executable, "-m", *_cli(d, tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"done: {path}", r.stdout + r.stderr
    _same_as_reference(path, ref)


def test_ctrl_c_while_train_builds_the_cache(data, tmp_path):
    d, ref = data
    path = str(tmp_path / cache_name("cifar10dvs", T, "count", SIZE))
    args = ["--dataset", "cifar10dvs", "--data-dir", d, "--cache-dir", tmp_path, "--arch",
            "vggsnn_cifar", "--width", "0.125", "--T", "2", "--frame-size", str(SIZE),
            "--batch-size", "30", "--epochs", "1", "--max-steps", "1", "--out", tmp_path / "o",
            "--no-progress"]
    p = _start_slow([os.path.join(ROOT, "train.py"), *args], sleep=1)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted while building the frame cache" in err and "Traceback" not in err
    with h5py.File(path + ".partial", "r") as f:
        assert f["done"][:].tolist() == [1] * 5 + [0] * 95
    r = run_train(*args)                               # the same command continues
    assert r.returncode == 0, r.stderr
    _same_as_reference(path, ref)
