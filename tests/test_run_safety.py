"""No input or interruption loses or falsifies a run: one writer per --out, a refused replace,
Ctrl-C that saves a state an uninterrupted run really had, checked options and positions."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minirate.checkpoint import load_checkpoint, save_checkpoint
from minirate.data.cifar import DatasetError, load_cifar
from minirate.progress import Progress
from minirate.rundir import RunLock, RunDirError, remove_stale_temporaries
from tests.conftest import ROOT
from tests.test_resume import _weights as _arrays, synth  # noqa: F401 (a fixture)
from tests.test_train import _one_line_error, quick, run_train


def _start(args):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _wait_for(predicate, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError("timed out")


def _step_of(path):
    try:
        return load_checkpoint(path)[1]["position"]["step"]
    except Exception:
        return -1


# -- one run per folder -------------------------------------------------------------------
def test_new_run_into_a_used_folder_is_refused_and_overwrite_replaces(tmp_path, synth):
    out = tmp_path / "o"
    assert run_train(*quick(out, synth, "--epochs", "1")).returncode == 0
    before = (out / "last.npz").read_bytes()
    r = run_train(*quick(out, synth, "--epochs", "1", "--seed", "3"))
    _one_line_error(r, 1, "already holds a run", "--resume", "--overwrite")
    assert (out / "last.npz").read_bytes() == before
    r = run_train(*quick(out, synth, "--epochs", "1", "--seed", "3", "--overwrite"))
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [rec["epoch"] for rec in records] == [1]          # the old run's log is gone
    assert load_checkpoint(out / "last.npz")[1]["config"]["seed"] == 3


def test_two_runs_never_share_a_folder(tmp_path, synth):
    out = tmp_path / "o"
    first = _start(quick(out, synth, "--epochs", "50"))
    try:
        _wait_for(lambda: (out / ".lock").exists() and (out / "config.json").exists(), first)
        r = run_train(*quick(out, synth, "--resume", "auto"))
        _one_line_error(r, 1, "in use by another run", f"pid {first.pid}")
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()


def test_stale_lock_of_a_killed_run_is_taken_over(tmp_path, synth):
    out = tmp_path / "o"
    proc = _start(quick(out, synth, "--epochs", "50", "--save-every", "1"))
    _wait_for(lambda: _step_of(out / "last.npz") >= 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert f"pid {proc.pid}" in (out / ".lock").read_text()       # left behind by the kill
    r = run_train(*quick(out, synth, "--epochs", "1", "--resume", "auto"))
    assert r.returncode == 0, r.stderr
    assert "took over the stale lock" in r.stdout and f"pid {proc.pid}" in r.stdout
    assert not (out / ".lock").exists()                           # released at the end


def test_lock_is_exclusive_within_a_process_too(tmp_path):
    lock = RunLock(str(tmp_path))
    with pytest.raises(RunDirError, match="in use by another run"):
        RunLock(str(tmp_path))
    lock.release()
    RunLock(str(tmp_path)).release()
    assert not (tmp_path / ".lock").exists()


def test_temporaries_of_a_killed_save_are_removed_on_start(tmp_path, synth):
    out = tmp_path / "o"
    assert run_train(*quick(out, synth, "--epochs", "1")).returncode == 0
    leftovers = [".last.npz.4242.0a1b2c3d.tmp", ".best.npz.17.ffffffff.tmp", "config.json.tmp"]
    for name in leftovers:
        (out / name).write_bytes(b"half a checkpoint")
    (out / "notes.tmp").write_text("mine")                        # not ours: kept
    r = run_train(*quick(out, synth, "--epochs", "2", "--resume", "auto"))
    assert r.returncode == 0, r.stderr
    assert "removed 3 temporary file(s)" in r.stdout
    assert not any((out / n).exists() for n in leftovers) and (out / "notes.tmp").exists()
    assert remove_stale_temporaries(str(out)) == []


# -- Ctrl-C -------------------------------------------------------------------------------
def test_ctrl_c_saves_exactly_the_state_of_an_uninterrupted_run(tmp_path, synth):
    """The save after Ctrl-C holds the weights, batchnorm buffers and optimizer state of an
    uninterrupted run after the same number of steps, and resuming ends bitwise where an
    uninterrupted run ends."""
    args = ["--epochs", "3", "--save-every", "1"]
    out = tmp_path / "stopped"
    proc = _start(quick(out, synth, *args))
    _wait_for(lambda: _step_of(out / "last.npz") >= 4, proc)
    proc.send_signal(signal.SIGINT)                # lands in a step (steps are most of the time)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted: saved" in err
    stopped_at = _step_of(out / "last.npz")
    assert 4 <= stopped_at < 18

    ref = tmp_path / "ref"
    r = run_train(*quick(ref, synth, *args, "--max-steps", stopped_at))
    assert r.returncode == 0, r.stderr
    a, b = _arrays(ref / "last.npz"), _arrays(out / "last.npz")
    assert a.keys() == b.keys() and any("running_mean" in k for k in a)
    assert any("num_batches_tracked" in k for k in a) and any(k.startswith("optim/") for k in a)
    for k in a:
        assert np.array_equal(a[k], b[k]), k

    full = tmp_path / "full"
    assert run_train(*quick(full, synth, *args)).returncode == 0
    r = run_train(*quick(out, synth, *args, "--resume", "auto"))
    assert r.returncode == 0, r.stderr
    a, b = _arrays(full / "last.npz"), _arrays(out / "last.npz")
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_second_ctrl_c_quits_with_one_line_and_keeps_the_checkpoint(tmp_path, synth):
    out = tmp_path / "o"
    proc = _start(quick(out, synth, "--epochs", "50", "--save-every", "1"))
    _wait_for(lambda: _step_of(out / "last.npz") >= 2, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith(("interrupted again", "interrupted: saved")), err
    load_checkpoint(out / "last.npz")                  # readable: old or new, never torn


# -- options --------------------------------------------------------------------------------
@pytest.mark.parametrize("args,words", [
    (["--grad-clip", "-1"], ["--grad-clip", ">= 0"]),
    (["--momentum", "-0.1"], ["--momentum"]),
    (["--momentum", "1"], ["--momentum", "[0, 1)"]),
    (["--wd", "-5e-4"], ["--wd"]),
    (["--warmup-epochs", "-1"], ["--warmup-epochs"]),
    (["--warmup-epochs", "5", "--epochs", "2"], ["--warmup-epochs", "--epochs"]),
    (["--lr", "0"], ["--lr"]),
    (["--width", "0"], ["--width"]),
    (["--width", "-1"], ["--width"]),
    (["--decay", "1.5"], ["--decay", "[0, 1]"]),
    (["--decay", "-0.1"], ["--decay"]),
    (["--threshold", "0"], ["--threshold"]),
    (["--alpha", "0"], ["--alpha"]),
    (["--reset", "hard", "--v-reset", "1.5"], ["--v-reset", "--threshold"]),
    (["--cutout", "-3"], ["--cutout"]),
    (["--cutout", "40"], ["--cutout", "32"]),
    (["--seed", "-1"], ["--seed"]),
    (["--max-steps", "-1"], ["--max-steps"]),
    (["--save-every", "-2"], ["--save-every"]),
    (["--eval-batch-size", "0"], ["--eval-batch-size"]),
    (["--nesterov", "--momentum", "0"], ["--nesterov"]),
    (["--nesterov", "--optimizer", "adam"], ["--nesterov"]),
    (["--out", " "], ["--out"]),
    (["--method", "sltt", "--local-blocks", "2", "--arch", "small"], ["--local-blocks", "sltt"]),
    (["--method", "tbptt", "--loss", "per-step"], ["--loss per-step", "tbptt"]),
    (["--local-blocks", "2", "--arch", "small", "--loss", "per-step"], ["--loss per-step"]),
    (["--roll", "48"], ["--roll", "--frame-size"]),
    (["--method", "sltt", "--step-mode", "s"], ["--step-mode", "bptt and tbptt"]),
    (["--split-at", ","], ["--split-at", "names no module"]),
    (["--dataset", "imagenet", "--no-flip"], ["--flip", "ImageNet"]),
    (["--dataset", "imagenet", "--cutout", "8"], ["--cutout", "ImageNet"]),
    (["--width", "0.02", "--arch", "small"], ["--width 0.02", "16-channel", "0.03125"]),
])
def test_out_of_range_options(tmp_path, args, words):
    _one_line_error(run_train(*args, "--out", tmp_path / "o") if "--out" not in args
                    else run_train(*args), 2, *words)
    assert not (tmp_path / "o").exists()


def test_help_shows_every_default():
    r = run_train("--help")
    assert r.returncode == 0
    heading = "\noptions:" if "\noptions:" in r.stdout else "\noptional arguments:"  # < 3.10
    body = r.stdout[r.stdout.index(heading):]                    # after the usage lines
    entries, current = {}, None
    for line in body.splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            entries[current] = line
        elif current:
            entries[current] += line
    entries.pop("-h")
    assert len(entries) >= 35 and "--grad-clip" in entries and "--overwrite" in entries
    for opt, text in entries.items():
        assert "(default:" in text, opt


# -- resume ---------------------------------------------------------------------------------
@pytest.mark.parametrize("change,word", [(["--batch-size", "8"], "--batch-size"),
                                         (["--seed", "5"], "--seed")])
def test_resume_refuses_a_different_data_order(tmp_path, synth, change, word):
    out = tmp_path / "o"
    assert run_train(*quick(out, synth, "--epochs", "1")).returncode == 0
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}
    r = run_train(*quick(out, synth, "--epochs", "2", "--resume", "auto", *change))
    _one_line_error(r, 1, word, "position")
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before


@pytest.mark.parametrize("edit", [
    {"step": 5},                 # does not match epoch and batch
    {"batch": -1},
    {"epoch": "one"},
    {"batch": 99},               # beyond the epoch
    {"best_acc": 7.0},
    {"correct": 50, "seen": 10},
    {"loss_sum": float("nan")},
])
def test_damaged_position_is_one_line_and_nothing_is_rewritten(tmp_path, synth, edit):
    out = tmp_path / "o"
    assert run_train(*quick(out, synth, "--epochs", "1")).returncode == 0
    arrays, meta = load_checkpoint(out / "last.npz")
    meta["position"].update(edit)
    save_checkpoint(out / "last.npz", arrays, meta)
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}
    r = run_train(*quick(out, synth, "--epochs", "2", "--resume", "auto"))
    _one_line_error(r, 1, "saved position")
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before


def test_divergence_without_a_checkpoint_says_so(tmp_path):
    # real images at batch 50: the overflow happens inside the CPU threads' batchnorm too, whose
    # floating-point warnings must stay as quiet as the main thread's
    r = run_train("--arch", "small", "--width", "0.25", "--T", "2", "--batch-size", "50",
                  "--epochs", "1", "--dataset", "cifar10-sample", "--no-progress",
                  "--out", tmp_path / "o", "--lr", "1e38", "--wd", "0")
    _one_line_error(r, 1, "non-finite", "no checkpoint was saved yet")


def test_partial_epoch_is_marked(tmp_path, synth):
    r = run_train(*quick(tmp_path / "o", synth, "--max-steps", "2"))
    assert r.returncode == 0, r.stderr
    assert "epoch 1/2 (partial: 2/6 steps)" in r.stdout and "img/s training" in r.stdout
    rec = json.loads(open(tmp_path / "o" / "metrics.jsonl").readline())
    assert rec["partial"] is True and rec["epoch"] == 1


# -- data folders ---------------------------------------------------------------------------
def test_data_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = run_train("--data-dir", f, "--out", tmp_path / "o", "--arch", "small")
    _one_line_error(r, 1, "is a file")


def test_data_dir_under_a_read_only_path():
    with pytest.raises(DatasetError, match="cannot write into /proc/minirate-data"):
        load_cifar("cifar10", "/proc/minirate-data", url="http://127.0.0.1:9/c.tar.gz")


def test_unreadable_data_dir(synth, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)   # root reads through chmod
    with pytest.raises(DatasetError, match="not readable"):
        load_cifar("cifar10", synth, download=False)


def test_offline_download_names_path_url_and_sample_and_creates_nothing(tmp_path):
    data_dir = tmp_path / "a" / "b" / "data"
    url = "http://127.0.0.1:9/cifar-10-python.tar.gz"      # nothing listens on port 9
    with pytest.raises(DatasetError) as e:
        load_cifar("cifar10", str(data_dir), url=url, timeout=5)
    msg = str(e.value)
    assert "\n" not in msg
    assert os.path.join(str(data_dir), "cifar-10-batches-py") in msg and url in msg
    assert "--dataset cifar10-sample" in msg
    assert not (tmp_path / "a").exists()


# -- progress -----------------------------------------------------------------------------
class _Log:
    def __init__(self):
        self.lines = []

    def write(self, text):
        self.lines += [line for line in text.splitlines() if line]

    def flush(self):
        pass

    def isatty(self):
        return False


def test_progress_in_a_log_never_goes_silent(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    log = _Log()
    bar = Progress(100, "epoch 1/1", stream=log, interval=15)
    for i in range(1, 101):
        clock[0] += 4.0                      # one step every 4 s
        bar.update(i, loss=1.0)
    bar.close()
    assert 24 <= len(log.lines) <= 27            # ~ 400 s / 16 s, not one per update
    elapsed = [line.split("  ")[-1].split("<")[0].split(":") for line in log.lines]
    stamps = [60 * int(m) + int(s) for m, s in elapsed]
    assert stamps[0] == 4 and max(np.diff(stamps)) <= 16 and "100/100" in log.lines[-1]
    assert not any("\r" in line for line in log.lines)


def test_sltt_k_resumes_exactly(tmp_path, synth):
    """SLTT-K draws its K steps per batch at random: a resumed run draws what the uninterrupted
    one did (the draw depends on the seed and the number of batches, kept in the checkpoint)."""
    args = ["--method", "sltt", "--sltt-k", "1", "--epochs", "2"]
    assert run_train(*quick(tmp_path / "full", synth, *args)).returncode == 0
    out = tmp_path / "cut"
    assert run_train(*quick(out, synth, *args, "--max-steps", "3")).returncode == 0
    r = run_train(*quick(out, synth, *args, "--resume", "auto"))
    assert r.returncode == 0, r.stderr
    a, b = _arrays(tmp_path / "full" / "last.npz"), _arrays(out / "last.npz")
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert load_checkpoint(out / "last.npz")[1]["method_state"] == {"batches": 12}


def test_resume_from_elsewhere_into_a_folder_of_another_run_is_refused(tmp_path, synth):
    """--resume names a checkpoint of run A, --out holds run B: B is not replaced without
    --overwrite; with it, B's log and best checkpoint go and A continues alone."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_train(*quick(a, synth, "--epochs", "1")).returncode == 0
    assert run_train(*quick(b, synth, "--epochs", "1", "--seed", "3")).returncode == 0
    before = {f: (b / f).read_bytes() for f in ("last.npz", "best.npz", "metrics.jsonl")}
    r = run_train(*quick(b, synth, "--epochs", "2", "--resume", a / "last.npz"))
    _one_line_error(r, 1, "already holds", "--overwrite")
    assert {f: (b / f).read_bytes() for f in before} == before
    r = run_train(*quick(b, synth, "--epochs", "2", "--resume", a / "last.npz", "--overwrite"))
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["epoch"] for line in open(b / "metrics.jsonl")] == [2]
    assert load_checkpoint(b / "last.npz")[1]["config"]["seed"] == 0


