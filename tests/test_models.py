"""Architectures: PyTorch-style names, output shapes, state dict round trip through .npz."""
import numpy as np
import pytest

from minirate.layers.base import StateDictError
from minirate.methods import predict
from minirate.models import ARCHS, build_model


def test_resnet18_names_match_torch_convention():
    sd = build_model("resnet18").state_dict()
    for key in ["conv0.0.weight", "conv0.1.weight", "conv0.1.bias", "conv0.1.running_mean",
                "conv0.1.running_var", "conv0.1.num_batches_tracked",
                "layer1.0.conv1.weight", "layer1.0.bn1.running_mean", "layer1.1.bn2.bias",
                "layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.running_var",
                "layer4.1.conv2.weight", "classifier.0.weight", "classifier.0.bias"]:
        assert key in sd, key
    assert "layer1.0.shortcut.0.weight" not in sd          # identity shortcut: no parameters
    assert "conv0.0.bias" not in sd
    assert sd["layer2.0.conv1.weight"].shape == (128, 64, 3, 3)
    assert sd["layer2.0.shortcut.0.weight"].shape == (128, 64, 1, 1)
    assert sd["classifier.0.weight"].shape == (10, 512)
    assert sd["conv0.1.num_batches_tracked"].dtype == np.int64
    n_params = sum(p.size for _, p, _, _ in build_model("resnet18").parameters())
    assert n_params == 11_173_962     # torchvision-style ResNet-18 with a 3x3 stem, 10 classes


def test_other_architectures_names_and_shapes():
    sd = build_model("resnet19", 100).state_dict()
    assert sd["classifier.0.weight"].shape == (256, 512)
    assert sd["classifier.2.weight"].shape == (100, 256)
    assert "layer3.1.bn2.running_mean" in sd and "layer4.0.conv1.weight" not in sd
    sd = build_model("vgg11").state_dict()
    assert sd["feature.0.weight"].shape == (64, 3, 3, 3) and "feature.0.bias" in sd
    assert sd["feature.25.weight"].shape == (512, 512, 3, 3)
    assert sd["classifier.0.weight"].shape == (10, 512)
    sd = build_model("vggsnn_cifar").state_dict()
    assert sd["feature.24.weight"].shape == (512, 512, 3, 3)
    assert sd["classifier.0.weight"].shape == (10, 4608)


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_shape_and_width(arch):
    model = build_model(arch, 10, width=0.125)
    model.eval()
    size = 48 if arch == "vggsnn_dvs" else 32      # vggsnn_dvs: 48x48 -> 3x3 -> Linear(4608)
    x = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
    out = predict(model, x, 2)
    assert out.shape == (2, 10) and out.dtype == np.float32 and np.all(np.isfinite(out))


def test_state_dict_round_trip_through_npz(tmp_path):
    a = build_model("small", seed=1)
    b = build_model("small", seed=2)
    a.params_list()[0][...] += 1          # make sure something differs from a fresh init
    a.children["conv0"].children["1"].buffers["running_mean"][...] = 0.5
    np.savez(tmp_path / "w.npz", **a.state_dict())
    with np.load(tmp_path / "w.npz") as f:
        b.load_state_dict(dict(f))
    for (k, va), (k2, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and va.dtype == vb.dtype and np.array_equal(va, vb), k
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    a.eval(), b.eval()
    assert np.array_equal(predict(a, x, 2), predict(b, x, 2))


def test_load_state_dict_names_the_problem():
    model = build_model("small")
    sd = model.state_dict()
    bad = dict(sd)
    del bad["conv0.0.weight"]
    bad["extra.weight"] = np.zeros(3)
    bad["classifier.0.bias"] = np.zeros(11)
    with pytest.raises(StateDictError) as e:
        model.load_state_dict(bad)
    msg = str(e.value)
    assert "conv0.0.weight" in msg and "extra.weight" in msg and "classifier.0.bias" in msg
    assert np.array_equal(model.state_dict()["classifier.0.bias"], sd["classifier.0.bias"])


def test_weight_decay_only_on_conv_and_linear_weights():
    decayed = {name for name, _, _, decay in build_model("resnet19").parameters() if decay}
    assert decayed and all(n.endswith("weight") for n in decayed)
    assert not any(".bn" in n or "conv0.1" in n or "shortcut.1" in n for n in decayed)
    assert "classifier.0.weight" in decayed and "classifier.0.bias" not in decayed


def test_unknown_arch():
    with pytest.raises(ValueError, match="resnet18"):
        build_model("resnet1000")


def test_alexnet_configuration_and_event_frames():
    sd = build_model("alexnet").state_dict()
    convs = [(k, v.shape) for k, v in sd.items() if v.ndim == 4]
    assert [s[:2] for _, s in convs] == [(64, 3), (192, 64), (384, 192), (256, 384), (256, 256)]
    assert all(s[2:] == (3, 3) for _, s in convs) and "feature.0.bias" not in sd
    assert sd["classifier.0.weight"].shape == (1024, 4096)
    assert sd["classifier.2.weight"].shape == (10, 1024)
    model = build_model("alexnet", 10, width=0.125, in_channels=2).eval()
    frames = np.random.default_rng(0).random((3, 2, 2, 48, 48)).astype(np.float32)  # (T, B, 2, H, W)
    out = predict(model, frames, 3)
    assert out.shape == (2, 10) and np.all(np.isfinite(out))


def test_neuron_dropout_leaves_vgg11_ws_names_and_weights():
    """OTTT's dropout sits inside each neuron: feature.{k} becomes Sequential(LIF, dropout), so
    no conv moves and the state dict is that of the net without dropout."""
    plain = build_model("vgg11_ws", 10, in_channels=2).state_dict()
    dropped = build_model("vgg11_ws", 10, in_channels=2, dropout=0.1).state_dict()
    assert list(dropped) == list(plain)
    assert all(np.array_equal(dropped[k], v) for k, v in plain.items())
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        build_model("vgg11_bn", dropout=1.0)
