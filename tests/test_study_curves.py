"""minirate.study curves: the metrics.jsonl of real runs of train.py (whole, cut short by
--max-steps and resumed) as a CSV with one row per run and epoch, the later line winning, a
PNG with a panel per quantity, labels that tell the runs apart, a run still being written read
up to its last whole line, and bad input as one line."""
import csv
import json
import os
import shutil
import subprocess
import sys

import matplotlib.figure
import pytest

from minirate.data.cifar import make_synthetic_cifar
from minirate.study.curves import FIELDS, label_of
from tests.test_study import ENV, ROOT, study_here

PNG = b"\x89PNG\r\n\x1a\n"
RECORD = dict(epoch=1, step=3, partial=False, train_loss=2.29, train_acc=0.125, test_acc=0.1,
              lr=0.1, img_per_s=131.26, kept_bytes=4031280)


def train(out, data, *extra):
    """train.py on 96 synthetic images, batch 32: 3 steps per epoch, 2 epochs."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--arch", "small",
                        "--width", "0.25", "--batch-size", "32", "--epochs", "2",
                        "--eval-batch-size", "24", "--data-dir", data, "--out", str(out),
                        "--no-progress", "--lr", "0.05", *map(str, extra)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr
    return r


def lines_of(run):
    return [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]


def expected_rows(run, label, cfg):
    """What the CSV must hold for a run: its log's lines, the later one per epoch, as text."""
    last = {rec["epoch"]: rec for rec in lines_of(run)}
    return [dict(run=str(run), label=label, method=cfg["method"], T=str(cfg["T"]),
                 **{k: str(last[e][k]) for k in FIELDS}) for e in sorted(last)]


