"""Retrieval evaluation of a model: encode a canonical CCR dataset with it, rank, and compute the metrics.

The ranking itself (ranks from embeddings or scores, exact, blocked, the tie rule, stage-2 re-ranking) is
in ``ranking``; the metrics and their JSON layout in ``results``. Their public names are re-exported here,
where the package has always offered them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .dataset_schema import canonical_languages, captions_in, check_ccr_dataset
from .mixed_pool import compute_mixed_pool_ranks, mixed_pool_metrics
from .ranking import (
    DEFAULT_BLOCK_ELEMENTS,
    RetrievalRanks,
    compute_retrieval_ranks,
    progress_bar,
    rank_from_counts,
    ranks_from_scores,
    rerank_ranks,
)
from .results import RetrievalResults, flatten_metrics, retrieval_metrics

__all__ = [
    "DEFAULT_BLOCK_ELEMENTS",
    "RetrievalRanks",
    "RetrievalResults",
    "compute_retrieval_ranks",
    "evaluate_retrieval",
    "flatten_metrics",
    "rank_from_counts",
    "ranks_from_scores",
    "rerank_ranks",
    "retrieval_metrics",
]


# ------------------------------------------------------------------------------------- with a model


def _features(output: Any, kind: str) -> torch.Tensor:
    """Accept a tensor or a model output (``{kind}_embeds`` / ``pooler_output``, as CLIP in transformers 5)."""
    if isinstance(output, torch.Tensor):
        return output
    for name in (f"{kind}_embeds", "pooler_output"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"get_{kind}_features returned {type(output).__name__}; expected a tensor or an output with "
                    f"{kind}_embeds / pooler_output")


def _model_device(model: torch.nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def _to_device(batch: Any, device: torch.device) -> dict[str, Any]:
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in dict(batch).items()}


def _image_batch(images: Any, start: int, stop: int) -> list[Any]:
    """Rows ``start:stop`` of an image list or Dataset, decoded. An image that does not decode is a ValueError
    naming its row, id and file, not an error from deep inside PIL / datasets."""
    if not hasattr(images, "cast_column"):
        batch = images[start:stop]
        return batch["image"] if isinstance(batch, dict) else list(batch)
    try:
        return images[start:stop]["image"]
    except Exception:  # find the row at fault; PIL and datasets raise many types for a broken image
        from datasets import Image as ImageFeature

        raw = images.cast_column("image", ImageFeature(decode=False))
        for row in range(start, min(stop, len(images))):
            try:
                images[row]["image"]
            except Exception as error:
                entry = raw[row]
                name = entry["image"].get("path") or "embedded bytes"
                raise ValueError(f"image in row {row} (image_id={entry.get('image_id')!r}, {name}) does not decode: "
                                 f"{type(error).__name__}: {error}") from None
        raise


def encode_images(
    model: torch.nn.Module, processor: Any, images: Any, batch_size: int = 64, progress: bool = False,
    with_tokens: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """(N, D) float32 image features (projected, not normalised) on the CPU, batch by batch.

    ``images``: a list (PIL, paths, arrays, bytes) or a Dataset with an ``image`` column, decoded one batch at
    a time so that a large gallery is never in memory at once. The processor converts every image mode itself
    (RGBA composited onto white as in training; a bare ``convert("RGB")`` would turn it black).
    ``with_tokens`` also returns the fusion encoder's image tokens (for ITM re-ranking).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if hasattr(images, "select_columns"):
        images = images.select_columns([c for c in ("image", "image_id") if c in images.column_names])
    device, features, tokens = _model_device(model), [], []
    starts = range(0, len(images), batch_size)
    with torch.no_grad():
        for start in progress_bar(starts, len(starts), "encoding images", progress):
            batch = _image_batch(images, start, start + batch_size)
            pixel_values = _to_device(processor(images=batch), device)["pixel_values"]
            features.append(_features(model.get_image_features(pixel_values=pixel_values), "image").float().cpu())
            if with_tokens:
                tokens.append(model.get_image_tokens(pixel_values=pixel_values).cpu())
    return (torch.cat(features), torch.cat(tokens)) if with_tokens else torch.cat(features)


