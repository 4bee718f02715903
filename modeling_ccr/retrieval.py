"""Cross-lingual retrieval evaluation: ranks, Recall@K per language and direction, and MRV.

- TR (image -> text) per language: the gallery is that language's captions; an image's rank in language k
  is the best rank among its captions in k.
- IR (text -> image): for every caption, the rank of its image among all images.
- Rank = 1 + number of gallery items scoring *strictly* higher than the gold item (ties favour the gold).

Ranks are counted block by block over image rows (bounded memory whatever the gallery size; the counting
itself is in ``rank_counting``), and every comparison is against the gold score as the same block's
matmul computed it, so rounding differences between blocks cannot create off-by-one ranks. Optional
stage 2 re-scores each query's top-k with a pair scorer (the ITM head of models with fusion layers), as
the paper does.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from .mrv_core import compute_mrv
from .rank_counting import CACHE_ELEMENTS, count_above

DEFAULT_BLOCK_ELEMENTS = 1 << 25  # scores held at once: 32M floats = 128 MiB


@dataclass
class RetrievalRanks:
    """Stage-1 (or re-ranked) ranks of one evaluation.

    ``tr_ranks``: float (N_images, K) with NaN where the image has no caption in that language.
    ``ir_ranks``: int (T,) rank of each caption's image. ``text_image_ids`` / ``text_languages``: (T,)
    for the texts that were evaluated (those in ``languages``); ``text_indices``: their positions in the
    caller's text list. ``tr_topk`` (N, K, k) global text indices (-1 = none) and ``ir_topk`` (T, k)
    image indices are kept when a top-k was requested (for re-ranking).
    """

    tr_ranks: np.ndarray
    ir_ranks: np.ndarray
    languages: list[str]
    text_image_ids: np.ndarray
    text_languages: np.ndarray
    text_indices: np.ndarray
    tr_topk: np.ndarray | None = None
    ir_topk: np.ndarray | None = None
    text_language_codes: np.ndarray | None = None  # (T,) index into ``languages``; derived when not given

    def __post_init__(self) -> None:
        if self.text_language_codes is None:
            self.text_language_codes = _language_codes(self.text_languages, self.languages)

    @property
    def num_images(self) -> int:
        return int(self.tr_ranks.shape[0])

    @property
    def num_texts(self) -> int:
        return int(self.ir_ranks.shape[0])

    def ir_rank_matrix(self) -> np.ndarray:
        """(N_images, K) IR ranks per image and language: the best rank among the image's captions in that
        language (the same rule as TR), NaN where it has none. This is what MRV_IR is computed on."""
        out = np.full(self.tr_ranks.shape, np.inf)
        slots = self.text_image_ids * len(self.languages) + self.text_language_codes
        if np.bincount(slots, minlength=out.size).max(initial=0) <= 1:  # one caption per (image, language)
            out.reshape(-1)[slots] = self.ir_ranks
        else:
            np.minimum.at(out.reshape(-1), slots, self.ir_ranks.astype(np.float64))
        out[np.isinf(out)] = np.nan
        return out


# ----------------------------------------------------------------------------------------------- inputs


def _language_codes(text_languages: Sequence[str], languages: Sequence[str]) -> np.ndarray:
    """Index into ``languages`` of every text's language (every one must be there)."""
    names, inverse = _encode_languages(text_languages)
    position = {lang: k for k, lang in enumerate(languages)}
    return np.array([position[name] for name in names], dtype=np.int64)[inverse]


