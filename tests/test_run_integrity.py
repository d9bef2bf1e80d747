"""A refused start changes nothing in --out; checkpoints are checked (finite, format version)
before they are trusted; an interrupted epoch logs what an uninterrupted one logs; messages say
what is true."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minirate.checkpoint import first_non_finite, load_checkpoint, save_checkpoint
from tests.conftest import ROOT
from tests.test_resume import synth  # noqa: F401 (a fixture: 96 training images, 6 steps/epoch)
from tests.test_train import _one_line_error, quick, run_train


def _snapshot(out):
    """Every file under `out`: its bytes and modification time."""
    files = {}
    for root, _, names in os.walk(out):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, out)] = (open(path, "rb").read(),
                                                 os.stat(path).st_mtime_ns)
    return files


def _rewrite(path, arrays=None, meta=None, **edit):
    a, m = load_checkpoint(path)
    a.update(arrays or {})
    m.update(meta or {})
    for key, value in edit.items():
        m[key] = value
    save_checkpoint(path, a, m)


@pytest.fixture
def done_run(tmp_path, synth):
    """A folder holding a finished 1-epoch run, and the stale temporary file of a killed save."""
    out = tmp_path / "o"
    r = run_train(*quick(out, synth, "--epochs", "1"))
    assert r.returncode == 0, r.stderr
    (out / ".last.npz.4242.0a1b2c3d.tmp").write_bytes(b"half a checkpoint")
    return out


# -- 1. a refused start changes nothing -------------------------------------------------------
def _damage_log(out):
    text = (out / "metrics.jsonl").read_text()
    (out / "metrics.jsonl").write_text("garbage\n" + text)


def _nan_weight(out):
    a, _ = load_checkpoint(out / "last.npz")
    name = next(k for k in a if k.startswith("model/") and k.endswith("weight"))
    w = a[name].copy()
    w.flat[0] = np.nan
    _rewrite(out / "last.npz", {name: w})


REFUSALS = {
    "garbage first log line": (_damage_log, [], ["metrics.jsonl line 1"]),
    "other --T": (None, ["--T", "3"], ["--T"]),
    "damaged position": (lambda out: _rewrite(out / "last.npz", meta={"position": dict(
        load_checkpoint(out / "last.npz")[1]["position"], step=77)}), [], ["saved position"]),
    "non-finite weight": (_nan_weight, [], ["non-finite", "model/"]),
    "config without a key": (lambda out: _rewrite(out / "last.npz", meta={"config": {
        k: v for k, v in load_checkpoint(out / "last.npz")[1]["config"].items() if k != "loss"}}),
        [], ["--loss"]),
}


@pytest.mark.parametrize("why", ["garbage first log line", "other --T", "damaged position",
                                 "non-finite weight", "config without a key"])
def test_refused_resume_changes_no_file(done_run, synth, why):
    damage, args, words = REFUSALS[why]
    if damage:
        damage(done_run)
    before = _snapshot(done_run)
    r = run_train(*quick(done_run, synth, "--epochs", "2", "--resume", "auto", *args))
    _one_line_error(r, 1, *words)
    assert _snapshot(done_run) == before


def test_divergence_right_after_resume_changes_no_file(done_run, synth):
    """Another --lr may be resumed with; when it diverges at once, config.json still describes
    the checkpoints beside it, and the message names the checkpoint the run resumed from."""
    os.remove(done_run / ".last.npz.4242.0a1b2c3d.tmp")      # a resumed run removes it
    before = _snapshot(done_run)
    r = run_train(*quick(done_run, synth, "--epochs", "2", "--resume", "auto", "--lr", "1e38",
                         "--wd", "0"))
    _one_line_error(r, 1, "non-finite", f"last good checkpoint kept at {done_run / 'last.npz'}")
    assert _snapshot(done_run) == before


# -- 2. non-finite checkpoints --------------------------------------------------------------
@pytest.mark.parametrize("kind", ["weight", "running_var", "optim/"])
def test_non_finite_checkpoint_is_refused_naming_the_tensor(done_run, synth, kind):
    a, _ = load_checkpoint(done_run / "last.npz")
    name = next(k for k in a if kind in k and a[k].dtype.kind == "f")
    bad = a[name].copy()
    bad.flat[-1] = np.inf if kind == "optim/" else np.nan
    _rewrite(done_run / "last.npz", {name: bad})
    r = run_train(*quick(done_run, synth, "--epochs", "2", "--resume", "auto"))
    _one_line_error(r, 1, f"its tensor {name} holds non-finite values")


def test_first_non_finite_names_only_floating_arrays():
    arrays = {"steps": np.array([3]), "w": np.ones(3, np.float32), "v": np.array([0.0, np.inf])}
    assert first_non_finite(arrays) == "v"
    arrays["v"][1] = -1e308
    assert first_non_finite(arrays) is None
    assert first_non_finite({"x": np.array([np.nan], np.float64), "y": np.zeros(0)}) == "x"


# -- 3. checkpoint format versions ------------------------------------------------------------
def _old(out, drop, **meta):
    """Rewrite last.npz as older minirate wrote it: no format version, config keys missing."""
    a, m = load_checkpoint(out / "last.npz")
    m.pop("format")
    m["config"] = {k: v for k, v in m["config"].items() if k not in drop}
    m.update(meta)
    save_checkpoint(out / "last.npz", a, m)


def test_new_checkpoints_record_their_format(done_run):
    assert load_checkpoint(done_run / "last.npz")[1]["format"] == 3
    assert load_checkpoint(done_run / "best.npz")[1]["format"] == 3


def test_format_2_checkpoint_resumes_without_the_options_added_in_3(done_run, synth):
    _old(done_run, ("mse_target", "neuron_dropout", "cifar_pipeline"), format=2)
    r = run_train(*quick(done_run, synth, "--epochs", "2", "--resume", "auto"))
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "format 2" in notes[0], r.stderr
    assert "--mse-target onehot" in notes[0] and "--cifar-pipeline minirate" in notes[0]
    assert load_checkpoint(done_run / "last.npz")[1]["format"] == 3


def test_older_checkpoint_resumes_with_the_defaults_it_trained_with(done_run, synth):
    _old(done_run, ("loss", "loss_lambda", "sltt_k", "ottt_update", "window", "update"))
    r = run_train(*quick(done_run, synth, "--epochs", "2", "--resume", "auto"))
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "--loss mean" in notes[0] and "--window None" in notes[0], r.stderr
    assert "format 1" in notes[0] and "resumed from" in r.stdout
    assert load_checkpoint(done_run / "last.npz")[1]["config"]["loss"] == "mean"


@pytest.mark.parametrize("drop,meta,words", [
    (("arch",), {}, ["format 1", "has no --arch"]),               # every checkpoint held it
    (("loss",), {"format": 2}, ["format 2", "has no --loss"]),     # format 2 holds every key
    (("mse_target",), {"format": 3}, ["format 3", "has no --mse-target"]),   # and 3 the new ones
    ((), {"format": 99}, ["newer minirate", "format 99"]),
    ((), {"format": "2"}, ["format '2'"]),
])
def test_checkpoint_format_problems_are_one_line(done_run, synth, drop, meta, words):
    _old(done_run, drop, **meta)
    before = _snapshot(done_run)
    r = run_train(*quick(done_run, synth, "--epochs", "2", "--resume", "auto"))
    _one_line_error(r, 1, *words)
    assert _snapshot(done_run) == before


# -- 4. an interrupted epoch's record -----------------------------------------------------------
def _records(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


def _same_records(ref, out):
    a, b = _records(ref), _records(out)
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [1, 2], (a, b)
    for ra, rb in zip(a, b):
        assert rb["img_per_s"] > 0 and rb["kept_bytes"] > 0, rb
        ra.pop("img_per_s"), rb.pop("img_per_s")
        assert ra == rb


def _interrupted(where, n, args, launcher=(), rank=0):
    return subprocess.run([*launcher, sys.executable, "-m", "tests.interrupt_at", where, str(n),
                           str(rank), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("where,n,method", [
    ("eval", 2, []),                                 # the 2nd of 3 evaluation batches
    ("step", 6, []),                                 # right after the epoch's last step
    ("eval", 2, ["--method", "ottt", "--ottt-update", "per-step"]),
    ("step", 6, ["--method", "ottt", "--ottt-update", "per-step"]),
])
def test_interrupted_epoch_end_logs_what_an_uninterrupted_run_logs(tmp_path, synth, where, n,
                                                                     method):
    args = ["--eval-batch-size", "8", *method]
    ref, out = tmp_path / "ref", tmp_path / "o"
    assert run_train(*quick(ref, synth, *args)).returncode == 0
    r = _interrupted(where, n, quick(out, synth, *args))
    assert r.returncode == 130 and "interrupted: saved" in r.stderr, r.stderr
    assert not (out / "metrics.jsonl").exists()
    r = run_train(*quick(out, synth, *args, "--resume", "auto"))
    assert r.returncode == 0 and "6 of 6 steps done" in r.stdout, r.stderr
    _same_records(ref, out)


def _mpirun():
    from tests.test_distributed import _mpirun as find
    return find()


def test_interrupted_epoch_end_under_mpi(tmp_path, synth):
    from tests.test_distributed import _run, _without_launcher_env
    launcher = (_mpirun(), "-n", "2")
    args = ["--eval-batch-size", "8", "--mpi-timeout", "60"]
    ref, out = tmp_path / "ref", tmp_path / "o"
    r = _run([*launcher, sys.executable, os.path.join(ROOT, "train.py"), *map(str, quick(
        ref, synth, *args))])
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*launcher, sys.executable, "-m", "tests.interrupt_at", "eval", "1", "1",
                        *map(str, quick(out, synth, *args))], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=_without_launcher_env())
    assert r.returncode == 130 and "interrupted: saved" in r.stderr, r.stderr
    r = _run([*launcher, sys.executable, os.path.join(ROOT, "train.py"), *map(str, quick(
        out, synth, *args, "--resume", "auto"))])
    assert r.returncode == 0 and "6 of 6 steps done" in r.stdout, r.stderr
    _same_records(ref, out)


# -- 5. Ctrl-C while starting --------------------------------------------------------------
def test_ctrl_c_while_modules_load_is_one_line(tmp_path):
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), "--out",
                             str(tmp_path / "o")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while time.time() - t0 < 60:         # numpy loading: train.py has begun its imports
        try:
            if "numpy" in open(f"/proc/{proc.pid}/maps").read():
                break
        except OSError:
            pass
        time.sleep(0.001)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "nothing was saved" in lines[0], err
    assert not (tmp_path / "o").exists()


# -- 6. messages that say what is true --------------------------------------------------------
@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_out_that_is_a_broken_symbolic_link(tmp_path, synth, kind):
    link = tmp_path / "link"
    os.symlink(tmp_path / "nowhere" if kind == "dangling" else link, link)
    r = run_train(*quick(link, synth))
    _one_line_error(r, 1, "symbolic link", "nowhere" if kind == "dangling" else "loops")
    assert "File exists" not in r.stderr


def test_resume_with_fewer_epochs_than_done_says_so(done_run, synth):
    r = run_train(*quick(done_run, synth, "--epochs", "2", "--resume", "auto"))
    assert r.returncode == 0, r.stderr
    before = _snapshot(done_run)
    r = run_train(*quick(done_run, synth, "--epochs", "1", "--resume", "auto"))
    _one_line_error(r, 1, "already trained 2 epochs", "--epochs 1", "at least --epochs 2")
    assert "damaged" not in r.stderr
    assert _snapshot(done_run) == before


def test_resuming_a_finished_run_says_there_is_nothing_to_train(done_run, synth):
    before = _snapshot(done_run)
    r = run_train(*quick(done_run, synth, "--epochs", "1", "--resume", "auto"))
    assert r.returncode == 0, r.stderr
    assert "nothing to train" in r.stdout and "--epochs 1 are done" in r.stdout
    assert "resumed" not in r.stdout and "done:" not in r.stdout
    assert _snapshot(done_run) == before


def _help_entries():
    r = run_train("--help")
    assert r.returncode == 0
    entries, current = {}, None
    heading = "\noptions:" if "\noptions:" in r.stdout else "\noptional arguments:"  # < 3.10
    for line in r.stdout[r.stdout.index(heading):].splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            entries[current] = line
        elif current:
            entries[current] += " " + line.strip()
    return entries


def test_help_states_each_default_once():
    for opt, text in _help_entries().items():
        assert text.count("(default:") <= 1 and "(default: )" not in text, text


@pytest.mark.parametrize("opt,bad", [("--momentum", "1"), ("--momentum", "-0.5"),
                                     ("--decay", "1.5"), ("--loss-lambda", "2")])
def test_help_and_error_give_the_same_range(tmp_path, opt, bad):
    interval = re.search(r"in (\[[^\]\)]+[\]\)])", _help_entries()[opt]).group(1)
    r = run_train(opt, bad, "--out", tmp_path / "o")
    _one_line_error(r, 2, opt, interval)


def test_argument_error_under_mpi_is_printed_once(tmp_path):
    from tests.test_distributed import _run
    r = _run([_mpirun(), "-n", "2", sys.executable, os.path.join(ROOT, "train.py"), "--T", "0",
              "--out", str(tmp_path / "o")])
    assert r.returncode != 0 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "--T" in errors[0], r.stderr
