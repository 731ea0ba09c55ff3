"""Vision networks: parameter counts against the papers, shapes, names, the registry and init schemes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_lottery.models.vision import (
    ConvNet,
    LeNet5,
    build_model,
    initialize,
    model_names,
    output_parameter,
)

# Exact counts of these implementations (10 classes, default input), next to the papers' rounded figures.
EXACT = {
    "lenet300": 266_610,
    "lenet5": 431_080,
    "mnistcnn": 28_938,
    "conv2": 4_301_642,
    "conv4": 2_425_930,
    "conv6": 2_262_602,
    "vgg19": 20_040_522,
    "resnet20": 272_474,
    "resnet18": 11_173_962,
}
# The papers' figures as printed: (value, unit), e.g. Conv-4 "2.4M" = 24 x 100K. Conv-6 ("1.7M") is below.
PAPER = {
    "lenet300": (267, 1e3),  # Han et al.: 267K (Frankle & Carbin truncate to 266K)
    "lenet5": (431, 1e3),  # Han et al.: 431K
    "conv2": (43, 1e5),
    "conv4": (24, 1e5),
    "vgg19": (200, 1e5),
}
INPUTS = {"lenet300": (1, 28, 28), "lenet5": (1, 28, 28), "mnistcnn": (1, 28, 28)}
# ImageNet networks (torchvision's architectures): exact counts for 1000 classes, as torchvision lists them.
IMAGENET = {"resnet50": 25_557_032, "vgg19_imagenet": 143_678_248}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(EXACT))
def test_parameter_count_and_forward_shape(name: str) -> None:
    model = build_model(name)
    assert n_params(model) == EXACT[name]
    if name in PAPER:
        value, unit = PAPER[name]
        assert round(n_params(model) / unit) == value
    x = torch.randn(2, *INPUTS.get(name, (3, 32, 32)))
    model.eval()
    assert model(x).shape == (2, 10)


def test_conv6_count_follows_the_described_architecture() -> None:
    # The paper's table says 1.7M, but 64,64,P,128,128,P,256,256,P + FC 4096-256-256-10 is 2.26M;
    # its conv weights alone are the 1.1M the paper also lists.
    params = build_model("conv6").named_parameters()
    conv_weights = sum(p.numel() for n, p in params if n.startswith("conv") and n.endswith("weight"))
    assert round(conv_weights / 1e5) == 11


def test_resnet20_is_frankle_and_carbins_274k_resnet() -> None:
    # Their "ResNet-18 (274K)" is the CIFAR ResNet-20 family; open_lth's resnet_20 has 272,474 (0.6% less).
    assert abs(EXACT["resnet20"] - 274_000) / 274_000 < 0.01


@pytest.mark.parametrize("name", list(EXACT))
def test_output_layer_is_named_and_sized_by_num_classes(name: str) -> None:
    shape = INPUTS.get(name, (3, 32, 32))
    model = build_model(name, num_classes=7, in_channels=shape[0])
    params = dict(model.named_parameters())
    weight = params[output_parameter(model)]
    assert output_parameter(name) == output_parameter(model)
    assert weight.shape[0] == 7
    assert model.num_classes == 7
    assert model.eval()(torch.randn(1, *shape)).shape == (1, 7)


@pytest.mark.parametrize(
    ("name", "kwargs", "shape"),
    [
        ("lenet300", {"in_channels": 3, "image_size": 32}, (3, 32, 32)),
        ("lenet5", {"in_channels": 3, "image_size": 32}, (3, 32, 32)),
        ("conv4", {"in_channels": 1, "image_size": 28}, (1, 28, 28)),
        ("resnet20", {"in_channels": 1, "width": 8}, (1, 28, 28)),
        ("vgg19", {"in_channels": 1}, (1, 32, 32)),
    ],
)
def test_other_input_shapes(name: str, kwargs: dict, shape: tuple[int, ...]) -> None:
    model = build_model(name, num_classes=5, **kwargs).eval()
    assert model(torch.randn(2, *shape)).shape == (2, 5)


def test_resnet20_width_scales_channels() -> None:
    narrow, wide = build_model("resnet20", width=8), build_model("resnet20", width=32)
    assert narrow.layer3[0].conv1.out_channels == 32 and wide.layer3[0].conv1.out_channels == 128
    assert n_params(narrow) < EXACT["resnet20"] < n_params(wide)


def test_layer_names_are_stable() -> None:
    names = {n for n, _ in build_model("conv6").named_parameters()}
    assert {f"conv{i}.weight" for i in range(1, 7)} | {"fc1.weight", "fc2.weight", "fc3.weight"} <= names
    assert "features.conv16.weight" in dict(build_model("vgg19").named_parameters())
    assert "layer2.0.downsample.0.weight" in dict(build_model("resnet20").named_parameters())
    assert [n for n, _ in build_model("lenet300").named_parameters()] == [
        f"fc{i}.{kind}" for i in (1, 2, 3) for kind in ("weight", "bias")
    ]


def test_registry_names_and_aliases() -> None:
    assert model_names() == [*EXACT, *IMAGENET]
    assert isinstance(build_model("Conv-2"), ConvNet) and build_model("Conv-2").depth == 2
    assert isinstance(build_model("LeNet_5"), LeNet5)


def test_unknown_model_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="Unknown model 'alexnet'") as info:
        build_model("alexnet")
    for name in [*EXACT, *IMAGENET]:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="valid names"):
        output_parameter("alexnet")


def test_unknown_argument_names_the_accepted_ones() -> None:
    with pytest.raises(TypeError, match="dropout"):
        build_model("lenet300", dropout=0.5)


def test_convnet_dropout_is_active_only_in_training() -> None:
    model = build_model("conv2", dropout=0.5)
    x = torch.randn(4, 3, 32, 32)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    with pytest.raises(ValueError, match="dropout"):
        build_model("conv2", dropout=1.0)
    with pytest.raises(ValueError, match="depth"):
        ConvNet(depth=3)


def test_lenet5_caffe_variant_has_no_conv_relu() -> None:
    torch.manual_seed(0)
    caffe = LeNet5(conv_relu=False)
    relu = LeNet5(conv_relu=True)
    relu.load_state_dict(caffe.state_dict())
    x = torch.randn(3, 1, 28, 28)
    assert n_params(caffe) == EXACT["lenet5"]
    assert not torch.allclose(caffe(x), relu(x))


def _fans(weight: torch.Tensor) -> tuple[int, int]:
    receptive = weight[0, 0].numel()
    return weight.shape[1] * receptive, weight.shape[0] * receptive


@pytest.mark.parametrize(
    ("scheme", "expected_std"),
    [
        ("glorot_normal", lambda fan_in, fan_out: math.sqrt(2.0 / (fan_in + fan_out))),
        ("kaiming_normal", lambda fan_in, fan_out: math.sqrt(2.0 / fan_in)),
        ("default", lambda fan_in, fan_out: 1.0 / math.sqrt(3.0 * fan_in)),  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    ],
)
def test_init_scheme_std(scheme: str, expected_std) -> None:
    torch.manual_seed(0)
    model = initialize(build_model("conv2"), scheme)
    for name in ("conv2", "fc1", "fc2"):  # >= 36K weights each: the sample std is within ~1%
        layer = getattr(model, name)
        fan_in, fan_out = _fans(layer.weight)
        std = layer.weight.std().item()
        assert std == pytest.approx(expected_std(fan_in, fan_out), rel=0.03), name
        assert abs(layer.weight.mean().item()) < 0.05 * std
        if scheme != "default":
            assert torch.count_nonzero(layer.bias) == 0


def test_glorot_differs_from_kaiming_enough_to_tell() -> None:
    # fc1 of Conv-2: fan_in 16384, fan_out 256, so the two stds differ by ~40%.
    assert math.sqrt(2 / (16384 + 256)) / math.sqrt(2 / 16384) < 0.995


def test_init_resets_batchnorm_and_rejects_unknown_schemes() -> None:
    model = build_model("resnet20")
    bn = model.bn1
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    initialize(model, "glorot_normal")
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    with pytest.raises(ValueError, match="glorot_normal"):
        initialize(model, "orthogonal")


def test_build_model_init_argument_draws_from_the_global_rng() -> None:
    torch.manual_seed(1)
    a = build_model("lenet300", init="glorot_normal")
    torch.manual_seed(1)
    b = build_model("lenet300", init="glorot_normal")
    c = build_model("lenet300", init="glorot_normal")
    assert torch.equal(a.fc1.weight, b.fc1.weight)
    assert not torch.equal(b.fc1.weight, c.fc1.weight)


# ---------------------------------------------------------------------------------------------- ImageNet


@pytest.mark.parametrize("name", list(IMAGENET))
def test_imagenet_parameter_count_matches_torchvision(name: str) -> None:
    model = build_model(name)
    assert n_params(model) == IMAGENET[name]
    assert (model.num_classes, model.in_channels) == (1000, 3)
    assert (
        output_parameter(name)
        == output_parameter(model)
        == {"resnet50": "fc", "vgg19_imagenet": "classifier.6"}[name] + ".weight"
    )


def test_imagenet_networks_are_torchvisions() -> None:
    from torchvision.models import resnet50, vgg19_bn

    ours = build_model("resnet50")
    ours.load_state_dict(resnet50(weights=None).state_dict())  # same names and shapes: torchvision weights load
    vgg = build_model("vgg19_imagenet", num_classes=10, hidden=64)
    names = [n for n, _ in vgg.named_parameters()]
    reference = vgg19_bn(weights=None, num_classes=10, init_weights=False)  # no init: only the names matter
    assert names == [n for n, _ in reference.named_parameters()]


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("resnet50", {}), ("resnet50", {"in_channels": 1}), ("vgg19_imagenet", {"hidden": 64})],
)
def test_imagenet_output_layer_is_sized_by_num_classes_and_takes_small_images(name: str, kwargs: dict) -> None:
    model = build_model(name, num_classes=7, init="kaiming_normal", **kwargs).eval()
    weight = dict(model.named_parameters())[output_parameter(model)]
    assert weight.shape[0] == 7 and model.num_classes == 7
    shape = (kwargs.get("in_channels", 3), 32, 32)  # fast presets run them on 32x32 crops
    assert model(torch.randn(2, *shape)).shape == (2, 7)


def test_vgg19_imagenet_options() -> None:
    narrow = build_model("VGG19-ImageNet", num_classes=10, hidden=64)  # the registry's name aliasing applies
    assert [narrow.classifier[i].out_features for i in (0, 3, 6)] == [64, 64, 10]
    fc_4096 = (25088 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)
    fc_64 = (25088 * 64 + 64) + (64 * 64 + 64) + (64 * 10 + 10)
    assert n_params(narrow) == IMAGENET["vgg19_imagenet"] - fc_4096 + fc_64
    plain = build_model("vgg19_imagenet", batch_norm=False, hidden=64, num_classes=10)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    with pytest.raises(ValueError, match="hidden"):
        build_model("vgg19_imagenet", hidden=0)
