"""CMLM masking: the one rule that turns texts into ``mlm_input_ids`` / ``mlm_labels`` for ``CCRModel.forward``.

BERT's rule: each real token (not padding, not a special token such as [CLS], [SEP], <s>, </s>) is chosen with
probability ``mlm_probability``; of the chosen ones 80 % become the mask token, 10 % a random token and 10 % stay.
Labels are the original ids at chosen positions and ``-100`` elsewhere.

The model never masks by itself: ``forward`` computes CMLM only from the ``mlm_input_ids`` / ``mlm_labels`` it is
given. ``CCRTrainer`` masks in its training step with ``config.mlm_probability``; a probability of 0 means no
CMLM. The draws use torch's global CPU generator whatever the tensors' device, so a resumed run (Trainer restores
that generator) masks exactly as an uninterrupted one, on CPU and on GPU alike.
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -100


def mask_tokens(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    mlm_probability: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of ``input_ids`` (any shape); ``special_tokens_mask`` is True where a token must never be chosen.

    Returns ``(masked_input_ids, labels)`` on the device of ``input_ids``, ``labels == -100`` where nothing is
    predicted.
    """
    if not 0.0 <= mlm_probability < 1.0:
        raise ValueError(f"mlm_probability must be in [0, 1), got {mlm_probability}")
    if special_tokens_mask.shape != input_ids.shape:
        raise ValueError(
            f"special_tokens_mask {tuple(special_tokens_mask.shape)} must have the shape of input_ids "
            f"{tuple(input_ids.shape)}"
        )
    device = input_ids.device
    probability = torch.full(input_ids.shape, float(mlm_probability))
    probability.masked_fill_(special_tokens_mask.bool().cpu(), 0.0)
    chosen = torch.bernoulli(probability).bool()
    replace = torch.bernoulli(torch.full(input_ids.shape, 0.8)).bool() & chosen
    randomise = torch.bernoulli(torch.full(input_ids.shape, 0.5)).bool() & chosen & ~replace
    random_ids = torch.randint(vocab_size, input_ids.shape)
    chosen, replace, randomise = chosen.to(device), replace.to(device), randomise.to(device)
    labels = input_ids.masked_fill(~chosen, IGNORE_INDEX)
    masked_input_ids = input_ids.masked_fill(replace, mask_token_id)
    masked_input_ids = torch.where(randomise, random_ids.to(device), masked_input_ids)
    return masked_input_ids, labels


def add_mlm_inputs(batch: dict[str, torch.Tensor], tokenizer: Any, mlm_probability: float) -> dict[str, torch.Tensor]:
    """``batch`` plus ``mlm_input_ids`` and ``mlm_labels``: every text masked by :func:`mask_tokens`.

    The tokenizer's special tokens (by id) and padding (``attention_mask == 0``) are never masked.
    """
    if tokenizer.mask_token_id is None:
        raise ValueError("CMLM needs a tokenizer with a mask token (or mlm_probability=0 to train without CMLM)")
    input_ids = batch["input_ids"]
    special = torch.isin(input_ids, torch.tensor(tokenizer.all_special_ids, device=input_ids.device))
    special |= batch["attention_mask"] == 0
    masked, labels = mask_tokens(input_ids, special, tokenizer.mask_token_id, len(tokenizer), mlm_probability)
    return {**batch, "mlm_input_ids": masked, "mlm_labels": labels}
