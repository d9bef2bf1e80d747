"""minirate.study with the online methods and event data: sltt and ottt equal their reference
(single-step BPTT on the same per-step loss) where they are exact, keep memory flat in T and
have their own costs; every study runs on synthetic event recordings, fed as (T, B, 2, H, W)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minirate.costs import method_costs
from minirate.data.events.synthetic import write_cifar10dvs, write_gesture
from minirate.models import build_model
from minirate.study import gradient_alignment, memory_time
from minirate.study import common
from minirate.study.common import DataSource
from tests.test_study import ENV, ROOT, batch, study_here

ONLINE = ["sltt", "ottt", "sltt:K=1"]


def whole(rows, method, T):
    return next(r for r in rows if (r["method"], r["T"], r["param"]) == (method, T, "(all)"))


def test_online_method_specs():
    parse = common.parse_method_spec
    assert parse("sltt")[:5] == ("sltt", "sltt", "s", None, 1) and parse("sltt").per_step_loss
    assert parse("ottt")[:5] == ("ottt", "ottt", "s", None, 1) and parse("ottt").kwargs(4) == {}
    assert parse("sltt:K=2").kwargs(4) == {"sltt_k": 2}
    assert parse("sltt:K=8").kwargs(4) == {"sltt_k": 4}          # K of at most T steps
    assert not parse("bptt:mode=s").per_step_loss and not parse("rate_s").per_step_loss


@pytest.mark.parametrize("spec", ["ottt:K=2", "sltt:mode=m", "ottt:N=2", "sltt:K=0"])
def test_bad_online_specs_give_one_line(tmp_path, monkeypatch, capsys, spec):
    monkeypatch.chdir(tmp_path)
    code, _, err = study_here(["memory-time", "--methods", spec], capsys)
    assert code == 2 and err.count("\n") == 1 and spec in err, err


def test_online_gradients_are_their_reference_at_T1_and_not_at_T3():
    model = build_model("small", 10, 0.25, seed=0).to(np, np.float64)
    x, y = batch(dtype=np.float64)
    rows = gradient_alignment(model, x, y, [1, 3], ONLINE)
    for method in ONLINE:
        at1 = [r for r in rows if r["method"] == method and r["T"] == 1]
        assert len(at1) == len(model.parameters()) + 1
        for r in at1:
            assert r["bptt_mode"] == "s" and r["per_step_loss"], r
            assert abs(r["cosine"] - 1) < 1e-9 and abs(r["norm_ratio"] - 1) < 1e-9, r
        assert whole(rows, method, 3)["cosine"] < 1 - 1e-6
    # SLTT-K with K = 1 of 3 steps: about a third of the gradient
    assert whole(rows, "sltt:K=1", 3)["norm_ratio"] < 0.7 * whole(rows, "sltt", 3)["norm_ratio"]


@pytest.mark.parametrize("loss_lambda", [0.0, 0.3])
def test_without_leak_online_methods_are_their_reference_at_any_T(loss_lambda):
    """decay 0: u_t = I_t, no path through time, so SLTT and OTTT (trace = spikes) are exactly
    single-step BPTT on the per-step loss. A reference on the loss of the averaged output (or
    another λ_L) would not give cosine 1 at T = 3."""
    model = build_model("small", 10, 0.25, neuron=dict(decay=0.0), seed=1).to(np, np.float64)
    x, y = batch(dtype=np.float64, seed=1)
    rows = gradient_alignment(model, x, y, [3], ["sltt", "ottt", "rate_s"],
                              loss_lambda=loss_lambda)
    for method in ("sltt", "ottt"):
        r = whole(rows, method, 3)
        assert abs(r["cosine"] - 1) < 1e-9 and abs(r["norm_ratio"] - 1) < 1e-9, r
    assert whole(rows, "rate_s", 3)["per_step_loss"] is False


def test_online_memory_is_flat_in_T_and_costs_follow_the_steps():
    x, y = batch()
    rows = memory_time(x, y, ["bptt:mode=s", "sltt", "ottt", "sltt:K=1"], [1, 2, 4], "small",
                       0.25, steps=1, warmup=0)
    by = {(r["method"], r["T"]): r for r in rows}
    assert len(rows) == 12
    for m in ("sltt", "ottt", "sltt:K=1"):
        assert by[m, 1]["kept_bytes"] == by[m, 2]["kept_bytes"] == by[m, 4]["kept_bytes"] > 0
        assert all(by[m, T]["peak_bytes"] > 0 and by[m, T]["step_time_s"] > 0 for T in (1, 2, 4))
    assert by["bptt:mode=s", 1]["kept_bytes"] < by["bptt:mode=s", 4]["kept_bytes"]
    assert by["ottt", 1]["kept_bytes"] > by["sltt", 1]["kept_bytes"]      # also the traces


def test_costs_of_sltt_and_ottt():
    model = build_model("small", 10, 0.25, seed=0)
    shape, T = (8, 3, 32, 32), 4
    b = method_costs(model, shape, T, "bptt", "s")
    s = method_costs(model, shape, T, "sltt", "s")
    s2 = method_costs(model, shape, T, "sltt", "s", window=2)       # SLTT-K, K = 2 of 4
    o = method_costs(model, shape, T, "ottt", "s")
    # the same forward and the same backward arithmetic as single-step BPTT; SLTT-2 half of it
    for k in ("fwd_macs", "fwd_acs"):
        assert s[k] == b[k] == s2[k] == o[k] > 0, k
    for k in ("bwd_macs", "bwd_acs"):
        assert s[k] == b[k] == 2 * s2[k] > 0, k
    assert s2["mem_bytes"] < s["mem_bytes"] < b["mem_bytes"]      # SLTT reads/writes no du⁺
    # OTTT: weight gradients against the real-valued trace are MACs, not ACs; traces cost traffic
    assert o["bwd_acs"] == 0
    assert o["bwd_macs"] == s["bwd_macs"] + s["bwd_acs"]
    assert o["mem_bytes"] > s["mem_bytes"]


# -- event data -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def events(tmp_path_factory):
    """Synthetic CIFAR10-DVS (10 per class: 9 train, 1 test at 9:1) and DVS128 Gesture (2
    users, one for testing)."""
    d = str(tmp_path_factory.mktemp("ev"))
    write_gesture(d, users=(1, 2), test_users=(2,), lightings=("led",), events=800)
    return write_cifar10dvs(d, per_class=10, events=800)


EV = ["--frame-size", "16", "--width", "0.25", "--batch-size", "4"]


def test_event_batches_are_binned_for_each_T(events):
    src = DataSource("cifar10dvs", events, frame_size=16)
    x2, y2 = src.batch(2, 4)
    x3, y3 = src.batch(3, 4)
    assert x2.shape == (2, 4, 2, 16, 16) and x3.shape == (3, 4, 2, 16, 16)
    assert x2.dtype == np.float32 and (y2 == y3).all()          # the same samples at every T
    assert len(set(y2.tolist())) > 1                            # drawn across classes
    assert not np.allclose(x2[0], x2[1])                        # frames change over time
    # a sample's events are shared out over the frames, and the resize is linear: summed over
    # time, every pixel of every sample agrees across T
    assert np.allclose(x2.sum(axis=0), x3.sum(axis=0), rtol=1e-5, atol=1e-4)


def test_memory_time_and_gradients_on_event_frames(tmp_path, capsys, events):
    code, out, err = study_here(["memory-time", "--dataset", "cifar10dvs", "--data-dir", events,
                                 "--methods", "bptt,sltt,ottt", "--T", "1,2", "--steps", "1",
                                 "--warmup", "0", "--out", str(tmp_path), *EV], capsys)
    assert code == 0, err
    doc = json.loads((tmp_path / "memory_time.json").read_text())
    assert "cifar10dvs test frames (16x16" in doc["info"]["data"]
    by = {(r["method"], r["T"]): r for r in doc["rows"]}
    # flat in T but for the input: step t's cache views frame t, which keeps the caller's whole
    # (T, B, 2, H, W) array alive, and cache_nbytes counts what a view keeps alive
    frame = 4 * 2 * 16 * 16 * 4
    for m in ("sltt", "ottt"):
        assert by[m, 2]["kept_bytes"] - by[m, 1]["kept_bytes"] == frame, m
    assert by["bptt", 1]["kept_bytes"] < by["bptt", 2]["kept_bytes"]
    # costs counted on 2-channel 16x16 frames: the first conv has 2/3 of an RGB one's taps
    model = build_model("small", 10, 0.25, in_channels=2)
    assert by["bptt", 2]["macs"] + by["bptt", 2]["acs"] == sum(
        method_costs(model, (2, 4, 2, 16, 16), 2)[k] for k in ("macs", "acs"))

    code, out, err = study_here(["gradients", "--dataset", "dvsgesture", "--data-dir", events,
                                 "--methods", "sltt,ottt,rate_s", "--T", "1,2", "--out",
                                 str(tmp_path), *EV], capsys)
    assert code == 0, err
    doc = json.loads((tmp_path / "gradients.json").read_text())
    assert doc["info"]["dataset"] == "dvsgesture" and "frames" in doc["info"]["data"]
    assert "per-step loss" in doc["info"]["reference"]["sltt"]
    rows = doc["rows"]
    assert any(r["param"] == "classifier.0.bias" for r in rows)
    for m in ("sltt", "ottt", "rate_s"):
        assert abs(whole(rows, m, 1)["cosine"] - 1) < 1e-9
        assert whole(rows, m, 2)["cosine"] < 1 - 1e-9
    assert "against bptt step mode s, per-step loss" in out


def test_design_space_and_firing_on_event_frames(tmp_path, capsys, events):
    code, out, err = study_here(["design-space", "--dataset", "cifar10dvs", "--data-dir", events,
                                 "--K", "1,2", "--N", "1", "--T", "2", "--train-steps", "2",
                                 "--out", str(tmp_path), *EV], capsys)
    assert code == 0, err
    doc = json.loads((tmp_path / "design_space.json").read_text())
    assert doc["info"]["train_images"] == 8 and doc["info"]["test_images"] == 10
    assert all(r["ran"] and 0 <= r["accuracy"] <= 1 for r in doc["rows"])
    assert {r["method"] for r in doc["rows"]} == {"bptt", "tbptt:K=1:N=1"}

    run = tmp_path / "run"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--dataset",
                        "dvsgesture", "--data-dir", events, "--arch", "small", "--width", "0.25",
                        "--T", "3", "--frame-size", "16", "--batch-size", "11", "--epochs", "1",
                        "--max-steps", "1", "--out", str(run), "--no-progress"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr
    # no data options: the checkpoint's own data set, folder, T and frame size
    code, out, err = study_here(["firing", "--checkpoint", str(run / "last.npz"), "--batch-size",
                                 "4", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    doc = json.loads((tmp_path / "firing.json").read_text())
    assert doc["info"]["dataset"] == "dvsgesture" and doc["info"]["T"] == 3
    assert "dvsgesture test frames (16x16" in doc["info"]["data"]
    assert len(doc["rows"]) == 5 * 4 and all(0 <= r["rate"] <= 1 for r in doc["rows"])
    # images cannot feed a network of event frames
    code, out, err = study_here(["firing", "--checkpoint", str(run / "last.npz"), "--dataset",
                                 "cifar10-sample", "--out", str(tmp_path)], capsys)
    assert code == 1 and err.count("\n") == 1 and "2 input channels" in err, err


@pytest.mark.parametrize("args, message", [
    (["--frame-size", "16"], "are for event data"),
    (["--dataset", "cifar10dvs", "--data-dir", "missing"], "CIFAR10-DVS not found"),
    (["--dataset", "dvsgesture", "--data-dir", "missing"], "DVS128 Gesture not found")])
def test_event_options_errors_are_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = study_here(["memory-time", "--T", "1", *args], capsys)
    assert code == 1 and out == "" and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()
