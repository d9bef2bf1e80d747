"""Paper recipes (minirate/recipes/*.toml): schema, sources, and the authors' values.

AUTHORS below is written from the authors' scripts and README commands, independently of the
TOML files (commits in minirate/recipes/__init__.py); each recipe's [options] must equal it
exactly, so a value changed in either place fails here.
"""
import math
import re

import pytest

from minirate import recipes
from minirate.recipes import RecipeError, load, names, table, tomllib
from train import DATASETS, DEFAULTS

ARCHS = {"small", "resnet18", "resnet19", "vgg11", "vggsnn_cifar", "vggsnn_dvs", "alexnet",
         "vgg11_ws", "sew_resnet34", "preact_resnet34",
         "preact_resnet18", "vgg11_bn", "nf_resnet34"}          # the last three: SLTT and OTTT
METHODS = {"bptt", "tbptt", "rate_m", "rate_s", "sltt", "ottt"}
REPOS = ("Tab-ct/rate-based-backpropagation", "pkuxmq/OTTT-SNN", "qymeng94/SLTT")

# -- the authors' values -------------------------------------------------------------------------
# rate-BP: experiment/*/config/config.py, main.py, model/layer.py, util/data.py, README.md:58-90
RATEBP_NEURON = dict(decay=0.2, threshold=1.0, reset="soft", detach_reset=True,
                     surrogate="sigmoid", alpha=4.0)
RATEBP_OPT = dict(optimizer="sgd", momentum=0.9, warmup_epochs=0, lr_step="epoch", loss="mean")
RATEBP_CIFAR = dict(RATEBP_NEURON, **RATEBP_OPT, T=4, epochs=300, batch_size=128, lr=0.1,
                    nesterov=False, wd=5e-4, grad_clip=0.0, crop=True, flip=True,
                    autoaugment=True, cutout=16, cifar_pipeline="ratebp")
RATEBP_DVS = dict(RATEBP_NEURON, **RATEBP_OPT, dataset="cifar10dvs", arch="vggsnn_dvs", T=10,
                  epochs=300, batch_size=128, lr=0.1, wd=5e-4, frame_size=48, flip=True, roll=5,
                  split_by="count", event_split="9:1")
RATEBP_IMAGENET = dict(RATEBP_NEURON, **RATEBP_OPT, dataset="imagenet", arch="sew_resnet34",
                       T=4, epochs=100, batch_size=512, lr=0.2, wd=2e-5, image_size=224,
                       sync_bn=True)
RATE = dict(method="rate_m", scale_grad_by_T=True)
BPTT_M = dict(method="bptt", step_mode="m")

# OTTT: train_cifar.py, train_cifar10dvs.py, train_imagenet.py, modules/neuron.py, README.md
OTTT = dict(method="ottt", tau=2.0, threshold=1.0, reset="soft", detach_reset=True,
            surrogate="sigmoid", alpha=4.0, loss="per-step", mse_target="onehot",
            optimizer="sgd", momentum=0.9, warmup_epochs=0, lr_step="epoch", grad_clip=0.0)
OTTT_CIFAR = dict(OTTT, arch="vgg11_ws", T=6, epochs=300, batch_size=128, lr=0.1, wd=0.0,
                  neuron_dropout=0.0, loss_lambda=0.05, crop=True, flip=True, cutout=0,
                  autoaugment=False, cifar_pipeline="ratebp")
OTTT_DVS = dict(OTTT, dataset="cifar10dvs", arch="vgg11_ws", T=10, epochs=300, batch_size=128,
                lr=0.1, wd=0.0, neuron_dropout=0.1, loss_lambda=0.001, event_pipeline="ottt",
                frame_size=128, flip=False, roll=0, split_by="count", event_split="9:1",
                event_split_order="number")
OTTT_IMAGENET = dict(OTTT, dataset="imagenet", arch="nf_resnet34", T=6, epochs=100,
                     batch_size=256, lr=0.1, wd=2e-5, neuron_dropout=0.0, loss_lambda=0.0,
                     image_size=224)
OTTT_A, OTTT_O = dict(ottt_update="accumulate"), dict(ottt_update="per-step")

# SLTT: train_SLTT.py / train_SLTTK.py / train_BPTT.py, modules/neuron.py, README.md:17-63
SLTT = dict(tau=1.1, threshold=1.0, reset="soft", detach_reset=False, surrogate="triangle",
            alpha=1.0, loss="per-step", optimizer="sgd", momentum=0.9, warmup_epochs=0,
            lr_step="epoch", seed=2022, grad_clip=0.0)
SLTT_CIFAR = dict(SLTT, arch="preact_resnet18", T=6, epochs=200, batch_size=128, lr=0.1,
                  neuron_dropout=0.0, loss_lambda=0.05, mse_target=1.0, crop=True, flip=True,
                  cutout=0, autoaugment=False, cifar_pipeline="ratebp")
