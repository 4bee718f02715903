"""Accumulated negatives (GradCache; open_clip's ``--accum-freq``): the contrastive loss of a batch N times larger
than what fits in memory, with the memory of one micro-batch.

Plain gradient accumulation contrasts each micro-batch only with itself. Here a batch is cut into N micro-batches
(by image, each with the texts of its images) and the step runs in three passes:

1. encode every micro-batch without a graph, keeping only the fp32 embeddings (and the random state its forward
   started from, so dropout draws the same masks in pass 3);
2. compute the objective once over all the embeddings (every text of every micro-batch is a negative of every image,
   gathered across processes as usual) and its gradient with respect to the embeddings and the temperature;
3. encode each micro-batch again with a graph and back-propagate that cached gradient through it (plus the
   micro-batch's own MITM / CMLM, which are per-example losses), one micro-batch at a time.

The parameters' gradients are those of the one large batch (up to float rounding); the peak memory is that of one
micro-batch's activations plus the (N x B, D) embeddings. ``CCRTrainer`` runs it for
``--contrastive_accumulation_steps N``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from .objectives import contrastive_objective

_TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mlm_input_ids", "mlm_labels")


def split_batch(inputs: dict[str, torch.Tensor], num_chunks: int) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Cut a collated batch into ``num_chunks`` micro-batches of consecutive images, each with its images' texts
    (``text_image_ids`` made local). Returns ``(micro_batch, positions of its texts in the batch)`` pairs."""
    num_images = inputs["pixel_values"].shape[0]
    if not 1 <= num_chunks <= num_images:
        raise ValueError(
            f"contrastive_accumulation_steps={num_chunks} needs at least that many images per batch, got {num_images}"
        )
    image_ids = inputs["text_image_ids"]
    chunks = []
    for images in torch.arange(num_images, device=image_ids.device).tensor_split(num_chunks):
        first, last = int(images[0]), int(images[-1]) + 1
        texts = torch.nonzero((image_ids >= first) & (image_ids < last)).squeeze(1)
        chunk = {"pixel_values": inputs["pixel_values"][first:last], "text_image_ids": image_ids[texts] - first}
        chunk.update({key: inputs[key][texts] for key in _TEXT_KEYS if inputs.get(key) is not None})
        chunks.append((chunk, texts))
    return chunks


def accumulated_contrastive_step(
    model: Any,
    inputs: dict[str, torch.Tensor],
    num_chunks: int,
    loss_type: str = "one_to_k",
    pivot_language_id: int | None = None,
    unwrapped: Any = None,
    backward: Callable[[torch.Tensor], None] | None = None,
    no_sync: Callable[[Any], Any] | None = None,
    loss_scale: float = 1.0,
) -> torch.Tensor:
    """Back-propagate the training loss of ``inputs`` (a collated batch as :func:`ccr_training_loss` takes it) in
    ``num_chunks`` micro-batches; returns the (detached) loss, the same number ``ccr_training_loss`` gives.

    ``model`` may be wrapped (DDP); ``unwrapped`` is the bare ``CCRModel``. ``backward`` defaults to
    ``Tensor.backward`` (CCRTrainer passes ``accelerator.backward``), ``no_sync`` to no context (CCRTrainer passes
    ``accelerator.no_sync``: gradients are all-reduced once, after the last micro-batch). ``loss_scale`` multiplies
    what is back-propagated (Trainer's ``1 / gradient_accumulation_steps``).
    """
    unwrapped = model if unwrapped is None else unwrapped
    backward = backward or (lambda loss: loss.backward())
    no_sync = no_sync or (lambda _model: contextlib.nullcontext())
    inputs = dict(inputs)
    language_ids = inputs.pop("text_language_ids")
    chunks = split_batch(inputs, num_chunks)
    config = unwrapped.config

    # Pass 1: embeddings without a graph, and the random state each forward starts from.
    states, image_parts = [], []
    text_embeds = None
    with torch.no_grad():
        for chunk, positions in chunks:
            states.append(torch.get_rng_state())
            encoded = unwrapped(**_encoder_inputs(chunk))
            image_parts.append(encoded.image_embeds.float())
            if text_embeds is None:
                text_embeds = encoded.text_embeds.new_zeros((len(language_ids), encoded.text_embeds.shape[1])).float()
            text_embeds[positions] = encoded.text_embeds.float()
    after_encoding = torch.get_rng_state()

    # Pass 2: the objective over every micro-batch at once; its gradient w.r.t. the embeddings and the temperature.
    image_leaf = torch.cat(image_parts).requires_grad_(True)
    text_leaf = text_embeds.requires_grad_(True)
    temperature_leaf = unwrapped.temperature.detach().float().requires_grad_(True)
    loss_itc = contrastive_objective(
        loss_type, image_leaf, text_leaf, inputs["text_image_ids"], language_ids, temperature_leaf,
        pivot_language_id, divide_by_k=config.itc_divide_by_k, gather=config.gather_across_processes,
    )
    weighted_itc = unwrapped.weighted_loss(loss_itc, None, None)
    image_grad, text_grad, temperature_grad = torch.autograd.grad(weighted_itc, (image_leaf, text_leaf, temperature_leaf))

    # Pass 3: each micro-batch again with a graph, its share of the cached gradient back-propagated through it.
    total = weighted_itc.detach()
    image_starts = [0]
    for part in image_parts:
        image_starts.append(image_starts[-1] + part.shape[0])
    for index, (chunk, positions) in enumerate(chunks):
        torch.set_rng_state(states[index])
        last = index == len(chunks) - 1
        with contextlib.nullcontext() if last else no_sync(model):
            outputs = model(**chunk, return_loss=True, compute_itc=False)
            surrogate = (
                (outputs.image_embeds.float() * image_grad[image_starts[index]:image_starts[index + 1]]).sum()
                + (outputs.text_embeds.float() * text_grad[positions]).sum()
                + unwrapped.temperature.float() * (temperature_grad / len(chunks))
            )
            if outputs.loss is not None:  # MITM / CMLM of this micro-batch, averaged over micro-batches
                fusion = outputs.loss / len(chunks)
                surrogate = surrogate + fusion
                total = total + fusion.detach()
            backward(surrogate * loss_scale)
    torch.set_rng_state(after_encoding)
    return total


def _encoder_inputs(chunk: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    keys = ("pixel_values", "input_ids", "attention_mask", "token_type_ids")
    return {key: chunk[key] for key in keys if chunk.get(key) is not None}


__all__ = ["accumulated_contrastive_step", "split_batch"]
