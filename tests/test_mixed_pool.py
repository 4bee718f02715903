"""The mixed-language pool (modeling_ccr.mixed_pool): ranks against a direct argsort with ties, blocked and
in one block, and an artificial per-language offset that moves the mixed numbers and not the per-language ones."""

import numpy as np
import pytest
import torch

from modeling_ccr.dataset_schema import restrict_language_coverage
from modeling_ccr.mixed_pool import compute_mixed_pool_ranks, mixed_pool_metrics
from modeling_ccr.results import RetrievalResults, results_from_ranks
from modeling_ccr.retrieval import compute_retrieval_ranks

LANGS = ["de", "en", "ja"]


def problem(seed: int, num_images: int = 9, dim: int = 4):
    """Integer embeddings (exact integer scores, ties everywhere); 0-2 captions per image and language."""
    rng = np.random.default_rng(seed)
    ids, langs = [], []
    for image in range(num_images):
        for lang in LANGS:
            count = int(rng.integers(0, 3))
            ids += [image] * count
            langs += [lang] * count
    images = rng.integers(-2, 3, size=(num_images, dim)).astype(np.float64)
    texts = rng.integers(-2, 3, size=(len(ids), dim)).astype(np.float64)
    return images, texts, np.array(ids), langs


def reference(images, texts, ids, langs, top_k):
    """Per image: argsort of its scores against all captions; rank = 1 + non-gold captions at or above the
    best caption of the image in each language; languages of its top-k by a stable descending argsort."""
    scores = images @ texts.T
    langs = np.asarray(langs)
    ranks = np.full((len(images), len(LANGS)), np.nan)
    for i, row in enumerate(scores):
        order = np.argsort(-row, kind="stable")
        for k, lang in enumerate(LANGS):
            gold = (ids == i) & (langs == lang)
            if gold.any():
                best = row[gold].max()
                ranks[i, k] = 1 + int(np.sum((row[order] >= best) & (ids[order] != i)))
    return scores, ranks


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk_size", [None, 1, 4])
def test_ranks_match_a_direct_argsort_with_ties(seed, chunk_size):
    images, texts, ids, langs = problem(seed)
    scores, expected = reference(images, texts, ids, langs, 5)
    mixed = compute_mixed_pool_ranks(images, texts, ids, langs, languages=LANGS, normalize=False,
                                     chunk_size=chunk_size, top_k=5)
    np.testing.assert_array_equal(mixed.ranks, expected)
    # top-k languages: as a multiset equal to the reference's up to ties at the cut-off
    for i, row in enumerate(scores):
        kth = np.sort(row)[::-1][4]
        sure = np.flatnonzero(row > kth)
        got = [LANGS[c] for c in mixed.top_languages[i]]
        for lang in set(np.asarray(langs)[sure]):
            assert got.count(lang) >= int(np.sum(np.asarray(langs)[sure] == lang))
    metrics = mixed_pool_metrics(mixed, ks=(1, 5))
    best = np.nanmin(np.where(np.isnan(expected), np.inf, expected), axis=1)
    present = np.isfinite(best)
    assert metrics["recall"]["R@1"] == pytest.approx(100 * np.mean(best[present] <= 1))
    assert metrics["recall"]["R@5"] == pytest.approx(100 * np.mean(best[present] <= 5))
    pool = np.bincount([LANGS.index(lang) for lang in langs], minlength=3) / len(langs)
    assert [metrics["language_share"]["pool"][lang] for lang in LANGS] == pytest.approx(100 * pool)
    is_gold = ids[None, :] == np.arange(len(images))[:, None]
    for lang in LANGS:
        cols = np.asarray(langs) == lang
        assert metrics["offset"]["matching"][lang] == pytest.approx(scores[:, cols][is_gold[:, cols]].mean())
        assert metrics["offset"]["non_matching"][lang] == pytest.approx(scores[:, cols][~is_gold[:, cols]].mean())


