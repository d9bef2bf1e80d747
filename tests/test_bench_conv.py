"""benchmarks/bench_conv.py on the CPU and, through the same array-module code, on the strict
CuPy stand-in (device "strict"): every resnet18 shape, both algorithms, float32-sized errors."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

ENV = dict(os.environ, PYTHONPATH=ROOT, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
SMALL = ["--algo", "both", "--batch", "2", "--repeats", "1", "--width", "0.0625"]


def rows_of(stdout):
    """The table's data rows as lists of cells."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| C->O")]


@pytest.mark.parametrize("device", ["cpu", "strict"])
def test_bench_conv_times_both_algorithms(device):
    script = os.path.join("benchmarks", "bench_conv.py")
    cmd = [sys.executable] + (["-m", "tests.strict_run"] if device == "strict" else []) + \
        [script, "--device", device] + SMALL
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    assert ("CPU threads" if device == "cpu" else f"device {device}") in r.stdout.splitlines()[0]
    rows = rows_of(r.stdout)
    shapes = [row for row in rows if row[0] != "resnet18, all"]
    assert len(shapes) == 2 * 11                     # 11 distinct shapes, two algorithms each
    winograd = [row for row in shapes if row[3] == "winograd"]
    assert len(winograd) == 5 and all(row[2] == "3/1" for row in winograd)
    assert {row[3] for row in shapes} == {"im2col", "winograd", "(im2col)"}
    for row in shapes:                               # float32 against float64
        assert float(row[10]) < (1e-4 if row[3] == "winograd" else 1e-5), row
        assert float(row[5]) > 0 and float(row[8]) > 0
    totals = {row[3]: row for row in rows if row[0] == "resnet18, all"}
    assert list(totals) == ["im2col", "winograd", "per pass"]
    # per pass: each layer's forward and backward by the faster algorithm, so never slower
    for col in (4, 7):                               # fwd ms, bwd ms (rounded to 0.1)
        assert float(totals["per pass"][col]) <= min(float(totals[a][col])
                                                     for a in ("im2col", "winograd")) + 0.1
    assert "3->4 | 32x32" in r.stdout                # channels scaled, the input's 3 kept


def test_bench_conv_refuses_bad_sizes():
    r = subprocess.run([sys.executable, os.path.join("benchmarks", "bench_conv.py"), "--width",
                        "0"], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=60)
    assert r.returncode == 2 and "--width above 0" in r.stderr


def test_bench_conv_beside_torch():
    pytest.importorskip("torch")
    r = subprocess.run([sys.executable, os.path.join("benchmarks", "bench_conv.py"), "--torch"]
                       + SMALL, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = [row for row in rows_of(r.stdout) if row[3] == "torch"]
    assert len(rows) == 11 + 1                       # every shape, and the network's total
    assert all(float(row[10]) < 1e-5 for row in rows[:-1])   # PyTorch's float32 error too


def test_bench_conv_torch_missing_is_one_line():
    """Without PyTorch, --torch is refused in one line (simulated: the import fails)."""
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['bench_conv.py', "
            "'--torch', '--batch', '1']; runpy.run_path('benchmarks/bench_conv.py', "
            "run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=ENV, timeout=60)
    assert r.returncode == 2 and "pip install torch" in r.stderr
    assert "Traceback" not in r.stderr
