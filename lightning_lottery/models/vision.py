"""Vision networks of the lottery-ticket papers, as plain ``nn.Module``\\ s that know nothing of pruning.

============  ==================================================  ==========  ============
name          network                                             params      output layer
============  ==================================================  ==========  ============
``lenet300``  :class:`LeNet300`: FC 784-300-100-10 (MNIST)        266,610     ``fc3``
``lenet5``    :class:`LeNet5`: Caffe LeNet-5 (Han et al.)         431,080     ``fc2``
``mnistcnn``  :class:`MnistCNN`: 2 conv + 1 linear (MNIST)        28,938      ``fc``
``conv2``     :class:`ConvNet` depth 2 (CIFAR-10)                 4,301,642   ``fc3``
``conv4``     :class:`ConvNet` depth 4                            2,425,930   ``fc3``
``conv6``     :class:`ConvNet` depth 6                            2,262,602   ``fc3``
``vgg19``     :class:`VGG`: open_lth ``cifar_vgg_19``             20,040,522  ``fc``
``resnet20``  :class:`CifarResNet`: open_lth ``cifar_resnet_20``  272,474     ``fc``
``resnet18``  :class:`ResNet18`: 4 stages, 3x3 stem, no max pool  11,173,962  ``fc``
============  ==================================================  ==========  ============

ImageNet networks (torchvision's architectures, built with ``weights=None``; 1000 classes by default):

==================  ==========================================  ===========  ================
name                network                                     params       output layer
==================  ==========================================  ===========  ================
``resnet50``        :func:`resnet50`: torchvision ``resnet50``  25,557,032   ``fc``
``vgg19_imagenet``  :func:`vgg19_imagenet`: ``vgg19_bn``        143,678,248  ``classifier.6``
==================  ==========================================  ===========  ================

Counts in the first table are for 10 classes and the default input shape. Every model has the attribute
``output_layer`` (the module name of its classifier layer, whose weight recipes prune at half rate; see
:func:`output_parameter`) and the attributes ``num_classes`` and ``in_channels``. Layer names are stable and
meant to be targeted by pattern: ``conv*``/``fc*`` for LeNet/ConvNet, ``features.conv*``/``fc`` for VGG,
``conv1``, ``layer<i>.<j>.conv<k>``, ``layer<i>.0.downsample.0`` and ``fc`` for the ResNets (ResNet-50 too),
``features.<i>`` and ``classifier.<i>`` (torchvision's) for ``vgg19_imagenet``.

Frankle & Carbin (2019) list Conv-6 as 1.7M parameters, but the architecture they describe (and build here:
64,64,P,128,128,P,256,256,P then FC 256,256,10 on 32x32 input) has 2,262,602; Conv-2 and Conv-4 match.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = [
    "MODELS",
    "VGG",
    "CifarResNet",
    "ConvNet",
    "LeNet5",
    "LeNet300",
    "MnistCNN",
    "ResNet18",
    "build_model",
    "conv2",
    "conv4",
    "conv6",
    "initialize",
    "model_names",
    "output_parameter",
    "resnet18",
    "resnet20",
    "resnet50",
    "vgg19",
    "vgg19_imagenet",
]

InitScheme = Literal["glorot_normal", "kaiming_normal", "default"]
INIT_SCHEMES: tuple[str, ...] = ("glorot_normal", "kaiming_normal", "default")
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class _Classifier(nn.Module):
    """Common attributes: what the output layer is called and the input/output shape."""

    output_layer: str = "fc"

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1:
            raise ValueError(f"num_classes ({num_classes}) and in_channels ({in_channels}) must be >= 1")
        self.num_classes = num_classes
        self.in_channels = in_channels


# ---------------------------------------------------------------------------------------------- LeNets


class LeNet300(_Classifier):
    """LeNet-300-100: fully connected 784-300-100-10 with ReLU (266,610 parameters on MNIST).

    Layers ``fc1``, ``fc2``, ``fc3`` (output). The input image is flattened, so other sizes work through
    ``in_channels`` and ``image_size`` (the first layer has ``in_channels * image_size**2`` inputs).
    """

    output_layer = "fc3"

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        hidden: Sequence[int] = (300, 100),
    ) -> None:
        super().__init__(num_classes, in_channels)
        if len(hidden) != 2:
            raise ValueError(f"LeNet300 has two hidden layers, got hidden={tuple(hidden)}")
        self.fc1 = nn.Linear(in_channels * image_size * image_size, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.fc1(x.flatten(1)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(_Classifier):
    """Caffe's LeNet-5 as pruned by Han et al. (2015): 431,080 parameters on MNIST.

    ``conv1`` 20@5x5 -> 2x2 max pool -> ``conv2`` 50@5x5 -> 2x2 max pool -> ``fc1`` 800->500, ReLU ->
    ``fc2`` 500->classes (output). Caffe's prototxt has no nonlinearity after the convolutions;
    ``conv_relu=True`` (default) adds a ReLU after each, as most re-implementations do. Parameter counts
    are the same either way; ``conv_relu=False`` is Caffe's network exactly.
    """

    output_layer = "fc2"

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, conv_relu: bool = True
    ) -> None:
        super().__init__(num_classes, in_channels)
        self.conv_relu = conv_relu
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"LeNet5 needs images of at least 16x16, got image_size={image_size}")
        self.fc1 = nn.Linear(50 * side * side, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        act: Callable[[Tensor], Tensor] = torch.relu if self.conv_relu else _identity
        x = nn.functional.max_pool2d(act(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(act(self.conv2(x)), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def _identity(x: Tensor) -> Tensor:
    return x


class MnistCNN(_Classifier):
    """The small CNN of the small-network schedule study: 2 convolutions + 1 linear layer.

    ``conv1`` 16@5x5 (padding 2) -> leaky_relu -> 2x2 max pool -> ``conv2`` 32@5x5 (padding 2) -> leaky_relu ->
    2x2 max pool -> ``fc`` (output) -> sigmoid: 13,200 conv weights, 28,938 parameters on MNIST. The study
    states only "leaky_relu in conv layers, sigmoid in the linear layer"; the widths and kernels are the common
    two-conv MNIST tutorial network's. The sigmoid is part of the output, so a cross-entropy loss sees values
    in (0, 1) (``sigmoid_output=False`` returns the raw linear output).
    """

    output_layer = "fc"

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        channels: Sequence[int] = (16, 32),
        negative_slope: float = 0.01,
        sigmoid_output: bool = True,
    ) -> None:
        super().__init__(num_classes, in_channels)
        first, second = (int(c) for c in channels)
        side = image_size // 4
        if side < 1:
            raise ValueError(f"MnistCNN needs images of at least 4x4, got image_size={image_size}")
        self.negative_slope = negative_slope
        self.sigmoid_output = sigmoid_output
        self.conv1 = nn.Conv2d(in_channels, first, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(first, second, kernel_size=5, padding=2)
        self.fc = nn.Linear(second * side * side, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        slope = self.negative_slope
        x = nn.functional.max_pool2d(nn.functional.leaky_relu(self.conv1(x), slope), 2)
        x = nn.functional.max_pool2d(nn.functional.leaky_relu(self.conv2(x), slope), 2)
        x = self.fc(x.flatten(1))
        return torch.sigmoid(x) if self.sigmoid_output else x


# ---------------------------------------------------------------------------------------------- Conv-2/4/6

_CONVNET_WIDTHS = {2: (64,), 4: (64, 128), 6: (64, 128, 256)}


class ConvNet(_Classifier):
    """Conv-2 / Conv-4 / Conv-6 of Frankle & Carbin (2019), for 32x32 CIFAR-10 images.

    ``depth // 2`` blocks of two 3x3 convolutions (padding 1, ReLU) and a 2x2 max pool, with 64, 128, 256
    channels; then ``fc1`` 256, ``fc2`` 256 (ReLU) and ``fc3`` (output). Convolutions are ``conv1`` ...
    ``conv<depth>``. ``dropout`` (the paper tries 0.5) is applied to the inputs of ``fc1``, ``fc2``, ``fc3``.
    """

    output_layer = "fc3"

    def __init__(
        self,
        depth: int = 2,
        dropout: float = 0.0,
        in_channels: int = 3,
        num_classes: int = 10,
        image_size: int = 32,
        fc_width: int = 256,
    ) -> None:
        super().__init__(num_classes, in_channels)
        if depth not in _CONVNET_WIDTHS:
            raise ValueError(f"ConvNet depth must be one of {sorted(_CONVNET_WIDTHS)}, got {depth}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.depth = depth
        channels = in_channels
        index = 0
        for width in _CONVNET_WIDTHS[depth]:
            for _ in range(2):
                index += 1
                self.add_module(f"conv{index}", nn.Conv2d(channels, width, kernel_size=3, padding=1))
                channels = width
        side = image_size // 2 ** len(_CONVNET_WIDTHS[depth])
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for Conv-{depth}")
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(channels * side * side, fc_width)
        self.fc2 = nn.Linear(fc_width, fc_width)
        self.fc3 = nn.Linear(fc_width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for block in range(self.depth // 2):
            x = torch.relu(getattr(self, f"conv{2 * block + 1}")(x))
            x = torch.relu(getattr(self, f"conv{2 * block + 2}")(x))
            x = nn.functional.max_pool2d(x, 2)
        x = torch.relu(self.fc1(self.dropout(x.flatten(1))))
        x = torch.relu(self.fc2(self.dropout(x)))
        return self.fc3(self.dropout(x))


# ---------------------------------------------------------------------------------------------- VGG

VGG19_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", *[256] * 4, "M", *[512] * 4, "M", *[512] * 4)


class VGG(_Classifier):
    """CIFAR VGG as in Frankle et al. / open_lth: 3x3 conv (bias) + BatchNorm + ReLU, max pools at ``"M"``,
    global average pool, one linear ``fc`` (output). VGG-19: 20,040,522 parameters.

    Layers are ``features.conv<i>`` / ``features.bn<i>`` (i = 1..16 for VGG-19) and ``fc``.
    """

    output_layer = "fc"

    def __init__(self, cfg: Sequence[int | str] = VGG19_CFG, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__(num_classes, in_channels)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels, conv, pool = in_channels, 0, 0
        for item in cfg:
            if item == "M":
                pool += 1
                layers[f"pool{pool}"] = nn.MaxPool2d(2)
                continue
            if not isinstance(item, int):
                raise ValueError(f"VGG cfg entries are channel counts or 'M', got {item!r}")
            conv += 1
            layers[f"conv{conv}"] = nn.Conv2d(channels, item, kernel_size=3, padding=1)
            layers[f"bn{conv}"] = nn.BatchNorm2d(item)
            layers[f"relu{conv}"] = nn.ReLU(inplace=True)
            channels = item
        self.features = nn.Sequential(layers)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def vgg19(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-19 for CIFAR (cfg 64,64,M,128,128,M,256x4,M,512x4,M,512x4): ~20.0M parameters."""
    return VGG(VGG19_CFG, num_classes=num_classes, in_channels=in_channels)


