"""benchmarks/bench_truncated_local.py on event frames: the synthetic recordings are written,
binned into (T, B, 2, H, W) frames and trained on by every configuration (tiny sizes); what the
table reports follows the configurations; bad command lines are one-line errors."""
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "bench_truncated_local.py")
spec = importlib.util.spec_from_file_location("bench_truncated_local", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

TINY = ["--width", "0.0625", "--T", "4", "--frame-size", "16", "--batch-size", "10",
        "--repeats", "1"]


def test_event_table_on_synthetic_recordings(tmp_path, capsys):
    data_dir = str(tmp_path / "ev")
    rows = bench.main(["--synthetic", "10", "--data-dir", data_dir, "--epochs", "1", *TINY])
    assert os.path.exists(os.path.join(data_dir, "CIFAR10-DVS", "airplane",
                                       "cifar10_airplane_9.aedat"))
    assert os.path.exists(os.path.join(data_dir, "cifar10dvs-T4-count-16px.h5"))
    by = {r["label"]: r for r in rows}
    assert list(by) == ["bptt", "tbptt K=2", "tbptt K=4", "bptt N=2", "bptt N=4",
                        "tbptt K=2 N=4"]
    assert all(0 <= r["acc"] <= 1 for r in rows)
    # the frames reached the methods time-first, T of them: K = T keeps what BPTT keeps, K = 2
    # one window of it (with the neuron state carried between windows)
    assert by["tbptt K=4"]["kept"] == by["bptt"]["kept"]
    assert by["tbptt K=2"]["kept"] < 0.6 * by["bptt"]["kept"]
    assert by["bptt N=4"]["kept"] < by["bptt N=2"]["kept"] < by["bptt"]["kept"]
    # truncation changes no arithmetic; local blocks drop the input gradients at block edges
    assert by["tbptt K=2"]["macs"] == by["bptt"]["macs"]
    assert by["bptt N=4"]["macs"] < by["bptt N=2"]["macs"] < by["bptt"]["macs"]
    assert by["tbptt K=2"]["mem"] > by["bptt"]["mem"]          # parameters re-read per window
    out = capsys.readouterr().out
    assert "90 train / 10 test synthetic cifar10dvs samples as 4 frames of 2x16x16" in out
    assert sum(line.startswith("| tbptt") for line in out.splitlines()) == 3


def test_synthetic_recordings_in_a_temporary_folder_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(bench.tempfile, "tempdir", str(tmp_path))
    rows = bench.main(["--synthetic", "10", "--epochs", "0", *TINY])
    assert [r["acc"] for r in rows] == [None] * 6
    assert os.listdir(tmp_path) == []


def _run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


@pytest.mark.parametrize("args,status,words", [
    (["--synthetic", "0"], 2, ["--synthetic", "at least 1"]),
    (["--synthetic", "5", "--dataset", "dvsgesture"], 2, ["--synthetic", "dvsgesture"]),
    (["--dataset", "cifar10dvs"], 2, ["--data-dir", "--synthetic"]),
    (["--frame-size", "32"], 2, ["--frame-size", "event data"]),
    (["--arch", "small"], 2, ["4 local blocks", "small"]),
    (["--synthetic", "5", "--event-split", "users"], 2, ["--event-split", "9:1"]),
    (["--dataset", "dvsgesture", "--data-dir", "{tmp}"], 1, ["DVS128 Gesture not found"]),
])
def test_bad_command_lines_are_one_line_errors(tmp_path, args, status, words):
    r = _run(*[a.format(tmp=tmp_path) for a in args])
    assert r.returncode == status, r.stderr
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert all(w in lines[0] for w in words), lines[0]


def test_synthetic_refuses_a_folder_that_holds_recordings(tmp_path):
    keep = tmp_path / "CIFAR10-DVS" / "cat" / "mine.aedat"
    keep.parent.mkdir(parents=True)
    keep.write_bytes(b"#!AER-DAT2.0\r\n")
    r = _run("--synthetic", "3", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "drop --synthetic" in r.stderr, r.stderr
    assert keep.read_bytes() == b"#!AER-DAT2.0\r\n"
    assert os.listdir(keep.parent) == ["mine.aedat"]
