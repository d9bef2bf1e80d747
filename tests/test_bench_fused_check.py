"""benchmarks/fused_check.py: its command line, and its machinery on the CPU (where both paths
are NumPy's, so every difference is 0)."""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import fused_check  # noqa: E402


def test_help_works_without_a_gpu():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "fused_check.py"),
                        "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0 and "--out" in r.stdout and "--repeat" in r.stdout


def test_differences_and_flipped_spikes():
    want = (np.array([0.0, 1.0, 1.0]), np.array([2.0, -4.0]))
    got = (np.array([1.0, 1.0, 1.0]), np.array([2.0, -4.0 + 4e-3]))
    assert fused_check.rel_diff(np, got, want) == 1.0
    assert abs(fused_check.rel_diff(np, got[1:], want[1:]) - 1e-3) < 1e-12
    assert fused_check.spikes_differing(np, got, want, True) == 1
    assert fused_check.spikes_differing(np, got, want, False) == 0


def test_dry_run_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.delenv("MINIRATE_FUSED", raising=False)
    rc = fused_check.main(["--device", "cpu", "--batch", "2", "--size", "3", "--channels", "2",
                           "--repeat", "1", "--out", str(tmp_path)])
    assert rc == 0 and "MINIRATE_FUSED" not in os.environ
    rows = json.load(open(tmp_path / "fused_check.json"))["rows"]
    assert {r["op"] for r in rows} == set(fused_check.op_table(4))
    assert {r["dtype"] for r in rows} == {"float64", "float32"}
    assert all(r["diff"] == 0 and r["spikes"] == 0 and r["ok"] for r in rows)
    assert "| lif_forward/default | float64 |" in (tmp_path / "fused_check.md").read_text()


def test_on_strict_the_host_kernels_equal_the_unfused_path(tmp_path, monkeypatch):
    """On the strict stand-in the fused side really runs the kernels (compiled for the host):
    float64 within the 1e-12 the GPU check asks, and no spike differs."""
    from tests.strict_cupy import register
    register()
    monkeypatch.delenv("MINIRATE_FUSED", raising=False)
    rc = fused_check.main(["--device", "strict", "--batch", "2", "--size", "5", "--channels",
                           "3", "--repeat", "1", "--out", str(tmp_path)])
    rows = json.load(open(tmp_path / "fused_check.json"))["rows"]
    assert rc == 0 and len(rows) == 2 * len(fused_check.op_table(4))
    f64 = [r for r in rows if r["dtype"] == "float64"]
    assert all(r["ok"] and r["diff"] <= 1e-12 and r["spikes"] == 0 for r in f64), f64
    assert any(r["diff"] > 0 for r in rows)          # the two sides are different code
