"""Turns rows of the canonical dataset (image + list of {language, text}) into model inputs.

Training batches hold every caption of their images; :func:`sample_captions` then keeps, per image and
language, ``captions_per_language`` of them (images simply lack the languages they have no caption in)
and :func:`modeling_ccr.masking.add_mlm_inputs` masks tokens for CMLM. Evaluation batches keep every
caption and lay them out per image, ``(B, max_texts, ...)``, so that Trainer's gather across processes
keeps texts and images aligned.

The random draws happen in the training step (``CCRTrainer.compute_loss``), not in the collator: the
data loader collates one batch ahead, so draws made there would interleave with the model's own and
could not be replayed when a run resumes. In the training step they use torch's global generator,
which ``Trainer`` seeds and restores, so a resumed run draws exactly what an uninterrupted one does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .dataset_schema import canonical_language
from .masking import IGNORE_INDEX
from .processing_ccr import CCRProcessor


def _caption_records(feature: dict[str, Any], row: int) -> list[dict[str, str]]:
    captions = feature.get("captions")
    image_id = feature.get("image_id", row)
    if not captions:
        raise ValueError(f"image {image_id!r} has no caption; every image needs at least one")
    for caption in captions:
        if not isinstance(caption, dict) or "language" not in caption or "text" not in caption:
            raise ValueError(f"image {image_id!r}: a caption must be a {{'language', 'text'}} record, got {caption!r}")
        if not isinstance(caption["text"], str) or not caption["text"].strip():
            raise ValueError(f"image {image_id!r}: empty caption text in language {caption['language']!r}")
    return captions


def sample_captions(batch: dict[str, torch.Tensor], captions_per_language: int) -> dict[str, torch.Tensor]:
    """Keep, per image and language, ``captions_per_language`` captions drawn uniformly without replacement."""
    if captions_per_language < 1:
        raise ValueError(f"captions_per_language must be >= 1, got {captions_per_language}")
    image_ids, language_ids = batch["text_image_ids"], batch["text_language_ids"]
    num_languages = int(language_ids.max()) + 1
    group = image_ids * num_languages + language_ids
    priority = torch.rand(group.shape, device=group.device)
    # Rank of each caption inside its (image, language) group by random priority: keep the first n.
    order = torch.argsort(group.double() * 2 + priority.double())
    sorted_group = group[order]
    starts = torch.searchsorted(sorted_group, sorted_group, right=False)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device) - starts
    keep = rank < captions_per_language
    text_keys = ("input_ids", "attention_mask", "token_type_ids", "text_image_ids", "text_language_ids")
    return {key: value[keep] if key in text_keys else value for key, value in batch.items()}


# Distinct captions whose token ids a collator keeps (a dataset's captions come back every epoch; a stream's rarely
# do, and the cache stops growing here).
TOKEN_CACHE_SIZE = 1 << 17


@dataclass
class CCRCollator:
    """Collates canonical rows for ``CCRModel``.

    Args:
        processor: the model's ``CCRProcessor``.
        languages: the language codes the model knows; ``text_language_ids`` index into this list and a
            caption in any other language is an error. Codes are compared in their canonical form
            (``dataset_schema.canonical_language``: ``EN`` and ``en_US`` are ``en``).
        for_evaluation: keep every caption, laid out per image (see module docstring).
        max_texts_per_image: width of the evaluation layout (defaults to the widest image of the batch).
    """

    processor: CCRProcessor
    languages: Sequence[str]
    for_evaluation: bool = False
    max_texts_per_image: int | None = None
    _token_ids: dict[str, list[int]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.languages:
            raise ValueError("CCRCollator needs the list of languages")
        canonical = [canonical_language(language) for language in self.languages]
        if len(set(canonical)) != len(canonical):
            raise ValueError(f"languages {list(self.languages)} name the same language twice (canonical: {canonical})")
        self.language_index = {language: index for index, language in enumerate(canonical)}

    def _language_id(self, language: str, image_id: Any) -> int:
        try:
            language = canonical_language(language)
        except ValueError as error:
            raise ValueError(f"image {image_id!r}: {error}") from None
        if language not in self.language_index:
            raise ValueError(
                f"image {image_id!r} has a caption in language {language!r}, which is not among the model's "
                f"languages {list(self.languages)}"
            )
        return self.language_index[language]

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        images, groups, ids = [], [], []
        for row, feature in enumerate(features):
            captions = _caption_records(feature, row)
            image_id = feature.get("image_id", row)
            ids += [self._language_id(caption["language"], image_id) for caption in captions]
            images.append(feature["image"])
            groups.append(captions)

        texts = [caption["text"] for group in groups for caption in group]
        batch = {
            "pixel_values": self.processor(images=images)["pixel_values"],
            **self._tokenized(texts),
            "text_image_ids": torch.tensor([row for row, group in enumerate(groups) for _ in group], dtype=torch.long),
        }
        language_ids = torch.tensor(ids, dtype=torch.long)
        if self.for_evaluation:
            return self._evaluation_layout(batch, language_ids)
        batch["text_language_ids"] = language_ids
        return batch

    def _tokenized(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``processor(text=texts)``, with each distinct caption tokenized once (tokenizing a batch's captions again
        every epoch was a tenth of the main job's step); the batch is padded by the tokenizer's ``pad``."""
        new = [text for text in dict.fromkeys(texts) if text not in self._token_ids]
        fresh = dict(zip(new, self.processor(text=new, padding=False, return_tensors=None)["input_ids"])) if new else {}
        if len(self._token_ids) < TOKEN_CACHE_SIZE:
            self._token_ids.update(fresh)
        ids = [{"input_ids": self._token_ids[text] if text in self._token_ids else fresh[text]} for text in texts]
        padded = self.processor.tokenizer.pad(ids, padding=True, return_tensors="pt")
        return {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}

    def _evaluation_layout(self, batch: dict[str, torch.Tensor], language_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Regroup the flat texts of the batch as ``(B, width, L)`` with language id -100 for padding."""
        text_image_ids = batch.pop("text_image_ids")
        num_images = batch["pixel_values"].shape[0]
        counts = torch.bincount(text_image_ids, minlength=num_images)
        width = self.max_texts_per_image or int(counts.max())
        if int(counts.max()) > width:
            raise ValueError(f"an image has {int(counts.max())} captions, more than max_texts_per_image={width}")
        slot = torch.arange(len(text_image_ids)) - torch.cumsum(counts, 0)[text_image_ids] + counts[text_image_ids]
        length = batch["input_ids"].shape[1]
        input_ids = torch.full((num_images, width, length), self.processor.tokenizer.pad_token_id or 0)
        attention_mask = torch.zeros((num_images, width, length), dtype=batch["attention_mask"].dtype)
        layout_languages = torch.full((num_images, width), IGNORE_INDEX, dtype=torch.long)
        input_ids[text_image_ids, slot] = batch["input_ids"]
        attention_mask[text_image_ids, slot] = batch["attention_mask"]
        layout_languages[text_image_ids, slot] = language_ids
        return {
            "pixel_values": batch["pixel_values"],
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "text_language_ids": layout_languages,
        }
