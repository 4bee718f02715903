"""Retrieval in a mixed-language pool: image -> text over all captions of all languages at once.

MRV and per-language Recall@K rank each language's captions only among captions of that same language, so a
model that scores one language's captions higher than another's *everywhere* shows nothing there. A real
multilingual collection holds every language at once, and there such an offset decides what a user sees.
For each image this measures, in the pool of all captions:

- the rank of its best caption in each language (``MixedPoolRanks.ranks``; the image's other captions, of
  any language, are gold and never count against it; ties count against the gold, as in ``ranking``);
  ``MRV_TR_mixed`` is MRV over these ranks, and a hit at k is any caption of the image in the top k;
- the language of each of its top-k captions (the language share of the top-k against the pool's);
- per language, the sum and number of matching and of non-matching scores (the language offset).

Counted block by block over image rows with ``ranking``'s counting (no full score matrix for a large pool),
against the gold scores as the same block computed them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .mrv_core import compute_mrv
from .ranking import (
    DEFAULT_BLOCK_ELEMENTS,
    _count_at_or_above,
    _on,
    _rows_per_block,
    exact_scoring,
    prepare_embeddings,
    progress_bar,
    rank_from_counts,
)

DEFAULT_SHARE_TOP_K = 10


@dataclass
class MixedPoolRanks:
    """What the mixed pool counts. ``ranks`` (N, K): rank of the image's best caption in each language among
    all captions (NaN where it has none); ``top_languages`` (N, top_k): language index of the image's top-k
    captions (-1 past the pool's end); ``pool_counts`` (K,): captions per language; ``matching_sum`` /
    ``matching_count`` and ``non_matching_sum`` / ``non_matching_count`` (K,): scores of image-caption pairs
    of the same / of different images, per caption language."""

    languages: list[str]
    ranks: np.ndarray
    top_languages: np.ndarray
    pool_counts: np.ndarray
    matching_sum: np.ndarray
    matching_count: np.ndarray
    non_matching_sum: np.ndarray
    non_matching_count: np.ndarray


def compute_mixed_pool_ranks(
    image_embeds: Any,
    text_embeds: Any,
    text_image_ids: Any,
    text_languages: Sequence[str],
    languages: Sequence[str] | None = None,
    chunk_size: int | None = None,
    max_block_elements: int = DEFAULT_BLOCK_ELEMENTS,
    normalize: bool = True,
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    top_k: int = DEFAULT_SHARE_TOP_K,
    progress: bool = False,
) -> MixedPoolRanks:
    """Mixed-pool ranks from embeddings, with the arguments of ``ranking.compute_retrieval_ranks`` (cosine
    scores or ``score_fn(query_block, gallery)``; blocks of at most ``max_block_elements`` scores, or
    ``chunk_size`` image rows). ``top_k`` is the cut-off of the language share."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    images, texts, index = prepare_embeddings(image_embeds, text_embeds, text_image_ids, text_languages, languages,
                                              normalize)
    scorer = score_fn or (lambda query, gallery: query @ gallery.T)
    num_images, num_texts, num_langs = images.shape[0], texts.shape[0], len(index.languages)
    sorted_codes = index.codes[index.order]
    pool_counts = np.bincount(sorted_codes, minlength=num_langs)
    ranks = np.full((num_images, num_langs), np.nan)
    kk = min(top_k, num_texts)
    top_languages = np.full((num_images, top_k), -1, dtype=np.int64)
    sums = {name: np.zeros(num_langs) for name in ("matching_sum", "all_sum")}
    matching_count = np.zeros(num_langs, dtype=np.int64)
    whole_pool = [(0, num_texts)] * num_langs  # every language's threshold against every caption
    rows = _rows_per_block(num_texts, chunk_size, max_block_elements)
    starts = range(0, num_images, rows)
    with exact_scoring(images.device):
        for start in progress_bar(starts, len(starts), "mixed-pool ranks", progress):
            stop = min(start + rows, num_images)
            scores = scorer(images[start:stop], texts)
            a, b = np.searchsorted(index.pair_images, [start, stop])
            pair_rows, pair_langs = index.pair_images[a:b] - start, index.pair_langs[a:b]
            gold = scores[_on(scores, pair_rows), _on(scores, index.pair_cols[a:b])].double().cpu().numpy()
            best = np.full((stop - start, num_langs), -np.inf)
            np.maximum.at(best, (pair_rows, pair_langs), gold)
            # gold captions (any language) at or above each language's best caption of their image
            gold_at_or_above = np.zeros((stop - start, num_langs), dtype=np.int64)
            np.add.at(gold_at_or_above, pair_rows, gold[:, None] >= best[pair_rows])
            thresholds = torch.as_tensor(best, dtype=scores.dtype, device=scores.device)
            counts, _ = _count_at_or_above(scores, thresholds, whole_pool)
            block_ranks = rank_from_counts(counts, gold_at_or_above).astype(np.float64)
            block_ranks[np.isinf(best)] = np.nan
            ranks[start:stop] = block_ranks
            top = scores.topk(kk, dim=1).indices.cpu().numpy()
            top_languages[start:stop, :kk] = sorted_codes[top]
            for k, (lo, hi) in enumerate(index.bounds):
                sums["all_sum"][k] += float(scores[:, lo:hi].double().sum())
            sums["matching_sum"] += np.bincount(pair_langs, weights=gold, minlength=num_langs)
            matching_count += np.bincount(pair_langs, minlength=num_langs)
    return MixedPoolRanks(
        languages=list(index.languages),
        ranks=ranks,
        top_languages=top_languages,
        pool_counts=pool_counts,
        matching_sum=sums["matching_sum"],
        matching_count=matching_count,
        non_matching_sum=sums["all_sum"] - sums["matching_sum"],
        non_matching_count=num_images * pool_counts - matching_count,
    )


