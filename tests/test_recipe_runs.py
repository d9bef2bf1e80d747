"""Every paper recipe trains: `train.py --recipe NAME` for two steps at a tiny width, on the
bundled CIFAR-10 sample, synthetic event recordings in the real formats, or a generated ImageNet
folder; the run records the recipe and its resolved options in config.json."""
import json
import math

import pytest

from minirate.data.events.synthetic import write_cifar10dvs, write_gesture
from minirate.recipes import load, names
from tests.test_imagenet import make_imagenet
from tests.test_train import run_train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe-data")
    return {"cifar10dvs": write_cifar10dvs(str(root / "dvs"), per_class=6, events=800),
            "dvsgesture": write_gesture(str(root / "gesture")),
            "imagenet": make_imagenet(str(root / "imagenet"), n_train=4, n_val=2)}


def _data_args(recipe, data):
    dataset = recipe["dataset"]
    if dataset in ("cifar10", "cifar100"):
        return ["--dataset", "cifar10-sample"]          # the options apply to any CIFAR images
    if dataset == "imagenet":
        return ["--data-dir", data["imagenet"], "--image-size", "64", "--workers", "0"]
    return ["--data-dir", data[dataset]]


def _run(name, data, out, *extra):
    recipe = load(name)
    o = recipe["options"]
    T = max(2, o.get("sltt_k", 1), o.get("window", 1))   # short, but long enough for its K
    return run_train("--recipe", name, *_data_args(recipe, data), "--width", "0.0625", "--T", T,
                     "--batch-size", 4, "--eval-batch-size", 8, "--epochs", 1, "--max-steps", 2,
                     "--out", out, "--no-progress", *extra)


@pytest.fixture(scope="module")
def stage1(data, tmp_path_factory):
    """A checkpoint of the first ImageNet stage, for the recipes that continue from it."""
    out = tmp_path_factory.mktemp("stage1")
    r = _run("sltt-imagenet-nfresnet34-stage1", data, out)
    assert r.returncode == 0, r.stderr
    return out / "last.npz"


@pytest.mark.parametrize("name", names())
def test_recipe_trains_two_steps(name, data, tmp_path, request):
    recipe = load(name)
    o = recipe["options"]
    out = tmp_path / "run"
    extra = []
    if recipe["requires"]:                          # a second stage: from the first's weights
        assert list(recipe["requires"]) == ["init_from"]
        extra = ["--init-from", request.getfixturevalue("stage1")]
        r = _run(name, data, tmp_path / "bare")
        assert r.returncode != 0 and "needs --init-from" in r.stderr
    r = _run(name, data, out, *extra)
    assert r.returncode == 0, r.stderr
    assert "done:" in r.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"] == name
    overridden = ("dataset", "data_dir", "image_size", "workers", "T", "batch_size", "epochs",
                  "init_from")
    kept = {k: v for k, v in o.items() if k not in overridden}
    assert {k: config[k] for k in kept} == kept      # every other option as the recipe sets it
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 2 and math.isfinite(record["train_loss"])