def _encode_languages(text_languages: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct languages (sorted) and each text's index into them. One dict pass over a list is about
    three times as fast as turning it into a numpy string array and running np.unique on it."""
    if isinstance(text_languages, np.ndarray):
        names, inverse = np.unique(text_languages.astype(str), return_inverse=True)
        return [str(name) for name in names], inverse.reshape(-1).astype(np.int64)
    first_seen: defaultdict[Any, int] = defaultdict(itertools.count().__next__)
    try:
        seen_order = np.fromiter(map(first_seen.__getitem__, text_languages), dtype=np.int64, count=len(text_languages))
    except TypeError as error:
        raise TypeError(f"text_languages must hold language codes (strings): {error}") from None
    seen = [str(lang) for lang in first_seen]
    names = sorted(set(seen))
    return names, np.array([names.index(lang) for lang in seen], dtype=np.int64)[seen_order]


def _as_float_tensor(name: str, value: Any, check_finite: bool = True) -> torch.Tensor:
    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be 2-D (items x dim), got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        tensor = tensor.float()
    elif tensor.dtype in (torch.float16, torch.bfloat16) and tensor.device.type == "cpu":
        tensor = tensor.float()
    if check_finite and not _all_finite(tensor):
        raise ValueError(f"{name} contains NaN or infinite values")
    return tensor.detach()


def _all_finite(tensor: torch.Tensor) -> bool:
    if tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64):
        return bool(np.isfinite(tensor.detach().numpy()).all())  # several times faster than torch.isfinite on CPU
    return bool(torch.isfinite(tensor).all())


@dataclass
class _TextIndex:
    """Texts kept for evaluation, permuted so that each language is one contiguous slice."""

    languages: list[str]
    image_ids: np.ndarray  # (T,) kept texts, caller order
    text_languages: np.ndarray  # (T,) str
    codes: np.ndarray  # (T,) index into languages
    kept: np.ndarray  # (T,) positions in the caller's list
    order: np.ndarray  # (T,) sorted position -> kept position
    bounds: list[tuple[int, int]]  # per language [lo, hi) in sorted order
    pair_images: np.ndarray  # (T,) image of each sorted text, the pairs sorted by image
    pair_cols: np.ndarray  # (T,) its sorted column
    pair_langs: np.ndarray  # (T,) its language index


def _index_texts(text_image_ids: Any, text_languages: Sequence[str], num_images: int,
                 languages: Sequence[str] | None) -> _TextIndex:
    ids = np.asarray(text_image_ids.cpu() if isinstance(text_image_ids, torch.Tensor) else text_image_ids)
    if ids.ndim != 1:
        raise ValueError(f"text_image_ids must be 1-D, got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"text_image_ids must hold integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    if len(text_languages) != len(ids):
        raise ValueError(f"text_languages has {len(text_languages)} entries but text_image_ids has {len(ids)}")
    if ids.size == 0:
        raise ValueError("there are no texts to evaluate")
    if ids.min() < 0 or ids.max() >= num_images:
        bad = int(ids[(ids < 0) | (ids >= num_images)][0])
        raise ValueError(f"text_image_ids holds {bad}, outside [0, {num_images}) (the number of images)")
    present, inverse = _encode_languages(text_languages)
    if languages is None:
        languages = present
    else:
        languages = [str(lang) for lang in languages]
        unknown = [lang for lang in languages if lang not in present]
        if unknown:
            raise ValueError(f"language(s) {unknown} have no text; the texts have {present}")
        if len(set(languages)) != len(languages):
            raise ValueError(f"languages has duplicates: {languages}")
    code_of_present = np.array([languages.index(lang) if lang in languages else -1 for lang in present])
    all_codes = code_of_present[inverse]
    kept = np.flatnonzero(all_codes >= 0)
    codes = all_codes[kept]
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    bounds = []
    for k in range(len(languages)):
        lo, hi = np.searchsorted(sorted_codes, k, "left"), np.searchsorted(sorted_codes, k, "right")
        bounds.append((int(lo), int(hi)))
    sorted_images = ids[kept[order]]
    by_image = np.argsort(sorted_images, kind="stable")
    return _TextIndex(
        list(languages), ids[kept], np.asarray(languages, dtype=str)[codes], codes, kept, order, bounds,
        sorted_images[by_image], by_image, sorted_codes[by_image],
    )


def _rows_per_block(width: int, chunk_size: int | None, max_block_elements: int) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return chunk_size
    return max(1, max_block_elements // max(1, width))


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="block")


# ------------------------------------------------------------------------------------------ the counting

_NAN_SCORES = "scores contain NaN, which cannot be ranked (check the embeddings or the score function)"


def _count_above(
    scores: torch.Tensor, row_thresholds: torch.Tensor, bounds: Sequence[tuple[int, int]],
    col_thresholds: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per row and column segment ``[lo, hi)``: scores strictly above the row's threshold for that segment;
    with ``col_thresholds`` also per column: scores strictly above the column's threshold. A NaN score is a
    ValueError (it would silently count as neither above nor below)."""
    if scores.device.type == "cpu":
        rows, cols, has_nan = count_above(
            scores.numpy(), row_thresholds.numpy(), bounds, None if col_thresholds is None else col_thresholds.numpy()
        )
    else:
        rows = torch.stack([(scores[:, lo:hi] > row_thresholds[:, k, None]).sum(1) for k, (lo, hi) in enumerate(bounds)], 1)
        rows = rows.cpu().numpy()
        cols = None if col_thresholds is None else (scores > col_thresholds[None, :]).sum(0).cpu().numpy()
        has_nan = bool(torch.isnan(scores).any())
    if has_nan:
        raise ValueError(_NAN_SCORES)
    return rows, cols


def _best_gold(
    scores: torch.Tensor, start: int, stop: int, index: _TextIndex, text_gold: torch.Tensor | None = None
) -> torch.Tensor:
    """(stop-start, K): per image row and language, the best score among the image's captions in that
    language (-inf if none), read from ``scores`` (rows start:stop, all sorted texts) itself, or taken from
    ``text_gold`` (T,), every sorted text's score with its own image, when that is already gathered."""
    num_langs = len(index.languages)
    a, b = np.searchsorted(index.pair_images, [start, stop])
    rows_np, cols_np = index.pair_images[a:b] - start, index.pair_cols[a:b]
    if scores.device.type == "cpu":  # numpy gathers are much faster than torch advanced indexing on CPU
        gold = scores.numpy()[rows_np, cols_np] if text_gold is None else text_gold.numpy()[cols_np]
        best_np = np.full((stop - start) * num_langs, -np.inf, dtype=gold.dtype)
        np.maximum.at(best_np, rows_np * num_langs + index.pair_langs[a:b], gold)
        return torch.from_numpy(best_np).view(stop - start, num_langs)
    best = torch.full(((stop - start) * num_langs,), -math.inf, dtype=scores.dtype, device=scores.device)
    if a < b:
        rows = torch.as_tensor(rows_np, device=scores.device)
        cols = torch.as_tensor(cols_np, device=scores.device)
        gold = scores[rows, cols] if text_gold is None else text_gold[cols]
        slots = rows * num_langs + torch.as_tensor(index.pair_langs[a:b], device=scores.device)
        best = best.scatter_reduce(0, slots, gold, reduce="amax")
    return best.view(stop - start, num_langs)


def _on(tensor: torch.Tensor, positions: np.ndarray | slice) -> torch.Tensor | slice:
    """Index positions as a tensor on ``tensor``'s device (a slice stays a slice)."""
    return positions if isinstance(positions, slice) else torch.as_tensor(positions, device=tensor.device)


def _gather(scores: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
    """``scores[rows, cols]`` (numpy indexing on CPU, torch on other devices)."""
    if scores.device.type == "cpu":
        return torch.from_numpy(np.ascontiguousarray(scores.numpy()[rows, cols]))
    return scores[torch.as_tensor(rows, device=scores.device), torch.as_tensor(cols, device=scores.device)]


def _count_ranks(
    index: _TextIndex,
    num_images: int,
    full: torch.Tensor | None,
    image_block: Callable[..., torch.Tensor] | None,
    text_block: Callable[[Any], torch.Tensor] | None,
    chunk_size: int | None,
    max_block_elements: int,
    top_k: int,
    progress: bool,
) -> RetrievalRanks:
    """Shared by every score source.

    Either ``full`` (N, T) holds all scores (texts in sorted order) and both directions read from it, or
    query blocks are computed: ``image_block(s, e, cols=None)`` -> (e-s, T) scores of images s:e against
    the sorted texts (or those at ``cols``), ``text_block(rows)`` -> (len(rows), N) scores of the sorted
    texts ``rows`` against all images. TR golds always come from the block they are compared against.
    Without a top-k, IR is counted in the same pass over image blocks against gold scores computed
    beforehand (one matmul instead of two); a caption whose gold differs in its last bits between the two
    computations is recounted from a text block, so rounding cannot shift a rank by one.
    """
    num_texts = len(index.order)
    num_langs = len(index.languages)
    tr = np.full((num_images, num_langs), np.nan)
    tr_topk = np.full((num_images, num_langs, top_k), -1, dtype=np.int64) if top_k else None
    sorted_to_kept = index.order
    gold_images = index.image_ids[sorted_to_kept]  # image of each sorted text
    ir_sorted = np.ones(num_texts, dtype=np.int64)
    has_caption = np.zeros((num_images, num_langs), dtype=bool)
    has_caption[index.pair_images, index.pair_langs] = True

    if full is not None:
        ir_gold = _gather(full, gold_images, np.arange(num_texts))
        best = _best_gold(full, 0, num_images, index, text_gold=ir_gold)
        tr_counts, ir_counts = _count_above(full, best, index.bounds, ir_gold)
        tr[has_caption] = tr_counts[has_caption] + 1
        ir_sorted += ir_counts
    one_pass = full is None and not top_k
    if full is None or top_k:
        rows = _rows_per_block(num_texts, chunk_size, max_block_elements if full is None else CACHE_ELEMENTS)
        starts = range(0, num_images, rows)
        if one_pass:
            ir_gold = _gold_before_blocks(image_block, index, num_images, rows, progress)
            block_gold = torch.empty_like(ir_gold)
        for start in _progress(starts, len(starts), "TR and IR ranks" if one_pass else "TR ranks", progress):
            stop = min(start + rows, num_images)
            scores = full[start:stop] if full is not None else image_block(start, stop)
            if one_pass:  # this block's own gold scores, read once: for TR and to check IR's after the pass
                a, b = np.searchsorted(index.pair_images, [start, stop])
                cols = index.pair_cols[a:b]
                block_gold[_on(block_gold, cols)] = _gather(scores, index.pair_images[a:b] - start, cols)
            if full is None:
                best = _best_gold(scores, start, stop, index, text_gold=block_gold if one_pass else None)
                counts, ir_counts = _count_above(scores, best, index.bounds, ir_gold if one_pass else None)
                mask = has_caption[start:stop]
                tr[start:stop][mask] = counts[mask] + 1
                if one_pass:
                    ir_sorted += ir_counts
            for k, (lo, hi) in enumerate(index.bounds if top_k else []):
                kk = min(top_k, hi - lo)
                cand = scores[:, lo:hi].topk(kk, dim=1).indices.cpu().numpy() + lo
                tr_topk[start:stop, k, :kk] = sorted_to_kept[cand]

    if one_pass:  # recount the captions whose gold, as compared against, was not the block's own value
        texts = np.flatnonzero((block_gold != ir_gold).cpu().numpy())
    else:  # a full matrix has IR counted already; caption blocks are needed only for their top-k
        texts = np.arange(num_texts) if top_k else np.zeros(0, dtype=np.int64)
    ir_topk_sorted = np.full((num_texts, top_k), -1, dtype=np.int64) if top_k else None
    if len(texts):
        rows = _rows_per_block(num_images, chunk_size, max_block_elements)
        starts = range(0, len(texts), rows)
        for start in _progress(starts, len(starts), "IR ranks", progress):
            block = texts[start : start + rows]
            if full is not None:
                scores = full[:, start : start + rows].T
            else:  # a slice while the texts run contiguously (no gather copy)
                contiguous = block[-1] - block[0] + 1 == len(block)
                scores = text_block(slice(int(block[0]), int(block[-1]) + 1) if contiguous else block)
            if full is None:
                gold = _gather(scores, np.arange(len(block)), gold_images[block])
                ir_sorted[block] = _count_above(scores, gold[:, None], [(0, num_images)])[0][:, 0] + 1
            if top_k:
                kk = min(top_k, num_images)
                ir_topk_sorted[block, :kk] = scores.topk(kk, dim=1).indices.cpu().numpy()

    ir = np.empty(num_texts, dtype=np.int64)
    ir[sorted_to_kept] = ir_sorted
    ir_topk = None
    if top_k:
        ir_topk = np.empty_like(ir_topk_sorted)
        ir_topk[sorted_to_kept] = ir_topk_sorted
    return RetrievalRanks(
        tr_ranks=tr,
        ir_ranks=ir,
        languages=index.languages,
        text_image_ids=index.image_ids,
        text_languages=index.text_languages,
        text_indices=index.kept,
        tr_topk=tr_topk,
        ir_topk=ir_topk,
        text_language_codes=index.codes,
    )


def _gold_before_blocks(
    image_block: Callable[..., torch.Tensor], index: _TextIndex, num_images: int, rows: int, progress: bool
) -> torch.Tensor:
    """(T,) every sorted text's score with its own image, computed per block of images against just the
    captions of those images (a small fraction of the full matmul)."""
    gold = None
    starts = range(0, num_images, rows)
    for start in _progress(starts, len(starts), "gold scores", progress):
        stop = min(start + rows, num_images)
        a, b = np.searchsorted(index.pair_images, [start, stop])
        if a == b:
            continue
        cols = index.pair_cols[a:b]
        values = _gather(image_block(start, stop, cols), index.pair_images[a:b] - start, np.arange(b - a))
        if gold is None:
            gold = torch.empty(len(index.order), dtype=values.dtype, device=values.device)
        gold[torch.as_tensor(cols, device=gold.device)] = values
    return gold


def compute_retrieval_ranks(
    image_embeds: Any,
    text_embeds: Any,
    text_image_ids: Any,
    text_languages: Sequence[str],
    languages: Sequence[str] | None = None,
    chunk_size: int | None = None,
    max_block_elements: int = DEFAULT_BLOCK_ELEMENTS,
    normalize: bool = True,
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    top_k: int = 0,
    progress: bool = False,
) -> RetrievalRanks:
    """TR and IR ranks from embeddings (numpy or torch, any device).

    Scores are cosine similarities (``normalize=True``; the model's features are not normalised) or
    ``score_fn(query_block, gallery) -> (b, G)``. When all N x T scores fit in ``max_block_elements``
    they are computed by one matmul that serves both directions; otherwise blocks of image rows of at most
    that many scores are computed once and counted for both directions (``chunk_size`` fixes the rows per
    block and forces blocks). ``score_fn`` is also called as ``score_fn(caption_block, images)`` for the
    IR direction when a caption needs recounting or with ``top_k``. ``top_k > 0`` keeps each query's top-k
    candidates for :func:`rerank_ranks` (then captions are scored in blocks of their own as well).
    ``languages`` selects (and orders) the languages evaluated.
    """
    images = _as_float_tensor("image_embeds", image_embeds)
    texts = _as_float_tensor("text_embeds", text_embeds).to(images.device)
    if images.shape[1] != texts.shape[1]:
        raise ValueError(f"image_embeds have dim {images.shape[1]} but text_embeds have dim {texts.shape[1]}")
    if texts.shape[0] != len(text_languages):
        raise ValueError(f"text_embeds has {texts.shape[0]} rows but text_languages has {len(text_languages)}")
    index = _index_texts(text_image_ids, text_languages, images.shape[0], languages)
    if normalize:
        images = torch.nn.functional.normalize(images, dim=-1)
        texts = torch.nn.functional.normalize(texts, dim=-1)
    texts = texts[torch.as_tensor(index.kept[index.order], device=texts.device)]
    scorer = score_fn or (lambda query, gallery: query @ gallery.T)
    one_matmul = chunk_size is None and images.shape[0] * texts.shape[0] <= max_block_elements

    # Scores stay fp32 even when the encoding ran under bf16 autocast (evaluate_model.py --dtype bf16).
    with torch.inference_mode(), torch.autocast(device_type=images.device.type, enabled=False):
        return _count_ranks(
            index,
            images.shape[0],
            scorer(images, texts) if one_matmul else None,
            lambda s, e, cols=None: scorer(images[s:e], texts if cols is None else texts[_on(texts, cols)]),
            lambda rows: scorer(texts[_on(texts, rows)], images),
            chunk_size,
            max_block_elements,
            top_k,
            progress,
        )


def ranks_from_scores(
    scores: Any,
    text_image_ids: Any,
    text_languages: Sequence[str],
    languages: Sequence[str] | None = None,
    chunk_size: int | None = None,
    top_k: int = 0,
) -> RetrievalRanks:
    """TR and IR ranks from a precomputed (N_images, T) score matrix (e.g. from your own scorer).

    Both directions are counted in one streaming pass over the matrix, in cache-sized row blocks. NaN scores
    are a ValueError; infinite ones are ordered like any other (``-inf`` keeps a pair out of the top).
    ``chunk_size`` sets the query rows per block when collecting ``top_k`` candidates."""
    matrix = _as_float_tensor("scores", scores, check_finite=False)  # NaN is checked while counting
    if matrix.shape[1] != len(text_languages):
        raise ValueError(f"scores has {matrix.shape[1]} columns but there are {len(text_languages)} texts")
    index = _index_texts(text_image_ids, text_languages, matrix.shape[0], languages)
    columns = index.kept[index.order]
    if not np.array_equal(columns, np.arange(matrix.shape[1])):
        matrix = matrix[:, torch.as_tensor(columns, device=matrix.device)]
    with torch.inference_mode(), torch.autocast(device_type=matrix.device.type, enabled=False):
        return _count_ranks(
            index, matrix.shape[0], matrix, None, None, chunk_size, DEFAULT_BLOCK_ELEMENTS, top_k, False
        )


# -------------------------------------------------------------------------------------------- stage 2


def rerank_ranks(
    ranks: RetrievalRanks,
    pair_scores: Callable[[np.ndarray, np.ndarray], Any],
    batch_size: int = 256,
    progress: bool = False,
) -> RetrievalRanks:
    """Stage 2: re-score each query's stage-1 top-k with ``pair_scores(image_idx, text_idx) -> (P,)``.

    ``text_idx`` index the evaluated texts (``ranks.text_image_ids`` order). If a gold item is among the
    top-k, the new rank is 1 + the number of top-k candidates scoring strictly higher than the (best) gold
    one; otherwise the stage-1 rank stays (items outside the top-k keep their order after it).
    """
    if ranks.tr_topk is None or ranks.ir_topk is None:
        raise ValueError("ranks has no top-k candidates: compute them with top_k > 0 before re-ranking")
    k = ranks.ir_topk.shape[1]
    queries_per_batch = max(1, batch_size // max(1, k))

    def score(images: np.ndarray, texts: np.ndarray) -> np.ndarray:
        out = pair_scores(images, texts)
        out = out.detach().float().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out, dtype=float)
        if out.shape != images.shape:
            raise ValueError(f"pair_scores returned shape {out.shape} for {images.shape[0]} pairs")
        return out

    tr = ranks.tr_ranks.copy()
    todo = np.argwhere(~np.isnan(tr))  # (image, language) queries with a gold caption
    batches = range(0, len(todo), queries_per_batch)
    for start in _progress(batches, len(batches), "TR re-rank", progress):
        chunk = todo[start : start + queries_per_batch]
        cand = ranks.tr_topk[chunk[:, 0], chunk[:, 1]]  # (q, k)
        valid = cand >= 0
        q_images = np.broadcast_to(chunk[:, :1], cand.shape)
        itm = np.full(cand.shape, -np.inf)
        itm[valid] = score(q_images[valid], cand[valid])
        is_gold = valid & (ranks.text_image_ids[np.where(valid, cand, 0)] == q_images)
        best_gold = np.where(is_gold, itm, -np.inf).max(axis=1)
        found = is_gold.any(axis=1)
        new = 1 + (valid & (itm > best_gold[:, None])).sum(axis=1)
        tr[chunk[found, 0], chunk[found, 1]] = new[found]

    ir = ranks.ir_ranks.copy()
    batches = range(0, ranks.num_texts, queries_per_batch)
    for start in _progress(batches, len(batches), "IR re-rank", progress):
        texts = np.arange(start, min(start + queries_per_batch, ranks.num_texts))
        cand = ranks.ir_topk[texts]
        valid = cand >= 0
        q_texts = np.broadcast_to(texts[:, None], cand.shape)
        itm = np.full(cand.shape, -np.inf)
        itm[valid] = score(cand[valid], q_texts[valid])
        is_gold = valid & (cand == ranks.text_image_ids[texts][:, None])
        found = is_gold.any(axis=1)
        gold_score = np.where(is_gold, itm, -np.inf).max(axis=1)
        new = 1 + (valid & (itm > gold_score[:, None])).sum(axis=1)
        ir[texts[found]] = new[found]

    return replace(ranks, tr_ranks=tr, ir_ranks=ir)


# -------------------------------------------------------------------------------------------- metrics


def _nan_to_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _chance_recall(gallery: int, positives: np.ndarray, ks: Sequence[int]) -> list[float]:
    """Expected recall@k of a random ranking, for each k: P(one of m positives among the first k of
    ``gallery``), averaged over the queries (``positives`` holds each query's m)."""
    queries = np.bincount(positives.astype(np.int64))
    m = np.flatnonzero(queries).astype(np.float64)
    queries = queries[queries > 0]
    if not gallery or not len(m):
        return [0.0 if len(m) else math.nan for _ in ks]
    j = np.arange(min(max(ks), gallery))
    miss = np.cumprod(np.clip((gallery - m[:, None] - j) / (gallery - j), 0.0, None), axis=1)
    hits = 1.0 - miss[:, [min(k, gallery) - 1 for k in ks]]  # (distinct m, len(ks))
    return [float(v) for v in 100.0 * (queries @ hits) / queries.sum()]


def retrieval_metrics(
    ranks: RetrievalRanks, ks: Sequence[int] = (1, 5, 10), mrv_variant: str = "variance"
) -> dict[str, Any]:
    """Recall@K (percent) per language and direction, their averages, mean recall, MRV_TR and MRV_IR.

    The layout is the one ``eval_results.json`` uses (see CONTRACT.md). ``chance`` gives the recall a
    random ranking would get, for scale. NaN values (e.g. MRV with a single language) become ``None``.
    """
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    recall: dict[str, dict[str, dict[str, float]]] = {"TR": {}, "IR": {}}
    chance: dict[str, dict[str, list[float]]] = {"TR": {f"R@{k}": [] for k in ks}, "IR": {f"R@{k}": [] for k in ks}}
    codes = ranks.text_language_codes
    num_langs = len(ranks.languages)
    has_tr = ~np.isnan(ranks.tr_ranks)
    with np.errstate(invalid="ignore"):  # NaN (no caption) compares False and is not counted
        tr_hits = np.stack([(ranks.tr_ranks <= k).sum(axis=0) for k in ks], axis=1) / has_tr.sum(axis=0)[:, None]
    texts_per_language = np.bincount(codes, minlength=num_langs)
    ir_hits = np.stack(
        [np.bincount(codes, weights=ranks.ir_ranks <= k, minlength=num_langs) for k in ks], axis=1
    ) / texts_per_language[:, None]
    captions_per_image = np.bincount(
        codes * ranks.num_images + ranks.text_image_ids, minlength=num_langs * ranks.num_images
    ).reshape(num_langs, ranks.num_images)
    ir_chance = _chance_recall(ranks.num_images, np.ones(1), ks)
    for li, lang in enumerate(ranks.languages):
        recall["TR"][lang] = {f"R@{k}": float(100.0 * v) for k, v in zip(ks, tr_hits[li])}
        recall["IR"][lang] = {f"R@{k}": float(100.0 * v) for k, v in zip(ks, ir_hits[li])}
        positives = captions_per_image[li][has_tr[:, li]]
        for k, value in zip(ks, _chance_recall(int(texts_per_language[li]), positives, ks)):
            chance["TR"][f"R@{k}"].append(value)
        for k, value in zip(ks, ir_chance):  # one gold image among all images, the same for every language
            chance["IR"][f"R@{k}"].append(value)
    recall_avg = {
        d: {f"R@{k}": float(np.mean([recall[d][lang][f"R@{k}"] for lang in ranks.languages])) for k in ks}
        for d in ("TR", "IR")
    }
    mrv_tr = compute_mrv(ranks.tr_ranks, mrv_variant)
    mrv_ir = compute_mrv(ranks.ir_rank_matrix(), mrv_variant)
    return {
        "languages": list(ranks.languages),
        "num_images": ranks.num_images,
        "num_texts": ranks.num_texts,
        "recall": recall,
        "recall_avg": recall_avg,
        "mean_recall": float(np.mean([v for d in recall_avg.values() for v in d.values()])),
        "mrv": {"TR": _nan_to_none(mrv_tr["mrv"]), "IR": _nan_to_none(mrv_ir["mrv"])},
        "mrv_variant": mrv_variant,
        "mrv_num_instances": {"TR": mrv_tr["num_instances"], "IR": mrv_ir["num_instances"]},
        "chance": {d: {key: float(np.mean(v)) for key, v in chance[d].items()} for d in ("TR", "IR")},
    }


def flatten_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Flat scalar view for loggers: ``tr_r1_en``, ``ir_r5_de``, ``tr_r1_avg``, ``mean_recall``, ``mrv_tr``..."""
    flat: dict[str, float] = {}
    for direction, per_lang in metrics["recall"].items():
        for lang, values in per_lang.items():
            for key, value in values.items():
                flat[f"{direction.lower()}_r{key[2:]}_{lang}"] = value
    for direction, values in metrics["recall_avg"].items():
        for key, value in values.items():
            flat[f"{direction.lower()}_r{key[2:]}_avg"] = value
    flat["mean_recall"] = metrics["mean_recall"]
    for direction, value in metrics["mrv"].items():
        flat[f"mrv_{direction.lower()}"] = math.nan if value is None else value
    return flat


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


def _flatten_captions(dataset: Any, languages: Sequence[str] | None) -> tuple[list[str], list[int], list[str]]:
    texts, image_ids, text_languages = [], [], []
    wanted = None if languages is None else set(languages)
    for row, captions in enumerate(dataset.select_columns(["captions"])["captions"]):
        for caption in captions:
            if wanted is None or caption["language"] in wanted:
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
    are kept for all images during re-ranking. Returns ``(retrieval_metrics(...), ranks)``.
    """
    from .dataset_schema import check_ccr_dataset

    check_ccr_dataset(dataset)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if rerank_top_k:
        fusion = getattr(getattr(model, "config", None), "num_fusion_layers", 0) or 0
        if fusion <= 0 or not hasattr(model, "itm_scores") or not hasattr(model, "get_image_tokens"):
            raise ValueError("rerank_top_k needs a model with fusion layers (config.num_fusion_layers > 0) and an ITM head")
    texts, text_image_ids, text_languages = _flatten_captions(dataset, languages)
    if not texts:
        raise ValueError(f"the dataset has no caption in the languages {list(languages or [])}")
    device = _model_device(model)
    was_training = model.training
    model.eval()
    images_only = dataset.select_columns(["image"])
    try:
        with torch.no_grad():
            image_chunks, token_chunks = [], []
            starts = range(0, len(dataset), batch_size)
            for start in _progress(starts, len(starts), "encoding images", progress):
                # The processor converts every image mode itself (RGBA composited as in training); a bare
                # convert("RGB") here would turn transparent backgrounds black and evaluate other images.
                images = images_only[start : start + batch_size]["image"]
                pixel_values = _to_device(processor(images=images), device)["pixel_values"]
                image_chunks.append(_features(model.get_image_features(pixel_values=pixel_values), "image").float().cpu())
                if rerank_top_k:
                    token_chunks.append(model.get_image_tokens(pixel_values=pixel_values).cpu())
            text_chunks = []
            starts = range(0, len(texts), batch_size)
            for start in _progress(starts, len(starts), "encoding texts", progress):
                encoded = _to_device(processor(text=texts[start : start + batch_size]), device)
                output = model.get_text_features(input_ids=encoded["input_ids"], attention_mask=encoded.get("attention_mask"))
                text_chunks.append(_features(output, "text").float().cpu())
            ranks = compute_retrieval_ranks(
                torch.cat(image_chunks),
                torch.cat(text_chunks),
                np.asarray(text_image_ids),
                text_languages,
                languages=languages,
                chunk_size=chunk_size,
                top_k=rerank_top_k,
                progress=progress,
            )
            if rerank_top_k:
                image_tokens = torch.cat(token_chunks)
                kept_texts = [texts[i] for i in ranks.text_indices]

                def pair_scores(image_idx: np.ndarray, text_idx: np.ndarray) -> torch.Tensor:
                    encoded = _to_device(processor(text=[kept_texts[i] for i in text_idx]), device)
                    tokens = image_tokens[torch.as_tensor(image_idx)].to(device)
                    return model.itm_scores(tokens, encoded["input_ids"], encoded.get("attention_mask"))

                ranks = rerank_ranks(ranks, pair_scores, batch_size=batch_size, progress=progress)
    finally:
        model.train(was_training)
    return retrieval_metrics(ranks, ks=ks, mrv_variant=mrv_variant), ranks