def mixed_pool_metrics(
    mixed: MixedPoolRanks, ks: Sequence[int] = (1, 5, 10), mrv_variant: str = "variance"
) -> dict[str, Any]:
    """The ``mixed`` block of ``eval_results.json``:

    - ``recall``: ``R@k`` in %, an image is a hit when any of its captions is in the top k of the pool;
    - ``mrv_tr``: MRV over the images' per-language ranks in the pool (``MRV_TR_mixed``; None with one language);
    - ``language_share``: ``top_k``, and per language its % of all images' top-k results (``top``) and of the
      pool (``pool``); ``max_excess`` = the largest ``top - pool`` in points;
    - ``offset``: per language the mean matching (``matching``) and non-matching (``non_matching``) score, and
      their ``spread_matching`` / ``spread_non_matching`` = max - min over languages (0 = no language offset).
    """
    langs = mixed.languages
    best = np.nanmin(np.where(np.isnan(mixed.ranks), np.inf, mixed.ranks), axis=1)
    has_caption = np.isfinite(best)
    recall = {f"R@{k}": float(100.0 * np.mean(best[has_caption] <= k)) for k in ks}
    mrv = compute_mrv(mixed.ranks, mrv_variant)["mrv"] if len(langs) > 1 else float("nan")
    top = mixed.top_languages[mixed.top_languages >= 0]
    top_share = 100.0 * np.bincount(top, minlength=len(langs)) / max(1, top.size)
    pool_share = 100.0 * mixed.pool_counts / max(1, mixed.pool_counts.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        matching = mixed.matching_sum / mixed.matching_count
        non_matching = mixed.non_matching_sum / mixed.non_matching_count

    def per_language(values: np.ndarray) -> dict[str, float | None]:
        return {lang: None if np.isnan(v) else float(v) for lang, v in zip(langs, values)}

    def spread(values: np.ndarray) -> float | None:
        values = values[~np.isnan(values)]
        return float(values.max() - values.min()) if len(values) else None

    return {
        "recall": recall,
        "mrv_tr": None if np.isnan(mrv) else float(mrv),
        "language_share": {
            "top_k": int(mixed.top_languages.shape[1]),
            "top": per_language(top_share),
            "pool": per_language(pool_share),
            "max_excess": float(np.max(top_share - pool_share)),
        },
        "offset": {
            "matching": per_language(matching),
            "non_matching": per_language(non_matching),
            "spread_matching": spread(matching),
            "spread_non_matching": spread(non_matching),
        },
    }