def test_ranks_under_bf16_autocast_are_the_fp32_ranks():
    """Evaluation encodes under bf16 autocast (``--precision bf16``); the scores behind the ranks stay fp32 in both
    engines, so the ranks are those of fp32 (bf16 scores would tie and reorder close captions)."""
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(40), 3)
    langs = LANGS * 40
    images = torch.from_numpy(rng.normal(size=(40, 64))).float()
    texts = torch.from_numpy(rng.normal(size=(120, 64))).float()
    fp32_mixed = compute_mixed_pool_ranks(images, texts, ids, langs, languages=LANGS)
    fp32 = compute_retrieval_ranks(images, texts, ids, langs, languages=LANGS)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        mixed = compute_mixed_pool_ranks(images, texts, ids, langs, languages=LANGS)
        ranks = compute_retrieval_ranks(images, texts, ids, langs, languages=LANGS)
    np.testing.assert_array_equal(mixed.ranks, fp32_mixed.ranks)
    np.testing.assert_array_equal(mixed.matching_sum, fp32_mixed.matching_sum)
    np.testing.assert_array_equal(ranks.tr_ranks, fp32.tr_ranks)
    np.testing.assert_array_equal(ranks.ir_ranks, fp32.ir_ranks)


def test_all_equal_scores_rank_every_caption_last_in_the_pool():
    """The tie rule: a degenerate model gets no hit, never a perfect score."""
    images, texts, ids, langs = problem(0)
    mixed = compute_mixed_pool_ranks(np.ones_like(images), np.ones_like(texts), ids, langs, languages=LANGS)
    metrics = mixed_pool_metrics(mixed)
    present = ~np.isnan(mixed.ranks)
    gold_per_image = np.bincount(ids, minlength=len(images))
    np.testing.assert_array_equal(mixed.ranks[present], (1 + len(ids) - gold_per_image[:, None].repeat(3, 1))[present])
    assert metrics["mrv_tr"] == 0.0
    assert metrics["offset"]["spread_non_matching"] == pytest.approx(0.0, abs=1e-6)


def test_a_per_language_offset_moves_the_mixed_numbers_and_not_the_per_language_ones():
    """Add c_k to every score of language k (an extra embedding coordinate): ranks within a language cannot
    change, while the pool, its top-10 share and the offset spread show it."""
    rng = np.random.default_rng(3)
    num_images = 40
    ids = np.repeat(np.arange(num_images), 3)
    langs = [LANGS[j % 3] for j in range(len(ids))]
    images = torch.nn.functional.normalize(torch.as_tensor(rng.normal(size=(num_images, 8))), dim=-1)
    texts = torch.nn.functional.normalize(images[ids] + 0.8 * torch.as_tensor(rng.normal(size=(len(ids), 8))), dim=-1)
    offsets = torch.tensor([0.0, 0.0, 0.5])  # ja's captions score 0.5 higher against every image

    def with_offset(c: torch.Tensor):
        return (torch.cat([images, torch.ones(num_images, 1, dtype=images.dtype)], 1),
                torch.cat([texts, c[[LANGS.index(lang) for lang in langs]][:, None].to(texts.dtype)], 1))

    plain, shifted = with_offset(offsets * 0), with_offset(offsets)
    per_language = [results_from_ranks(compute_retrieval_ranks(*pair, ids, langs, normalize=False)) for pair in (plain, shifted)]
    np.testing.assert_array_equal(
        compute_retrieval_ranks(*plain, ids, langs, normalize=False).tr_ranks,
        compute_retrieval_ranks(*shifted, ids, langs, normalize=False).tr_ranks,
    )
    assert per_language[0].recall["TR"] == per_language[1].recall["TR"]
    assert per_language[0].mrv["TR"] == per_language[1].mrv["TR"]
    before, after = (mixed_pool_metrics(compute_mixed_pool_ranks(*pair, ids, langs, normalize=False)) for pair in (plain, shifted))
    assert before["language_share"]["top"]["ja"] < 60 and after["language_share"]["top"]["ja"] > 90
    assert after["language_share"]["max_excess"] > before["language_share"]["max_excess"] + 30
    assert after["mrv_tr"] > before["mrv_tr"]
    for kind in ("matching", "non_matching"):
        for lang, c in zip(LANGS, offsets.tolist()):
            assert after["offset"][kind][lang] == pytest.approx(before["offset"][kind][lang] + c, abs=1e-9)
    assert after["offset"]["spread_non_matching"] > 0.5 - before["offset"]["spread_non_matching"]


