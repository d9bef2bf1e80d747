"""The HDF5 frame cache end to end on recordings written to each format's spec: frames, labels
and splits; interrupted and resumed conversion; damaged files; the loader; the download."""
import hashlib
import http.server
import os
import subprocess
import sys
import threading
import zipfile

import h5py
import numpy as np
import pytest

from minirate.data.cifar import DatasetError
from minirate.data.events import event_loaders
from minirate.data.events.aedat2 import encode_dvs128, write_aedat2
from minirate.data.events.cache import EventFrames, cache_name, convert, open_or_build
from minirate.data.events.datasets import CIFAR10DVS_CLASSES, list_samples
from minirate.data.events.download import download_cifar10dvs, fetch_resumable
from minirate.data.events.frames import integrate, resize
from minirate.data.events.loader import augment_frames
from minirate.data.events.synthetic import write_gesture
from tests.conftest import ROOT

PER_CLASS, T, SIZE = 11, 2, 16


@pytest.fixture(scope="module")
def cifar_dvs(tmp_path_factory):
    """CIFAR10-DVS layout, 11 recordings per class (names _0 .. _10), 'bird' as a zip archive.
    Returns (data_dir, {(label, number): expected frames})."""
    d = tmp_path_factory.mktemp("c10dvs")
    rng = np.random.default_rng(0)
    expected = {}
    for label, cls in enumerate(CIFAR10DVS_CLASSES):
        folder = d / "CIFAR10-DVS" / cls
        folder.mkdir(parents=True)
        for i in rng.permutation(PER_CLASS):                       # written in random order
            n = int(rng.integers(50, 400))
            t = np.sort(rng.integers(0, 10 ** 6, n))
            col, row, on = rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n)
            # frame column = 127 - raw y, row = 127 - raw x (the upright CIFAR10-DVS view)
            write_aedat2(folder / f"cifar10_{cls}_{i}.aedat", t,
                         encode_dvs128(127 - row, 127 - col, on))
            expected[label, int(i)] = resize(integrate(t, col, row, on, T, 128, 128), SIZE)
    with zipfile.ZipFile(d / "CIFAR10-DVS" / "bird.zip", "w") as z:
        for f in sorted((d / "CIFAR10-DVS" / "bird").iterdir()):
            z.write(f, f"bird/{f.name}")
    for f in (d / "CIFAR10-DVS" / "bird").iterdir():
        f.unlink()
    (d / "CIFAR10-DVS" / "bird").rmdir()
    return d, expected


def _stop_after(k):
    """A progress callback that interrupts the conversion after its k-th sample."""
    calls = []

    def progress(done, total):
        calls.append(done)
        if len(calls) == k:
            raise KeyboardInterrupt
    return progress


def _convert(d, name="cifar10dvs", **kw):
    path = str(d / cache_name(name, T, "count", kw.get("size", SIZE)))
    if not os.path.exists(path):
        convert(name, str(d), path, T, "count", kw.get("size", SIZE))
    return path


def test_cifar10dvs_frames_labels_and_splits(cifar_dvs):
    d, expected = cifar_dvs
    cache = EventFrames(_convert(d), "cifar10dvs", T, "count", SIZE)
    assert len(cache) == 10 * PER_CLASS
    assert cache.labels.tolist() == [k for k in range(10) for _ in range(PER_CLASS)]
    assert cache.rank.tolist() == list(range(PER_CLASS)) * 10       # _0, _1, ..., _9, _10
    for i in range(len(cache)):                                      # the zip class included
        assert np.array_equal(cache.frames(i), expected[cache.labels[i], cache.rank[i]])
    # 9:1 per class: the first round(0.9 * 11) = 10 recordings train, the last (_10) test
    assert cache.split.tolist() == ([0] * 10 + [1]) * 10
    train, test = event_loaders("cifar10dvs", str(d), T, 4, 8, size=SIZE, progress=False)
    assert len(train.index) == 100 and sorted(test.y.tolist()) == list(range(10))
    train, test = event_loaders("cifar10dvs", str(d), T, 4, 8, size=SIZE, split="8:2",
                                progress=False)
    assert len(test.index) == 20 and set(cache.rank[test.index]) == {9, 10}
    with pytest.raises(DatasetError, match="unknown split"):
        event_loaders("cifar10dvs", str(d), T, 4, 8, size=SIZE, split="users", progress=False)


