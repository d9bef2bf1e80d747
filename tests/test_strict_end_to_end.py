"""train.py, the study and two MPI ranks end to end on the strict CuPy stand-in
(`--device strict`, tests/strict_run.py), so that the whole GPU path runs on any machine."""
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT

QUICK = ["--dataset", "cifar10-sample", "--arch", "small", "--width", "0.25", "--T", "2",
         "--batch-size", "8", "--epochs", "1", "--eval-batch-size", "100", "--no-progress"]


def strict(*args, env=None, launcher=()):
    """Run train.py (or `-m module`) with the stand-in registered as device "strict"."""
    return subprocess.run([*launcher, sys.executable, "-m", "tests.strict_run", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)


def _weights(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files if k.startswith("model/")}


@pytest.mark.parametrize("method", [
    ["bptt", "--step-mode", "m"], ["bptt", "--step-mode", "s"],
    ["tbptt", "--window", "1", "--update", "per-window"], ["bptt", "--local-blocks", "2"],
    ["rate_m"], ["rate_s"], ["sltt"], ["ottt", "--ottt-update", "accumulate"],
    ["ottt", "--ottt-update", "per-step"], ["bptt", "--pack-spikes", "--recompute-blocks"],
    ["bptt", "--step-mode", "s", "--recompute-window", "1", "--pack-spikes"]],
    ids=lambda m: "-".join(a.lstrip("-") for a in m))
def test_every_method_trains_on_strict(tmp_path, method):
    r = strict("train.py", *QUICK, "--device", "strict", "--max-steps", "2",
               "--out", tmp_path, "--method", *method)
    assert r.returncode == 0, r.stderr
    assert "device strict" in r.stdout and "done:" in r.stdout
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 2 and np.isfinite(record["train_loss"]), record


def test_strict_computes_what_the_cpu_does(tmp_path):
    """Two float64 SGD steps: the same weights on strict as on the CPU (the stand-in's maths is
    NumPy's; the fused kernels' host builds may sum in another order)."""
    args = [*QUICK, "--dtype", "float64", "--max-steps", "2", "--method", "rate_m"]
    r = strict("train.py", *args, "--device", "strict", "--out", tmp_path / "s")
    assert r.returncode == 0, r.stderr
    r = strict("train.py", *args, "--device", "cpu", "--out", tmp_path / "c")
    assert r.returncode == 0, r.stderr
    s, c = _weights(tmp_path / "s" / "last.npz"), _weights(tmp_path / "c" / "last.npz")
    assert s.keys() == c.keys() and len(s) > 10
    assert max(float(np.abs(s[k] - c[k]).max()) for k in s) < 1e-10


def test_checkpoints_move_between_strict_and_cpu(tmp_path):
    args = [*QUICK, "--out", tmp_path, "--optimizer", "adam", "--grad-clip", "1"]
    r = strict("train.py", *args, "--device", "strict", "--max-steps", "2")
    assert r.returncode == 0, r.stderr
    r = strict("train.py", *args, "--device", "cpu", "--max-steps", "3", "--resume", "auto")
    assert r.returncode == 0 and "step 2 in all" in r.stdout, r.stderr
    r = strict("train.py", *args, "--device", "strict", "--max-steps", "4", "--resume", "auto")
    assert r.returncode == 0 and "step 3 in all" in r.stdout, r.stderr
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 4


@pytest.mark.parametrize("study", ["memory-time", "gradients"])
def test_study_on_strict(tmp_path, study):
    extra = ["--steps", "1", "--warmup", "0"] if study == "memory-time" else []
    r = strict("-m", "minirate.study", study, "--device", "strict", "--arch", "small",
               "--width", "0.25", "--batch-size", "2", "--T", "1,2", "--out", tmp_path, *extra)
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / f"{study.replace('-', '_')}.json").read_text())["rows"]
    assert rows
    if study == "memory-time":          # peak bytes from the stand-in's memory pool
        assert all(row["peak_bytes"] > 0 for row in rows), rows


def test_two_ranks_on_strict_through_host_mpi(tmp_path):
    """mpirun -n 2 on strict, device arrays reduced by MPI through host memory (NCCL off):
    the weights of one process on strict (float64)."""
    from tests.test_distributed import _mpirun, _without_launcher_env
    launcher = _mpirun()
    args = ["train.py", *QUICK, "--device", "strict", "--dtype", "float64", "--max-steps", "2"]
    env = dict(_without_launcher_env(), MINIRATE_NCCL="0")
    r = strict(*args, "--out", tmp_path / "one", env=env)
    assert r.returncode == 0, r.stderr
    r = strict(*args, "--out", tmp_path / "two", env=env, launcher=(launcher, "-n", "2"))
    assert r.returncode == 0, r.stderr
    assert "through host memory" in r.stdout and "2 ranks, 4 images each" in r.stdout
    a, b = _weights(tmp_path / "one" / "last.npz"), _weights(tmp_path / "two" / "last.npz")
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-10


KERNELS = {"lif_forward", "lif_backward", "lif_forward_rate", "lif_rate_step", "lif_step",
           "lif_step_backward", "batchnorm_centre", "batchnorm_affine", "batchnorm_backward_dx"}


def test_strict_runs_every_fused_kernel_and_matches_the_unfused_path(monkeypatch):
    """On the stand-in (as on a GPU) the ops take their fused kernels: one float64 step of each
    method launches every kernel, and the same steps with MINIRATE_FUSED=0 launch none and give
    the same loss and gradients to 1e-12 (the kernels run on the host through RawKernel)."""
    from minirate.backend import to_numpy
    from minirate.methods import make_method
    from tests.nets import random_upstream_loss, tiny_resnet
    from tests.strict_cupy import register
    from tests.strict_cupy._module import RawKernel
    xp = register()
    launched = []
    real_call = RawKernel.__call__

    def counted_call(self, *args, **kwargs):
        launched.append(self.name)
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(RawKernel, "__call__", counted_call)
    rng = np.random.default_rng(2)
    x, y, G = rng.normal(size=(3, 3, 6, 6)), np.array([0, 1, 2]), rng.normal(size=(3, 5))
    methods = [("bptt", {"step_mode": "m"}), ("bptt", {"step_mode": "s"}), ("rate_m", {}),
               ("rate_s", {}), ("sltt", {}), ("ottt", {})]
    results = {}
    for fused in ("1", "0"):
        monkeypatch.setenv("MINIRATE_FUSED", fused)
        launched.clear()
        for method, kw in methods:
            model = tiny_resnet(reset="hard", detach_reset=False, xp=xp)
            model.zero_grad()
            loss, _ = make_method(method, model, 3, **kw).step(
                xp.asarray(x), xp.asarray(y), random_upstream_loss(xp.asarray(G)))
            results[fused, method, kw.get("step_mode")] = (
                [float(loss)] + [to_numpy(g) for _, _, g, _ in model.parameters()])
        if fused == "1":
            assert set(launched) == KERNELS, KERNELS ^ set(launched)
        else:
            assert launched == []
    for method, kw in methods:
        a, b = (results[f, method, kw.get("step_mode")] for f in ("1", "0"))
        assert abs(a[0] - b[0]) <= 1e-12 * abs(b[0])
        for ga, gb in zip(a[1:], b[1:]):
            assert np.max(np.abs(ga - gb)) <= 1e-12 * max(1e-30, np.max(np.abs(gb))), method