# ---------------------------------------------------------------------------------------------- ResNets


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN; a 1x1 conv + BN ``downsample`` shortcut where the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


class _ResNet(_Classifier):
    """3x3 stem (``conv1``/``bn1``, no max pool), stages ``layer1..layerN`` of BasicBlocks, average pool,
    ``fc``."""

    output_layer = "fc"

    def __init__(self, widths: Sequence[int], blocks: Sequence[int], num_classes: int, in_channels: int) -> None:
        super().__init__(num_classes, in_channels)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        channels = widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks, strict=True), start=1):
            stride = 1 if stage == 1 else 2
            layer = []
            for b in range(count):
                layer.append(BasicBlock(channels, width, stride if b == 0 else 1))
                channels = width
            self.add_module(f"layer{stage}", nn.Sequential(*layer))
        self.num_stages = len(widths)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        for stage in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class CifarResNet(_ResNet):
    """The CIFAR ResNet family of He et al. (2016) as in open_lth ``cifar_resnet_<depth>_<width>``.

    Three stages of ``(depth - 2) // 6`` BasicBlocks with ``width``, ``2*width``, ``4*width`` channels and
    1x1-conv projection shortcuts. ResNet-20 (width 16): 272,474 parameters; Frankle & Carbin's
    "ResNet-18, 274K" is this network.
    """

    def __init__(self, depth: int = 20, width: int = 16, num_classes: int = 10, in_channels: int = 3) -> None:
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        super().__init__((width, 2 * width, 4 * width), (n, n, n), num_classes, in_channels)
        self.depth = depth
        self.width = width