def test_gesture_segments_labels_and_user_split(tmp_path):
    write_gesture(str(tmp_path), users=(1, 2, 3), test_users=(3,), lightings=("led",),
                  events=500)
    root = tmp_path / "DvsGesture"
    cache = EventFrames(_convert(tmp_path, "dvsgesture", size=128), "dvsgesture", T, "count",
                        128)
    assert len(cache) == 3 * 11
    # sample order: the trials_to_train.txt recordings, then trials_to_test.txt; CSV row order
    labels = []
    for user in (1, 2, 3):
        rows = (root / f"user{user:02d}_led_labels.csv").read_text().split()[1:]
        labels += [int(r.split(",")[0]) - 1 for r in rows]
    assert cache.labels.tolist() == labels
    assert cache.split.tolist() == [0] * 22 + [1] * 11
    # each labelled segment holds exactly its own 500 events (no resize at 128 px)
    assert all(cache.frames(i).sum() == 500 for i in range(len(cache)))


def test_conversion_interrupted_and_resumed(cifar_dvs, tmp_path):
    d, expected = cifar_dvs
    path = str(tmp_path / "c.h5")
    with pytest.raises(KeyboardInterrupt):
        convert("cifar10dvs", str(d), path, T, "count", SIZE, progress=_stop_after(37))
    assert not os.path.exists(path) and os.path.exists(path + ".partial")
    with h5py.File(path + ".partial", "r+") as f:
        assert f["done"][:].sum() == 37 and not f.attrs["complete"]
        f["frames"][37] = 99.0          # a sample written but not flagged done: must be redone
    seen = []
    convert("cifar10dvs", str(d), path, T, "count", SIZE,
            progress=lambda done, total: seen.append(done))
    assert seen == list(range(38, 111))                   # only the 73 remaining samples
    cache = EventFrames(path, "cifar10dvs", T, "count", SIZE)
    for i in range(len(cache)):
        assert np.array_equal(cache.frames(i), expected[cache.labels[i], cache.rank[i]])


def test_conversion_resumed_after_a_hard_exit(cifar_dvs, tmp_path):
    """The process dies inside the conversion without closing the file (os._exit, as a kill)."""
    d, expected = cifar_dvs
    path = str(tmp_path / "k.h5")
    code = ("import os, sys; from minirate.data.events.cache import convert; "
            "convert('cifar10dvs', sys.argv[1], sys.argv[2], 2, 'count', 16, "
            "progress=lambda done, total: done == 45 and os._exit(9))")
    r = subprocess.run([sys.executable, "-c", code, str(d), path], cwd=ROOT, timeout=120)
    assert r.returncode == 9 and os.path.exists(path + ".partial")
    seen = []
    convert("cifar10dvs", str(d), path, T, "count", SIZE, progress=lambda k, n: seen.append(k))
    assert 110 - 45 <= len(seen) <= 110          # what was flushed before the exit is kept
    cache = EventFrames(path, "cifar10dvs", T, "count", SIZE)
    for i in range(len(cache)):
        assert np.array_equal(cache.frames(i), expected[cache.labels[i], cache.rank[i]])


def test_partial_file_of_other_settings_starts_over(cifar_dvs, tmp_path, capsys):
    d, _ = cifar_dvs
    path = str(tmp_path / "c.h5")
    with pytest.raises(KeyboardInterrupt):
        convert("cifar10dvs", str(d), path, T, "time", SIZE, progress=_stop_after(5))
    convert("cifar10dvs", str(d), path, T, "count", SIZE)
    assert "starting the conversion over" in capsys.readouterr().out
    with h5py.File(path, "r") as f:
        assert f.attrs["split_by"] == "count" and f["done"][:].all()
    with open(path + ".partial", "wb") as f:
        f.write(b"\x89HDF\r\n")                              # a hard kill's ruin
    os.remove(path)
    convert("cifar10dvs", str(d), path, T, "count", SIZE)
    assert len(EventFrames(path, "cifar10dvs", T, "count", SIZE)) == 110


