"""train.py on event data: a short run on synthetic, separable recordings learns; bad event
options, a damaged cache and a mismatched resume are one-line errors."""
import json
import os

import pytest

from minirate.data.events.synthetic import write_cifar10dvs, write_gesture
from tests.test_train import _one_line_error, run_train


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    """Synthetic CIFAR10-DVS (10 per class) and DVS128 Gesture (5 users, user 5 for testing)."""
    d = str(tmp_path_factory.mktemp("ev"))
    write_gesture(d, users=(1, 2, 3, 4, 5), test_users=(5,), events=3000)
    return write_cifar10dvs(d, per_class=10, events=3000)


def quick(out, data, *extra, dataset="cifar10dvs"):
    return ["--dataset", dataset, "--data-dir", data, "--arch", "vggsnn_cifar",
            "--width", "0.125", "--T", "2", "--frame-size", "24", "--roll", "1",
            "--batch-size", "10", "--lr", "0.05", "--out", out, "--no-progress", *extra]


@pytest.mark.parametrize("dataset,method", [("cifar10dvs", "bptt"), ("cifar10dvs", "rate_m"),
                                            ("dvsgesture", "rate_s")])
def test_short_training_on_synthetic_events_learns(tmp_path, events, dataset, method):
    r = run_train(*quick(tmp_path / "o", events, "--method", method, "--epochs", "6",
                         dataset=dataset))
    assert r.returncode == 0, r.stderr
    rec = [json.loads(line) for line in open(tmp_path / "o" / "metrics.jsonl")]
    assert rec[-1]["train_loss"] < rec[0]["train_loss"] - 1.0, rec
    assert rec[-1]["test_acc"] >= 0.8, rec                    # 10 or 11 classes: chance < 0.1
    assert os.path.exists(os.path.join(events, f"{dataset}-T2-count-24px.h5"))


@pytest.mark.parametrize("args,words", [
    (["--roll", "24"], ["--roll", "--frame-size"]),
    (["--event-split", "users"], ["--event-split", "9:1"]),
    (["--cutout", "8"], ["--cutout", "--roll"]),
    (["--split-by", "space"], ["--split-by"]),
])
def test_bad_event_options(tmp_path, events, args, words):
    _one_line_error(run_train(*quick(tmp_path / "o", events, *args)), 2, *words)


def test_vggsnn_dvs_needs_48px_event_frames(tmp_path):
    _one_line_error(run_train("--arch", "vggsnn_dvs", "--out", tmp_path / "o"), 2, "48x48")


def test_damaged_cache_and_mismatched_resume(tmp_path, events):
    r = run_train(*quick(tmp_path / "o", events, "--epochs", "1", "--max-steps", "1"))
    assert r.returncode == 0, r.stderr
    r = run_train(*quick(tmp_path / "o", events, "--epochs", "1", "--split-by", "time",
                         "--resume", "auto"))
    _one_line_error(r, 1, "--split-by count")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cifar10dvs-T2-count-24px.h5").write_bytes(b"garbage")
    r = run_train(*quick(tmp_path / "o2", events, "--cache-dir", bad, "--epochs", "1"))
    _one_line_error(r, 1, "truncated or not an HDF5 file")
    r = run_train(*quick(tmp_path / "o3", tmp_path / "none", "--epochs", "1"))
    _one_line_error(r, 1, "CIFAR10-DVS not found")
