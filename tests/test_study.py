"""minirate.study: memory flat in T for rate methods, gradients equal BPTT's at T = 1, firing
rates that add up, and a command line that writes what it says and fails in one line."""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minirate.checkpoint import load_checkpoint
from minirate.data.cifar import make_synthetic_cifar
from minirate.layers.lif import LIF
from minirate.models import build_model
from minirate.methods import BPTT
from minirate.study import firing_rates, gradient_alignment, memory_time, \
    time_average_limit
from minirate.study import common
from minirate.study.__main__ import main
from tests.conftest import ROOT


def batch(n=4, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3, 32, 32)).astype(dtype), rng.integers(0, 10, n)


# tiny matrices: one BLAS thread, so that a busy machine does not make threads spin and wait
ENV = dict(os.environ, PYTHONPATH=ROOT, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")


def study(*args, cwd):
    return subprocess.run([sys.executable, "-m", "minirate.study", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=120, env=ENV)


def study_here(args, capsys):
    """main() in this process: (exit status, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as e:             # the argument parser exits
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_rate_memory_is_flat_in_T_and_bptt_grows():
    x, y = batch()
    rows = memory_time(x, y, ["bptt", "rate_m"], [1, 2, 4], "small", 0.25, steps=1, warmup=0)
    kept = {(r["method"], r["T"]): r["kept_bytes"] for r in rows}
    assert kept["rate_m", 1] == kept["rate_m", 2] == kept["rate_m", 4] > 0
    assert kept["bptt", 1] < kept["bptt", 2] < kept["bptt", 4]
    assert all(r["peak_bytes"] >= r["kept_bytes"] and r["step_time_s"] > 0 for r in rows)


def test_gradients_equal_bptt_at_T1_and_differ_at_T4():
    model = build_model("small", 10, 0.25, seed=0).to(np, np.float64)
    x, y = batch(dtype=np.float64)
    rows = gradient_alignment(model, x, y, [1, 4], ["rate_m", "rate_s"])
    for method in ("rate_m", "rate_s"):
        at1 = [r for r in rows if r["method"] == method and r["T"] == 1]
        at4 = [r for r in rows if r["method"] == method and r["T"] == 4]
        assert len(at1) == len(model.parameters()) + 1            # every tensor, then '(all)'
        for r in at1:
            assert abs(r["cosine"] - 1) < 1e-9, r
            assert abs(r["norm_ratio"] - 1) < 1e-9, r
        assert min(r["cosine"] for r in at4) < 1 - 1e-6
        assert {r["depth"] for r in at4} >= set(range(8))        # 8 conv/linear weights


def test_time_average_limit_is_bptt_where_averaging_changes_nothing():
    model = build_model("small", 10, 0.25, seed=0).to(np, np.float64)
    x, y = batch(dtype=np.float64)
    rows = gradient_alignment(model, x, y, [1, 4], ["avg_limit"])
    for r in (r for r in rows if r["T"] == 1):                    # one step: nothing to average
        assert abs(r["cosine"] - 1) < 1e-9 and abs(r["norm_ratio"] - 1) < 1e-9, r
    at4 = {r["param"]: r for r in rows if r["T"] == 4}
    # exact at T = 4 too: a bias gradient is Σ_t dy_t; the first convolution sees the same image
    # at every step; the classifier's dy_t = dlogits / T is the same at every step
    exact = [p for p in at4 if p.endswith("bias") or p in ("conv0.0.weight", "classifier.0.weight")]
    assert len(exact) > 5
    for p in exact:
        assert abs(at4[p]["cosine"] - 1) < 1e-9 and abs(at4[p]["norm_ratio"] - 1) < 1e-9, p
    assert min(r["cosine"] for r in at4.values()) < 1 - 1e-4      # the rest loses something
    # the recording wrappers are gone: every layer's backward is its class's again
    assert not any("backward" in vars(m) for _, m in model.named_modules())


def test_time_average_limit_covers_weight_standardized_layers():
    """vgg11_ws: its convolutions and classifier are ScaledWS layers (subclasses of Conv2d and
    Linear, their input inside the cache's `op`). At T = 1 averaging changes nothing, so every
    gradient is BPTT's own, and none is left at zero."""
    model = build_model("vgg11_ws", 10, 0.125, seed=0).to(np, np.float64)
    x, y = batch(2, dtype=np.float64)
    model.zero_grad()
    BPTT(model, 1, "m").step(x, y)
    bptt = {name: g.copy() for name, _, g, _ in model.parameters()}
    limit = time_average_limit(model, x, y, 1)
    assert sum(np.abs(g).max() > 0 for g in bptt.values()) > len(bptt) // 2
    for name, g in bptt.items():
        assert np.allclose(limit[name], g, rtol=1e-10, atol=1e-14), name


def test_firing_rates_per_layer_and_step():
    model = build_model("small", 10, 0.25, seed=0)
    x, _ = batch()
    T = 3
    rows = firing_rates(model, x, T)
    n_lif = sum(isinstance(m, LIF) for _, m in model.named_modules())
    per_step = [r for r in rows if r["step"] != "all"]
    overall = [r for r in rows if r["step"] == "all"]
    assert len(per_step) == n_lif * T and len(overall) == n_lif
    assert all(0 <= r["rate"] <= 1 for r in rows)
    assert any(r["rate"] > 0 for r in rows)
    for o in overall:
        steps = [r for r in per_step if r["layer"] == o["layer"]]
        assert [r["step"] for r in steps] == list(range(1, T + 1))
        assert abs(o["rate"] - np.mean([r["rate"] for r in steps])) < 1e-12
    assert model.training                                   # mode restored


def test_cli_memory_time_writes_and_names_its_files(tmp_path):
    r = study("memory-time", "--arch", "small", "--width", "0.25", "--batch-size", "2",
              "--T", "1,2", "--steps", "1", "--out", "tmp", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "memory-time" in r.stderr                         # progress
    for name in ("memory_time.csv", "memory_time.json", "memory_time.png"):
        path = os.path.join("tmp", name)
        assert (tmp_path / path).stat().st_size > 0
        assert path in r.stdout
    doc = json.loads((tmp_path / "tmp" / "memory_time.json").read_text())
    rows = doc["rows"]
    assert {(row["method"], row["T"]) for row in rows} == {
        (m, T) for m in ("bptt", "rate_m", "rate_s", "sltt", "ottt") for T in (1, 2)}
    assert doc["info"]["data"] == "CIFAR-10 sample (bundled) test"     # the default: no data dir
    assert all(row["macs"] > 0 and row["acs"] > 0 and row["mem_bytes"] > 0 for row in rows)
    assert "GMAC" in r.stdout and "mem acc MiB" in r.stdout


@pytest.mark.parametrize("args", [["memory-time", "--T", "0"],
                                  ["memory-time", "--methods", "foo"],
                                  ["gradients", "--methods", "bptt"],
                                  ["memory-time", "--methods", "bptt,tbptt:K=0"],
                                  ["memory-time", "--methods", "tbptt:W=2"],
                                  ["memory-time", "--methods", "rate_m:K=2"],
                                  ["gradients", "--methods", "sltt:N=2"],
                                  ["design-space", "--lr", "-1"],
                                  ["firing"],
                                  ["nonsense"]])
def test_cli_bad_arguments_give_one_line(tmp_path, monkeypatch, capsys, args):
    monkeypatch.chdir(tmp_path)
    code, _, err = study_here(args, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error:"), err
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("firing")
    data = make_synthetic_cifar(str(root / "data"), n_train=48, n_test=24)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--arch", "small",
                        "--width", "0.25", "--T", "2", "--batch-size", "16", "--epochs", "1",
                        "--data-dir", data, "--out", str(root / "run"), "--no-progress"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr
    return str(root / "run" / "best.npz"), data


def test_cli_firing_from_checkpoint(tmp_path, capsys, checkpoint):
    path, data = checkpoint
    out = str(tmp_path / "out")
    # no --data-dir: the checkpoint's own data set and folder
    code, stdout, err = study_here(["firing", "--checkpoint", path, "--batch-size", "8",
                                    "--out", out], capsys)
    assert code == 0, err
    doc = json.loads((tmp_path / "out" / "firing.json").read_text())
    assert doc["info"]["T"] == 2 and doc["info"]["data"] == "CIFAR-10 test"
    assert len(doc["rows"]) == 5 * 3                     # 5 LIF layers x (2 steps + all)
    assert all(0 <= row["rate"] <= 1 for row in doc["rows"])
    for name in ("firing.csv", "firing.json", "firing.png"):
        assert os.path.join(out, name) in stdout
    code, _, err = study_here(["firing", "--checkpoint", path, "--batch-size", "8", "--dataset",
                               "cifar10-sample", "--out", out], capsys)
    assert code == 0, err
    doc = json.loads((tmp_path / "out" / "firing.json").read_text())
    assert doc["info"]["data"] == "CIFAR-10 sample (bundled) test"


@pytest.mark.parametrize("study_name", ["memory-time", "gradients"])
def test_cli_data_dir_that_fails_to_load_is_an_error(tmp_path, monkeypatch, capsys, study_name):
    monkeypatch.chdir(tmp_path)
    code, out, err = study_here([study_name, "--dataset", "cifar10", "--data-dir", "missing",
                                 "--T", "1", "--width", "0.25", "--batch-size", "2"], capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: CIFAR-10 not found at missing"), err
    assert not (tmp_path / "runs").exists()


def test_memory_time_lists_variants_or_says_why_not(tmp_path, capsys):
    code, out, err = study_here(["memory-time", "--methods", "bptt,tbptt:K=1,local:N=2",
                                 "--T", "2", "--width", "0.25", "--batch-size", "2", "--steps",
                                 "1", "--warmup", "0", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    rows = json.loads((tmp_path / "memory_time.json").read_text())["rows"]
    listed = {row["method"] for row in rows}
    assert listed == {"bptt", "tbptt:K=1", "local:N=2"} and "skipped" not in err, err
    by = {row["method"]: row for row in rows}
    # one window per step: kept bytes of one step, not of T
    assert by["tbptt:K=1"]["kept_bytes"] < by["bptt"]["kept_bytes"]
    assert by["tbptt:K=1"]["macs"] == by["bptt"]["macs"]


def test_gradients_lists_variants_or_says_why_not(tmp_path, capsys):
    code, out, err = study_here(["gradients", "--methods", "rate_m,local:N=2,tbptt:K=1", "--T",
                                 "2", "--width", "0.25", "--batch-size", "2", "--out",
                                 str(tmp_path)], capsys)
    assert code == 0, err
    rows = json.loads((tmp_path / "gradients.json").read_text())["rows"]
    listed = {row["method"] for row in rows}
    assert listed == {"rate_m", "local:N=2", "tbptt:K=1"} and "skipped" not in err, err
    whole = [row for row in rows if row["param"] == "(all)"]
    assert all(row["macs"] > 0 for row in whole)
    # one window per step: not BPTT's gradient at T = 2
    assert next(r for r in whole if r["method"] == "tbptt:K=1")["cosine"] < 1 - 1e-9


def test_cli_design_space_table_and_heat_maps(tmp_path, capsys):
    code, out, err = study_here(["design-space", "--K", "1,2", "--N", "1,2", "--T", "2",
                                 "--train-steps", "2", "--batch-size", "8", "--width", "0.25",
                                 "--out", str(tmp_path)], capsys)
    assert code == 0, err
    doc = json.loads((tmp_path / "design_space.json").read_text())
    rows = {(r["K"], r["N"]): r for r in doc["rows"]}
    assert set(rows) == {(1, 1), (2, 1), (1, 2), (2, 2)}
    assert rows[2, 1]["method"] == "bptt" and rows[2, 1]["ran"]          # K = T, N = 1
    for r in rows.values():
        assert r["macs"] > 0 and r["acs"] > 0 and r["mem_bytes"] > 0    # counted, run or not
        assert r["ran"] and "skipped" not in err, err                   # every cell trains
        assert 0 <= r["accuracy"] <= 1 and r["kept_bytes"] > 0 and r["peak_bytes"] > 0
    # truncation changes no arithmetic; local blocks change it
    assert rows[1, 1]["macs"] == rows[2, 1]["macs"] != rows[2, 2]["macs"]
    assert doc["info"]["dataset"] == "cifar10-sample"
    for name in ("design_space.csv", "design_space.png", "design_space_costs.png"):
        assert (tmp_path / name).stat().st_size > 0 and str(tmp_path / name) in out


@pytest.mark.parametrize("args, message", [(["--K", "1,5", "--T", "4"], "--K 5 is longer"),
                                           (["--N", "7"], "at most 3 local blocks")])
def test_cli_design_space_checks_its_grid(tmp_path, capsys, args, message):
    code, _, err = study_here(["design-space", "--width", "0.25", "--out", str(tmp_path / "o"),
                               *args], capsys)
    assert code == 1 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_method_specs():
    parse = common.parse_method_spec
    assert parse("bptt")[:5] == ("bptt", "bptt", "m", None, 1)
    assert parse("rate")[:5] == ("rate", "rate_m", "m", None, 1)
    assert parse("rate_s:N=3")[:5] == ("rate_s:N=3", "rate_s", "s", None, 3)
    assert parse("local")[:5] == ("local", "bptt", "m", None, 2)
    assert parse("tbptt:K=2:N=2:mode=s")[:5] == ("tbptt:K=2:N=2:mode=s", "tbptt", "s", 2, 2)
    assert parse("tbptt:K=8").kwargs(4) == {"window": 4}          # a window holds at most T
    assert parse("local:N=3").kwargs(4) == {"local_blocks": 3}
    assert parse("bptt:mode=s").kwargs(4) == {}                    # today's make_method suffices
    # the exact memory savers (methods/packing.py, recompute.py)
    assert parse("bptt:pack").kwargs(4) == {"pack_spikes": True}
    assert parse("bptt:blocks:pack").kwargs(4) == {"pack_spikes": True, "recompute_blocks": True}
    assert parse("bptt:mode=s:recompute=8").kwargs(4) == {"recompute_window": 4}
    assert parse("local:N=2:pack").kwargs(4) == {"local_blocks": 2, "pack_spikes": True}
    for bad in ("rate_m:pack", "ottt:pack", "bptt:recompute=2", "tbptt:blocks", "local:blocks",
                "bptt:pack=1", "bptt:blocks:blocks"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)


def test_progress_line_at_least_every_heartbeat(monkeypatch, capsys):
    clock = [0.0]
    monkeypatch.setattr(common.time, "perf_counter", lambda: clock[0])
    bar = common.Bar("study")
    bar(0, 2, cell="a")
    for step in range(1, 30):                 # a long cell: one call per training step, 1 s each
        clock[0] += 1
        bar(0, 2, cell="a", train_step=step)
    bar(1, 2, cell="b")                       # a new cell: a line at once
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 + 29 // common.HEARTBEAT_S + 1, lines
    assert "train_step 10" in lines[1] and "cell b" in lines[-1]


def test_cli_firing_bad_checkpoint_gives_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = study_here(["firing", "--checkpoint", "missing.npz"], capsys)
    assert code == 1
    assert err == "error: checkpoint not found: missing.npz\n"
    (tmp_path / "bad.npz").write_bytes(b"not a checkpoint")
    code, _, err = study_here(["firing", "--checkpoint", "bad.npz"], capsys)
    assert code == 1 and err.count("\n") == 1 and "bad.npz" in err, err
    assert not (tmp_path / "runs").exists()


def test_checkpoint_of_local_training_loads_with_its_aux_heads(tmp_path, capsys):
    """A network trained block by block saves its aux heads; the studies read it all the same,
    and a local method compared on it trains on those saved heads."""
    data = make_synthetic_cifar(str(tmp_path / "data"), n_train=16, n_test=8)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--arch", "small",
                        "--width", "0.25", "--T", "2", "--batch-size", "8", "--epochs", "1",
                        "--local-blocks", "2", "--data-dir", data, "--out", str(tmp_path / "run"),
                        "--no-progress"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env=ENV)
    assert r.returncode == 0, r.stderr
    path = str(tmp_path / "run" / "last.npz")
    model, cfg = common.model_from_checkpoint(path)
    arrays, _ = load_checkpoint(path)
    saved = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/aux.")}
    assert saved and cfg["local_blocks"] == 2
    state = model.state_dict()
    for k, v in saved.items():
        assert np.array_equal(state[k], v), k
    code, _, err = study_here(["firing", "--checkpoint", path, "--batch-size", "4", "--out",
                               str(tmp_path / "f")], capsys)
    assert code == 0, err


@pytest.mark.parametrize("algo", ["im2col", "winograd"])
def test_cli_memory_time_runs_the_conv_algo_asked_for(tmp_path, monkeypatch, capsys, algo):
    """--conv-algo reaches every model the study builds: winograd_forward runs for each 3x3
    stride-1 convolution under winograd, and never under im2col."""
    from minirate.layers import winograd
    ran, original = [], winograd.winograd_forward

    def counted(x, W, *args, **kw):
        ran.append(W.shape)
        return original(x, W, *args, **kw)

    monkeypatch.setattr(winograd, "winograd_forward", counted)
    code, out, err = study_here(["memory-time", "--conv-algo", algo, "--methods", "bptt,rate_m",
                                 "--T", "1", "--width", "0.25", "--batch-size", "2", "--steps",
                                 "1", "--warmup", "0", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    doc = json.loads((tmp_path / "memory_time.json").read_text())
    assert doc["info"]["conv_algo"] == algo
    assert {row["method"] for row in doc["rows"]} == {"bptt", "rate_m"}
    model = build_model("small", 10, 0.25)
    shapes_3x3 = {m.params["weight"].shape for _, m in model.named_modules()
                  if hasattr(m, "algo") and winograd.applies(m.params["weight"], m.stride)}
    if algo == "im2col":
        assert ran == []
    else:   # two methods, each a timed step and a measured step, every 3x3 conv in each
        assert shapes_3x3 and set(ran) == shapes_3x3
        assert len(ran) >= 2 * 2 * len(shapes_3x3)


def test_cli_gradients_same_under_winograd(tmp_path, capsys):
    """float64 Winograd is exact to rounding: the gradient study's figures do not move."""
    rows = {}
    for algo in ("im2col", "winograd"):
        out = tmp_path / algo
        code, _, err = study_here(["gradients", "--conv-algo", algo, "--methods", "rate_m",
                                   "--T", "2", "--width", "0.25", "--batch-size", "2",
                                   "--out", str(out)], capsys)
        assert code == 0, err
        rows[algo] = json.loads((out / "gradients.json").read_text())["rows"]
    assert len(rows["im2col"]) == len(rows["winograd"]) > 1
    for a, b in zip(rows["im2col"], rows["winograd"]):
        assert (a["method"], a["T"], a["param"]) == (b["method"], b["T"], b["param"])
        if a["cosine"] is not None:
            assert abs(a["cosine"] - b["cosine"]) < 1e-9, a["param"]
            assert abs(a["norm_ratio"] - b["norm_ratio"]) < 1e-9, a["param"]
