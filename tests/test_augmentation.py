"""Image augmentation: shapes, ranges, determinism under the global seed, and that it changes images."""

from __future__ import annotations

import pytest
import torch

from modeling_ccr.augmentation import ImageAugmentation, restyle


def _images() -> torch.Tensor:
    torch.manual_seed(0)
    images = torch.ones(6, 3, 32, 32)
    images[:, :, 8:24, 8:24] = torch.rand(6, 3, 1, 1) * 2 - 1  # a coloured square on a white background
    return images


def test_augmentation_is_seeded_bounded_and_changes_images():
    images = _images()
    augment = ImageAugmentation()
    torch.manual_seed(1)
    first = augment(images)
    torch.manual_seed(1)
    second = augment(images)
    assert torch.equal(first, second)
    assert first.shape == images.shape and first.dtype == images.dtype
    assert first.min() >= -1.0 and first.max() <= 1.0
    assert not torch.allclose(first, images)


def test_augmentation_keeps_bf16_and_rejects_bad_shapes():
    assert ImageAugmentation()(_images().bfloat16()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        ImageAugmentation()(torch.zeros(3, 32, 32))


def test_restyle_is_deterministic_and_washes_colours_out():
    images = _images()
    restyled = restyle(images)
    assert torch.equal(restyled, restyle(images))
    spread = lambda x: (x.max(dim=1).values - x.min(dim=1).values).max()  # noqa: E731
    assert spread(restyled) < spread(images)