SLTT_DVS = dict(SLTT, dataset="cifar10dvs", arch="vgg11_bn", T=10, epochs=300, batch_size=128,
                lr=0.05, wd=5e-4, neuron_dropout=0.3, loss_lambda=0.05, mse_target="onehot",
                frame_size=48, flip=False, roll=0, split_by="count", event_split="9:1",
                event_split_order="number")
SLTT_GESTURE = dict(SLTT, dataset="dvsgesture", arch="vgg11_bn", T=20, epochs=300,
                    batch_size=16, lr=0.1, wd=5e-4, neuron_dropout=0.4, loss_lambda=0.05,
                    mse_target=1.0, frame_size=128, flip=False, roll=0, split_by="count",
                    event_split="users")
SLTT_IMAGENET = dict(SLTT, dataset="imagenet", arch="nf_resnet34", batch_size=256,
                     neuron_dropout=0.0, loss_lambda=0.0, image_size=224)
STAGE1 = dict(T=1, epochs=100, lr=0.1, wd=1e-5)         # README.md:33
STAGE2 = dict(T=6, epochs=30, lr=0.001, wd=0.0)         # README.md:41 (from the stage-1 weights)
SLTT_M = dict(method="sltt")
BPTT_S = dict(method="bptt", step_mode="s")             # train_BPTT.py: one step at a time

# Guo et al. 2023: no public code; values chosen (see the recipe's comments)
TTL = dict(method="tbptt", dataset="cifar10dvs", arch="alexnet", T=10, window=1, local_blocks=5,
           update="per-batch", frame_size=128, split_by="count", event_split="9:1", epochs=300,
           batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, wd=5e-4, decay=0.2,
           threshold=1.0, surrogate="sigmoid", flip=True, roll=5)

AUTHORS = {
    "ttl-cifar10dvs-alexnet": TTL,
    "ratebp-cifar10dvs-vggsnndvs": dict(RATEBP_DVS, **RATE),
    "ratebp-bptt-cifar10dvs-vggsnndvs": dict(RATEBP_DVS, **BPTT_M),
    "ratebp-imagenet-sewresnet34": dict(RATEBP_IMAGENET, **RATE),
    "ratebp-bptt-imagenet-sewresnet34": dict(RATEBP_IMAGENET, **BPTT_M),
    "ottt-cifar10dvs-vgg11ws": dict(OTTT_DVS, **OTTT_A),
    "ottt-o-cifar10dvs-vgg11ws": dict(OTTT_DVS, **OTTT_O),
    "ottt-imagenet-nfresnet34": dict(OTTT_IMAGENET, **OTTT_A),
    "ottt-o-imagenet-nfresnet34": dict(OTTT_IMAGENET, **OTTT_O),
    "sltt-cifar10dvs-vgg11bn": dict(SLTT_DVS, **SLTT_M),
    "sltt-k-cifar10dvs-vgg11bn": dict(SLTT_DVS, **SLTT_M, sltt_k=2),        # README.md:54
    "sltt-bptt-cifar10dvs-vgg11bn": dict(SLTT_DVS, **BPTT_S),
    "sltt-dvsgesture-vgg11bn": dict(SLTT_GESTURE, **SLTT_M),
    "sltt-k-dvsgesture-vgg11bn": dict(SLTT_GESTURE, **SLTT_M, sltt_k=4),    # README.md:51
    "sltt-bptt-dvsgesture-vgg11bn": dict(SLTT_GESTURE, **BPTT_S),
    "sltt-imagenet-nfresnet34-stage1": dict(SLTT_IMAGENET, **SLTT_M, **STAGE1),
    "sltt-imagenet-nfresnet34-stage2": dict(SLTT_IMAGENET, **SLTT_M, **STAGE2),
    "sltt-k-imagenet-nfresnet34-stage2": dict(SLTT_IMAGENET, **SLTT_M, **STAGE2, sltt_k=2),
}
for _ds in ("cifar10", "cifar100"):
    for _arch in ("resnet18", "resnet19", "vgg11"):
        AUTHORS[f"ratebp-{_ds}-{_arch}"] = dict(RATEBP_CIFAR, **RATE, dataset=_ds, arch=_arch)
        AUTHORS[f"ratebp-bptt-{_ds}-{_arch}"] = dict(RATEBP_CIFAR, **BPTT_M, dataset=_ds,
                                                     arch=_arch)
    AUTHORS[f"ottt-{_ds}-vgg11ws"] = dict(OTTT_CIFAR, **OTTT_A, dataset=_ds)
    AUTHORS[f"ottt-o-{_ds}-vgg11ws"] = dict(OTTT_CIFAR, **OTTT_O, dataset=_ds)
    _wd = {"cifar10": 5e-5, "cifar100": 5e-4}[_ds]         # README.md:17, 20
    AUTHORS[f"sltt-{_ds}-preactresnet18"] = dict(SLTT_CIFAR, **SLTT_M, dataset=_ds, wd=_wd)
    AUTHORS[f"sltt-bptt-{_ds}-preactresnet18"] = dict(SLTT_CIFAR, **BPTT_S, dataset=_ds, wd=_wd)
    # no SLTT-K command for CIFAR in the README: SLTT's options with K = 2 (chosen)
    AUTHORS[f"sltt-k-{_ds}-preactresnet18"] = dict(SLTT_CIFAR, **SLTT_M, dataset=_ds, wd=_wd,
                                                    sltt_k=2)


