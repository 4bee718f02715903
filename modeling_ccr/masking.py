"""CMLM masking: the one place that turns texts into ``mlm_input_ids`` / ``mlm_labels`` for ``CCRModel.forward``.

Two rules choose the positions (``config.mlm_masking``); both then replace them the same way.

- ``"bernoulli"`` (default), BERT's rule: each real token (not padding, not a special token such as [CLS], [SEP], <s>, </s>) is chosen with
probability ``mlm_probability``; of the chosen ones 80 % become the mask token, 10 % a random token and 10 % stay.
Labels are the original ids at chosen positions and ``-100`` elsewhere.
- ``"ccrk"``, the authors' code (X-VLM's ``TextMaskingGenerator``, their Pretrain.yaml: rate 0.4, at most 12, spans
  with probability 0.2 of 2..3 tokens): a text of n tokens (its special tokens counted, as they count [CLS] and
  </s>) gets exactly ``min(max_masks, max(1, round(rate * n)))`` chosen tokens, fewer only when it has fewer
  maskable ones. Candidate starts are visited in random order; each starts a span of 2..``max_span`` tokens with
  probability ``span_probability`` (else one token) that stops at the first special token or padding; when the
  last span overshoots, a random subset of the right size is kept. Unlike the authors' code, the closing </s> is
  never masked (it is a special token here, like [CLS]).

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
    probability = torch.full(input_ids.shape, float(mlm_probability))
    probability.masked_fill_(special_tokens_mask.bool().cpu(), 0.0)
    chosen = torch.bernoulli(probability).bool()
    return _replace(input_ids, chosen, mask_token_id, vocab_size)


def span_mask_positions(
    special_tokens_mask: torch.Tensor,
    lengths: torch.Tensor,
    mlm_probability: float,
    max_masks: int = 12,
    span_probability: float = 0.2,
    max_span: int = 3,
) -> torch.Tensor:
    """The ``"ccrk"`` choice of positions (see the module docstring): a bool (N, L) tensor, True = chosen.

    ``lengths`` (N,) are the texts' token counts n, specials included (``attention_mask.sum(1)``).
    """
    if not 0.0 <= mlm_probability < 1.0:
        raise ValueError(f"mlm_probability must be in [0, 1), got {mlm_probability}")
    if max_masks < 1 or max_span < 1 or not 0.0 <= span_probability <= 1.0:
        raise ValueError(f"need max_masks >= 1, max_span >= 1, span_probability in [0, 1]; got {max_masks}, "
                         f"{max_span}, {span_probability}")
    maskable = ~special_tokens_mask.bool().cpu()
    chosen = torch.zeros_like(maskable)
    width = maskable.shape[1]
    for row in range(maskable.shape[0]):
        if mlm_probability == 0 or not bool(maskable[row].any()):
            continue
        wanted = min(max_masks, max(1, round(float(lengths[row]) * mlm_probability)))
        picked: set[int] = set()
        for start in torch.nonzero(maskable[row]).squeeze(1)[torch.randperm(int(maskable[row].sum()))].tolist():
            if len(picked) >= wanted:
                break
            if start in picked:
                continue
            span = 1
            if max_span >= 2 and float(torch.rand(())) < span_probability:
                span = int(torch.randint(2, max_span + 1, ()))
            for position in range(start, min(start + span, width)):
                if not maskable[row, position]:
                    break
                picked.add(position)
        positions = sorted(picked)
        if len(positions) > wanted:
            positions = [positions[i] for i in torch.randperm(len(positions))[:wanted].tolist()]
        chosen[row, positions] = True
    return chosen


def mask_spans(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    lengths: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    mlm_probability: float,
    max_masks: int = 12,
    span_probability: float = 0.2,
    max_span: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``"ccrk"`` rule: :func:`span_mask_positions`, then the 80/10/10 replacement of :func:`mask_tokens`."""
    chosen = span_mask_positions(special_tokens_mask, lengths, mlm_probability, max_masks, span_probability, max_span)
    return _replace(input_ids, chosen, mask_token_id, vocab_size)


def _replace(
    input_ids: torch.Tensor, chosen: torch.Tensor, mask_token_id: int, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """80 % of the chosen tokens become the mask token, 10 % a random token, 10 % stay; labels at chosen ones."""
    device = input_ids.device
    replace = torch.bernoulli(torch.full(input_ids.shape, 0.8)).bool() & chosen
    randomise = torch.bernoulli(torch.full(input_ids.shape, 0.5)).bool() & chosen & ~replace
    random_ids = torch.randint(vocab_size, input_ids.shape)
    chosen, replace, randomise = chosen.to(device), replace.to(device), randomise.to(device)
    labels = input_ids.masked_fill(~chosen, IGNORE_INDEX)
    masked_input_ids = input_ids.masked_fill(replace, mask_token_id)
    masked_input_ids = torch.where(randomise, random_ids.to(device), masked_input_ids)
    return masked_input_ids, labels


def add_mlm_inputs(
    batch: dict[str, torch.Tensor], tokenizer: Any, mlm_probability: float, config: Any = None
) -> dict[str, torch.Tensor]:
    """``batch`` plus ``mlm_input_ids`` and ``mlm_labels``: every text masked by the rule of ``config``.

    ``config`` (a ``CCRConfig``) picks the rule (``mlm_masking``) and its span settings; without it, or with
    ``"bernoulli"``, :func:`mask_tokens`. The tokenizer's special tokens (by id) and padding
    (``attention_mask == 0``) are never masked.
    """
    if tokenizer.mask_token_id is None:
        raise ValueError("CMLM needs a tokenizer with a mask token (or mlm_probability=0 to train without CMLM)")
    input_ids = batch["input_ids"]
    special = torch.isin(input_ids, torch.tensor(tokenizer.all_special_ids, device=input_ids.device))
    special |= batch["attention_mask"] == 0
    rule = getattr(config, "mlm_masking", "bernoulli")
    if rule == "ccrk":
        masked, labels = mask_spans(
            input_ids, special, batch["attention_mask"].sum(1).cpu(), tokenizer.mask_token_id, len(tokenizer),
            mlm_probability, int(config.mlm_max_masks), float(config.mlm_span_probability), int(config.mlm_max_span),
        )
    elif rule == "bernoulli":
        masked, labels = mask_tokens(input_ids, special, tokenizer.mask_token_id, len(tokenizer), mlm_probability)
    else:
        raise ValueError(f"unknown mlm_masking {rule!r}; choose 'bernoulli' or 'ccrk'")
    return {**batch, "mlm_input_ids": masked, "mlm_labels": labels}
