"""Event recordings checked before decoding (format line, sizes), recordings with no events
left out and said so, and frames checked when written and when batched."""
import os
import struct
import subprocess
import sys

import h5py
import numpy as np
import pytest

import minirate.data.events.cache as cache_module
from minirate.data.cifar import DatasetError
from minirate.data.events import event_loaders
from minirate.data.events.aedat2 import AedatError, encode_dvs128, read_aedat2, write_aedat2
from minirate.data.events.aedat3 import read_aedat3_polarity, write_aedat3_polarity
from minirate.data.events.cache import EventFrames, cache_name, convert
from minirate.data.events.synthetic import write_cifar10dvs, write_gesture
from tests.conftest import ROOT

T, SIZE = 2, 16
PNG = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10\0\0\0\x10\x08\x06\0\0\0\x1f\xf3\xff"   # 32 bytes
AEDAT31 = b"#!AER-DAT3.1\r\n#!END-HEADER\r\n" + struct.pack("<hhiiiiii", 1, 1, 8, 4, 0, 0, 0, 0)
FOREIGN = {                        # what each reader must refuse, and the words it says
    "empty": (b"", r"empty file \(0 bytes\), not an AEDAT \d.\d recording"),
    "png": (PNG, r"not an AEDAT \d.\d recording: it starts with b'\\x89PNG"),
    "random": (np.random.default_rng(0).bytes(4096), r"not an AEDAT \d.\d recording"),
    "aedat1": (b"#!AER-DAT1.0\r\n" + bytes(6 * 10), r"an AEDAT 1.0 file, expected AEDAT"),
}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_readers_refuse_files_of_another_format(kind):
    data, words = FOREIGN[kind]
    with pytest.raises(AedatError, match=words.replace("\\d.\\d", "2.0")):
        read_aedat2(data)
    with pytest.raises(AedatError, match=words.replace("\\d.\\d", "3.1")):
        read_aedat3_polarity(data)


def test_each_reader_refuses_the_other_version():
    with pytest.raises(AedatError, match="an AEDAT 3.1 file, expected AEDAT 2.0"):
        read_aedat2(AEDAT31)          # 36 bytes after the header line: would decode as events
    aedat2 = b"#!AER-DAT2.0\r\n#!END-HEADER\r\n" + bytes(28)
    with pytest.raises(AedatError, match="an AEDAT 2.0 file, expected AEDAT 3.1"):
        read_aedat3_polarity(aedat2)