def _read(name):
    with open(recipes.HERE / f"{name}.toml", "rb") as f:
        return tomllib.load(f)


# -- (a) schema ---------------------------------------------------------------------------------
def test_names_are_the_files_sorted_and_all_expected():
    assert names() == sorted(names())
    assert set(names()) == set(AUTHORS)
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", n) for n in names())


@pytest.mark.parametrize("name", sorted(AUTHORS))
def test_file_schema(name):
    data = _read(name)
    assert set(data) <= {"paper", "reported_accuracy", "unconfirmed", "missing", "requires",
                         "options"}
    for key, why in data.get("requires", {}).items():      # what the command line must add
        assert key in DEFAULTS and isinstance(why, str) and why.strip()
    assert isinstance(data["paper"], str) and data["paper"].strip()
    acc = data["reported_accuracy"]
    accuracy = r"\d{1,3}\.\d{1,2}( ± \d{1,2}\.\d{1,2})?"                    # 94.44 or 94.44 ± 0.08
    assert isinstance(acc, str) and (acc == "" or re.fullmatch(accuracy, acc))
    for key in ("unconfirmed", "missing"):
        items = data.get(key, [])
        assert isinstance(items, list) and all(isinstance(s, str) and s.strip() for s in items)
    if acc == "":
        assert data["unconfirmed"], "an empty accuracy says why in unconfirmed"
    assert isinstance(data["options"], dict) and data["options"]


@pytest.mark.parametrize("name", sorted(AUTHORS))
def test_every_value_line_cites_its_source(name):
    """Each `key = value` line ends in a comment naming the authors' file:line, or 'chosen:'."""
    text = (recipes.HERE / f"{name}.toml").read_text(encoding="utf-8")
    section = None
    for line in text.splitlines():
        if line.startswith("["):
            section = line.split("#")[0].strip()
            continue
        m = re.match(r"([A-Za-z_]\w*) = ", line)
        if not m or m.group(1) in ("unconfirmed", "missing") or section == "[requires]":
            continue                                # [requires] values cite in their text
        assert "  # " in line, f"{name}: no source comment on: {line}"
        comment = line.split("  # ", 1)[1]
        if section == "[options]":
            cited = any(r in comment for r in REPOS) and re.search(r"\.\w+(:\d+)?", comment)
            assert cited or comment.startswith("chosen:") or name.startswith("ttl-"), \
                f"{name}: {m.group(1)}: comment cites no file of the authors: {comment}"
    if name.startswith("ttl-"):                          # no public code: values are chosen
        assert "chosen:" in text


@pytest.mark.parametrize("name", sorted(AUTHORS))
def test_load_returns_the_summary(name):
    r = load(name)
    data = _read(name)
    assert r["name"] == name and r["paper"] == data["paper"]
    for key in ("dataset", "arch", "T", "epochs", "batch_size"):
        assert r[key] == data["options"][key]
    assert r["reported_accuracy"] == data["reported_accuracy"]
    assert r["unconfirmed"] == data["unconfirmed"] and r["options"] == data["options"]
    assert r["missing"] == data.get("missing", [])


def test_table_has_one_row_per_recipe():
    rows = table()
    assert [row["name"] for row in rows] == names()
    cols = {"name", "paper", "data set", "architecture", "T", "epochs", "batch",
            "reported accuracy", "unconfirmed"}
    assert all(cols <= set(row) for row in rows)
    row = {r["name"]: r for r in rows}["sltt-dvsgesture-vgg11bn"]
    assert (row["data set"], row["architecture"], row["T"], row["batch"]) == \
        ("dvsgesture", "vgg11_bn", "20", "16")


# -- (b) the authors' values --------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(AUTHORS))
def test_options_equal_the_authors_values(name):
    options = load(name)["options"]
    expected = AUTHORS[name]
    assert set(options) == set(expected), (sorted(set(options) - set(expected)),
                                           sorted(set(expected) - set(options)))
    for key, value in expected.items():
        got = options[key]
        assert type(got) is type(value) and got == value, f"{name}: {key} = {got!r}, " \
                                                          f"authors {value!r}"


