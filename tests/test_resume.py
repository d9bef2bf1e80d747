"""Runs that are killed, interrupted or fed damaged files lose nothing and resume exactly."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minirate.checkpoint import load_checkpoint
from minirate.data.cifar import make_synthetic_cifar
from tests.conftest import ROOT
from tests.test_train import _one_line_error, quick, run_train


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_cifar(str(tmp_path_factory.mktemp("synth")), n_train=96, n_test=24)


def _weights(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files if k != "__meta__"}


def _records(out):
    recs = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    for r in recs:
        r.pop("img_per_s")
    return recs


def _start(args):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _wait_for_step(path, step, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if os.path.exists(path):
            try:
                if load_checkpoint(path)[1]["position"]["step"] >= step:
                    return
            except Exception:
                pass
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    raise AssertionError("the run never reached the step")


def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path, synth):
    # 96 images / batch 16 = 6 steps per epoch, 3 epochs
    args = quick(tmp_path / "full", synth, "--epochs", "3")
    r = run_train(*args)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "killed"
    killed_args = quick(out, synth, "--epochs", "3", "--save-every", "1")
    proc = _start(killed_args)
    _wait_for_step(out / "last.npz", 8, proc)          # epoch 2, batch 2 or later
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    pos = load_checkpoint(out / "last.npz")[1]["position"]
    assert pos["step"] < 18, "the run finished before it was killed"
    r = run_train(*killed_args, "--resume", "auto")
    assert r.returncode == 0, r.stderr
    a, b = _weights(tmp_path / "full" / "last.npz"), _weights(out / "last.npz")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert _records(tmp_path / "full") == _records(out)


def test_kill_during_checkpoint_write_keeps_a_readable_checkpoint(tmp_path):
    script = (
        "import numpy as np, sys\n"
        "from minirate.checkpoint import save_checkpoint\n"
        "big = np.arange(3_000_000, dtype=np.float32)\n"
        "i = 0\n"
        "while True:\n"
        "    save_checkpoint(sys.argv[1], {'w': big + i % 2}, {'version': i % 2})\n"
        "    i += 1\n"
        "    if i == 1: print('first', flush=True)\n")
    path = tmp_path / "ck.npz"
    for delay in (0.05, 0.13, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", script, str(path)], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "first"
        time.sleep(delay)
        proc.kill()
        proc.wait()
        arrays, meta = load_checkpoint(path)       # old or new, never torn
        assert np.array_equal(arrays["w"], np.arange(3_000_000, dtype=np.float32) + meta["version"])


def test_ctrl_c_saves_and_resumes(tmp_path, synth):
    out = tmp_path / "o"
    args = quick(out, synth, "--epochs", "3", "--save-every", "1")
    proc = _start(args)
    _wait_for_step(out / "last.npz", 3, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    step = load_checkpoint(out / "last.npz")[1]["position"]["step"]
    assert step >= 3
    r = run_train(*args, "--resume", "auto")
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(out / "last.npz")[1]["position"]["step"] == 18


def _write_batch(path, data, labels):
    with open(path, "wb") as f:
        pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"x",
                     b"filenames": [b"f"] * len(labels)}, f)


@pytest.mark.parametrize("damage,words", [
    ("garbage", ["data_batch_2"]),
    ("labels", ["data_batch_2", "label"]),
    ("shape", ["data_batch_2"]),
    ("missing", ["data_batch_2"]),
])
def test_damaged_dataset(tmp_path, synth, damage, words):
    root = tmp_path / "d"
    src = os.path.join(synth, "cifar-10-batches-py")
    os.makedirs(root / "cifar-10-batches-py")
    for f in os.listdir(src):
        (root / "cifar-10-batches-py" / f).write_bytes(open(os.path.join(src, f), "rb").read())
    target = root / "cifar-10-batches-py" / "data_batch_2"
    rng = np.random.default_rng(0)
    if damage == "garbage":
        target.write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif damage == "labels":
        _write_batch(target, rng.integers(0, 256, (20, 3072), dtype=np.uint8), [3] * 19 + [12])
    elif damage == "shape":
        _write_batch(target, rng.integers(0, 256, (20, 1000), dtype=np.uint8), [3] * 20)
    else:
        os.remove(target)
    out = tmp_path / "o"
    os.makedirs(out)
    (out / "last.npz").write_bytes(b"previous run")
    r = run_train(*quick(out, root, "--no-download", "--overwrite"))
    _one_line_error(r, 1, *words)
    assert (out / "last.npz").read_bytes() == b"previous run"


def test_resume_with_wrong_keys_names_them(tmp_path, synth):
    out = tmp_path / "o"
    assert run_train(*quick(out, synth, "--epochs", "1")).returncode == 0
    with np.load(out / "last.npz") as f:
        arrays = {k: f[k] for k in f.files}
    del arrays["model/conv0.0.weight"]
    arrays["model/layer9.weight"] = np.zeros(2)
    np.savez(tmp_path / "edited.npz", **arrays)
    r = run_train(*quick(out, synth, "--epochs", "2", "--resume", tmp_path / "edited.npz"))
    _one_line_error(r, 1, "conv0.0.weight", "layer9.weight")


def test_resume_auto_without_checkpoint_starts_fresh(tmp_path, synth):
    r = run_train(*quick(tmp_path / "o", synth, "--epochs", "1", "--resume", "auto"))
    assert r.returncode == 0 and "starting fresh" in r.stdout


def test_init_from_starts_a_new_run_from_the_weights(tmp_path, synth):
    """--init-from: the weights of another run, with a fresh optimizer and position (a second
    training stage); a checkpoint of another model is one line."""
    r = run_train(*quick(tmp_path / "a", synth, "--max-steps", "2"))
    assert r.returncode == 0, r.stderr
    # a step of size ~0 changes no weight: what the run starts from is what it saved
    r = run_train(*quick(tmp_path / "b", synth, "--init-from", tmp_path / "a" / "last.npz",
                         "--max-steps", "1", "--lr", "1e-30", "--wd", "0", "--momentum", "0",
                         "--T", "3"))
    assert r.returncode == 0, r.stderr
    a, b = _weights(tmp_path / "a" / "last.npz"), _weights(tmp_path / "b" / "last.npz")
    weights = [k for k in a if k.startswith("model/") and k.endswith("weight")]
    assert weights and all(np.array_equal(a[k], b[k]) for k in weights)
    assert load_checkpoint(tmp_path / "b" / "last.npz")[1]["position"]["step"] == 1
    r = run_train(*quick(tmp_path / "c", synth, "--init-from", tmp_path / "a" / "last.npz",
                         "--width", "0.5"))
    _one_line_error(r, 1, "--init-from", "does not fit this model")
    assert not (tmp_path / "c" / "last.npz").exists()