def test_divergence_after_overwrite_does_not_name_the_replaced_run(tmp_path, synth):
    """The last.npz left by the run that --overwrite replaces is not this run's checkpoint."""
    out = tmp_path / "o"
    assert run_train(*quick(out, synth, "--epochs", "1")).returncode == 0
    r = run_train(*quick(out, synth, "--epochs", "1", "--overwrite", "--lr", "1e38", "--wd", "0"))
    _one_line_error(r, 1, "non-finite", "no checkpoint was saved yet")


def test_resume_auto_in_a_folder_without_last_checkpoint_does_not_loop(tmp_path, synth):
    """A run killed between its first best.npz and last.npz: --resume auto cannot continue it
    and must not answer 'continue it with --resume auto'."""
    out = tmp_path / "o"
    assert run_train(*quick(out, synth, "--epochs", "1")).returncode == 0
    os.remove(out / "last.npz")
    r = run_train(*quick(out, synth, "--epochs", "1", "--resume", "auto"))
    _one_line_error(r, 1, "no last.npz", "--overwrite")
    assert "continue it with --resume auto" not in r.stderr
    assert (out / "best.npz").exists()


def test_batch_too_small_for_batchnorm_is_one_line(tmp_path):
    """sew_resnet34 on 32-px images ends in 1 x 1 maps: a batch of one sample leaves one value
    per channel for batchnorm's statistics, a usage error rather than a traceback."""
    r = run_train("--dataset", "cifar10-sample", "--arch", "sew_resnet34", "--width", "0.0625",
                  "--batch-size", "1", "--T", "1", "--max-steps", "1", "--no-progress",
                  "--out", tmp_path / "o")
    _one_line_error(r, 1, "batchnorm", "1 value per channel", "--batch-size")


