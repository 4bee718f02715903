"""The fast counting behind the ranks (modeling_ccr.rank_counting), through ranks_from_scores, on shapes the
small fixtures never reach: threads, wide languages split into several partial sums, widths that are not a
multiple of 8, more than 255 rows summed per column, NaN and infinite scores."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modeling_ccr.retrieval import compute_retrieval_ranks, ranks_from_scores


def reference_ranks(scores: np.ndarray, ids: np.ndarray, langs: list[str], languages: list[str]):
    """1 + number of non-gold items scoring at or above the gold one, counted directly per query."""
    langs = np.asarray(langs)
    others = np.arange(scores.shape[0])
    ir = np.array([1 + int(np.sum((scores[:, c] >= scores[ids[c], c]) & (others != ids[c])))
                   for c in range(scores.shape[1])])
    tr = np.full((scores.shape[0], len(languages)), np.nan)
    for k, lang in enumerate(languages):
        cols = np.flatnonzero(langs == lang)
        for i in range(scores.shape[0]):
            gold = cols[ids[cols] == i]
            if gold.size:
                tr[i, k] = 1 + int(np.sum((scores[i, cols] >= scores[i, gold].max()) & (ids[cols] != i)))
    return tr, ir


def problem(num_images: int, widths: dict[str, int], seed: int, dtype=np.float64, shuffle=True):
    """``widths[lang]`` captions per language, each for a random image (images may lack a language);
    scores rounded to one decimal, so exact ties are everywhere."""
    rng = np.random.default_rng(seed)
    ids = np.concatenate([rng.integers(0, num_images, width) for width in widths.values()])
    langs = [lang for lang, width in widths.items() for _ in range(width)]
    if shuffle:
        order = rng.permutation(len(ids))
        ids, langs = ids[order], [langs[j] for j in order]
    scores = np.round(rng.normal(size=(num_images, len(ids))), 1).astype(dtype)
    return scores, ids, langs


def assert_matches_reference(scores, ids, langs):
    languages = sorted(set(langs))
    ranks = ranks_from_scores(scores, ids, langs)
    tr, ir = reference_ranks(scores, ids, langs, languages)
    np.testing.assert_array_equal(ranks.tr_ranks, tr)
    np.testing.assert_array_equal(ranks.ir_ranks, ir)
    return ranks


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_caption_per_image_and_language_uses_threads_and_matches(dtype):
    """The xFlickr&CO layout: equal-width languages, texts grouped by language (one reshaped comparison)."""
    num_images = 600
    ids = np.tile(np.arange(num_images), 3)
    langs = [lang for lang in ("de", "en", "ja") for _ in range(num_images)]
    scores = np.round(np.random.default_rng(0).normal(size=(num_images, len(ids))), 1).astype(dtype)
    assert torch.get_num_threads() >= 1
    assert_matches_reference(scores, ids, langs)


def test_wide_and_odd_width_languages_match():
    """2,500 captions in one language (more than 255 words of 8 per partial sum), odd widths elsewhere."""
    scores, ids, langs = problem(150, {"de": 2500, "en": 1999, "ja": 13}, seed=1)
    assert_matches_reference(scores, ids, langs)


def test_more_than_255_rows_per_column_sum_match():
    """Few texts, many images: one block per thread holds 255 rows and the column sums must carry over."""
    scores, ids, langs = problem(1100, {"de": 30, "en": 17}, seed=2)
    assert_matches_reference(scores, ids, langs)


def test_thread_count_does_not_change_the_ranks():
    scores, ids, langs = problem(800, {"de": 800, "en": 733}, seed=3, dtype=np.float32)  # 2.4 blocks of scores
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            ranks = ranks_from_scores(scores, ids, langs)
            results.append((ranks.tr_ranks, ranks.ir_ranks))
    finally:
        torch.set_num_threads(before)
    for tr, ir in results[1:]:
        np.testing.assert_array_equal(tr, results[0][0])
        np.testing.assert_array_equal(ir, results[0][1])


@pytest.mark.parametrize("position", [(0, 0), (599, 1234), (300, 5)])
def test_a_nan_score_anywhere_is_a_clear_error(position):
    scores, ids, langs = problem(600, {"de": 1000, "en": 1000}, seed=4, dtype=np.float32)
    scores[position] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ranks_from_scores(scores, ids, langs)


def test_infinite_scores_are_ordered_like_any_other():
    """-inf keeps a pair out of the top (a mask); +inf beats everything; ties at inf count against the gold."""
    scores, ids, langs = problem(300, {"de": 500, "en": 400}, seed=5)
    rng = np.random.default_rng(6)
    scores[rng.random(scores.shape) < 0.05] = -np.inf
    scores[rng.random(scores.shape) < 0.01] = np.inf
    ranks = assert_matches_reference(scores, ids, langs)
    assert np.nanmax(ranks.tr_ranks) > 1


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_a_score_function_returning_nan_is_a_clear_error(chunk_size):
    images, texts = torch.randn(12, 4), torch.randn(24, 4)

    def score_fn(query, gallery):
        out = query @ gallery.T
        out[0, -1] = float("nan")
        return out

    with pytest.raises(ValueError, match="NaN"):
        compute_retrieval_ranks(images, texts, np.arange(24) % 12, ["de", "en"] * 12, score_fn=score_fn,
                                chunk_size=chunk_size)


# ----------------------------------------------------------------- property-based: against a direct argsort


def argsort_ranks(scores: np.ndarray, ids: np.ndarray, langs: list[str], languages: list[str]):
    """The tie rule read off a sort: order every gallery by descending score with gold items after the
    non-gold ones they tie with; the rank is 1 + the position of the first gold item."""
    langs = np.asarray(langs)
    ir = np.empty(scores.shape[1], dtype=np.int64)
    for c in range(scores.shape[1]):
        is_gold = np.arange(scores.shape[0]) == ids[c]
        ir[c] = 1 + int(np.flatnonzero(is_gold[np.lexsort((is_gold, -scores[:, c]))])[0])
    tr = np.full((scores.shape[0], len(languages)), np.nan)
    for k, lang in enumerate(languages):
        cols = np.flatnonzero(langs == lang)
        for i in range(scores.shape[0]):
            is_gold = ids[cols] == i
            if is_gold.any():
                tr[i, k] = 1 + int(np.flatnonzero(is_gold[np.lexsort((is_gold, -scores[i, cols]))])[0])
    return tr, ir


@st.composite
def integer_problems(draw):
    """Integer-valued scores from a handful of values (ties everywhere, constant matrices included)."""
    num_images = draw(st.integers(1, 6))
    num_texts = draw(st.integers(1, 12))
    ids = np.array(draw(st.lists(st.integers(0, num_images - 1), min_size=num_texts, max_size=num_texts)))
    langs = draw(st.lists(st.sampled_from(["en", "de", "ja"]), min_size=num_texts, max_size=num_texts))
    high = draw(st.integers(0, 3))  # 0: every score equal
    flat = draw(st.lists(st.integers(0, high), min_size=num_images * num_texts, max_size=num_images * num_texts))
    return np.array(flat, dtype=np.float64).reshape(num_images, num_texts), ids, langs


@settings(max_examples=150, deadline=None)
@given(integer_problems(), st.sampled_from([1, 2, None]))
def test_ranks_equal_a_direct_argsort_with_ties_blocked_or_not(problem_, chunk_size):
    scores, ids, langs = problem_
    languages = sorted(set(langs))
    tr, ir = argsort_ranks(scores, ids, langs, languages)
    ranks = ranks_from_scores(scores, ids, langs, chunk_size=chunk_size)
    np.testing.assert_array_equal(ranks.ir_ranks, ir)
    np.testing.assert_array_equal(ranks.tr_ranks, tr)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 7), st.integers(1, 10), st.integers(1, 4), st.sampled_from([1, 3, None]))
def test_constant_embeddings_never_rank_a_gold_item_before_a_tie(num_images, num_texts, dim, chunk_size):
    ids = np.arange(num_texts) % num_images
    langs = ["en" if t % 2 else "de" for t in range(num_texts)]
    ranks = compute_retrieval_ranks(np.ones((num_images, dim)), np.ones((num_texts, dim)), ids, langs,
                                    chunk_size=chunk_size)
    np.testing.assert_array_equal(ranks.ir_ranks, np.full(num_texts, num_images))  # every image ties: last
    tr, _ = argsort_ranks(np.ones((num_images, num_texts)), ids, langs, ranks.languages)
    np.testing.assert_array_equal(ranks.tr_ranks, tr)
