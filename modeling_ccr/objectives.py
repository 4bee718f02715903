"""Contrastive objectives compared in the paper: 1-to-K and the three baselines it improves on.

All take L2-normalised embeddings, ``text_image_ids`` (which image each text describes),
``text_language_ids`` and the temperature, and are built on the one implementation of the
contrastive loss, :func:`one_to_k_contrastive_loss` (with one text per image it *is* the CLIP loss).

- ``one_to_k``: every image against all texts in all languages at once (the paper's method).
- ``one_to_one``: one caption per image, in a language drawn at random each step (cross-modal style).
- ``per_language``: a separate CLIP loss per language, averaged (cross-modal style, one language per loss).
- ``pivot``: CLIP between images and English captions, plus a text-to-text contrastive loss that pulls
  every other language onto the English caption of the same image (cross-lingual style).
"""

from __future__ import annotations

import torch

from .modeling_ccr import one_to_k_contrastive_loss

LOSS_TYPES = ("one_to_k", "one_to_one", "per_language", "pivot")


def _local_ids(selected: torch.Tensor, size: int) -> torch.Tensor:
    """Map from global index (0..size-1) to position in ``selected``; -1 for indices not selected."""
    remap = torch.full((size,), -1, dtype=torch.long, device=selected.device)
    remap[selected] = torch.arange(len(selected), device=selected.device)
    return remap


def _subset_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_image_ids: torch.Tensor,
    keep: torch.Tensor,
    temperature: torch.Tensor,
) -> torch.Tensor:
    """Contrastive loss over the kept texts and the images they describe (images without one drop out)."""
    images = torch.unique(text_image_ids[keep])
    remap = _local_ids(images, image_embeds.shape[0])
    return one_to_k_contrastive_loss(
        image_embeds[images], text_embeds[keep], remap[text_image_ids[keep]], temperature
    )


def one_to_one_loss(image_embeds, text_embeds, text_image_ids, text_language_ids, temperature) -> torch.Tensor:
    """CLIP loss on one caption per image, drawn uniformly among that image's captions this step."""
    scores = torch.rand(text_image_ids.shape, device=text_image_ids.device)
    best = torch.full((image_embeds.shape[0],), -1.0, device=scores.device).scatter_reduce(
        0, text_image_ids, scores, reduce="amax"
    )
    keep = scores == best[text_image_ids]
    return _subset_loss(image_embeds, text_embeds, text_image_ids, keep, temperature)


def per_language_loss(image_embeds, text_embeds, text_image_ids, text_language_ids, temperature) -> torch.Tensor:
    """Mean over the batch's languages of a CLIP loss restricted to that language's captions."""
    losses = [
        _subset_loss(image_embeds, text_embeds, text_image_ids, text_language_ids == language, temperature)
        for language in torch.unique(text_language_ids)
    ]
    return torch.stack(losses).mean()


def pivot_loss(
    image_embeds, text_embeds, text_image_ids, text_language_ids, temperature, pivot_language_id: int
) -> torch.Tensor:
    """CLIP(image, English) + InfoNCE(other language -> English caption of the same image), averaged."""
    is_pivot = text_language_ids == pivot_language_id
    num_images = image_embeds.shape[0]
    has_pivot = torch.zeros(num_images, dtype=torch.bool, device=is_pivot.device)
    has_pivot[text_image_ids[is_pivot]] = True
    if not bool(has_pivot[text_image_ids].all()):
        raise ValueError("the pivot objective needs an English caption for every image of the batch")
    image_text = _subset_loss(image_embeds, text_embeds, text_image_ids, is_pivot, temperature)
    others = ~is_pivot
    if not bool(others.any()):
        return image_text
    # One English caption per image stands as that image's pivot (the first one in the batch).
    pivot_rows = torch.full((num_images,), -1, dtype=torch.long, device=is_pivot.device)
    pivot_positions = torch.nonzero(is_pivot).squeeze(1)
    pivot_rows.scatter_reduce_(0, text_image_ids[pivot_positions], pivot_positions, reduce="amin", include_self=False)
    images = torch.nonzero(pivot_rows >= 0).squeeze(1)
    remap = _local_ids(images, num_images)
    # Text-to-text: the English captions play the role of the images of the 1-to-K loss.
    text_text = one_to_k_contrastive_loss(
        text_embeds[pivot_rows[images]], text_embeds[others], remap[text_image_ids[others]], temperature
    )
    return (image_text + text_text) / 2


def contrastive_objective(
    loss_type: str,
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_image_ids: torch.Tensor,
    text_language_ids: torch.Tensor,
    temperature: torch.Tensor,
    pivot_language_id: int | None = None,
    divide_by_k: bool = False,
) -> torch.Tensor:
    """The ITC loss named by ``loss_type`` (one of :data:`LOSS_TYPES`)."""
    if loss_type == "one_to_k":
        return one_to_k_contrastive_loss(image_embeds, text_embeds, text_image_ids, temperature, divide_by_k=divide_by_k)
    if loss_type == "one_to_one":
        return one_to_one_loss(image_embeds, text_embeds, text_image_ids, text_language_ids, temperature)
    if loss_type == "per_language":
        return per_language_loss(image_embeds, text_embeds, text_image_ids, text_language_ids, temperature)
    if loss_type == "pivot":
        if pivot_language_id is None:
            raise ValueError("the pivot objective needs English ('en') among the training languages")
        return pivot_loss(image_embeds, text_embeds, text_image_ids, text_language_ids, temperature, pivot_language_id)
    raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