@pytest.mark.parametrize("kind", ["png", "random", "aedat31"])
def test_conversion_names_a_foreign_recording_and_writes_nothing(tmp_path, kind):
    d = write_cifar10dvs(str(tmp_path), per_class=2, events=50)
    bad = tmp_path / "CIFAR10-DVS" / "cat" / "cifar10_cat_1.aedat"
    bad.write_bytes(AEDAT31 if kind == "aedat31" else FOREIGN[kind][0])
    r = subprocess.run([sys.executable, "-m", "minirate.data.events", "convert", "cifar10dvs",
                        "--data-dir", d, "--T", "2", "--frame-size", "8", "--no-progress"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: "), r.stderr
    assert "AEDAT 2.0" in lines[0]
    assert not os.path.exists(tmp_path / "cifar10dvs-T2-count-8px.h5")


def _only_special_events(path):
    """An AEDAT 2.0 recording whose events are all external (bit 15): none on the sensor."""
    write_aedat2(path, np.arange(20), np.full(20, 1 << 15, np.uint32))


def test_recordings_without_events_are_skipped_and_named(tmp_path, capsys):
    d = write_cifar10dvs(str(tmp_path), per_class=10, events=100)
    root = tmp_path / "CIFAR10-DVS"
    write_aedat2(root / "dog" / "cifar10_dog_3.aedat", [], [])                  # header only
    _only_special_events(root / "ship" / "cifar10_ship_9.aedat")               # a test sample
    path = str(tmp_path / cache_name("cifar10dvs", T, "count", SIZE))
    convert("cifar10dvs", d, path, T, "count", SIZE)
    out = capsys.readouterr().out
    assert (f"skipped 2 recordings with no events: {root / 'dog' / 'cifar10_dog_3.aedat'}, "
            f"{root / 'ship' / 'cifar10_ship_9.aedat'} (left out of both splits)") in out
    train, test = event_loaders("cifar10dvs", d, T, 10, 10, size=SIZE, progress=False)
    assert "note: " in capsys.readouterr().out
    frames = train.frames
    empty = [i for i in range(len(frames)) if not frames.usable[i]]
    assert [(frames.labels[i], frames.rank[i]) for i in empty] == [(5, 3), (8, 9)]
    assert len(train.index) == 89 and len(test.index) == 9
    assert not set(empty) & (set(train.index) | set(test.index))
    assert all(frames.frames(i).sum() > 0 for i in train.index)


def test_gesture_segments_without_events_are_skipped(tmp_path, capsys):
    d = write_gesture(str(tmp_path), users=(1, 2), test_users=(2,), lightings=("led",),
                      events=100)
    root = tmp_path / "DvsGesture"
    # user 2's recording keeps its labels but holds only a special-event packet
    write_aedat3_polarity(root / "user02_led.aedat", [], [], [], [], extra_packet=True)
    path = str(tmp_path / "g.h5")
    convert("dvsgesture", d, path, T, "count", SIZE)
    assert "skipped 11 labelled segments with no events: " in capsys.readouterr().out
    train, test = event_loaders("dvsgesture", d, T, 4, 4, size=SIZE, progress=False,
                                cache_dir=str(tmp_path / "c"))
    assert len(train.index) == 11 and len(test.index) == 0


def test_frames_are_checked_when_written(tmp_path, monkeypatch):
    d = write_cifar10dvs(str(tmp_path), per_class=2, events=50)
    real, calls = cache_module.sample_frames, []

    def nan_on_third(*args):
        calls.append(1)
        x = real(*args)
        if len(calls) == 3:
            x[0, 1, 2, 3] = np.nan
        return x
    monkeypatch.setattr(cache_module, "sample_frames", nan_on_third)
    path = str(tmp_path / "c.h5")
    with pytest.raises(DatasetError, match=r"cifar10_automobile_0.aedat: its frames hold "
                                           r"non-finite or negative counts; not written"):
        convert("cifar10dvs", d, path, T, "count", SIZE)
    with h5py.File(path + ".partial", "r") as f:
        assert f["done"][:].tolist() == [1, 1] + [0] * 18


@pytest.mark.parametrize("value", [np.nan, np.inf, -1.0])
def test_bad_values_in_a_cache_name_the_sample_when_batched(tmp_path, value):
    d = write_cifar10dvs(str(tmp_path), per_class=4, events=50)
    path = str(tmp_path / cache_name("cifar10dvs", T, "count", SIZE))
    convert("cifar10dvs", d, path, T, "count", SIZE)
    with h5py.File(path, "r+") as f:          # written through h5py: its checksum is right
        x = f["frames"][13]
        x[1, 0, 5, 5] = value
        f["frames"][13] = x
    train, _ = event_loaders("cifar10dvs", d, T, 8, 8, size=SIZE, progress=False)
    assert len(train.index) == 40                      # 4 per class: all train under 9:1
    with pytest.raises(DatasetError) as e:             # raised in the prefetch thread
        list(train.iter_epoch(0))
    msg = str(e.value)
    assert msg.startswith(f"{path}: sample 13 ({tmp_path / 'CIFAR10-DVS' / 'cat'}"), msg
    assert "cifar10_cat_1.aedat) holds NaN, infinite or negative values" in msg
    assert "\n" not in msg and f"delete {path}" in msg
