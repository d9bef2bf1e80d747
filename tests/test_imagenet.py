"""ImageNet folder loading and transforms on a generated folder of small JPEGs."""
import os

import numpy as np
import pytest
from PIL import Image

from minirate.data.cifar import DatasetError
from minirate.data.imagenet import (ImageFolderLoader, MEAN, STD, decode, load_imagenet,
                                    random_resized_crop_box, scan_split)

WNIDS = ["n01440764", "n01443537", "n02102040"]


def make_imagenet(root, n_train=4, n_val=2, seed=0):
    """root/{train,val}/<wnid>/*.JPEG: random-sized smooth colour images, different per class."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for k, wnid in enumerate(WNIDS):
            os.makedirs(os.path.join(root, split, wnid))
            for i in range(n):
                h, w = rng.integers(20, 48, size=2)
                yy, xx = np.mgrid[0:h, 0:w]
                img = np.stack([(xx * 255 // w), (yy * 255 // h),
                                np.full_like(xx, 80 * k)], axis=-1)
                img = np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(os.path.join(root, split, wnid,
                                                       f"{wnid}_{i}.JPEG"), quality=95)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_imagenet(str(tmp_path_factory.mktemp("imagenet")))


def test_folder_layout_and_labels(folder):
    train_paths, train_y, val_paths, val_y, classes = load_imagenet(folder)
    assert classes == WNIDS
    assert len(train_paths) == 12 and len(val_paths) == 6
    for path, y in zip(train_paths + val_paths, list(train_y) + list(val_y)):
        assert os.path.basename(os.path.dirname(path)) == WNIDS[y]


def test_folder_problems_are_one_line(tmp_path, folder):
    with pytest.raises(DatasetError, match="expected .*/train/<wnid>/"):
        load_imagenet(str(tmp_path / "nothing"))
    os.makedirs(tmp_path / "bad" / "train" / "n0")
    os.makedirs(tmp_path / "bad" / "val" / "n9")
    with pytest.raises(DatasetError, match="no images"):
        load_imagenet(str(tmp_path / "bad"))
    with pytest.raises(DatasetError, match="not in train/: n9"):
        scan_split(str(tmp_path / "bad"), "val", ["n0"])


def test_evaluation_transform(folder):
    """Resize the shorter side to 36 (bilinear), centre 32 x 32, normalise with ImageNet's
    statistics: against the steps written out with Pillow here."""
    _, _, val_paths, val_y, _ = load_imagenet(folder)
    loader = ImageFolderLoader(val_paths, val_y, 4, train=False, size=32, resize=36, workers=0)
    batches = list(loader.iter_epoch(0))
    assert [len(y) for _, y in batches] == [4, 2]
    x = np.concatenate([b for b, _ in batches])
    assert x.shape == (6, 3, 32, 32) and x.dtype == np.float32
    for i, path in enumerate(val_paths):
        img = Image.open(path).convert("RGB")
        W, H = img.size
        s = 36 / min(W, H)
        img = img.resize((int(W * s) if W > H else 36, int(H * s) if H > W else 36),
                         Image.BILINEAR)
        left, top = round((img.size[0] - 32) / 2), round((img.size[1] - 32) / 2)
        ref = np.asarray(img.crop((left, top, left + 32, top + 32)), dtype=np.float32) / 255
        ref = ((ref - MEAN) / STD).transpose(2, 0, 1)
        assert np.allclose(x[i], ref, atol=1e-5), path


def test_random_resized_crop_box_ranges():
    rng = np.random.default_rng(0)
    for _ in range(300):
        W, H = (int(v) for v in rng.integers(10, 500, size=2))
        left, top, w, h = random_resized_crop_box(W, H, rng)
        assert 0 <= left and left + w <= W and 0 <= top and top + h <= H and w > 0 and h > 0
    # an image of a usable shape: box area within [0.08, 1] and ratio within [3/4, 4/3], up to
    # rounding to whole pixels, and both ends of the scale range reached
    areas = []
    for _ in range(500):
        left, top, w, h = random_resized_crop_box(400, 300, rng)
        areas.append(w * h / 120000)
        assert 0.75 - 0.05 <= w / h <= 4 / 3 + 0.05
    assert 0.07 <= min(areas) < 0.15 and 0.85 < max(areas) <= 1.0


def test_training_batches_are_reproducible_sharded_and_parallel(folder):
    train_paths, train_y, _, _, _ = load_imagenet(folder)

    def epoch(workers, e=0, shard=None, start=0):
        loader = ImageFolderLoader(train_paths, train_y, 6, train=True, seed=3, size=16,
                                   resize=18, workers=workers, shard=shard)
        return list(loader.iter_epoch(e, start))

    one = epoch(0)
    assert len(one) == 2 and all(x.shape == (6, 3, 16, 16) for x, _ in one)
    labels = np.concatenate([y for _, y in one])
    assert sorted(labels) == sorted(train_y)                # a permutation of the whole set
    two = epoch(2)                                           # two decoding processes
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(one, two))
    assert not np.array_equal(one[0][0], epoch(0, e=1)[0][0])   # another epoch, other crops
    assert np.array_equal(epoch(0, start=1)[0][0], one[1][0])   # resuming mid-epoch
    # data-parallel shards: the parts of ranks 0, 1, 2 are the single process's batch
    parts = [epoch(0, shard=lambda n, r=r: (n * r // 3, n * (r + 1) // 3)) for r in range(3)]
    for b in range(2):
        assert np.array_equal(np.concatenate([p[b][0] for p in parts]), one[b][0])
        assert np.array_equal(np.concatenate([p[b][1] for p in parts]), one[b][1])


def test_training_transform_follows_the_image_seed(folder):
    """decode(train) = the seed's box resized to 16 x 16, mirrored when the seed's next draw is
    below 1/2; both flip outcomes occur."""
    path = load_imagenet(folder)[0][0]
    img = Image.open(path).convert("RGB")
    flips = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        left, top, w, h = random_resized_crop_box(*img.size, rng)
        ref = img.resize((16, 16), Image.BILINEAR, box=(left, top, left + w, top + h))
        flips.append(rng.random() < 0.5)
        ref = np.asarray(ref)[:, ::-1] if flips[-1] else np.asarray(ref)
        assert np.array_equal(decode(path, True, 16, 18, seed), ref)
    assert any(flips) and not all(flips)


def test_corrupt_image_names_the_file(tmp_path):
    root = make_imagenet(str(tmp_path / "inet"), n_train=1, n_val=1)
    bad = os.path.join(root, "train", WNIDS[1], "broken.JPEG")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff not really a jpeg")
    paths, y, _, _, _ = load_imagenet(root)
    loader = ImageFolderLoader(paths, y, 4, train=True, size=8, resize=9, workers=1)
    with pytest.raises(DatasetError, match="cannot decode image .*broken.JPEG"):
        list(loader.iter_epoch(0))


def test_train_script_on_an_imagenet_folder(tmp_path, folder):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = [sys.executable, os.path.join(root, "train.py"), "--dataset", "imagenet",
            "--data-dir", folder, "--arch", "preact_resnet34", "--width", "0.0625",
            "--image-size", "32", "--T", "2", "--batch-size", "4", "--epochs", "1",
            "--workers", "0", "--method", "bptt", "--no-progress", "--out", str(tmp_path / "o")]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "3 steps/epoch" in r.stdout and (tmp_path / "o" / "last.npz").exists()
    r = subprocess.run(args[:-2] + ["--workers", "-1"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--workers" in r.stderr
    r = subprocess.run(args[:5] + [str(tmp_path / "none")] + args[6:], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("error: ImageNet folder")


def test_unreadable_folder_is_one_line(folder, monkeypatch):
    """A folder that cannot be listed (permission denied; root reads through chmod, so the
    refusal is simulated) is a DatasetError naming it, not an OSError."""
    real = os.listdir
    blocked = os.path.join(folder, "train", WNIDS[1])

    def listdir(path):
        if os.path.abspath(path) == os.path.abspath(blocked):
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(os, "listdir", listdir)
    with pytest.raises(DatasetError, match=f"cannot list {blocked}: Permission denied"):
        load_imagenet(folder)


def test_ctrl_c_on_the_terminal_stops_cleanly_with_decoding_workers(tmp_path, folder):
    """Ctrl-C on a terminal reaches the whole process group, the decoding workers too: they
    leave it to the training process, which saves after its step as without workers."""
    import signal
    import subprocess
    import sys
    import time
    from minirate.checkpoint import load_checkpoint
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "o"
    args = [sys.executable, os.path.join(root, "train.py"), "--dataset", "imagenet",
            "--data-dir", folder, "--arch", "small", "--width", "0.25", "--image-size", "16",
            "--T", "1", "--batch-size", "4", "--epochs", "50", "--workers", "2",
            "--save-every", "1", "--no-progress", "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)        # its own group, as a terminal's job
    try:
        t0 = time.time()
        while not (out / "last.npz").exists():
            assert proc.poll() is None and time.time() - t0 < 120, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.3)                                    # workers busy or waiting for work
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted: saved" in err and "Traceback" not in err, err
    pos = load_checkpoint(out / "last.npz")[1]["position"]
    assert pos["step"] == pos["epoch"] * 3 + pos["batch"] >= 1