def test_bad_inputs_are_clear_errors():
    images, texts, ids, langs = problem(0)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        compute_mixed_pool_ranks(images, texts, ids, langs, top_k=0)
    with pytest.raises(ValueError, match="dim"):
        compute_mixed_pool_ranks(images, texts[:, :2], ids, langs)
    nan_images = images.copy()
    with pytest.raises(ValueError, match="NaN"):
        compute_mixed_pool_ranks(nan_images, texts, ids, langs, score_fn=lambda q, g: q @ g.T * float("nan"))


def test_results_carry_the_mixed_block_and_older_files_still_load(tmp_path):
    images, texts, ids, langs = problem(1)
    results = results_from_ranks(compute_retrieval_ranks(images, texts, ids, langs))
    older = RetrievalResults.from_json(results.to_json())
    assert older.mixed is None and "mixed" not in older.to_json()
    results.mixed = mixed_pool_metrics(compute_mixed_pool_ranks(images, texts, ids, langs))
    loaded = RetrievalResults.from_json(results.save(tmp_path / "eval_results.json"))
    assert loaded.mixed == results.mixed
    flat = loaded.flat()
    assert flat["mixed_r1"] == results.mixed["recall"]["R@1"] and "mrv_tr_mixed" in flat
    assert "mixed-language pool" in loaded.summary_text()


def test_partial_language_coverage_is_seeded_and_keeps_one_to_k_languages(tiny_data):
    dataset, _ = tiny_data
    full = restrict_language_coverage(dataset, "full", seed=0)
    assert full["captions"] == dataset["captions"]
    first = restrict_language_coverage(dataset, "partial", seed=0)["captions"]
    again = restrict_language_coverage(dataset, "partial", seed=0)["captions"]
    other = restrict_language_coverage(dataset, "partial", seed=1)["captions"]
    assert first == again and first != other
    for before, after in zip(dataset["captions"], first):
        kept = {c["language"] for c in after}
        assert 1 <= len(kept) <= len({c["language"] for c in before})
        assert after == [c for c in before if c["language"] in kept]  # all captions of a kept language
    with pytest.raises(ValueError, match="coverage 'some' is not one of"):
        restrict_language_coverage(dataset, "some", seed=0)


def test_model_card_row_and_report_panel_show_the_mixed_pool(tmp_path):
    from PIL import Image

    from modeling_ccr.model_card import render_model_card
    from modeling_ccr.retrieval_report import save_report_plot
    from tests._push_helpers import write_plain_model_folder

    folder = write_plain_model_folder(tmp_path / "model")
    row_header = "| TR R@1 | TR R@5 | TR R@10 | MRV_TR_mixed |"
    assert row_header not in render_model_card(folder).text  # an older eval_results.json
    images, texts, ids, langs = problem(2)
    ranks = compute_retrieval_ranks(images, texts, ids, langs)
    results = results_from_ranks(ranks)
    without = Image.open(save_report_plot(results.to_json(), ranks, tmp_path / "plain.png")).size
    results.mixed = mixed_pool_metrics(compute_mixed_pool_ranks(images, texts, ids, langs))
    results.save(folder / "eval_results.json")
    text = render_model_card(folder).text
    share = results.mixed["language_share"]
    assert row_header in text
    assert f"ja {share['top']['ja']:.1f}% ({share['pool']['ja']:.1f}%)" in text
    with_panel = Image.open(save_report_plot(results.to_json(), ranks, tmp_path / "mixed.png")).size
    assert with_panel[0] > without[0] * 1.2 and with_panel[1] == without[1]


