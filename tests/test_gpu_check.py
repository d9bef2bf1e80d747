"""The GPU check's pieces, run on the CPU: the agreement script (CPU against CPU), the step
profile, and benchmarks/gpu_check.sh itself (syntax, time budget, summary)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minirate.layers import conv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import gpu_cpu_agreement  # noqa: E402
import profile_step  # noqa: E402

METHOD_LABELS = ["bptt:m", "bptt:s", "rate_m", "rate_s", "sltt", "ottt"]


def test_agreement_cpu_against_cpu(tmp_path, capsys):
    """The degenerate mode runs every method through both measurements; one process on one
    device computes the same numbers twice, bit for bit."""
    out = str(tmp_path / "agreement")
    rc = gpu_cpu_agreement.main(["--devices", "cpu,cpu", "--steps", "2", "--batch-size", "4",
                                 "--grad-batch", "2", "--T", "2", "--out", out])
    assert rc == 0
    rows = json.load(open(os.path.join(out, "agreement.json")))["rows"]
    assert [r["method"] for r in rows][:6] == METHOD_LABELS
    for r in rows:
        assert r["grad_err_spike"] == 0 and r["grad_err_smooth"] == 0 and r["curve_err"] == 0
        assert len(r["curve_A"]) == 2 and r["curve_A"] == r["curve_B"]
        assert r["zero_grads_spike"] == [] and r["ok"]
    table = open(os.path.join(out, "agreement.md")).read()
    assert all(f"| {m} |" in table for m in METHOD_LABELS)
    assert table in capsys.readouterr().out


def test_agreement_measures_catch_differences():
    b = {"w": np.array([1.0, -2.0, 0.5]), "z": np.zeros(2)}
    assert gpu_cpu_agreement.max_rel_error(b, b) == 0
    a = {"w": b["w"] * (1 + 1e-9), "z": b["z"]}
    assert 0.9e-9 < gpu_cpu_agreement.max_rel_error(a, b) < 1.1e-9     # above the 1e-10 target
    a = {"w": b["w"], "z": np.array([0.0, 1e-30])}                      # only one side nonzero
    assert gpu_cpu_agreement.max_rel_error(a, b) == np.inf
    assert gpu_cpu_agreement.curve_difference([2.0, 1.0], [2.0, 1.01]) == pytest.approx(0.01 / 1.01)


@pytest.mark.parametrize("args,status,message", [
    (["--devices", "cpu"], 2, "expected two devices"),
    (["--devices", "cpu,tpu"], 2, "expected two devices"),
    (["--steps", "0"], 2, "--steps: must be at least 1"),
    (["--devices", "cpu,cpu", "--methods", "bptt:m,nope"], 1, "unknown --methods nope"),
    (["--devices", "cpu,cpu", "--steps", "100"], 1, "more than the 1000 training images"),
])
def test_agreement_bad_options_are_one_line(args, status, message, tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_cpu_agreement.py"),
                        *args, "--out", str(tmp_path / "a")], capture_output=True, text=True)
    assert r.returncode == status
    lines = [line for line in r.stderr.splitlines() if not line.startswith("note:")]
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_profile_splits_a_step_and_restores_the_layers(tmp_path, capsys):
    forward = conv.Conv2d.forward
    path = str(tmp_path / "profile.json")
    rc = profile_step.main(["--device", "cpu", "--arch", "small", "--width", "0.25",
                            "--batch-size", "2", "--T", "2", "--methods", "bptt", "rate_m",
                            "--repeats", "1", "--json", path])
    assert rc == 0 and conv.Conv2d.forward is forward
    results = json.load(open(path))["results"]
    assert [r["method"] for r in results] == ["bptt", "rate_m"]
    for r in results:
        parts = {row["category"]: row for row in r["rows"]}
        assert {"conv", "batchnorm", "lif", "linear", "other"} <= set(parts)
        assert parts["conv"]["calls"] > 0 and parts["lif"]["calls"] > 0
        # the bracketed parts fit inside the step they were measured in
        assert sum(p["gpu_s"] for p in r["rows"]) == pytest.approx(r["profiled_s"], rel=0.05)
    # the rate pass's LIF backward (a function, not a method) is bracketed too
    rate = {row["category"]: row for row in results[1]["rows"]}
    bptt = {row["category"]: row for row in results[0]["rows"]}
    assert rate["lif"]["calls"] == bptt["lif"]["calls"]     # forward_rate + rate backward
    assert "| conv |" in capsys.readouterr().out


def test_gpu_check_script_keeps_its_budget(tmp_path):
    """bash -n, and a CPU run with a budget too small for anything after the first stage: the
    later stages are skipped and said to be, the summary lists every stage."""
    script = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    env = dict(os.environ, GPU_CHECK_DEVICE="cpu", GPU_CHECK_BUDGET="26", OUT=str(tmp_path))
    r = subprocess.run(["bash", script], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    summary = open(tmp_path / "SUMMARY.md").read()
    for stage in ("env", "tests", "fused", "agreement", "train", "nccl", "torch", "memory_time",
                  "profile", "conv"):
        assert f"| {stage} |" in summary
    assert "| env | ok |" in summary
    assert summary.count("skipped:") >= 8
    assert (tmp_path / "env.log").exists() and "numpy" in (tmp_path / "env.log").read_text()


def test_whole_network_checks_sample_entries_only_off_numpy(monkeypatch):
    """Every entry on NumPy; on another array module GPU_ENTRIES distinct entries, the same
    ones every time, and a numerical gradient and error taken at just those."""
    from tests import gradcheck
    x = np.random.default_rng(0).normal(size=(4, 3, 5))
    assert gradcheck.check_entries(x) is None
    monkeypatch.setattr(gradcheck, "get_array_module", lambda a: object())   # as if on CuPy
    entries = gradcheck.check_entries(x)
    assert entries == gradcheck.check_entries(x)
    assert len(set(entries)) == len(entries) == gradcheck.GPU_ENTRIES
    assert all(all(0 <= i < n for i, n in zip(e, x.shape)) and len(e) == 3 for e in entries)
    assert gradcheck.check_entries(x[:1, :1]) is None                      # small: every entry
    monkeypatch.setattr(gradcheck, "get_array_module", lambda a: np)
    num = gradcheck.numerical_grad(lambda: x ** 2, x, np.ones_like(x), entries=entries)
    assert np.count_nonzero(num) == len(entries)
    assert gradcheck.rel_error(2 * x, num, entries) < 1e-8
    assert gradcheck.rel_error(2 * x, num) > 0.1        # the other entries were not computed


def test_agreement_goes_on_past_a_broken_method(tmp_path, monkeypatch, capsys):
    def broken(model, T):
        raise RuntimeError("no kernel for this")
    real = gpu_cpu_agreement.method_builders(["rate_m"])
    monkeypatch.setattr(gpu_cpu_agreement, "method_builders",
                        lambda only: [("broken", broken)] + real)
    out = str(tmp_path / "a")
    rc = gpu_cpu_agreement.main(["--devices", "cpu,cpu", "--steps", "1", "--batch-size", "2",
                                 "--grad-batch", "2", "--T", "1", "--out", out])
    assert rc == 1
    rows = json.load(open(os.path.join(out, "agreement.json")))["rows"]
    assert rows[0] == {"method": "broken", "ok": False,
                       "error": "RuntimeError: no kernel for this"}
    assert rows[1]["method"] == "rate_m" and rows[1]["ok"]
    assert "| broken | failed: RuntimeError: no kernel for this |" in capsys.readouterr().out


def test_gpu_check_script_goes_on_past_failed_stages(tmp_path):
    """A broken interpreter fails every stage after env: each is recorded, every one still
    runs, and the script's exit status says so."""
    script = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
    env = dict(os.environ, GPU_CHECK_DEVICE="cpu", PYTHON="/bin/false", OUT=str(tmp_path))
    r = subprocess.run(["bash", script], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1
    summary = open(tmp_path / "SUMMARY.md").read()
    for stage in ("tests", "fused", "agreement", "train", "nccl", "torch", "memory_time",
                  "profile", "conv"):
        assert f"| {stage} | FAILED (exit 1) |" in summary
    assert "9 stage(s) failed" in summary
