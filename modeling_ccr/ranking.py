"""The ranking engine: TR and IR ranks from embeddings or a score matrix, exact and in bounded memory.

- TR (image -> text) per language: the gallery is that language's captions; an image's rank in language k
  is its best caption's rank in k.
- IR (text -> image): for every caption, the rank of its image among all images.
- The rank rule (:func:`rank_from_counts`, the only place it is written): rank = 1 + the number of
  *non-gold* gallery items scoring at or above the gold item. Ties count against the gold item, so a
  degenerate model (all scores equal) ranks every gold item last, never first. In TR the image's other
  captions in the same language are gold too and never count against it.

Ranks are counted block by block over image rows (bounded memory whatever the gallery size; the counting
itself is in ``rank_counting``), and every comparison is against the gold score as the same block's
matmul computed it, so rounding differences between blocks cannot create off-by-one ranks. Stage 2
(:func:`rerank_ranks`) re-scores each query's top-k with a pair scorer under the same rule.
Encoding a dataset with a model and the metrics built from the ranks are elsewhere (``retrieval``,
``results``).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from .rank_counting import CACHE_ELEMENTS, count_at_or_above

DEFAULT_BLOCK_ELEMENTS = 1 << 25  # scores held at once: 32M floats = 128 MiB


def rank_from_counts(at_or_above: Any, golds_at_or_above: Any) -> Any:
    """The rank rule, written once: 1 + the gallery items scoring at or above the gold score, less the gold
    items among them (the gold itself, and in TR the image's other captions in that language).

    Ties therefore count against the gold item: with all scores equal every gold item ranks last (chance
    level), where counting only strictly higher items would rank it first (Recall@1 = 100 %, MRV = 0)."""
    return 1 + at_or_above - golds_at_or_above


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


def prepare_embeddings(
    image_embeds: Any,
    text_embeds: Any,
    text_image_ids: Any,
    text_languages: Sequence[str],
    languages: Sequence[str] | None,
    normalize: bool,
) -> tuple[torch.Tensor, torch.Tensor, _TextIndex]:
    """Checked float embeddings and the text index: texts on the images' device, kept and sorted by language
    (the index's column order), both normalised when ``normalize`` (cosine scores)."""
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
    return images, texts[torch.as_tensor(index.kept[index.order], device=texts.device)], index


@contextlib.contextmanager
def exact_scoring(device: torch.device) -> Iterator[None]:
    """No autograd and no autocast while scores are computed: ranks come from fp32 scores even when the
    caller encoded under bf16 autocast (``--precision bf16``, ``evaluate_model.py --dtype bf16``)."""
    with torch.inference_mode(), torch.autocast(device_type=device.type, enabled=False):
        yield


def _rows_per_block(width: int, chunk_size: int | None, max_block_elements: int) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return chunk_size
    return max(1, max_block_elements // max(1, width))


def progress_bar(iterable, total: int, desc: str, enabled: bool):
    """``iterable`` with a tqdm bar when ``enabled``."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="block")


# ------------------------------------------------------------------------------------------ the counting

_NAN_SCORES = "scores contain NaN, which cannot be ranked (check the embeddings or the score function)"


def _count_at_or_above(
    scores: torch.Tensor, row_thresholds: torch.Tensor, bounds: Sequence[tuple[int, int]],
    col_thresholds: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per row and column segment ``[lo, hi)``: scores at or above the row's threshold for that segment;
    with ``col_thresholds`` also per column: scores at or above the column's threshold. A NaN score is a
    ValueError (it would silently count as neither above nor below)."""
    if scores.device.type == "cpu":
        rows, cols, has_nan = count_at_or_above(
            scores.numpy(), row_thresholds.numpy(), bounds, None if col_thresholds is None else col_thresholds.numpy()
        )
    else:
        rows = torch.stack([(scores[:, lo:hi] >= row_thresholds[:, k, None]).sum(1) for k, (lo, hi) in enumerate(bounds)], 1)
        rows = rows.cpu().numpy()
        cols = None if col_thresholds is None else (scores >= col_thresholds[None, :]).sum(0).cpu().numpy()
        has_nan = bool(torch.isnan(scores).any())
    if has_nan:
        raise ValueError(_NAN_SCORES)
    return rows, cols


def _best_gold(
    scores: torch.Tensor, start: int, stop: int, index: _TextIndex, text_gold: torch.Tensor | None = None
) -> tuple[torch.Tensor, np.ndarray]:
    """Per image row (start:stop) and language: the best score among the image's captions in that language
    (-inf if none), and how many of those captions score exactly that (0 if none). The scores are read from
    ``scores`` (rows start:stop, all sorted texts) itself, or taken from ``text_gold`` (T,), every sorted
    text's score with its own image, when that is already gathered from the same block."""
    num_langs = len(index.languages)
    size = (stop - start) * num_langs
    a, b = np.searchsorted(index.pair_images, [start, stop])
    rows_np, cols_np = index.pair_images[a:b] - start, index.pair_cols[a:b]
    slots_np = rows_np * num_langs + index.pair_langs[a:b]
    if scores.device.type == "cpu":  # numpy gathers are much faster than torch advanced indexing on CPU
        gold = scores.numpy()[rows_np, cols_np] if text_gold is None else text_gold.numpy()[cols_np]
        best_np = np.full(size, -np.inf, dtype=gold.dtype)
        np.maximum.at(best_np, slots_np, gold)
        at_best = gold == best_np[slots_np]
        best = torch.from_numpy(best_np)
    else:
        best = torch.full((size,), -math.inf, dtype=scores.dtype, device=scores.device)
        at_best = np.zeros(0, dtype=bool)
        if a < b:
            slots = torch.as_tensor(slots_np, device=scores.device)
            cols = torch.as_tensor(cols_np, device=scores.device)
            gold = scores[torch.as_tensor(rows_np, device=scores.device), cols] if text_gold is None else text_gold[cols]
            best = best.scatter_reduce(0, slots, gold, reduce="amax")
            at_best = (gold == best[slots]).cpu().numpy()
    ties = np.bincount(slots_np, weights=at_best.astype(np.float64), minlength=size).astype(np.int64)
    return best.view(stop - start, num_langs), ties.reshape(stop - start, num_langs)


def _on(tensor: torch.Tensor, positions: np.ndarray | slice) -> torch.Tensor | slice:
    """Index positions as a tensor on ``tensor``'s device (a slice stays a slice)."""
    return positions if isinstance(positions, slice) else torch.as_tensor(positions, device=tensor.device)


def _gather(scores: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
    """``scores[rows, cols]`` (numpy indexing on CPU, torch on other devices)."""
    if scores.device.type == "cpu":
        return torch.from_numpy(np.ascontiguousarray(scores.numpy()[rows, cols]))
    return scores[torch.as_tensor(rows, device=scores.device), torch.as_tensor(cols, device=scores.device)]


def _tr_ranks_of_block(
    scores: torch.Tensor, start: int, stop: int, index: _TextIndex, text_gold: torch.Tensor | None = None,
    col_thresholds: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """TR ranks (stop-start, K) of image rows start:stop from their scores against all sorted texts (NaN
    where the image has no caption in a language); with ``col_thresholds`` also every column's count of
    scores at or above its threshold (IR's counts, in the same read of the block)."""
    best, gold_ties = _best_gold(scores, start, stop, index, text_gold)
    counts, col_counts = _count_at_or_above(scores, best, index.bounds, col_thresholds)
    ranks = rank_from_counts(counts, gold_ties).astype(np.float64)
    ranks[gold_ties == 0] = np.nan  # no caption in that language (a present one always ties with itself)
    return ranks, col_counts


def _ir_ranks_of_texts(
    texts: np.ndarray, text_block: Callable[[Any], torch.Tensor], gold_images: np.ndarray, rows: int,
    top_k: int, progress: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """IR ranks of the sorted texts ``texts`` from blocks of caption rows against all images (the gold score
    read from the same block), and with ``top_k`` each caption's top-k images."""
    ranks = np.empty(len(texts), dtype=np.int64)
    topk = np.full((len(texts), top_k), -1, dtype=np.int64) if top_k else None
    starts = range(0, len(texts), rows)
    for start in progress_bar(starts, len(starts), "IR ranks", progress):
        block = texts[start : start + rows]
        contiguous = block[-1] - block[0] + 1 == len(block)  # a slice while the texts run contiguously (no copy)
        scores = text_block(slice(int(block[0]), int(block[-1]) + 1) if contiguous else block)
        gold = _gather(scores, np.arange(len(block)), gold_images[block])
        counts = _count_at_or_above(scores, gold[:, None], [(0, scores.shape[1])])[0][:, 0]
        ranks[start : start + len(block)] = rank_from_counts(counts, 1)
        if top_k:
            kk = min(top_k, scores.shape[1])
            topk[start : start + len(block), :kk] = scores.topk(kk, dim=1).indices.cpu().numpy()
    return ranks, topk


# The three ways of counting; each returns TR ranks (N, K) and IR ranks (T,) in sorted text order.


def _ranks_from_matrix(index: _TextIndex, full: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """All N x T scores in one matrix: both directions counted in one streaming pass over it."""
    gold_images = index.image_ids[index.order]
    ir_gold = _gather(full, gold_images, np.arange(len(index.order)))
    tr, ir_counts = _tr_ranks_of_block(full, 0, full.shape[0], index, text_gold=ir_gold, col_thresholds=ir_gold)
    return tr, rank_from_counts(ir_counts, 1)


def _ranks_in_one_pass(
    index: _TextIndex, num_images: int, image_block: Callable[..., torch.Tensor],
    text_block: Callable[[Any], torch.Tensor], image_rows: int, text_rows: int, progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of image rows, each computed once and counted for TR and for IR. IR compares against gold
    scores computed beforehand (a small matmul); a caption whose gold, as its block computed it, differs in
    its last bits from that value is recounted from a text block, so rounding cannot shift a rank by one."""
    num_texts = len(index.order)
    tr = np.empty((num_images, len(index.languages)))
    ir_counts = np.zeros(num_texts, dtype=np.int64)
    ir_gold = _gold_before_blocks(image_block, index, num_images, image_rows, progress)
    block_gold = torch.empty_like(ir_gold)
    starts = range(0, num_images, image_rows)
    for start in progress_bar(starts, len(starts), "TR and IR ranks", progress):
        stop = min(start + image_rows, num_images)
        scores = image_block(start, stop)
        a, b = np.searchsorted(index.pair_images, [start, stop])
        cols = index.pair_cols[a:b]  # this block's own gold scores: for TR, and to check IR's after the pass
        block_gold[_on(block_gold, cols)] = _gather(scores, index.pair_images[a:b] - start, cols)
        tr[start:stop], counts = _tr_ranks_of_block(scores, start, stop, index, block_gold, ir_gold)
        ir_counts += counts
    ir = rank_from_counts(ir_counts, 1)
    texts = np.flatnonzero((block_gold != ir_gold).cpu().numpy())
    if len(texts):
        ir[texts] = _ir_ranks_of_texts(texts, text_block, index.image_ids[index.order], text_rows, 0, progress)[0]
    return tr, ir


def _ranks_and_top_k(
    index: _TextIndex, num_images: int, image_block: Callable[..., torch.Tensor],
    text_block: Callable[[Any], torch.Tensor], image_rows: int, text_rows: int, top_k: int, progress: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Image blocks give TR ranks and each image's top-k captions per language; caption blocks give IR ranks
    and each caption's top-k images. Top-k indices are sorted text positions / image indices."""
    tr = np.empty((num_images, len(index.languages)))
    tr_topk = np.full((num_images, len(index.languages), top_k), -1, dtype=np.int64)
    starts = range(0, num_images, image_rows)
    for start in progress_bar(starts, len(starts), "TR ranks", progress):
        stop = min(start + image_rows, num_images)
        scores = image_block(start, stop)
        tr[start:stop] = _tr_ranks_of_block(scores, start, stop, index)[0]
        for k, (lo, hi) in enumerate(index.bounds):
            kk = min(top_k, hi - lo)
            tr_topk[start:stop, k, :kk] = scores[:, lo:hi].topk(kk, dim=1).indices.cpu().numpy() + lo
    texts = np.arange(len(index.order))
    ir, ir_topk = _ir_ranks_of_texts(texts, text_block, index.image_ids[index.order], text_rows, top_k, progress)
    return tr, ir, tr_topk, ir_topk


def _gold_before_blocks(
    image_block: Callable[..., torch.Tensor], index: _TextIndex, num_images: int, rows: int, progress: bool
) -> torch.Tensor:
    """(T,) every sorted text's score with its own image, computed per block of images against just the
    captions of those images (a small fraction of the full matmul)."""
    gold = None
    starts = range(0, num_images, rows)
    for start in progress_bar(starts, len(starts), "gold scores", progress):
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
    """Shared by every score source: either ``full`` (N, T) holds all scores (texts in sorted order), or
    query blocks are computed: ``image_block(s, e, cols=None)`` -> (e-s, T) scores of images s:e against the
    sorted texts (or those at ``cols``), ``text_block(rows)`` -> (len(rows), N) scores of the sorted texts
    ``rows`` against all images. Picks one of the three ways of counting and returns the caller's order."""
    num_texts = len(index.order)
    if full is not None:
        image_block = lambda s, e, cols=None: full[s:e]  # noqa: E731
        text_block = lambda rows: full[:, _on(full, rows)].T  # noqa: E731
    image_rows = _rows_per_block(num_texts, chunk_size, max_block_elements if full is None else CACHE_ELEMENTS)
    text_rows = _rows_per_block(num_images, chunk_size, max_block_elements)
    tr_topk = ir_topk = None
    if top_k:
        tr, ir_sorted, tr_topk, ir_topk_sorted = _ranks_and_top_k(
            index, num_images, image_block, text_block, image_rows, text_rows, top_k, progress
        )
        tr_topk = np.where(tr_topk >= 0, index.order[np.maximum(tr_topk, 0)], -1)  # sorted -> kept positions
        ir_topk = np.empty_like(ir_topk_sorted)
        ir_topk[index.order] = ir_topk_sorted
    elif full is not None:
        tr, ir_sorted = _ranks_from_matrix(index, full)
    else:
        tr, ir_sorted = _ranks_in_one_pass(index, num_images, image_block, text_block, image_rows, text_rows, progress)
    ir = np.empty(num_texts, dtype=np.int64)
    ir[index.order] = ir_sorted
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
    images, texts, index = prepare_embeddings(image_embeds, text_embeds, text_image_ids, text_languages, languages,
                                              normalize)
    scorer = score_fn or (lambda query, gallery: query @ gallery.T)
    one_matmul = chunk_size is None and images.shape[0] * texts.shape[0] <= max_block_elements
    with exact_scoring(images.device):
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
    with exact_scoring(matrix.device):
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
    top-k, the new rank follows the rank rule (:func:`rank_from_counts`) within the top-k candidates against
    the (best) gold one's new score; otherwise the stage-1 rank stays (items outside the top-k keep their
    order after it).
    """
    if ranks.tr_topk is None or ranks.ir_topk is None:
        raise ValueError("ranks has no top-k candidates: compute them with top_k > 0 before re-ranking")
    queries_per_batch = max(1, batch_size // max(1, ranks.ir_topk.shape[1]))

    def tr_candidates(queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        cand = ranks.tr_topk[queries[:, 0], queries[:, 1]]  # (q, k) texts
        images = np.broadcast_to(queries[:, :1], cand.shape)
        return cand, images, cand, ranks.text_image_ids[np.maximum(cand, 0)] == images

    def ir_candidates(texts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        cand = ranks.ir_topk[texts]  # (q, k) images
        return cand, cand, np.broadcast_to(texts[:, None], cand.shape), cand == ranks.text_image_ids[texts][:, None]

    tr = ranks.tr_ranks.copy()
    tr_queries = np.argwhere(~np.isnan(tr))  # (image, language) queries with a gold caption
    found, new = _rerank(tr_queries, tr_candidates, pair_scores, queries_per_batch, "TR re-rank", progress)
    tr[tr_queries[found, 0], tr_queries[found, 1]] = new[found]
    ir = ranks.ir_ranks.copy()
    found, new = _rerank(np.arange(ranks.num_texts), ir_candidates, pair_scores, queries_per_batch, "IR re-rank", progress)
    ir[found] = new[found]
    return replace(ranks, tr_ranks=tr, ir_ranks=ir)


def _rerank(
    queries: np.ndarray,
    candidates: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    pair_scores: Callable[[np.ndarray, np.ndarray], Any],
    queries_per_batch: int,
    desc: str,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """One direction of stage 2. ``candidates(batch)`` -> (candidate ids (q, k), -1 = none; the image and
    text of each pair; which candidates are gold). Returns whether a gold was among each query's top-k and
    its new rank."""
    found = np.zeros(len(queries), dtype=bool)
    new = np.zeros(len(queries), dtype=np.int64)
    batches = range(0, len(queries), queries_per_batch)
    for start in progress_bar(batches, len(batches), desc, progress):
        cand, images, texts, is_gold = candidates(queries[start : start + queries_per_batch])
        valid = cand >= 0
        is_gold = is_gold & valid
        scores = np.full(cand.shape, -np.inf)
        out = pair_scores(images[valid], texts[valid])
        out = out.detach().float().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out, dtype=float)
        if out.shape != (int(valid.sum()),):
            raise ValueError(f"pair_scores returned shape {out.shape} for {int(valid.sum())} pairs")
        if np.isnan(out).any():
            raise ValueError("pair_scores returned NaN, which cannot be ranked")
        scores[valid] = out
        gold = np.where(is_gold, scores, -np.inf).max(axis=1, initial=-np.inf)[:, None]
        stop = start + len(cand)
        found[start:stop] = is_gold.any(axis=1)
        new[start:stop] = rank_from_counts((valid & (scores >= gold)).sum(axis=1), (is_gold & (scores == gold)).sum(axis=1))
    return found, new