class ResNet18(_ResNet):
    """ResNet-18 (4 stages of 2 BasicBlocks, 64-512 channels) with a 3x3 stem and no max pool for 32x32
    inputs: 11,173,962 parameters."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64) -> None:
        super().__init__((width, 2 * width, 4 * width, 8 * width), (2, 2, 2, 2), num_classes, in_channels)


def resnet20(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> CifarResNet:
    """open_lth's ``cifar_resnet_20`` (width 16: ~272K parameters)."""
    return CifarResNet(20, width=width, num_classes=num_classes, in_channels=in_channels)


def resnet18(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> ResNet18:
    """Standard ResNet-18 adapted to 32x32 input (~11.2M parameters)."""
    return ResNet18(num_classes=num_classes, in_channels=in_channels, width=width)


# ---------------------------------------------------------------------------------------------- ImageNet

VGG_HIDDEN = 4096  # width of torchvision VGG's two hidden fully connected layers


def _mark(model: nn.Module, output_layer: str, num_classes: int, in_channels: int) -> nn.Module:
    """Give a torchvision network the attributes every registry model has (``output_layer``, ...)."""
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"num_classes ({num_classes}) and in_channels ({in_channels}) must be >= 1")
    model.output_layer = output_layer
    model.num_classes = num_classes
    model.in_channels = in_channels
    return model


