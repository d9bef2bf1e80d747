"""Checkpoint files and the JSON Lines log: round trips, crashes mid-save, and broken files."""
import errno
import json
import os
import zipfile

import numpy as np
import pytest

import minirate.checkpoint as ckpt
from minirate.checkpoint import (CheckpointError, append_jsonl, load_checkpoint, read_jsonl,
                                 save_checkpoint)


def sample(seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "bn1.num_batches_tracked": np.array(17, dtype=np.int64),
        "optim/momentum/conv1.weight": rng.standard_normal((4, 3, 3, 3)),
        "file": np.arange(5, dtype=np.int16),          # a name np.savez itself would reject
        "empty": np.zeros((0, 3), dtype=np.float32),
    }
    meta = {"epoch": 3, "step": 1200, "config": {"lr": 0.1, "arch": "resnet19"},
            "best_acc": 0.8125, "note": "line one\nline two", "seed": np.int64(seed)}
    return arrays, meta


def assert_same(arrays, loaded):
    assert set(loaded) == set(arrays)
    for k, v in arrays.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape, k
        np.testing.assert_array_equal(loaded[k], v)
        assert loaded[k].tobytes() == np.asarray(v).tobytes(), k  # bitwise


def leftovers(directory):
    return [n for n in os.listdir(directory) if n.endswith(".tmp")]


def assert_one_line(err):
    msg = str(err.value)
    assert msg and "\n" not in msg


# -- round trip ---------------------------------------------------------------------------
def test_round_trip(tmp_path):
    arrays, meta = sample()
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, arrays, meta)
    loaded, meta2 = load_checkpoint(path)
    assert_same(arrays, loaded)
    assert meta2 == json.loads(json.dumps({**meta, "seed": 0}))
    assert leftovers(tmp_path) == []
    with np.load(path, allow_pickle=False) as z:  # an ordinary .npz, readable by NumPy alone
        assert "__meta__" in z.files and z["__meta__"].dtype == np.uint8


def test_overwrite_replaces(tmp_path):
    path = str(tmp_path / "ckpt.npz")
    save_checkpoint(path, *sample(0))
    arrays, meta = sample(1)
    save_checkpoint(path, arrays, meta)
    assert_same(arrays, load_checkpoint(path)[0])
    assert leftovers(tmp_path) == []


def test_reserved_and_unserialisable(tmp_path):
    path = tmp_path / "ckpt.npz"
    with pytest.raises(CheckpointError, match="__meta__") as e:
        save_checkpoint(path, {"__meta__": np.zeros(1)}, {})
    assert_one_line(e)
    with pytest.raises(CheckpointError, match="not JSON-serialisable") as e:
        save_checkpoint(path, {"a": np.zeros(1)}, {"x": object()})
    assert_one_line(e)
    with pytest.raises(CheckpointError):  # object arrays would need pickle
        save_checkpoint(path, {"a": np.array([None, 1], dtype=object)}, {})
    assert not path.exists() and leftovers(tmp_path) == []


# -- crashes and failures during save -----------------------------------------------------
def check_previous_intact(tmp_path, path, old_arrays, old_meta):
    loaded, meta = load_checkpoint(path)
    assert_same(old_arrays, loaded)
    assert meta["epoch"] == old_meta["epoch"]
    assert leftovers(tmp_path) == []


@pytest.fixture
def saved(tmp_path):
    arrays, meta = sample(0)
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, arrays, meta)
    return path, arrays, meta


def test_crash_at_replace_keeps_previous(tmp_path, saved, monkeypatch):
    path, arrays, meta = saved

    def boom(src, dst):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(ckpt.os, "replace", boom)
    with pytest.raises(CheckpointError, match="Input/output error") as e:
        save_checkpoint(path, *sample(1))
    assert_one_line(e)
    monkeypatch.undo()
    check_previous_intact(tmp_path, path, arrays, meta)


def test_disk_full_midway_keeps_previous(tmp_path, saved, monkeypatch):
    path, arrays, meta = saved
    real_write_array = np.lib.format.write_array
    calls = []

    def write_then_fail(fp, array, **kw):
        calls.append(1)
        if len(calls) == 2:  # the first array made it to the file, the second does not
            fp.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write_array(fp, array, **kw)
    monkeypatch.setattr(np.lib.format, "write_array", write_then_fail)
    with pytest.raises(CheckpointError, match="No space left on device") as e:
        save_checkpoint(path, *sample(1))
    assert_one_line(e)
    assert str(path) in str(e.value)
    monkeypatch.undo()
    check_previous_intact(tmp_path, path, arrays, meta)