def test_trainer_metrics_include_the_mixed_pool():
    from transformers import EvalPrediction

    from modeling_ccr.trainer import RetrievalMetrics

    images, texts, ids, langs = problem(0, num_images=5)
    slots = np.zeros(len(ids), dtype=int)
    for j in range(1, len(ids)):
        slots[j] = slots[j - 1] + 1 if ids[j] == ids[j - 1] else 0
    width = int(slots.max()) + 1
    text_grid = np.zeros((5, width, texts.shape[1]))
    label_grid = np.full((5, width), -100)
    text_grid[ids, slots] = texts
    label_grid[ids, slots] = [LANGS.index(lang) for lang in langs]
    flat = RetrievalMetrics(LANGS)(EvalPrediction(predictions=(images, text_grid), label_ids=label_grid))
    expected = mixed_pool_metrics(compute_mixed_pool_ranks(images, texts, ids, langs, languages=LANGS))
    assert flat["mixed_r1"] == expected["recall"]["R@1"]
    assert flat["mixed_offset_non_matching"] == pytest.approx(expected["offset"]["spread_non_matching"])


@pytest.mark.parametrize("options,message", [
    (["--language_coverage", "some"], "language_coverage"),
    # pivot needs English for every image of a batch; partial coverage leaves images without it
    (["--language_coverage", "partial", "--loss_type", "pivot"], "leaves some images without it"),
])
def test_train_rejects_an_impossible_language_coverage_before_training(tmp_path, options, message):
    import subprocess
    import sys
    from pathlib import Path

    train = Path(__file__).resolve().parents[1] / "hub_scripts" / "train.py"
    completed = subprocess.run([sys.executable, str(train), *options, "--output_dir", str(tmp_path / "out")],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 2 and message in completed.stderr and "Traceback" not in completed.stderr
    assert not (tmp_path / "out").exists()


def _compare_objectives():
    """hub_scripts/compare_objectives.py as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "hub_scripts" / "compare_objectives.py"
    spec = importlib.util.spec_from_file_location("compare_objectives", path)
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    return compare


def test_comparison_table_has_the_mixed_pool_and_reads_partial_and_divide_by_k_runs(tmp_path):
    import json

    compare = _compare_objectives()
    images, texts, ids, langs = problem(4)
    results = results_from_ranks(compute_retrieval_ranks(images, texts, ids, langs))
    results.mixed = mixed_pool_metrics(compute_mixed_pool_ranks(images, texts, ids, langs))
    runs = {}
    for objective, folder in (("one_to_k", "one_to_k-partial-seed0"), (compare.DIVIDE_BY_K, "one_to_k_divide_by_k-partial-seed0")):
        (tmp_path / folder / "model").mkdir(parents=True)
        results.save(tmp_path / folder / "model" / "eval_results.json")
        runs[objective] = [compare.run(objective, 0, tmp_path, 1.0, [], coverage="partial")]  # read, not trained
    table, summary = compare.summarise(runs)
    assert "| mixed R@1 | MRV_TR_mixed | top-10 max excess (pts) | offset spread ×100 |" in table.splitlines()[0]
    assert summary[compare.DIVIDE_BY_K]["mixed R@1"] == [results.mixed["recall"]["R@1"], 0.0]
    json.dumps(summary)


def test_comparison_leaves_out_objectives_undefined_at_a_coverage_and_says_why(tmp_path):
    """compare_objectives.py --coverages full partial: no pivot run at partial coverage (some images have no English
    caption), and the partial table says so instead of failing after the runs before it."""

    compare = _compare_objectives()
    images, texts, ids, langs = problem(5)
    results = results_from_ranks(compute_retrieval_ranks(images, texts, ids, langs))
    for objective in ("one_to_k", "pivot"):
        for coverage in ("full", "partial"):
            folder = compare.run_folder(objective, 0, tmp_path, coverage) / "model"
            folder.mkdir(parents=True)
            results.save(folder / "eval_results.json")
    compare.main(["--table_only", "--output", str(tmp_path), "--seeds", "0", "--objectives", "one_to_k", "pivot",
                  "--coverages", "full", "partial"])
    full, partial = (tmp_path / "comparison.md").read_text().split("### Training language coverage: partial")
    assert "| pivot |" in full and "has no row" not in full
    assert "| pivot |" not in partial and "| one_to_k |" in partial
    assert "`pivot` has no row here: the pivot objective needs English ('en') captions" in partial
