"""torchvision's classification architectures as nettrain models (`model=torchvision`).

    torchvision_model(input_shape=(3, 32, 32), num_classes=10, name="resnet18", small_input=True)

The architecture is built with the data's class count. The input is adapted where needed:
- a channel count other than 3 replaces the first convolution by one with that many inputs
  (with pretrained weights, its kernel is the pretrained kernel summed over the RGB channels);
- `small_input=True` gives the ResNet family the CIFAR stem (3x3 stride-1 conv1, no max-pool),
  so a 32x32 image keeps its detail through the network;
- a vision transformer (`vit_*`) is built for the data's square image size when it is not 224.

`weights` is a local file (`.pt`/`.pth`, loaded with weights_only=True, or `.safetensors`), or a
torchvision weights name (`DEFAULT`, `IMAGENET1K_V1`, ...) read from torchvision's cache
(`$TORCH_HOME/hub/checkpoints`). Nothing is downloaded unless `download=True`; offline without
the file, the error says where to put it. `pretrained=True` is `weights="DEFAULT"`. Tensors whose shape does not fit (the 1000-class head)
are left at their fresh initialisation, and the run says which.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

RESNET_FAMILY = ("resnet", "resnext", "wide_resnet")


def _models() -> Any:
    """torchvision.models, imported when a torchvision model is first asked for: torchvision takes
    about a second to import, and every run imports nettrain.models (MLP, CNN, ResNet)."""
    from torchvision import models

    return models


def available() -> list[str]:
    """The classification architectures torchvision offers, by name."""
    models = _models()
    return list(models.list_models(module=models))


def torchvision_model(
    input_shape: Sequence[int],
    num_classes: int,
    name: str = "resnet18",
    weights: str | None = None,
    small_input: bool = False,
    download: bool = False,
    pretrained: bool = False,
    **kwargs,
) -> nn.Module:
    """torchvision's `name` with `num_classes` outputs, adapted to `input_shape` (C, H, W);
    `pretrained=True` is `weights="DEFAULT"`, torchvision's recommended weights for `name`."""
    if pretrained and weights:
        raise ValueError(
            f"model.pretrained=true and model.weights={weights!r}: choose one; pretrained=true is weights=DEFAULT"
        )
    key = "model.pretrained=true" if pretrained else None
    weights = "DEFAULT" if pretrained else weights
    models = _models()
    names = available()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(
            f"model.name={name!r}: not a torchvision classification model; {hint}allowed: {', '.join(names)}"
        )
    if len(input_shape) != 3:
        raise ValueError(f"model.name={name!r} takes images (C, H, W); the data's input shape is {list(input_shape)}")
    channels, height, width = input_shape
    if name.startswith("vit_") and (height, width) != (224, 224) and not weights:
        kwargs.setdefault("image_size", height)  # positional embeddings for the data's size
    model = models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if small_input:
        _small_stem(model, name)
    if channels != 3:
        _set_input_channels(model, channels)
    if weights:
        state = _read_weights(name, weights, download, key)
        skipped = load_matching(model, state)
        if skipped:
            print(
                f"model: {len(skipped)} pretrained tensor(s) did not fit and keep their fresh "
                f"initialisation: {', '.join(skipped)}"
            )
    return model


def _small_stem(model: nn.Module, name: str) -> None:
    """The CIFAR stem of the ResNet paper: conv1 3x3 stride 1, no max-pool."""
    if not name.startswith(RESNET_FAMILY):
        raise ValueError(
            f"model.small_input=true: the CIFAR stem is for the ResNet family "
            f"(resnet*, resnext*, wide_resnet*), not {name!r}; leave it false, or use "
            "model=resnet (nettrain's CIFAR ResNet)"
        )
    conv = model.get_submodule("conv1")
    assert isinstance(conv, nn.Conv2d)
    model.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    for qualified, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent_name, _, attr = qualified.rpartition(".")
            return model.get_submodule(parent_name), attr, module
    raise ValueError("the model has no Conv2d to take the input channels")


def _set_input_channels(model: nn.Module, channels: int) -> None:
    """Replace the first convolution by one with `channels` inputs, all else equal."""
    parent, attr, conv = _first_conv(model)
    new = nn.Conv2d(
        channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]  # a Conv2d's own 2-tuples
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        groups=1,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    setattr(parent, attr, new)


def cache_path(url: str) -> Path:
    """Where torchvision keeps a downloaded weights file: $TORCH_HOME/hub/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _read_weights(name: str, weights: str, download: bool, key: str | None = None) -> dict[str, torch.Tensor]:
    """The weights' tensors; `key` is the setting that asked for them, for the messages (model.weights=...)."""
    key = key or f"model.weights={weights!r}"
    path = Path(weights).expanduser()
    if path.suffix in (".pt", ".pth", ".safetensors", ".bin") or path.exists():
        if not path.is_file():
            raise ValueError(f"model.weights={weights!r}: no such file")
        return read_state_dict(path)
    models = _models()
    enum = models.get_model_weights(name)
    label = weights.split(".")[-1]  # ResNet18_Weights.IMAGENET1K_V1 or IMAGENET1K_V1
    try:
        entry = enum[label]
    except KeyError:
        allowed = ", ".join(["DEFAULT", *enum.__members__]) + ", or a local .pt/.pth/.safetensors file"
        raise ValueError(f"model.weights={weights!r}: not a weights name of {name}; allowed: {allowed}") from None
    cached = cache_path(entry.url)
    if not cached.is_file():
        if not download:
            raise ValueError(
                f"{key}: {name}'s weights ({entry}) are not in torchvision's cache: no file {cached}; "
                f"downloading is off. Offline: fetch {entry.url} elsewhere and copy it to {cached}, or give "
                "model.weights=/path/to/file.pth; online: add model.download=true"
            )
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(entry.url, str(cached), progress=False)
        except OSError as exc:  # no network (URLError is one), or the cache folder not writable
            raise ValueError(
                f"{key}: {name}'s weights could not be downloaded from {entry.url} ({exc}); without a network, "
                f"fetch the file elsewhere and copy it to {cached}"
            ) from None
    return read_state_dict(cached)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from torch.save'd tensors (weights_only=True); a
    nettrain checkpoint gives its `model` entry."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an unreadable file is reported by name
        raise ValueError(
            f"model.weights={str(path)!r}: cannot be read as tensors ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise TypeError(f"model.weights={str(path)!r}: holds no state dict")
    return state


def load_matching(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load every tensor of `state` that fits `model`; an RGB kernel meeting a model with other
    input channels is summed over its channels (or repeated, when the model has more); returns
    the names that did not fit."""
    own = model.state_dict()
    fitting, skipped = {}, []
    for key, value in state.items():
        target = own.get(key)
        if target is None:
            continue
        if (
            value.shape != target.shape
            and value.dim() == 4
            and value.shape[0] == target.shape[0]
            and value.shape[2:] == target.shape[2:]
        ):
            value = _adapt_kernel(value, target.shape[1])
        if value.shape == target.shape:
            fitting[key] = value
        else:
            skipped.append(key)
    if not fitting:
        raise ValueError("model.weights: no tensor of the file fits the model (is it for another architecture?)")
    model.load_state_dict(fitting, strict=False)
    return sorted(skipped)


def _adapt_kernel(kernel: torch.Tensor, channels: int) -> torch.Tensor:
    if channels == 1:
        return kernel.sum(dim=1, keepdim=True)
    repeats = -(-channels // kernel.shape[1])
    return kernel.repeat(1, repeats, 1, 1)[:, :channels] * (kernel.shape[1] / channels)
