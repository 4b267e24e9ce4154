"""On-device augmentation: what each option does, and that every draw comes from the generator."""

from __future__ import annotations

import pytest
import torch

from nettrain.data.augment import Augment, sample_beta


def batch(n=16):
    g = torch.Generator().manual_seed(5)
    return torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % 4


def test_flip_mirrors_some_images_and_keeps_the_others():
    x, y = batch()
    out, same_y = Augment("flip", generator=torch.Generator().manual_seed(0))(x, y)
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
    assert torch.equal(same_y, y)


def test_crop_shifts_each_image_within_the_padding():
    x, y = batch()
    out, _ = Augment("crop", crop_padding=2, generator=torch.Generator().manual_seed(0))(x, y)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for o, p in zip(out, padded):
        assert any(torch.equal(o, p[:, r : r + 8, c : c + 8]) for r in range(5) for c in range(5))
    assert not torch.equal(out, x)


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_mixing_gives_soft_targets_that_sum_to_one(mix):
    x, y = batch()
    out, soft = Augment(mix=mix, mix_alpha=1.0, num_classes=4, generator=torch.Generator().manual_seed(1))(x, y)
    assert soft.shape == (16, 4) and torch.allclose(soft.sum(1), torch.ones(16))
    assert not torch.equal(out, x)
    loss = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(torch.randn(16, 4), soft)  # takes probabilities
    assert torch.isfinite(loss)


def test_the_same_generator_state_gives_the_same_augmentation_whatever_the_global_rng():
    x, y = batch()
    a = Augment("flip_crop", mix="cutmix", num_classes=4, generator=torch.Generator().manual_seed(3))
    b = Augment("flip_crop", mix="cutmix", num_classes=4, generator=torch.Generator().manual_seed(3))
    first = a(x, y)
    torch.manual_seed(123)
    torch.rand(10)
    second = b(x, y)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_beta_draws_have_the_beta_mean_and_variance():
    g = torch.Generator().manual_seed(0)
    for alpha in (0.2, 1.0, 2.0):
        draws = torch.stack([sample_beta(alpha, g) for _ in range(2000)])
        assert 0 <= draws.min() and draws.max() <= 1
        assert abs(draws.mean().item() - 0.5) < 0.03
        assert abs(draws.var().item() - 1 / (4 * (2 * alpha + 1))) < 0.015
