"""train.py end to end: learning on real images, reproducibility, and bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minirate.data.cifar import load_cifar, make_synthetic_cifar
from minirate.data.loader import Loader
from minirate.methods import make_method
from minirate.models import build_model
from minirate.optim import SGD
from tests.conftest import ROOT


def run_train(*args, cwd=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or ROOT, timeout=300)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_cifar(str(tmp_path_factory.mktemp("synth")), n_train=48, n_test=24)


def quick(out, data, *extra):
    return ["--arch", "small", "--width", "0.25", "--T", "2", "--batch-size", "16",
            "--epochs", "2", "--data-dir", data, "--out", out, "--no-progress", "--lr", "0.05",
            *extra]


@pytest.mark.parametrize("method", ["bptt", "rate"])
def test_loss_goes_down_on_real_cifar_sample(method):
    x, y, *_ = load_cifar("cifar10-sample", None)
    loader = Loader(x[:384], y[:384], 32, train=True, seed=0)
    model = build_model("small", 10, 0.5, seed=0)
    m = make_method(method, model, 2)
    opt = SGD(model.parameters(), lr=0.1, weight_decay=5e-4)
    losses = []
    for epoch in range(3):
        for xb, yb in loader.iter_epoch(epoch):
            model.zero_grad()
            losses.append(m.step(xb, yb)[0])
            opt.step()
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    assert last < first - 0.1, (first, last)


def test_train_script_runs_and_is_reproducible(tmp_path, synth):
    outs = []
    for name in ("a", "b"):
        r = run_train(*quick(tmp_path / name, synth))
        assert r.returncode == 0, r.stderr
        outs.append(tmp_path / name)
    for f in ("last.npz", "best.npz", "metrics.jsonl", "config.json"):
        assert (outs[0] / f).exists(), f
    records = [json.loads(line) for line in open(outs[0] / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(0 <= r["test_acc"] <= 1 and np.isfinite(r["train_loss"]) for r in records)
    with np.load(outs[0] / "last.npz") as a, np.load(outs[1] / "last.npz") as b:
        assert set(a.files) == set(b.files)
        for k in a.files:
            if k != "__meta__":            # the metadata names each run's own --out
                assert np.array_equal(a[k], b[k]), k
    rec_b = [json.loads(line) for line in open(outs[1] / "metrics.jsonl")]
    for ra, rb in zip(records, rec_b):
        ra.pop("img_per_s"), rb.pop("img_per_s")
        assert ra == rb
    cfg = json.loads(open(outs[0] / "config.json").read())
    assert cfg["arch"] == "small" and cfg["T"] == 2


def test_help_lists_every_option():
    r = run_train("--help")
    assert r.returncode == 0
    for opt in ("--method", "--dataset", "--arch", "--T", "--epochs", "--batch-size", "--lr",
                "--wd", "--seed", "--device", "--data-dir", "--out", "--resume", "--max-steps",
                "--step-mode", "--width", "--autoaugment", "--cutout", "--nesterov",
                "--optimizer", "--grad-clip", "--surrogate", "--reset", "--save-every"):
        assert opt in r.stdout, opt


def _one_line_error(r, status, *words):
    assert r.returncode == status, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [l for l in r.stderr.strip().splitlines() if l]
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("args,words", [
    (["--method", "magic"], ["--method", "bptt", "rate_s"]),
    (["--arch", "resnet1000"], ["--arch", "resnet18"]),
    (["--dataset", "mnist"], ["--dataset", "cifar100"]),
    (["--T", "0"], ["--T", "at least 1"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--lr", "fast"], ["--lr", "fast"]),
    (["--lr", "nan"], ["--lr"]),
    (["--bogus-option"], ["--bogus-option"]),
])
def test_bad_options(tmp_path, args, words):
    _one_line_error(run_train(*args, "--out", tmp_path / "o"), 2, *words)


def test_missing_dataset(tmp_path):
    r = run_train("--data-dir", tmp_path / "nothing", "--no-download", "--out", tmp_path / "o")
    _one_line_error(r, 1, "cifar-10-batches-py")


def test_truncated_dataset(tmp_path, synth):
    bad = tmp_path / "bad"
    os.makedirs(bad / "cifar-10-batches-py")
    for f in os.listdir(os.path.join(synth, "cifar-10-batches-py")):
        data = open(os.path.join(synth, "cifar-10-batches-py", f), "rb").read()
        open(bad / "cifar-10-batches-py" / f, "wb").write(data[:len(data) // 2]
                                                          if f == "data_batch_3" else data)
    r = run_train(*quick(tmp_path / "o", bad, "--no-download"))
    _one_line_error(r, 1, "data_batch_3")


def test_unwritable_out(tmp_path, synth):
    blocker = tmp_path / "file"
    blocker.write_text("I am a file")
    r = run_train(*quick(blocker / "sub", synth))
    _one_line_error(r, 1, "--out")
    assert blocker.read_text() == "I am a file"


def test_batch_larger_than_dataset(tmp_path, synth):
    r = run_train(*quick(tmp_path / "o", synth, "--batch-size", "1000"))
    _one_line_error(r, 1, "--batch-size")


def test_device_cuda_without_gpu(tmp_path, synth):
    """CuPy is not a dependency: without it (or without a GPU) --device cuda is one clear line."""
    from minirate.backend import DeviceError, get_xp
    try:
        get_xp("cuda")
        pytest.skip("a usable GPU is present")
    except DeviceError:
        pass
    r = run_train(*quick(tmp_path / "o", synth, "--device", "cuda"))
    _one_line_error(r, 1, "--device cuda")


def test_corrupt_and_mismatched_checkpoints(tmp_path, synth):
    out = tmp_path / "o"
    r = run_train(*quick(out, synth, "--epochs", "1"))
    assert r.returncode == 0, r.stderr
    good = open(out / "last.npz", "rb").read()
    # truncated checkpoint
    (tmp_path / "trunc.npz").write_bytes(good[: len(good) // 2])
    r = run_train(*quick(out, synth, "--resume", tmp_path / "trunc.npz"))
    _one_line_error(r, 1, "trunc.npz")
    # foreign .npz
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    r = run_train(*quick(out, synth, "--resume", tmp_path / "foreign.npz"))
    _one_line_error(r, 1, "foreign.npz")
    # another architecture
    r = run_train(*quick(out, synth, "--resume", out / "last.npz", "--width", "0.5"))
    _one_line_error(r, 1, "--width")
    r = run_train(*quick(out, synth, "--resume", out / "last.npz", "--method", "rate"))
    _one_line_error(r, 1, "--method")
    assert open(out / "last.npz", "rb").read() == good        # nothing saved was touched


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, synth):
    out = tmp_path / "o"
    r = run_train(*quick(out, synth, "--epochs", "1"))
    assert r.returncode == 0
    good = open(out / "last.npz", "rb").read()
    r = run_train(*quick(out, synth, "--epochs", "3", "--resume", "auto", "--lr", "1e38",
                        "--wd", "0"))
    _one_line_error(r, 1, "step", "last good checkpoint")
    assert open(out / "last.npz", "rb").read() == good


def test_train_py_stays_the_loop():
    """train.py reads as the training loop: the file at most 300 lines, its main at most 100
    (options, data set up, resuming and the run's record live in minirate/)."""
    import ast
    with open(os.path.join(ROOT, "train.py"), encoding="utf-8") as f:
        text = f.read()
    assert len(text.splitlines()) <= 300
    main = [n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert len(main) == 1 and main[0].end_lineno - main[0].lineno + 1 <= 100