@pytest.mark.parametrize("state", [{"batches": "many"}, ["batches", 3]])
def test_damaged_method_state_is_one_line_and_nothing_is_rewritten(tmp_path, synth, state):
    out = tmp_path / "o"
    args = ["--method", "sltt", "--sltt-k", "1"]
    assert run_train(*quick(out, synth, *args, "--epochs", "1")).returncode == 0
    arrays, meta = load_checkpoint(out / "last.npz")
    meta["method_state"] = state
    save_checkpoint(out / "last.npz", arrays, meta)
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}
    r = run_train(*quick(out, synth, *args, "--epochs", "2", "--resume", "auto"))
    _one_line_error(r, 1, "last.npz", "method state")
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before


def test_log_line_that_is_not_an_object_is_one_line(tmp_path, synth):
    """metrics.jsonl holds one JSON object per line; a line of valid JSON that is not one (a
    hand edit, another tool) is named, not an AttributeError traceback."""
    out = tmp_path / "o"
    assert run_train(*quick(out, synth, "--epochs", "1")).returncode == 0
    with open(out / "metrics.jsonl", "a") as f:
        f.write("[1, 2]\n")
    before = (out / "last.npz").read_bytes()
    r = run_train(*quick(out, synth, "--epochs", "2", "--resume", "auto"))
    _one_line_error(r, 1, "metrics.jsonl line 2", "not a JSON object")
    assert (out / "last.npz").read_bytes() == before


def test_folder_that_cannot_be_locked_is_not_called_in_use(tmp_path, monkeypatch):
    """A file system without flock (some network mounts) is not 'in use by another run'."""
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(RunDirError, match="cannot lock .*No locks available") as e:
        RunLock(str(tmp_path))
    assert "in use" not in str(e.value)