def encode_texts(
    model: torch.nn.Module, processor: Any, texts: Sequence[str], batch_size: int = 64, progress: bool = False
) -> torch.Tensor:
    """(T, D) float32 text features (projected, not normalised) on the CPU, batch by batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device, features = _model_device(model), []
    starts = range(0, len(texts), batch_size)
    with torch.no_grad():
        for start in progress_bar(starts, len(starts), "encoding texts", progress):
            encoded = _to_device(processor(text=list(texts[start : start + batch_size])), device)
            output = model.get_text_features(input_ids=encoded["input_ids"], attention_mask=encoded.get("attention_mask"))
            features.append(_features(output, "text").float().cpu())
    return torch.cat(features)


def _flatten_captions(dataset: Any, languages: Sequence[str] | None) -> tuple[list[str], list[int], list[str]]:
    texts, image_ids, text_languages = [], [], []
    for row, captions in enumerate(dataset.select_columns(["captions"])["captions"]):
        for caption in captions_in(captions, languages):
            texts.append(caption["text"])
            image_ids.append(row)
            text_languages.append(caption["language"])
    return texts, image_ids, text_languages


def evaluate_retrieval(
    model: torch.nn.Module,
    processor: Any,
    dataset: Any,
    batch_size: int = 64,
    languages: Sequence[str] | None = None,
    rerank_top_k: int = 0,
    progress: bool = True,
    mrv_variant: str = "variance",
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int | None = None,
) -> tuple[dict[str, Any], RetrievalRanks]:
    """Encode a canonical CCR dataset with ``model`` / ``processor`` and evaluate retrieval.

    Images are decoded batch by batch. ``rerank_top_k > 0`` adds stage 2 (ITM re-scoring of each query's
    top-k), which needs a model with fusion layers (``get_image_tokens`` / ``itm_scores``); image tokens
    are kept for all images during re-ranking. Returns ``(retrieval_metrics(...), ranks)``; the metrics
    include the ``mixed`` block (``mixed_pool``: all captions of all languages in one pool, stage 1).
    """
    check_ccr_dataset(dataset)
    languages = canonical_languages(languages)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if rerank_top_k:
        fusion = getattr(getattr(model, "config", None), "num_fusion_layers", 0) or 0
        if fusion <= 0 or not hasattr(model, "itm_scores") or not hasattr(model, "get_image_tokens"):
            raise ValueError("rerank_top_k needs a model with fusion layers (config.num_fusion_layers > 0) and an ITM head")
    texts, text_image_ids, text_languages = _flatten_captions(dataset, languages)
    if not texts:
        raise ValueError(f"the dataset has no caption in the languages {list(languages or [])}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            encoded_images = encode_images(model, processor, dataset, batch_size, progress, with_tokens=bool(rerank_top_k))
            image_features, image_tokens = encoded_images if rerank_top_k else (encoded_images, None)
            text_features = encode_texts(model, processor, texts, batch_size, progress)
            ranks = compute_retrieval_ranks(
                image_features,
                text_features,
                np.asarray(text_image_ids),
                text_languages,
                languages=languages,
                chunk_size=chunk_size,
                top_k=rerank_top_k,
                progress=progress,
            )
            if rerank_top_k:
                device = _model_device(model)
                kept_texts = [texts[i] for i in ranks.text_indices]

                def pair_scores(image_idx: np.ndarray, text_idx: np.ndarray) -> torch.Tensor:
                    encoded = _to_device(processor(text=[kept_texts[i] for i in text_idx]), device)
                    tokens = image_tokens[torch.as_tensor(image_idx)].to(device)
                    return model.itm_scores(tokens, encoded["input_ids"], encoded.get("attention_mask"))

                ranks = rerank_ranks(ranks, pair_scores, batch_size=batch_size, progress=progress)
            mixed = compute_mixed_pool_ranks(
                image_features, text_features, np.asarray(text_image_ids), text_languages, languages=languages,
                chunk_size=chunk_size, progress=progress,
            )
    finally:
        model.train(was_training)
    metrics = retrieval_metrics(ranks, ks=ks, mrv_variant=mrv_variant)
    metrics["mixed"] = mixed_pool_metrics(mixed, ks=ks, mrv_variant=mrv_variant)
    return metrics, ranks