def _conv_like(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """``conv`` rebuilt for ``in_channels`` inputs, initialised as torchvision initialises its convolutions."""
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        bias=conv.bias is not None,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


def resnet50(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet-50 (``resnet50(weights=None)``: bottleneck blocks 3-4-6-3, 7x7 stem with max pool):
    25,557,032 parameters for 1000 classes. Output layer ``fc``.

    The network of Frankle et al. (2019/2020) and Morcos et al. (2019) on ImageNet and Places365. It takes any
    input of at least 32x32 (global average pooling), so fast presets may run it on tiny images.
    """
    from torchvision.models import resnet50 as torchvision_resnet50  # imported late: torchvision loads slowly

    model = torchvision_resnet50(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = _conv_like(model.conv1, in_channels)
    return _mark(model, "fc", num_classes, in_channels)


def vgg19_imagenet(
    num_classes: int = 1000,
    in_channels: int = 3,
    batch_norm: bool = True,
    hidden: int = VGG_HIDDEN,
    dropout: float = 0.5,
) -> nn.Module:
    """torchvision's ImageNet VGG-19 (``vgg19_bn(weights=None)``): 16 3x3 convolutions, a 7x7 adaptive average
    pool and three fully connected layers (``classifier.0``, ``.3``, ``.6``; the last is the output layer).
    143,678,248 parameters for 1000 classes, 86% of them in ``classifier.0`` (25088 x 4096).

    ``batch_norm=True`` (default) because plain VGG-19 does not train from a random init at the recipes' SGD
    learning rate of 0.1 (Simonyan & Zisserman grew it from shallower nets; torchvision trains ``vgg19`` at 0.01)
    and the CIFAR VGG-19 of Frankle & Carbin (``vgg19``) has BatchNorm as well; BatchNorm adds no prunable
    tensors, so both variants prune the same 16 convolutions and 3 linear layers. ``batch_norm=False`` gives
    torchvision's ``vgg19`` (143,667,240). ``hidden`` narrows the two hidden layers (fast presets: the network
    drops to ~20M parameters), initialised as torchvision does (N(0, 0.01), zero bias).
    """
    from torchvision.models import vgg19, vgg19_bn  # imported late: torchvision loads slowly

    if hidden < 1 or not 0.0 <= dropout < 1.0:
        raise ValueError(f"hidden must be >= 1 and dropout in [0, 1), got hidden={hidden}, dropout={dropout}")
    factory = vgg19_bn if batch_norm else vgg19
    model = factory(weights=None, num_classes=num_classes, dropout=dropout)
    if in_channels != 3:
        model.features[0] = _conv_like(model.features[0], in_channels)
    if hidden != VGG_HIDDEN:
        fan_in = model.classifier[0].in_features
        for index, (n_in, n_out) in ((0, (fan_in, hidden)), (3, (hidden, hidden)), (6, (hidden, num_classes))):
            layer = nn.Linear(n_in, n_out)
            nn.init.normal_(layer.weight, 0.0, 0.01)
            nn.init.zeros_(layer.bias)
            model.classifier[index] = layer
    return _mark(model, "classifier.6", num_classes, in_channels)


# ---------------------------------------------------------------------------------------------- init


def initialize(model: nn.Module, scheme: InitScheme | str = "glorot_normal") -> nn.Module:
    """Re-initialise ``model`` in place and return it.

    Schemes, for every Conv/Linear weight (biases set to 0):

    * ``"glorot_normal"``: N(0, 2 / (fan_in + fan_out)), the Gaussian Glorot init of Frankle & Carbin.
    * ``"kaiming_normal"``: N(0, 2 / fan_in) (He et al., ReLU gain), as open_lth uses for VGG/ResNets.
    * ``"default"``: each layer's own ``reset_parameters`` (PyTorch's default init, biases included).

    BatchNorm/GroupNorm/LayerNorm affine parameters are always set to weight 1, bias 0 (``"default"`` also
    resets running statistics).
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"Unknown init scheme {scheme!r}; valid: {', '.join(INIT_SCHEMES)}")
    for module in model.modules():
        if scheme == "default":
            if module is not model and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        elif isinstance(module, _WEIGHTED):
            if scheme == "glorot_normal":
                nn.init.xavier_normal_(module.weight)
            else:
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        if isinstance(module, _NORMS) and module.weight is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model