def test_fsync_failure_keeps_previous(tmp_path, saved, monkeypatch):
    path, arrays, meta = saved

    def fail(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(ckpt.os, "fsync", fail)
    with pytest.raises(CheckpointError, match="No space left"):
        save_checkpoint(path, *sample(1))
    monkeypatch.undo()
    check_previous_intact(tmp_path, path, arrays, meta)


def test_interrupt_cleans_up_and_propagates(tmp_path, saved, monkeypatch):
    path, arrays, meta = saved

    def interrupt(src, dst):
        raise KeyboardInterrupt
    monkeypatch.setattr(ckpt.os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, *sample(1))
    monkeypatch.undo()
    check_previous_intact(tmp_path, path, arrays, meta)


def test_cannot_create_temp_file(tmp_path, saved, monkeypatch):
    """An unwritable directory, simulated: tests run as root, which chmod does not stop."""
    path, arrays, meta = saved
    real_open = os.open

    def deny(p, flags, *args, **kw):
        if str(p).startswith(str(tmp_path)) and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))
        return real_open(p, flags, *args, **kw)
    monkeypatch.setattr(ckpt.os, "open", deny)
    with pytest.raises(CheckpointError, match="Permission denied") as e:
        save_checkpoint(path, *sample(1))
    assert_one_line(e)
    monkeypatch.undo()
    check_previous_intact(tmp_path, path, arrays, meta)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only directories")
def test_read_only_directory(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="Permission denied"):
            save_checkpoint(d / "ckpt.npz", *sample())
    finally:
        d.chmod(0o700)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="No such file or directory") as e:
        save_checkpoint(tmp_path / "nope" / "ckpt.npz", *sample())
    assert_one_line(e)


# -- broken files on load -----------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found") as e:
        load_checkpoint(tmp_path / "absent.npz")
    assert_one_line(e)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated(saved, keep):
    path, _, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
        load_checkpoint(path)
    assert_one_line(e)


def test_flipped_byte_inside_an_array(saved):
    path, _, _ = saved
    data = bytearray(path.read_bytes())
    data[300] ^= 0xFF  # inside conv1.weight's data: only the CRC check can see it
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
        load_checkpoint(path)
    assert_one_line(e)


def test_random_bytes_and_empty(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="not an .npz archive") as e:
        load_checkpoint(path)
    assert_one_line(e)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(path)
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(CheckpointError, match="not an .npz archive"):
        load_checkpoint(tmp_path / "single.npy")


def test_zip_with_garbage_member(tmp_path):
    path = tmp_path / "odd.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("__meta__.npy", b"not an npy header")
    with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
        load_checkpoint(path)
    assert_one_line(e)


def test_foreign_npz(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, a=np.zeros(3), b=np.ones(2))
    with pytest.raises(CheckpointError, match="not a minirate checkpoint") as e:
        load_checkpoint(path)
    assert_one_line(e)


@pytest.mark.parametrize("meta", [
    np.frombuffer(b"{not json", dtype=np.uint8),
    np.frombuffer(b"[1, 2]", dtype=np.uint8),
    np.frombuffer(b"\xff\xfe{}", dtype=np.uint8),
    np.zeros((2, 2), dtype=np.float32),
], ids=["bad-json", "not-object", "bad-utf8", "wrong-dtype"])
def test_unreadable_meta(tmp_path, meta):
    path = tmp_path / "ckpt.npz"
    np.savez(path, __meta__=meta, w=np.zeros(2))
    with pytest.raises(CheckpointError, match="unreadable metadata") as e:
        load_checkpoint(path)
    assert_one_line(e)


# -- JSON Lines log -----------------------------------------------------------------------
def test_jsonl_append_and_read(tmp_path):
    path = tmp_path / "log.jsonl"
    records = [{"step": i, "loss": 1.0 / (i + 1), "acc": np.float32(0.5), "tag": "a\nb"}
               for i in range(3)]
    for r in records:
        append_jsonl(path, r)
    got = read_jsonl(path)
    assert got == [{**r, "acc": 0.5} for r in records]
    assert path.read_bytes().count(b"\n") == 3  # one line each, newlines in strings escaped


def test_jsonl_torn_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    append_jsonl(path, {"step": 1})
    append_jsonl(path, {"step": 2})
    with open(path, "ab") as f:     # a run killed half-way through its write
        f.write(b'{"step": 3, "lo')
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    append_jsonl(path, {"step": 3})  # the next run cuts the torn piece off first
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}, {"step": 3}]
    assert path.read_bytes() == b'{"step": 1}\n{"step": 2}\n{"step": 3}\n'


def test_jsonl_torn_only_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"st')
    assert read_jsonl(path) == []
    append_jsonl(path, {"step": 0})
    assert path.read_bytes() == b'{"step": 0}\n'


def test_jsonl_one_write_per_record(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    writes = []
    real_write = os.write

    def spy(fd, data):
        writes.append(bytes(data))
        return real_write(fd, data)
    monkeypatch.setattr(ckpt.os, "write", spy)
    append_jsonl(path, {"step": 5, "loss": 0.25})
    assert writes == [b'{"step": 5, "loss": 0.25}\n']


def test_jsonl_errors(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(CheckpointError, match="line 2") as e:
        read_jsonl(path)
    assert_one_line(e)
    with pytest.raises(CheckpointError, match="cannot read log"):
        read_jsonl(tmp_path / "absent.jsonl")
    with pytest.raises(CheckpointError, match="not JSON-serialisable"):
        append_jsonl(path, {"x": object()})