def test_imagenet_two_stages_the_second_from_the_first():
    s1, s2 = load("sltt-imagenet-nfresnet34-stage1"), load("sltt-imagenet-nfresnet34-stage2")
    assert (s1["T"], s2["T"], s1["epochs"], s2["epochs"]) == (1, 6, 100, 30)
    assert list(s2["requires"]) == ["init_from"] and "pre_train" in s2["requires"]["init_from"]
    assert s1["requires"] == {} and list(load("sltt-k-imagenet-nfresnet34-stage2")["requires"]) \
        == ["init_from"]


# -- (c) option names ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(AUTHORS))
def test_option_keys_are_train_py_dests(name):
    unknown = set(load(name)["options"]) - set(DEFAULTS)
    assert not unknown, f"{name}: not train.py options: {sorted(unknown)}"


# -- (d) types and ranges -----------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(AUTHORS))
def test_values_in_range(name):
    o = load(name)["options"]
    assert o["method"] in METHODS
    assert o["dataset"] in DATASETS and o["dataset"] != "cifar10-sample"
    assert o["arch"] in ARCHS
    for key in ("T", "epochs", "batch_size"):
        assert type(o[key]) is int and o[key] > 0, key
    assert isinstance(o["lr"], float) and 0 < o["lr"] <= 1
    assert isinstance(o["wd"], float) and 0 <= o["wd"] < 0.01
    assert 0 <= o.get("momentum", 0.9) < 1
    if "tau" in o:
        assert "decay" not in o, "tau and decay both set the leak"
        assert isinstance(o["tau"], float) and o["tau"] >= 1
    if "decay" in o:
        assert 0 <= o["decay"] <= 1
    assert 0 <= o.get("neuron_dropout", 0.0) < 1
    assert 0 <= o.get("loss_lambda", 0.0) <= 1
    target = o.get("mse_target", "onehot")
    assert target == "onehot" or (isinstance(target, float) and math.isfinite(target))
    if "sltt_k" in o:
        assert o["method"] == "sltt" and 1 <= o["sltt_k"] <= o["T"]
    if "window" in o:
        assert o["method"] == "tbptt" and 1 <= o["window"] <= o["T"]
    assert o.get("lr_step", "batch") in ("batch", "epoch")
    assert o.get("cifar_pipeline", "minirate") in ("minirate", "ratebp")
    assert o.get("event_pipeline", "minirate") in ("minirate", "ottt")
    assert o.get("event_split_order", "number") in ("number", "name")
    assert 0 <= o.get("roll", 0) < o.get("frame_size", 48)


@pytest.mark.parametrize("name", sorted(AUTHORS))
def test_train_py_resolves_the_recipe(name):
    """`train.py --recipe NAME` sets every option of the recipe (through train.py's own parser
    and cross-option checks) and records the recipe's name."""
    import train
    options = load(name)["options"]
    given = ["--init-from", "stage1.npz"] if load(name)["requires"] else []
    cfg = train.parse_args(["--recipe", name, *given])
    assert cfg["recipe"] == name
    assert {k: cfg[k] for k in options} == options
    if "tau" in options:                              # λ = 1 − 1/τ, in float64
        assert cfg["decay"] == 1.0 - 1.0 / options["tau"]


def test_the_command_line_wins_over_the_recipe():
    import train
    name = "sltt-cifar10-preactresnet18"
    cfg = train.parse_args(["--recipe", name, "--lr", "0.5", "--no-flip", "--T", "2"])
    assert (cfg["lr"], cfg["flip"], cfg["T"]) == (0.5, False, 2)
    assert cfg["mse_target"] == 1.0 and cfg["tau"] == 1.1       # the rest as the recipe
    cfg = train.parse_args(["--recipe", name, "--decay", "0.25"])   # the leak, the other way
    assert cfg["decay"] == 0.25 and cfg["tau"] is None
    assert train.parse_args(["--lr", "0.5"])["recipe"] is None


def test_list_recipes_prints_every_recipe(capsys):
    import train
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--list-recipes"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(n in out for n in names())
    assert "Meng et al., ICCV 2023" in out and "Xiao et al., NeurIPS 2022" in out


# -- (e) unknown names --------------------------------------------------------------------------
def test_unknown_name_lists_close_matches():
    with pytest.raises(RecipeError, match="sltt-cifar10-preactresnet18") as e:
        load("sltt-cifar10-preactresnet")
    assert isinstance(e.value, ValueError)
    with pytest.raises(RecipeError, match="unknown recipe 'nothing-like-it'"):
        load("nothing-like-it")