# ---------------------------------------------------------------------------------------------- registry


def conv2(dropout: float = 0.0, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> ConvNet:
    """Conv-2 (64,64,pool; FC 256,256,classes): 4.3M parameters."""
    return ConvNet(2, dropout=dropout, in_channels=in_channels, num_classes=num_classes, image_size=image_size)


def conv4(dropout: float = 0.0, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> ConvNet:
    """Conv-4 (64,64,pool,128,128,pool; FC 256,256,classes): 2.4M parameters."""
    return ConvNet(4, dropout=dropout, in_channels=in_channels, num_classes=num_classes, image_size=image_size)


def conv6(dropout: float = 0.0, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> ConvNet:
    """Conv-6 (64,64,pool,128,128,pool,256,256,pool; FC 256,256,classes): 2.26M parameters."""
    return ConvNet(6, dropout=dropout, in_channels=in_channels, num_classes=num_classes, image_size=image_size)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet300": LeNet300,
    "lenet5": LeNet5,
    "mnistcnn": MnistCNN,
    "conv2": conv2,
    "conv4": conv4,
    "conv6": conv6,
    "vgg19": vgg19,
    "resnet20": resnet20,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vgg19_imagenet": vgg19_imagenet,
}


def model_names() -> list[str]:
    """The names :func:`build_model` accepts."""
    return list(MODELS)


def _canonical(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def _registered(name: str) -> str | None:
    """The registry key ``name`` refers to (case, ``-`` and ``_`` ignored), or None."""
    canonical = _canonical(name)
    return next((key for key in MODELS if _canonical(key) == canonical), None)


def build_model(name: str, init: InitScheme | str = "default", **kwargs: object) -> nn.Module:
    """Build a registered network by name (case, ``-`` and ``_`` ignored: ``"Conv-2"`` == ``"conv2"``).

    ``kwargs`` go to the constructor (e.g. ``num_classes``, ``in_channels``, ``image_size``, ``dropout``,
    ``width``); ``init`` is passed to :func:`initialize`. Raises ``ValueError`` for an unknown name and
    ``TypeError`` naming the accepted arguments for an unknown keyword.
    """
    key = _registered(name)
    if key is None:
        raise ValueError(f"Unknown model {name!r}; valid names: {', '.join(MODELS)}")
    factory = MODELS[key]
    signature = inspect.signature(factory)
    unknown = sorted(set(kwargs) - set(signature.parameters))
    if unknown:
        raise TypeError(f"Model {name!r} got unknown arguments {unknown}; it accepts {list(signature.parameters)}")
    model = factory(**kwargs)
    return initialize(model, init) if init != "default" else model


_OUTPUT_LAYERS: dict[str, str] = {
    "lenet300": LeNet300.output_layer,
    "lenet5": LeNet5.output_layer,
    "mnistcnn": MnistCNN.output_layer,
    "conv2": ConvNet.output_layer,
    "conv4": ConvNet.output_layer,
    "conv6": ConvNet.output_layer,
    "vgg19": VGG.output_layer,
    "resnet20": CifarResNet.output_layer,
    "resnet18": ResNet18.output_layer,
    "resnet50": "fc",
    "vgg19_imagenet": "classifier.6",
}


def output_parameter(model: nn.Module | str, prefix: str = "") -> str:
    """Name of the output layer's weight, e.g. ``"fc3.weight"`` (``prefix="model."``: ``"model.fc3.weight"``).

    Accepts a built model (its ``output_layer`` attribute) or a registered name; recipes prune this tensor
    at half the rate of the others.
    """
    if isinstance(model, str):
        key = _registered(model)
        if key is None:
            raise ValueError(f"Unknown model {model!r}; valid names: {', '.join(MODELS)}")
        layer = _OUTPUT_LAYERS[key]
    else:
        layer = getattr(model, "output_layer", None)
        if layer is None:
            raise ValueError(f"{type(model).__name__} has no `output_layer` attribute")
    return f"{prefix}{layer}.weight"