def csv_rows(out):
    with open(os.path.join(out, "curves.csv"), newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Real runs: T=2 and T=4 uninterrupted; T=2 again cut short by --max-steps twice and
    resumed, its log copied after each part (a partial epoch 1, then a partial epoch 2)."""
    root = tmp_path_factory.mktemp("curves")
    data = make_synthetic_cifar(str(root / "data"), n_train=96, n_test=24)
    train(root / "t2", data, "--T", 2)
    train(root / "t4", data, "--T", 4)
    resumed = root / "resumed"
    for k, extra in enumerate((["--max-steps", 2], ["--resume", "auto", "--max-steps", 4],
                               ["--resume", "auto"])):
        train(resumed, data, "--T", 2, *extra)
        shutil.copy(resumed / "metrics.jsonl", root / f"metrics-{k}.jsonl")
    return root


def test_two_runs_differing_in_T(tmp_path, capsys, runs):
    out = tmp_path / "out"
    code, stdout, err = study_here(["curves", str(runs / "t2"), str(runs / "t4"),
                                    "--out", str(out)], capsys)
    assert code == 0, err
    assert "Traceback" not in err and "note:" not in err
    cfg2 = json.loads((runs / "t2" / "config.json").read_text())
    cfg4 = json.loads((runs / "t4" / "config.json").read_text())
    assert [len(lines_of(runs / r)) for r in ("t2", "t4")] == [2, 2]
    assert all(set(line) == set(FIELDS) for line in lines_of(runs / "t2"))   # every field read
    assert csv_rows(out) == (expected_rows(runs / "t2", "bptt T=2", cfg2)
                             + expected_rows(runs / "t4", "bptt T=4", cfg4))
    assert [(r["epoch"], r["step"], r["partial"]) for r in csv_rows(out)] == \
        [("1", "3", "False"), ("2", "6", "False")] * 2
    assert (out / "curves.png").read_bytes()[:8] == PNG
    doc = json.loads((out / "curves.json").read_text())
    assert [r["label"] for r in doc["info"]["runs"]] == ["bptt T=2", "bptt T=4"]
    assert len(doc["rows"]) == 4
    for name in ("curves.csv", "curves.json", "curves.png"):
        assert str(out / name) in stdout
    assert "bptt T=2" in stdout and "bptt T=4" in stdout          # the table, a line per run


def test_resumed_run_keeps_the_later_line_of_each_epoch(tmp_path, capsys, runs):
    resumed = runs / "resumed"
    steps = [(r["epoch"], r["step"], r["partial"]) for r in lines_of(resumed)]
    assert steps == [(1, 2, True), (1, 3, False), (2, 4, True), (2, 6, False)]
    out = tmp_path / "out"
    code, stdout, err = study_here(["curves", str(resumed), "--out", str(out)], capsys)
    assert code == 0, err
    cfg = json.loads((resumed / "config.json").read_text())
    rows = csv_rows(out)
    assert rows == expected_rows(resumed, "bptt T=2", cfg)
    assert [(r["epoch"], r["step"], r["partial"]) for r in rows] == [("1", "3", "False"),
                                                                     ("2", "6", "False")]
    # the epochs finished after a resume are those of the run that was never stopped
    code, _, err = study_here(["curves", str(runs / "t2"), "--out", str(tmp_path / "p")], capsys)
    assert code == 0, err
    plain = csv_rows(tmp_path / "p")
    drop = lambda r: {k: v for k, v in r.items() if k not in ("run", "img_per_s")}  # noqa: E731
    assert [drop(r) for r in rows] == [drop(r) for r in plain]


@pytest.mark.parametrize("part,expect", [(0, [("1", "2", "True")]),
                                         (1, [("1", "3", "False"), ("2", "4", "True")])])
def test_run_stopped_mid_epoch(tmp_path, capsys, runs, part, expect):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(runs / f"metrics-{part}.jsonl", run / "metrics.jsonl")
    shutil.copy(runs / "resumed" / "config.json", run / "config.json")
    code, stdout, err = study_here(["curves", str(run), "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    rows = csv_rows(tmp_path / "out")
    assert [(r["epoch"], r["step"], r["partial"]) for r in rows] == expect
    last = lines_of(run)[-1]
    assert rows[-1]["train_loss"] == str(last["train_loss"])
    assert "(partial)" in stdout


def test_run_still_being_written_skips_its_cut_line(tmp_path, capsys, runs):
    run = tmp_path / "run"
    shutil.copytree(runs / "t2", run)
    whole = (run / "metrics.jsonl").read_bytes()
    line = json.dumps(dict(RECORD, epoch=3)).encode()
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(line[:len(line) // 2])                          # killed mid-write
    out = tmp_path / "out"
    code, _, err = study_here(["curves", str(run), "--out", str(out)], capsys)
    assert code == 0, err
    notes = [x for x in err.splitlines() if x.startswith("note:")]
    assert len(notes) == 1 and "metrics.jsonl" in notes[0] and "cut short" in notes[0], err
    assert [r["epoch"] for r in csv_rows(out)] == ["1", "2"]
    (run / "metrics.jsonl").write_bytes(whole[:-1])            # the newline of epoch 2 missing
    code, _, err = study_here(["curves", str(run), "--out", str(out)], capsys)
    assert code == 0 and "cut short" in err, err
    assert [r["epoch"] for r in csv_rows(out)] == ["1"]


def write_run(folder, records, cfg=None, tail=""):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        f.write("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
                + tail)
    if cfg is not None:
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(cfg, f)
    return str(folder)


def test_synthetic_resume_order_and_csv_values(tmp_path, capsys):
    a = write_run(tmp_path / "a", [dict(RECORD, epoch=1, step=2, partial=True, train_loss=2.5),
                                   dict(RECORD, epoch=1, step=3),
                                   dict(RECORD, epoch=2, step=6, test_acc=0.2),
                                   dict(RECORD, epoch=3, step=7, partial=True, lr=0.05),
                                   dict(RECORD, epoch=2, step=6, test_acc=0.25)],   # repeated
                  dict(method="tbptt", T=8, window=2))
    out = tmp_path / "out"
    code, _, err = study_here(["curves", a, "--out", str(out)], capsys)
    assert code == 0, err
    assert csv_rows(out) == [
        dict(run=a, label="tbptt T=8 K=2", method="tbptt", T="8", epoch="1", step="3",
             partial="False", train_loss="2.29", train_acc="0.125", test_acc="0.1", lr="0.1",
             img_per_s="131.26", kept_bytes="4031280"),
        dict(run=a, label="tbptt T=8 K=2", method="tbptt", T="8", epoch="2", step="6",
             partial="False", train_loss="2.29", train_acc="0.125", test_acc="0.25", lr="0.1",
             img_per_s="131.26", kept_bytes="4031280"),
        dict(run=a, label="tbptt T=8 K=2", method="tbptt", T="8", epoch="3", step="7",
             partial="True", train_loss="2.29", train_acc="0.125", test_acc="0.1", lr="0.05",
             img_per_s="131.26", kept_bytes="4031280")]
    # a RUN may also name the log itself
    code, _, err = study_here(["curves", os.path.join(a, "metrics.jsonl"), "--out", str(out)],
                              capsys)
    assert code == 0, err
    assert [r["label"] for r in csv_rows(out)] == ["tbptt T=8 K=2"] * 3


def test_labels_tell_runs_apart(tmp_path, capsys, monkeypatch):
    legends = []
    legend = matplotlib.figure.Figure.legend

    def spy(fig, handles, labels, *args, **kwargs):
        legends.append(list(labels))
        return legend(fig, handles, labels, *args, **kwargs)
    monkeypatch.setattr(matplotlib.figure.Figure, "legend", spy)
    cfg = dict(method="bptt", T=4, dataset="cifar10", arch="small", width=0.25)
    runs = [write_run(tmp_path / "x" / "one", [RECORD], cfg),
            write_run(tmp_path / "y" / "two", [RECORD], cfg),             # the same config
            write_run(tmp_path / "z" / "two", [RECORD], cfg),             # and folder name
            write_run(tmp_path / "three", [RECORD], dict(cfg, T=8)),
            write_run(tmp_path / "four", [RECORD], dict(cfg, method="bptt", local_blocks=2)),
            write_run(tmp_path / "five", [RECORD], dict(cfg, recipe="sltt-k-cifar10",
                                                        method="sltt", T=6, sltt_k=2)),
            write_run(tmp_path / "six", [RECORD])]                        # no config.json
    out = tmp_path / "out"
    code, _, err = study_here(["curves", *runs, "--out", str(out)], capsys)
    assert code == 0, err
    labels = ["bptt T=4 [one]", f"bptt T=4 [{runs[1]}]", f"bptt T=4 [{runs[2]}]", "bptt T=8",
              "bptt T=4 N=2", "sltt-k-cifar10: sltt T=6 K=2", "six"]
    assert [r["label"] for r in csv_rows(out)] == labels
    assert legends == [labels]
    assert "six has no config.json" in err
    assert (out / "curves.png").read_bytes()[:8] == PNG


def test_label_of():
    assert label_of(dict(method="bptt", T=4)) == "bptt T=4"
    assert label_of(dict(method="tbptt", T=8, window=2, local_blocks=1)) == "tbptt T=8 K=2"
    assert label_of(dict(method="bptt", T=4, local_blocks=3, window=None)) == "bptt T=4 N=3"
    assert label_of(dict(method="bptt", T=4, split_at=["layer2", "layer3"])) == \
        "bptt T=4 split=layer2,layer3"
    assert label_of(dict(method="ottt", T=6, recipe="ottt-cifar10-vgg11ws")) == \
        "ottt-cifar10-vgg11ws: ottt T=6"


def one_line(err):
    lines = [x for x in err.splitlines() if x]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("make,words", [
    (lambda d: os.makedirs(d / "run"), ["holds no metrics.jsonl"]),
    (lambda d: None, ["no such run folder"]),
    (lambda d: write_run(d / "run", [RECORD, "{not json", RECORD]), ["line 2", "not valid JSON"]),
    (lambda d: write_run(d / "run", [RECORD, "[1, 2]"]), ["line 2", "not a JSON object"]),
    (lambda d: write_run(d / "run", [RECORD, "", dict(RECORD, epoch="2")]),
     ["line 3", "no epoch number"]),
    (lambda d: write_run(d / "run", [dict(RECORD, test_acc="n/a")]),
     ["line 1", "test_acc is not a number"]),
    (lambda d: write_run(d / "run", [], tail='{"epoch": 1, "st'),
     ["no RUN has a whole line"]),
    (lambda d: (write_run(d / "run", [RECORD]), (d / "run" / "config.json").write_text("{")),
     ["config.json"]),
])
def test_bad_input_is_one_line(tmp_path, monkeypatch, capsys, make, words):
    monkeypatch.chdir(tmp_path)
    make(tmp_path)
    code, stdout, err = study_here(["curves", "run", "--out", "out"], capsys)
    err = "\n".join(x for x in err.splitlines() if not x.startswith("note:"))
    assert code == 1 and stdout == ""
    line = one_line(err)
    for w in words:
        assert w in line, (w, line)
    assert not (tmp_path / "out").exists()                     # no empty --out left behind


def test_same_run_twice_is_an_error(tmp_path, capsys):
    run = write_run(tmp_path / "run", [RECORD])
    for again in (run + "/", os.path.join(run, "metrics.jsonl")):
        code, _, err = study_here(["curves", run, again, "--out", str(tmp_path / "o")], capsys)
        assert code == 1 and "given twice" in one_line(err)


@pytest.mark.parametrize("args", [["curves"], ["curves", "run", "--bogus"],
                                  ["curves", "run", "--out"]])
def test_bad_command_line_is_one_line_status_2(tmp_path, monkeypatch, capsys, args):
    monkeypatch.chdir(tmp_path)
    code, _, err = study_here(args, capsys)
    assert code == 2
    one_line(err)


def test_command_line_in_its_own_process(tmp_path):
    """The real entry point: status 1 and one line for a folder that is not a run, no traceback;
    status 0 and the three files for a run."""
    os.makedirs(tmp_path / "empty")
    r = subprocess.run([sys.executable, "-m", "minirate.study", "curves", "empty"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120, env=ENV)
    assert r.returncode == 1 and "holds no metrics.jsonl" in one_line(r.stderr)
    write_run(tmp_path / "run", [RECORD, dict(RECORD, epoch=2)], dict(method="rate_m", T=4))
    r = subprocess.run([sys.executable, "-m", "minirate.study", "curves", "run", "--out", "o"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120, env=ENV)
    assert r.returncode == 0, r.stderr
    assert "rate_m T=4" in r.stdout
    assert (tmp_path / "o" / "curves.png").read_bytes()[:8] == PNG
    assert len(csv_rows(tmp_path / "o")) == 2
