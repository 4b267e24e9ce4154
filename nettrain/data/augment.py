"""Data augmentation on the training device, one batch at a time.

`data.augment`: none | flip (horizontal, p = 0.5) | crop (pad by `crop_padding` with zeros,
which is the mean after normalisation, then a random crop back to size) | flip_crop.
`data.mix`: none | mixup | cutmix, with `mix_alpha` for the Beta(alpha, alpha) mixing weight;
these give soft targets (N, num_classes), which torch.nn.CrossEntropyLoss takes as class
probabilities.

Every random draw comes from the run's data generator (CPU, checkpointed with the sample order),
never from torch's global RNG: a resumed run draws the same flips, crops and mixes as an
uninterrupted one. The draws are small CPU tensors copied to the device: no host sync per step.

`augment=...` (conf/augment/, :class:`ImageAugment`): torchvision.transforms.v2's
RandomResizedCrop, RandomHorizontalFlip, ColorJitter, RandAugment or TrivialAugmentWide and
RandomErasing, each image of the batch with its own draws, on the batch's device. The v2
transforms draw from torch's global RNG; each batch draws one seed from the data generator and
runs them under a forked global RNG seeded with it, so these draws too are the generator's, and
the global RNG (dropout) is as if they had not run. torchvision is imported only by runs that ask
for them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

AUGMENTS = ("none", "flip", "crop", "flip_crop")
MIXES = ("none", "mixup", "cutmix")


class Augment:
    """`augment(x, y) -> (x, y)` for one normalised training batch x (N, C, H, W)."""

    def __init__(
        self,
        augment: str = "none",
        crop_padding: int = 4,
        mix: str = "none",
        mix_alpha: float = 1.0,
        num_classes: int = 2,
        generator: torch.Generator | None = None,
    ):
        if augment not in AUGMENTS:
            raise ValueError(f"data.augment={augment!r}: allowed: {', '.join(AUGMENTS)}")
        if mix not in MIXES:
            raise ValueError(f"data.mix={mix!r}: allowed: {', '.join(MIXES)}")
        self.flip = augment in ("flip", "flip_crop")
        self.pad = crop_padding if augment in ("crop", "flip_crop") else 0
        self.mix, self.alpha, self.num_classes = mix, mix_alpha, num_classes
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    @property
    def active(self) -> bool:
        return self.flip or self.pad > 0 or self.mix != "none"

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.flip:
            x = self._flip(x)
        if self.pad:
            x = self._crop(x)
        if self.mix != "none":
            x, y = self._mix(x, y)
        return x, y

    def _flip(self, x: torch.Tensor) -> torch.Tensor:
        flip = (torch.rand(len(x), generator=self.generator) < 0.5).to(x.device, non_blocking=True)
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.pad
        offsets = torch.randint(0, 2 * p + 1, (2, n), generator=self.generator).to(x.device, non_blocking=True)
        padded = F.pad(x, (p, p, p, p))
        rows = (offsets[0].view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
        cols = (offsets[1].view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
        batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        channel = torch.arange(c, device=x.device).view(1, c, 1, 1)
        return padded[batch, channel, rows, cols]

    def _mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g, n = self.generator, len(x)
        perm = torch.randperm(n, generator=g).to(x.device, non_blocking=True)
        lam = sample_beta(self.alpha, g)  # a 0-d CPU tensor: copied to the device, never read here
        if self.mix == "cutmix":
            h, w = x.shape[2], x.shape[3]
            side = (1 - lam).sqrt()
            centre = torch.rand(2, generator=g)
            (top, bottom), (left, right) = (
                (centre[i] * size - side * size / 2, centre[i] * size + side * size / 2) for i, size in ((0, h), (1, w))
            )
            rows, cols = torch.arange(h) + 0.5, torch.arange(w) + 0.5  # pixel centres inside the box
            box = ((rows >= top) & (rows < bottom)).view(h, 1) & ((cols >= left) & (cols < right)).view(1, w)
            lam = 1 - box.float().mean()  # the share of the image actually kept
            x = torch.where(box.to(x.device, non_blocking=True), x[perm], x)
        else:
            x = torch.lerp(x[perm], x, lam.to(x.device, non_blocking=True))
        lam = lam.to(x.device, non_blocking=True)
        soft = F.one_hot(y, self.num_classes).to(x.dtype) if y.dim() == 1 else y
        return x, torch.lerp(soft[perm], soft, lam)


def sample_beta(alpha: float, generator: torch.Generator, tries: int = 16) -> torch.Tensor:
    """One Beta(alpha, alpha) draw from `generator`, as a 0-d float32 CPU tensor.

    G1 / (G1 + G2) with G ~ Gamma(alpha), each by Marsaglia and Tsang's method (`tries`
    candidates at once, the first accepted one kept; alpha < 1 through Gamma(alpha + 1) * U^(1/alpha)).
    torch's own Beta sampler cannot take a generator, and the draw must come from the data generator.
    """
    a = alpha + 1.0 if alpha < 1 else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    normal = torch.randn(2, tries, generator=generator, dtype=torch.float64)
    uniform = torch.rand(2, tries, generator=generator, dtype=torch.float64)
    v = (1 + c * normal) ** 3
    accept = (v > 0) & (uniform.log() < 0.5 * normal**2 + d - d * v + d * v.clamp_min(1e-300).log())
    first = accept.to(torch.int8).argmax(dim=1, keepdim=True)  # the first accepted candidate of each row
    gamma = (d * v).gather(1, first).squeeze(1).clamp_min(1e-12)
    if alpha < 1:
        gamma = gamma * torch.rand(2, generator=generator, dtype=torch.float64) ** (1.0 / alpha)
    return (gamma[0] / gamma.sum()).to(torch.float32)


SEED_RANGE = 2**62  # the per-batch seed of the v2 transforms, drawn from the data generator


class ImageAugment:
    """`augment(x, y) -> (x, y)`: torchvision.transforms.v2 on each image of one normalised
    training batch x (N, C, H, W), on its device; y passes through.

    The images are taken back to pixels in [0, 1] (x * std + mean, the data's normalisation) for
    the crop, flip, colour and policy transforms, which expect that range, and normalised again;
    RandomErasing then sets its rectangles to 0, the mean. Each setting off (None, False, "none",
    0) leaves its transform out."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: Sequence[int],
        resized_crop: float | None = None,
        flip: bool = False,
        color_jitter: float | None = None,
        policy: str = "none",
        erasing: float = 0.0,
        generator: torch.Generator | None = None,
    ):
        from torchvision.transforms import v2  # only runs with augment=... import torchvision

        pixels: list[Any] = []
        if resized_crop is not None:
            pixels.append(v2.RandomResizedCrop(tuple(image_size), scale=(resized_crop, 1.0), antialias=True))
        if flip:
            pixels.append(v2.RandomHorizontalFlip())
        if color_jitter is not None:
            pixels.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
        policies: dict[str, Callable[[], Any]] = {
            "randaugment": v2.RandAugment,
            "trivialaugment": v2.TrivialAugmentWide,
        }
        if policy != "none":
            if policy not in policies:
                raise ValueError(f"augment.policy={policy!r}: allowed: none, {', '.join(policies)}")
            pixels.append(policies[policy]())
        self.pixels = v2.Compose(pixels) if pixels else None
        self.erasing = v2.RandomErasing(p=erasing, value=0.0) if erasing > 0 else None
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    @property
    def active(self) -> bool:
        return self.pixels is not None or self.erasing is not None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seed = int(torch.randint(SEED_RANGE, (), generator=self.generator))  # a CPU draw: no host sync
        cuda = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # the global RNG as it was, afterwards
            torch.manual_seed(seed)
            if self.pixels is not None:
                mean, std = self.mean.to(x.device, x.dtype), self.std.to(x.device, x.dtype)
                pixels = (x * std + mean).clamp_(0.0, 1.0)
                x = (torch.stack([self.pixels(image) for image in pixels]) - mean) / std
            if self.erasing is not None:
                x = torch.stack([self.erasing(image) for image in x])
        return x, y


class Chain:
    """Augmentations applied one after the other: `chain(x, y) -> (x, y)`."""

    def __init__(self, *augments: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]):
        self.augments = augments

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for augment in self.augments:
            x, y = augment(x, y)
        return x, y


def chained(*augments: Any) -> Any:
    """The augmentations given (None for one that is off) as one call: None when all are off."""
    on = [augment for augment in augments if augment is not None]
    return None if not on else on[0] if len(on) == 1 else Chain(*on)
