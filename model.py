"""Models and the parameters clients and server exchange.

    model = create_model("cnn")                    # McMahan et al. 2017 CNN, 1,663,370 params
    model = create_model("cnn", num_classes=5, channels=3, image_size=32)  # the same CNN for your own images
    model = create_model("scatter-linear")         # ScatterNet features + a linear head (Tramèr & Boneh 2021)
    model = create_model("tinyllama-lora", num_classes=5, pretrained=False)  # text: text_models.py
    params = get_parameters(model)                 # {clean name: tensor}, shared storage
    set_parameters(model, params)
    parameter_bytes(params)                        # bytes one transfer costs (float32)

The image models take (B, channels, image_size, image_size): MNIST's 1 × 28 × 28 by default, a
folder's own shape (`data.image_channels`, `data.image_size`) otherwise; only the first convolution's
input channels and the first fully connected layer's inputs change with it.

No BatchNorm anywhere: per-sample gradients (DP-SGD) need layers without batch statistics (the
ScatterNet models normalise their features with GroupNorm, which works on one example at a time).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from experiment_config import SCATTER_MODELS  # noqa: F401  (re-exported: the models that read scattering features)

Parameters = OrderedDict[str, torch.Tensor]

# Prefixes that wrappers add to parameter names (Opacus, torch.compile, DataParallel).
WRAPPER_PREFIXES = ("_module.", "_orig_mod.", "module.")


class MnistCNN(nn.Module):
    """conv5x5(32) → pool → conv5x5(64) → pool → FC 512 → 10 (McMahan et al. 2017); for S × S
    inputs the FC layer reads 64 · (S // 4)² features (7 × 7 for MNIST)."""

    def __init__(self, num_classes: int = 10, channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 32, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * (image_size // 4) ** 2, 512)
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, S, S); the shapes below for MNIST (B, 1, 28, 28)
        x = self.pool(torch.relu(self.conv1(x)))  # (B, 32, 14, 14)
        x = self.pool(torch.relu(self.conv2(x)))  # (B, 64, 7, 7)
        x = torch.relu(self.fc1(x.flatten(1)))  # (B, 512)
        return self.fc2(x)  # (B, classes) logits


class MnistMLP(nn.Module):
    """The 2NN of McMahan et al. 2017: 784 → 200 → 200 → 10, ReLU."""

    def __init__(self, num_classes: int = 10, hidden: int = 200, channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels * image_size**2, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, S, S), MNIST (B, 1, 28, 28)
        x = torch.relu(self.fc1(x.flatten(1)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class MnistDPCNN(nn.Module):
    """The small tanh CNN that DP-SGD papers use for MNIST (Papernot et al. 2021, "Tempered sigmoid
    activations"; Opacus's MNIST example has the same layers with ReLU): conv8x8(16)/2 → pool → conv4x4(32)/2
    → pool → FC 32 → 10, 26,010 parameters.

    Why a second CNN: DP-SGD adds noise of the same size to every coordinate of the clipped gradient, so
    64× fewer parameters than `MnistCNN` leave far more signal per step; bounded tanh activations keep
    activations (and so gradient norms) from growing, so less of each gradient is lost to clipping.
    """

    def __init__(self, num_classes: int = 10, channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 16, kernel_size=8, stride=2, padding=3)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=4, stride=2)
        self.pool = nn.MaxPool2d(2, stride=1)
        side = (image_size - 2) // 2 + 1 - 1  # conv1 (8, stride 2, pad 3), then pool (2, stride 1): 13 for 28
        side = (side - 4) // 2 + 1 - 1  # conv2 (4, stride 2), then pool: 4 for 28
        self.fc1 = nn.Linear(32 * side * side, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, S, S); the shapes below for MNIST (B, 1, 28, 28)
        x = self.pool(torch.tanh(self.conv1(x)))  # (B, 16, 13, 13)
        x = self.pool(torch.tanh(self.conv2(x)))  # (B, 32, 4, 4)
        x = torch.tanh(self.fc1(x.flatten(1)))  # (B, 32)
        return self.fc2(x)  # (B, classes) logits


# ScatterNet (Tramèr & Boneh 2021, "Differentially private learning needs better features"): a fixed
# wavelet scattering transform (kymatio's Scattering2D, J = 2, L = 8 orientations) turns each C × S × S image
# into 81·C channels of (S/4) × (S/4); only a small head on top is trained. The transform has no parameters,
# so it costs no privacy and nothing of it is exchanged.
SCATTER_J, SCATTER_ORIENTATIONS = 2, 8
# Per input channel: 1 low-pass + J·L first-order + L²·J(J−1)/2 second-order coefficients = 81.
SCATTER_COEFFICIENTS = 1 + SCATTER_J * SCATTER_ORIENTATIONS + SCATTER_ORIENTATIONS**2 * SCATTER_J * (SCATTER_J - 1) // 2
SCATTER_GROUPS = 27  # GroupNorm groups over the 81·C feature channels (the paper's free normalisation)


class Scattering(nn.Module):
    """The frozen scattering layer: (B, C, S, S) images → (B, 81·C, S/4, S/4) features (S a multiple of 4).

    kymatio's own torch frontend (`kymatio.torch` also imports its 3-D code, which needs a function newer
    SciPy releases removed); its filters are buffers, never parameters."""

    def __init__(self, channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        if image_size % 2**SCATTER_J:
            raise ValueError(f"the scattering transform needs an image size divisible by 4, got {image_size}")
        from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D  # ~0.3 s: only for these models

        self.transform = ScatteringTorch2D(J=SCATTER_J, shape=(image_size, image_size), L=SCATTER_ORIENTATIONS)
        self.out_channels, self.out_size = SCATTER_COEFFICIENTS * channels, image_size // 2**SCATTER_J

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, S, S)
        features = self.transform(x.contiguous())  # (B, C, 81, S/4, S/4)
        return features.flatten(1, 2)  # (B, 81·C, S/4, S/4)


class ScatterNet(nn.Module):
    """Scattering features → GroupNorm (no affine parameters) → a trained head.

    Takes images (B, C, S, S), or the features themselves (B, 81·C, S/4, S/4): a run computes every
    client's features once when it loads its data (`engine.scattering`), so training never recomputes
    the fixed transform; the model still maps images to logits for anyone holding only images."""

    def __init__(self, head: nn.Module, channels: int, image_size: int) -> None:
        super().__init__()
        self.scattering = Scattering(channels, image_size)
        self.norm = nn.GroupNorm(SCATTER_GROUPS, self.scattering.out_channels, affine=False)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.scattering.out_channels:  # images, not yet features
            x = self.scattering(x)
        return self.head(self.norm(x))  # (B, classes) logits


def scatter_linear(num_classes: int = 10, channels: int = 1, image_size: int = 28) -> ScatterNet:
    """ScatterNet + linear: 81·C·(S/4)² → classes (39,700 parameters for MNIST)."""
    features = SCATTER_COEFFICIENTS * channels * (image_size // 2**SCATTER_J) ** 2
    return ScatterNet(nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes)), channels, image_size)


def scatter_cnn(num_classes: int = 10, channels: int = 1, image_size: int = 28) -> ScatterNet:
    """ScatterNet + the paper's small tanh CNN for MNIST features: conv3x3(16)/2 → conv3x3(32) → FC 32 →
    classes (33,066 parameters for MNIST; shapes below for its 81 × 7 × 7 features)."""
    side = (image_size // 2**SCATTER_J - 1) // 2 + 1  # conv3x3, stride 2, padding 1: 7 → 4
    head = nn.Sequential(
        nn.Conv2d(SCATTER_COEFFICIENTS * channels, 16, kernel_size=3, stride=2, padding=1), nn.Tanh(),  # (B, 16, 4, 4)
        nn.Conv2d(16, 32, kernel_size=3, stride=1, padding=1), nn.Tanh(),  # (B, 32, 4, 4)
        nn.Flatten(), nn.Linear(32 * side * side, 32), nn.Tanh(), nn.Linear(32, num_classes),  # (B, classes)
    )  # fmt: skip
    return ScatterNet(head, channels, image_size)


MODEL_FACTORIES = {
    "cnn": MnistCNN, "mlp": MnistMLP, "cnn-dp": MnistDPCNN,
    "scatter-linear": scatter_linear, "scatter-cnn": scatter_cnn,
}  # fmt: skip

# Token ids (B, L) → multi-label logits; built by text_models.py (LoRA on a frozen transformer).
TEXT_MODELS = ("tinyllama-lora", "minilm-lora")


IMAGE_OPTIONS = ("channels", "image_size")  # the input shape every image model takes (MNIST: 1, 28)


def create_model(name: str, *, num_classes: int = 10, seed: int | None = None, **options: Any) -> nn.Module:
    """A fresh model by config name; `seed` makes its initial weights reproducible.

    `options`: for image models `channels` and `image_size` (the input (B, channels, size, size));
    for text models pretrained, lora_rank, lora_alpha, lora_dropout, lora_targets, pooling, lora_layers
    (see `text_models.TextModelOptions`).
    """
    if name in TEXT_MODELS:
        from ngss.text_models import create_text_model  # lazy: transformers + peft take seconds to import

        return create_text_model(name, num_classes=num_classes, seed=seed, **options)
    if name not in MODEL_FACTORIES:
        raise ValueError(f"model.name must be one of {', '.join([*MODEL_FACTORIES, *TEXT_MODELS])}; got {name!r}")
    text_options = sorted(set(options) - set(IMAGE_OPTIONS))
    if text_options:
        raise ValueError(f"options {text_options} apply only to text models ({', '.join(TEXT_MODELS)})")
    if seed is None:
        return MODEL_FACTORIES[name](num_classes=num_classes, **options)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODEL_FACTORIES[name](num_classes=num_classes, **options)


def clean_name(name: str) -> str:
    """Strip framework wrapper prefixes so names match across wrapped and plain models."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name


def get_parameters(model: nn.Module) -> Parameters:
    """The exchanged (trainable) parameters by clean name; tensors share the model's storage."""
    return OrderedDict((clean_name(n), p.data) for n, p in model.named_parameters() if p.requires_grad)


def set_parameters(model: nn.Module, params: Parameters) -> None:
    """Copy `params` into the model in place; names and shapes must match exactly."""
    own = get_parameters(model)
    if own.keys() != params.keys():
        missing, extra = own.keys() - params.keys(), params.keys() - own.keys()
        raise ValueError(f"parameter names differ: missing {sorted(missing)}, unexpected {sorted(extra)}")
    with torch.no_grad():
        for name, tensor in own.items():
            if tensor.shape != params[name].shape:
                raise ValueError(f"{name}: shape {tuple(params[name].shape)} != model's {tuple(tensor.shape)}")
            tensor.copy_(params[name])


def parameter_count(params: Parameters) -> int:
    return sum(t.numel() for t in params.values())


def parameter_bytes(params: Parameters) -> int:
    """Bytes on the wire for one copy of `params`, at their dtypes (no framing)."""
    return sum(t.numel() * t.element_size() for t in params.values())


def flatten(params: Parameters) -> torch.Tensor:
    """All parameters as one 1-D float32 vector, in name order."""
    return torch.cat([t.reshape(-1).to(torch.float32) for t in params.values()])


def unflatten(vector: torch.Tensor, like: Parameters) -> Parameters:
    """Inverse of `flatten`: views of `vector` shaped like `like`."""
    needed = sum(t.numel() for t in like.values())
    if vector.numel() != needed:
        raise ValueError(f"vector has {vector.numel()} values, parameters need {needed}")
    out, offset = OrderedDict(), 0
    for name, tensor in like.items():
        out[name] = vector[offset : offset + tensor.numel()].view_as(tensor)
        offset += tensor.numel()
    return out


def head_size(params: Parameters) -> int:
    """How many trailing values of `flatten(params)` belong to the final layer (the last
    module's weight and bias): what FedPer keeps on each client."""
    last_module = next(reversed(params)).rsplit(".", 1)[0]
    return sum(t.numel() for name, t in params.items() if name.rsplit(".", 1)[0] == last_module)