def test_damaged_and_foreign_caches_rejected(cifar_dvs, tmp_path):
    d, _ = cifar_dvs
    good = _convert(d)
    data = open(good, "rb").read()
    cases = {"truncated.h5": data[:len(data) // 2], "text.h5": b"not hdf5 at all\n"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DatasetError, match="truncated or not an HDF5 file"):
            EventFrames(str(tmp_path / name), "cifar10dvs", T, "count", SIZE)
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(DatasetError, match="not a usable cifar10dvs frame cache: format"):
        EventFrames(str(tmp_path / "foreign.h5"), "cifar10dvs", T, "count", SIZE)
    with pytest.raises(DatasetError, match="T is 2, expected 4"):
        EventFrames(good, "cifar10dvs", 4, "count", SIZE)
    with pytest.raises(DatasetError, match="does not exist"):
        EventFrames(str(tmp_path / "none.h5"), "cifar10dvs", T, "count", SIZE)
    with pytest.raises(KeyboardInterrupt):
        convert("cifar10dvs", str(d), str(tmp_path / "p.h5"), T, "count", SIZE,
                progress=_stop_after(3))
    with pytest.raises(DatasetError, match="did not finish"):
        EventFrames(str(tmp_path / "p.h5.partial"), "cifar10dvs", T, "count", SIZE)


def test_damaged_recordings_and_labels_rejected(tmp_path):
    write_gesture(str(tmp_path), users=(1, 2), test_users=(2,), lightings=("led",), events=50)
    root = tmp_path / "DvsGesture"
    aedat = root / "user01_led.aedat"
    aedat.write_bytes(aedat.read_bytes()[:-5])
    with pytest.raises(DatasetError, match="user01_led.aedat: packet at byte .* runs past"):
        convert("dvsgesture", str(tmp_path), str(tmp_path / "g.h5"), T, "count", 16)
    (root / "user02_led_labels.csv").write_text("class,startTime_usec,endTime_usec\n12,5,9\n")
    with pytest.raises(DatasetError, match="class 12 outside 1..11"):
        list_samples("dvsgesture", str(tmp_path))
    os.remove(root / "trials_to_test.txt")
    with pytest.raises(DatasetError, match="DVS128 Gesture not found .* trials_to_train.txt"):
        list_samples("dvsgesture", str(tmp_path))


def test_cli_convert_and_errors(cifar_dvs, tmp_path):
    d, _ = cifar_dvs
    run = [sys.executable, "-m", "minirate.data.events", "convert", "cifar10dvs", "--T", "2",
           "--frame-size", "8", "--no-progress"]
    r = subprocess.run(run + ["--data-dir", str(d), "--cache-dir", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and os.path.exists(tmp_path / "cifar10dvs-T2-count-8px.h5")
    r = subprocess.run(run + ["--data-dir", str(tmp_path / "nothing")], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "CIFAR10-DVS not found" in r.stderr
    assert not (tmp_path / "nothing").exists()          # no cache folder made for nothing
    r = subprocess.run(run + ["--T", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1


def test_loader_batches_and_augmentation(cifar_dvs):
    d, _ = cifar_dvs
    train, test = event_loaders("cifar10dvs", str(d), T, 8, 6, seed=3, size=SIZE, progress=False)
    cache = train.frames
    xb, yb = next(test.iter_epoch(0))
    assert xb.shape == (T, 6, 2, SIZE, SIZE) and xb.dtype == np.float32
    ref = np.stack([cache.frames(i) for i in test.index[:6]])            # (B, T, 2, H, W)
    assert np.array_equal(xb, ref.transpose(1, 0, 2, 3, 4)) and np.array_equal(yb, test.y[:6])
    batches = [b for b in train.iter_epoch(1)]
    assert len(batches) == 100 // 8 and batches[0][0].shape == (T, 8, 2, SIZE, SIZE)
    again = list(train.iter_epoch(1, start_batch=3))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(batches[3:], again))


def test_augment_flip_and_roll():
    rng = np.random.default_rng(0)
    x = rng.random((64, 3, 2, 12, 12)).astype(np.float32)
    out = augment_frames(x, np.random.default_rng(5), flip=True, roll=2)
    flips = 0
    for b in range(len(x)):
        matches = [(f, dy, dx) for f in (0, 1) for dy in range(-2, 3) for dx in range(-2, 3)
                   if np.array_equal(out[b], np.roll(x[b, ..., ::-1] if f else x[b], (dy, dx),
                                                     axis=(-2, -1)))]
        assert len(matches) == 1                     # one flip and one shift, same for all T
        flips += matches[0][0]
    assert 16 < flips < 48
    assert np.array_equal(augment_frames(x, rng, flip=False, roll=0), x)


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    body, ranges = b"", []

    def do_GET(self):
        r = self.headers.get("Range")
        type(self).ranges.append(r)
        start = int(r.split("=")[1].rstrip("-")) if r else 0
        self.send_response(206 if r else 200)
        self.send_header("Content-Length", str(len(self.body) - start))
        self.end_headers()
        self.wfile.write(self.body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A local HTTP server that honours Range requests; returns its base URL."""
    _RangeHandler.body, _RangeHandler.ranges = b"", []
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _RangeHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/"
    httpd.shutdown()


def test_download_resumes_and_checks_md5(tmp_path, server):
    body = _RangeHandler.body = np.random.default_rng(0).bytes(300_000)
    url = server + "airplane.zip"
    md5 = hashlib.md5(body).hexdigest()
    target = tmp_path / "airplane.zip"
    (tmp_path / "airplane.zip.part").write_bytes(body[:120_000])          # an interrupted one
    fetch_resumable(url, str(target), md5)
    assert target.read_bytes() == body and _RangeHandler.ranges == ["bytes=120000-"]
    fetch_resumable(url, str(target), md5)                                # present: no request
    assert len(_RangeHandler.ranges) == 1
    with pytest.raises(DatasetError, match="MD5 of .* expected 0+; the partial file"):
        fetch_resumable(url, str(tmp_path / "other.zip"), "0" * 32)
    assert not os.path.exists(tmp_path / "other.zip.part")


def test_download_cifar10dvs_archives_are_read_in_place(tmp_path, server):
    src = tmp_path / "one.aedat"
    write_aedat2(src, np.arange(5), encode_dvs128(np.arange(5), np.arange(5), np.ones(5)))
    with zipfile.ZipFile(tmp_path / "class.zip", "w") as z:
        z.write(src, "class/cifar10_class_0.aedat")
    body = _RangeHandler.body = (tmp_path / "class.zip").read_bytes()
    md5 = hashlib.md5(body).hexdigest()
    download_cifar10dvs(str(tmp_path / "data"), {c: (server + c, md5) for c in CIFAR10DVS_CLASSES})
    assert len(_RangeHandler.ranges) == 10
    samples = list_samples("cifar10dvs", str(tmp_path / "data"))
    assert [s.label for s in samples] == list(range(10))
    assert all(s.recording[0] == "zip" for s in samples)


def test_gesture_lists_without_samples_rejected(tmp_path):
    root = tmp_path / "DvsGesture"
    root.mkdir()
    for split in ("train", "test"):
        (root / f"trials_to_{split}.txt").write_text("\n")
    with pytest.raises(DatasetError, match="no labelled segments"):
        convert("dvsgesture", str(tmp_path), str(tmp_path / "g.h5"), T, "count", 16)
    assert not os.path.exists(tmp_path / "g.h5.partial")


def test_unknown_split_closes_the_cache_it_opened(cifar_dvs, monkeypatch):
    d, _ = cifar_dvs
    _convert(d)
    opened = []
    init = EventFrames.__init__

    def spy(self, *args):
        init(self, *args)
        opened.append(self)
    monkeypatch.setattr(EventFrames, "__init__", spy)
    with pytest.raises(DatasetError, match="unknown split"):
        event_loaders("cifar10dvs", str(d), T, 4, 8, size=SIZE, split="users", progress=False)
    assert len(opened) == 1 and not opened[0].file      # closed: a falsy h5py File


def test_missing_recordings_fail_before_anything_is_written(tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    with pytest.raises(DatasetError, match="CIFAR10-DVS not found"):
        open_or_build("cifar10dvs", str(tmp_path / "none"), str(cache_dir), T, size=SIZE,
                      progress=False)
    assert not cache_dir.exists() and "building" not in capsys.readouterr().out
