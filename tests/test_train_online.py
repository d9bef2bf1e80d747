"""train.py with the per-step loss, SLTT and OTTT: runs, optimizer steps, and bad options."""
import json

import numpy as np
import pytest

from tests.test_train import _one_line_error, run_train

BASE = ["--dataset", "cifar10-sample", "--data-dir", "unused", "--batch-size", "16",
        "--epochs", "1", "--max-steps", "2", "--T", "2", "--no-progress"]


@pytest.mark.parametrize("args,loss,opt_steps", [
    (["--method", "sltt", "--sltt-k", "1", "--arch", "small", "--width", "0.25"], "per-step", 2),
    (["--method", "ottt", "--ottt-update", "per-step", "--arch", "vgg11_ws", "--width", "0.125",
      "--decay", "0.5", "--wd", "0"], "per-step", 2 * 2),      # one per time step (T = 2)
    (["--method", "rate_s", "--loss", "per-step", "--arch", "small", "--width", "0.25"],
     "per-step", 2),
    (["--method", "bptt", "--arch", "small", "--width", "0.25"], "mean", 2),
])
def test_runs_with_the_resolved_loss(tmp_path, args, loss, opt_steps):
    r = run_train(*BASE, *args, "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    cfg = json.load(open(tmp_path / "o" / "config.json"))
    assert cfg["loss"] == loss and cfg["loss_lambda"] == 0.05
    record = json.loads(open(tmp_path / "o" / "metrics.jsonl").readline())
    assert np.isfinite(record["train_loss"]) and record["kept_bytes"] > 0
    steps = int(np.load(tmp_path / "o" / "last.npz")["optim/step"])
    assert steps == opt_steps


@pytest.mark.parametrize("args,words", [
    (["--loss-lambda", "1.5"], ["--loss-lambda", "[0, 1]"]),
    (["--loss-lambda", "nan"], ["--loss-lambda"]),
    (["--method", "sltt", "--sltt-k", "5", "--T", "4"], ["--sltt-k", "at most"]),
    (["--method", "sltt", "--sltt-k", "0"], ["--sltt-k", "at least 1"]),
    (["--method", "ottt", "--loss", "mean"], ["--loss", "per-step"]),
    (["--method", "ottt", "--ottt-update", "often"], ["--ottt-update", "accumulate"]),
    (["--loss", "sum"], ["--loss", "per-step"]),
    (["--method", "bptt", "--sltt-k", "2"], ["--sltt-k", "sltt"]),
    (["--method", "sltt", "--ottt-update", "per-step"], ["--ottt-update", "ottt"]),
])
def test_bad_options(tmp_path, args, words):
    _one_line_error(run_train(*args, "--out", tmp_path / "o"), 2, *words)
