"""CIFAR loading, validation, the synthetic stand-in and the checked download."""
import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from minirate.data.cifar import DatasetError, load_cifar, make_synthetic_cifar

FOLDER = "cifar-10-batches-py"


def raw(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def write(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)


def one_line(e):
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.fixture
def synth(tmp_path):
    """A small synthetic data set in tmp_path; returns (data_dir, folder path)."""
    root = make_synthetic_cifar(str(tmp_path / "synth"), n_train=40, n_test=20, seed=1)
    return root, os.path.join(root, FOLDER)


# ----------------------------------------------------------------------------------------------
# Real data


def test_bundled_sample_is_real_balanced_cifar10():
    x_train, y_train, x_test, y_test, classes = load_cifar("cifar10-sample", None)
    assert x_train.shape == (1000, 32, 32, 3) and x_train.dtype == np.uint8
    assert x_test.shape == (200, 32, 32, 3) and x_test.dtype == np.uint8
    assert y_train.dtype == np.int64 and y_test.dtype == np.int64
    assert np.bincount(y_train).tolist() == [100] * 10
    assert np.bincount(y_test).tolist() == [20] * 10
    assert classes[0] == "airplane" and classes[-1] == "truck" and len(classes) == 10
    # natural images: every class has its own colour statistics, nothing is constant
    means = np.array([x_train[y_train == k].mean() for k in range(10)])
    assert means.std() > 2 and x_train.std() > 40


def test_pickle_layout_reads_back_pixel_for_pixel(sample_dir):
    """The real sample written in the published layout: the reader's HWC image equals the raw
    CHW row reshaped by hand, and the five training batches are concatenated in order."""
    x_train, y_train, x_test, y_test, classes = load_cifar("cifar10", sample_dir, download=False)
    xs, ys, xt, yt, cs = load_cifar("cifar10-sample", None)
    assert np.array_equal(x_train, xs) and np.array_equal(y_train, ys) and cs == classes
    assert np.array_equal(x_test, xt) and np.array_equal(y_test, yt)
    folder = os.path.join(sample_dir, FOLDER)
    d = raw(os.path.join(folder, "data_batch_1"))
    row = d[b"data"][0]
    for c in range(3):
        for i in range(32):
            for j in range(32):
                assert x_train[0, i, j, c] == row[c * 1024 + i * 32 + j]
    assert y_train[0] == d[b"labels"][0]
    d2 = raw(os.path.join(folder, "data_batch_2"))
    np.testing.assert_array_equal(x_train[200].transpose(2, 0, 1).ravel(), d2[b"data"][0])
    t = raw(os.path.join(folder, "test_batch"))
    np.testing.assert_array_equal(x_test[-1].transpose(2, 0, 1).ravel(), t[b"data"][-1])
    np.testing.assert_array_equal(y_test, t[b"labels"])


# ----------------------------------------------------------------------------------------------
# Synthetic data


def test_synthetic_round_trip(tmp_path):
    root = make_synthetic_cifar(str(tmp_path), n_train=64, n_test=32, num_classes=10, seed=0)
    assert root == str(tmp_path)
    names = sorted(os.listdir(tmp_path / FOLDER))
    assert names == ["batches.meta"] + [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    x_train, y_train, x_test, y_test, classes = load_cifar("cifar10", root, download=False)
    assert x_train.shape == (64, 32, 32, 3) and x_test.shape == (32, 32, 32, 3)
    assert len(classes) == 10
    assert np.bincount(y_train, minlength=10).min() >= 6  # balanced
    d = raw(str(tmp_path / FOLDER / "data_batch_1"))
    np.testing.assert_array_equal(x_train[0].transpose(2, 0, 1).ravel(), d[b"data"][0])

    # Learnable: nearest class mean on raw pixels already separates the classes.
    means = np.stack([x_train[y_train == k].reshape(-1, 3072).mean(0) for k in range(10)])
    dist = ((x_test.reshape(-1, 1, 3072).astype(np.float64) - means[None]) ** 2).sum(-1)
    assert (dist.argmin(1) == y_test).mean() > 0.9

    # Same seed, same files.
    again = make_synthetic_cifar(str(tmp_path / "again"), n_train=64, n_test=32, seed=0)
    np.testing.assert_array_equal(load_cifar("cifar10", again)[0], x_train)


# ----------------------------------------------------------------------------------------------
# Download


def make_tarball(tmp_path, src_folder, members=None):
    """.tar.gz of src_folder stored as 'cifar-10-batches-py/...'; returns (file:// url, md5)."""
    path = tmp_path / "archive.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src_folder, arcname=FOLDER)
        for name, data in (members or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    return path.as_uri(), md5


def test_download_good_md5(tmp_path, synth, capsys):
    root, folder = synth
    url, md5 = make_tarball(tmp_path, folder)
    data_dir = tmp_path / "data"
    out = load_cifar("cifar10", str(data_dir), url=url, md5=md5, progress=True)
    size = os.path.getsize(url[len("file://"):])
    assert f"{size}/{size} bytes" in capsys.readouterr().err          # the download's progress
    expected = load_cifar("cifar10", root)
    for a, b in zip(out[:4], expected[:4]):
        np.testing.assert_array_equal(a, b)
    assert os.listdir(data_dir) == [FOLDER]  # no temporary archive or folder left behind
    # Present now: a second call must not touch the network (bad URL is never used).
    load_cifar("cifar10", str(data_dir), url="file:///nonexistent.tar.gz", md5="0" * 32)



def test_download_finished_first_by_another_process(tmp_path, synth):
    """Two processes (the ranks of `mpirun`, two runs) download into the same --data-dir at
    once: the one that finishes second finds the folder already in place, keeps it and reads
    it, instead of failing to rename its own copy over it."""
    from minirate.data.cifar import download_and_extract
    root, folder = synth
    url, md5 = make_tarball(tmp_path, folder)
    data_dir = tmp_path / "data"
    download_and_extract(url, md5, str(data_dir), FOLDER)          # the first process
    first = {n: read_bytes(data_dir / FOLDER / n) for n in os.listdir(data_dir / FOLDER)}
    download_and_extract(url, md5, str(data_dir), FOLDER)          # the second one
    assert os.listdir(data_dir) == [FOLDER]                        # nothing of it left over
    assert {n: read_bytes(data_dir / FOLDER / n) for n in os.listdir(data_dir / FOLDER)} == first
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / FOLDER).write_text("a file where the folder should go")
    with pytest.raises(DatasetError, match=f"cannot move {FOLDER} into {blocked}"):
        download_and_extract(url, md5, str(blocked), FOLDER)
    assert os.listdir(blocked) == [FOLDER]

def test_download_bad_md5_leaves_nothing(tmp_path, synth):
    url, md5 = make_tarball(tmp_path, synth[1])
    data_dir = tmp_path / "data"
    with pytest.raises(DatasetError) as e:
        load_cifar("cifar10", str(data_dir), url=url, md5="0" * 32)
    msg = one_line(e)
    assert "MD5" in msg and md5 in msg and os.path.join(str(data_dir), FOLDER) in msg
    assert not data_dir.exists()     # the folder this call created is gone again


def test_download_unreachable(tmp_path):
    data_dir = tmp_path / "data"
    with pytest.raises(DatasetError) as e:
        load_cifar("cifar10", str(data_dir), url=(tmp_path / "missing.tar.gz").as_uri())
    msg = one_line(e)
    expected = os.path.join(str(data_dir), FOLDER)
    assert f"CIFAR-10 not found at {expected} and could not be downloaded" in msg
    assert "place the extracted 'cifar-10-batches-py' folder there" in msg
    assert not data_dir.exists()     # the folder this call created is gone again


def test_download_disabled(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_cifar("cifar100", str(tmp_path), download=False)
    msg = one_line(e)
    assert os.path.join(str(tmp_path), "cifar-100-python") in msg and "CIFAR-100" in msg


@pytest.mark.parametrize("bad_name", ["../escaped.txt", "/tmp/absolute.txt",
                                      "cifar-10-batches-py/../../escaped.txt"])
def test_download_rejects_unsafe_members(tmp_path, synth, bad_name):
    url, md5 = make_tarball(tmp_path, synth[1], members={bad_name: b"x"})
    data_dir = tmp_path / "deep" / "data"
    with pytest.raises(DatasetError) as e:
        load_cifar("cifar10", str(data_dir), url=url, md5=md5)
    assert "unsafe path" in one_line(e)
    assert not data_dir.exists()     # the folder this call created is gone again
    assert not (tmp_path / "deep" / "escaped.txt").exists()


# ----------------------------------------------------------------------------------------------
# Bad inputs: each a one-line DatasetError naming the file


def test_unknown_name(tmp_path):
    with pytest.raises(DatasetError, match="unknown data set 'mnist'"):
        load_cifar("mnist", str(tmp_path))


def test_missing_file(synth):
    root, folder = synth
    os.remove(os.path.join(folder, "data_batch_3"))
    with pytest.raises(DatasetError) as e:
        load_cifar("cifar10", root, download=False)
    assert one_line(e) == f"missing file {os.path.join(folder, 'data_batch_3')}"


def test_truncated_pickle(synth, sample_dir):
    root, folder = synth
    real = read_bytes(os.path.join(sample_dir, FOLDER, "data_batch_1"))
    bad = os.path.join(folder, "data_batch_2")
    with open(bad, "wb") as f:
        f.write(real[:len(real) // 2])
    with pytest.raises(DatasetError) as e:
        load_cifar("cifar10", root, download=False)
    msg = one_line(e)
    assert bad in msg and "truncated or corrupted" in msg


def test_corrupted_bytes(synth, sample_dir):
    root, folder = synth
    real = read_bytes(os.path.join(sample_dir, FOLDER, "test_batch"))
    bad = os.path.join(folder, "test_batch")
    with open(bad, "wb") as f:
        f.write(real[:2] + b"\xff" * 64 + real[66:])  # 0xff is no pickle opcode
    with pytest.raises(DatasetError) as e:
        load_cifar("cifar10", root, download=False)
    msg = one_line(e)
    assert bad in msg and "truncated or corrupted" in msg


def test_empty_meta_file(synth):
    root, folder = synth
    open(os.path.join(folder, "batches.meta"), "wb").close()
    with pytest.raises(DatasetError, match="batches.meta is truncated or corrupted"):
        load_cifar("cifar10", root, download=False)


def test_refuses_foreign_globals(synth):
    root, folder = synth
    import collections
    write(os.path.join(folder, "data_batch_1"), collections.OrderedDict(a=1))
    with pytest.raises(DatasetError, match="refusing to load global collections.OrderedDict"):
        load_cifar("cifar10", root, download=False)


def test_wrong_keys(synth):
    root, folder = synth
    path = os.path.join(folder, "data_batch_4")
    d = raw(path)
    d[b"fine_labels"] = d.pop(b"labels")
    write(path, d)
    with pytest.raises(DatasetError) as e:
        load_cifar("cifar10", root, download=False)
    assert one_line(e).startswith(f"{path}: missing key b'labels'")


def test_wrong_shape(synth):
    root, folder = synth
    path = os.path.join(folder, "data_batch_1")
    d = raw(path)
    d[b"data"] = d[b"data"][:, :3000]
    write(path, d)
    with pytest.raises(DatasetError) as e:
        load_cifar("cifar10", root, download=False)
    assert one_line(e) == f"{path}: b'data' has shape (8, 3000), expected (N, 3072)"


def test_wrong_dtype(synth):
    root, folder = synth
    path = os.path.join(folder, "data_batch_1")
    d = raw(path)
    d[b"data"] = d[b"data"].astype(np.float32) / 255
    write(path, d)
    with pytest.raises(DatasetError, match="dtype float32, expected uint8"):
        load_cifar("cifar10", root, download=False)
    d[b"data"] = (d[b"data"] * 255).round().astype(np.int64)  # integers in 0..255 are fine
    write(path, d)
    load_cifar("cifar10", root, download=False)


def test_label_count_mismatch(synth):
    root, folder = synth
    path = os.path.join(folder, "data_batch_5")
    d = raw(path)
    d[b"labels"] = d[b"labels"][:-1]
    write(path, d)
    with pytest.raises(DatasetError) as e:
        load_cifar("cifar10", root, download=False)
    assert one_line(e) == f"{path}: 7 labels for 8 images"


def test_label_out_of_range(synth):
    root, folder = synth
    path = os.path.join(folder, "test_batch")
    d = raw(path)
    d[b"labels"][3] = 10
    write(path, d)
    with pytest.raises(DatasetError) as e:
        load_cifar("cifar10", root, download=False)
    assert one_line(e) == f"{path}: label 10 at index 3 is outside [0, 10)"
    d[b"labels"][3] = -1
    write(path, d)
    with pytest.raises(DatasetError, match="label -1 at index 3"):
        load_cifar("cifar10", root, download=False)


def test_cifar100_layout(tmp_path, synth):
    """A CIFAR-100-shaped folder (train/test/meta, fine labels) loads through the same code."""
    _, folder = synth
    out = tmp_path / "c100" / "cifar-100-python"
    out.mkdir(parents=True)
    for src, dst in (("data_batch_1", "train"), ("test_batch", "test")):
        d = raw(os.path.join(folder, src))
        d[b"fine_labels"] = [v * 10 + 9 for v in d.pop(b"labels")]
        write(str(out / dst), d)
    write(str(out / "meta"), {b"fine_label_names": [b"c%d" % k for k in range(100)]})
    x_train, y_train, x_test, y_test, classes = load_cifar("cifar100", str(tmp_path / "c100"))
    assert len(classes) == 100 and x_train.shape == (8, 32, 32, 3) and y_train.max() <= 99
