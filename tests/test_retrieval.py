"""Retrieval ranks, Recall@K and MRV against an independent naive implementation (argsort per query)."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from modeling_ccr.mixed_pool import compute_mixed_pool_ranks, mixed_pool_metrics
from modeling_ccr.retrieval import (
    compute_retrieval_ranks,
    evaluate_retrieval,
    flatten_metrics,
    ranks_from_scores,
    rerank_ranks,
    retrieval_metrics,
)
from tests._retrieval_helpers import FakeModel, FakeProcessor, _tiny_dataset

LANGS = ["de", "en", "ja"]


# ------------------------------------------------------------------------------ the naive reference


def _naive_rank(row: np.ndarray, is_gold: np.ndarray) -> int:
    """Position of the first gold item after sorting the gallery by descending score, ties broken against
    the gold items (the rank rule: a tie never rewards a degenerate model)."""
    order = np.lexsort((is_gold, -row))
    return int(np.flatnonzero(is_gold[order])[0]) + 1


def naive_ranks(scores, ids, langs, languages):
    n, t = scores.shape
    ids = np.asarray(ids)
    tr = np.full((n, len(languages)), np.nan)
    for k, lang in enumerate(languages):
        cols = np.array([c for c in range(t) if langs[c] == lang])
        for i in range(n):
            if (ids[cols] == i).any():
                tr[i, k] = _naive_rank(scores[i, cols], ids[cols] == i)
    keep = [c for c in range(t) if langs[c] in languages]
    ir = np.array([_naive_rank(scores[:, c], np.arange(n) == ids[c]) for c in keep])
    return tr, ir, keep


def naive_metrics(tr, ir, ids, langs, languages, ks=(1, 5, 10)):
    out = {"TR": {}, "IR": {}}
    for k, lang in enumerate(languages):
        col = tr[:, k][~np.isnan(tr[:, k])]
        out["TR"][lang] = {f"R@{x}": 100.0 * sum(r <= x for r in col) / len(col) for x in ks}
        mine = [r for r, lg in zip(ir, langs) if lg == lang]
        out["IR"][lang] = {f"R@{x}": 100.0 * sum(r <= x for r in mine) / len(mine) for x in ks}

    def mrv(matrix):
        values = []
        for row in matrix:
            present = [v for v in row if not math.isnan(v)]
            if len(present) >= 2:
                mean = sum(present) / len(present)
                values.append(sum((v - mean) ** 2 for v in present) / len(present))
        return sum(values) / len(values)

    ir_matrix = np.full(tr.shape, np.nan)
    for r, i, lang in zip(ir, ids, langs):
        k = languages.index(lang)
        ir_matrix[i, k] = r if math.isnan(ir_matrix[i, k]) else min(ir_matrix[i, k], r)
    return out, mrv(tr), mrv(ir_matrix)


def _random_problem(seed, n_images=23, ties=True):
    """Images with 0-3 captions per language (some languages missing), scores with many exact ties."""
    rng = np.random.default_rng(seed)
    ids, langs = [], []
    for i in range(n_images):
        for lang in LANGS:
            for _ in range(rng.choice([0, 1, 1, 2, 3])):
                ids.append(i)
                langs.append(lang)
    order = rng.permutation(len(ids))
    ids, langs = np.array(ids)[order], [langs[j] for j in order]
    scores = rng.normal(size=(n_images, len(ids)))
    if ties:
        scores = np.round(scores, 1)  # a few dozen distinct values: ties everywhere
    return scores, ids, langs


# ---------------------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("chunk_size", [1, 4, None])
@pytest.mark.parametrize("seed", [0, 1])
def test_ranks_from_scores_match_naive_with_ties_and_missing_languages(seed, chunk_size):
    scores, ids, langs = _random_problem(seed)
    ranks = ranks_from_scores(scores, ids, langs, chunk_size=chunk_size)
    tr, ir, keep = naive_ranks(scores, ids, langs, LANGS)
    np.testing.assert_array_equal(ranks.tr_ranks, tr)
    np.testing.assert_array_equal(ranks.ir_ranks, ir)
    assert ranks.languages == LANGS
    assert np.isnan(ranks.tr_ranks).any()  # the fixture really has missing languages

    metrics = retrieval_metrics(ranks)
    recall, mrv_tr, mrv_ir = naive_metrics(tr, ir, ids, langs, LANGS)
    for direction in ("TR", "IR"):
        for lang in LANGS:
            for key, value in recall[direction][lang].items():
                assert metrics["recall"][direction][lang][key] == pytest.approx(value)
    assert metrics["mrv"]["TR"] == pytest.approx(mrv_tr)
    assert metrics["mrv"]["IR"] == pytest.approx(mrv_ir)
    expected_mean = np.mean([v for d in recall.values() for lang in d.values() for v in lang.values()])
    assert metrics["mean_recall"] == pytest.approx(expected_mean)


@pytest.mark.parametrize("kwargs", [{}, {"chunk_size": 3}, {"top_k": 4}, {"top_k": 4, "chunk_size": 2}])
def test_constant_embeddings_rank_every_gold_last(kwargs):
    """A collapsed model (every score equal) must not score perfectly: each tie counts against the gold,
    so every image is ranked after all non-gold captions of the language and every caption's image last."""
    _, ids, langs = _random_problem(4, n_images=11)
    ranks = compute_retrieval_ranks(np.ones((11, 4)), np.ones((len(ids), 4)), ids, langs, **kwargs)
    tr, ir, _ = naive_ranks(np.ones((11, len(ids))), ids, langs, LANGS)
    np.testing.assert_array_equal(ranks.tr_ranks, tr)
    np.testing.assert_array_equal(ranks.ir_ranks, np.full(len(ids), 11))
    for k, lang in enumerate(LANGS):
        in_lang = np.array([lg == lang for lg in langs])
        present = ~np.isnan(tr[:, k])
        own = np.bincount(ids[in_lang], minlength=11)[present]
        np.testing.assert_array_equal(tr[present, k], 1 + in_lang.sum() - own)
    if "top_k" in kwargs:  # stage 2 with a collapsed pair scorer follows the same rule within the top-k
        reranked = rerank_ranks(ranks, lambda i, t: np.zeros(len(i)))
        in_top = (ranks.ir_topk == ranks.text_image_ids[:, None]).any(axis=1)
        np.testing.assert_array_equal(reranked.ir_ranks, np.where(in_top, 4, 11))  # last of the top 4, or stays


def test_collapsed_model_gets_chance_level_recall_end_to_end():
    """evaluate_retrieval with a model whose features are constant: recall at most chance, never 100."""

    class Collapsed(FakeModel):
        def get_image_features(self, pixel_values):
            return torch.ones(pixel_values.shape[0], 8)

        def get_text_features(self, input_ids, attention_mask=None):
            return torch.ones(input_ids.shape[0], 8)

    metrics, ranks = evaluate_retrieval(Collapsed(), FakeProcessor(), _tiny_dataset(), batch_size=4, progress=False)
    for direction in ("TR", "IR"):
        assert metrics["recall_avg"][direction]["R@1"] <= metrics["chance"][direction]["R@1"]
        for lang in metrics["languages"]:
            assert metrics["recall"][direction][lang]["R@1"] < 100.0
    assert metrics["mean_recall"] < 100.0
    assert (ranks.ir_ranks == ranks.num_images).all()


def test_language_subset_and_order():
    scores, ids, langs = _random_problem(3)
    ranks = ranks_from_scores(scores, ids, langs, languages=["ja", "de"])
    tr, ir, keep = naive_ranks(scores, ids, langs, ["ja", "de"])
    np.testing.assert_array_equal(ranks.tr_ranks, tr)
    np.testing.assert_array_equal(ranks.ir_ranks, ir)
    np.testing.assert_array_equal(ranks.text_indices, keep)
    assert set(ranks.text_languages) == {"ja", "de"}


@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_embeddings_exact_integer_scores_match_naive(chunk_size):
    rng = np.random.default_rng(5)
    _, ids, langs = _random_problem(5, n_images=17)
    images = rng.integers(-2, 3, size=(17, 6)).astype(np.float32)
    texts = rng.integers(-2, 3, size=(len(ids), 6)).astype(np.float32)
    ranks = compute_retrieval_ranks(images, texts, ids, langs, chunk_size=chunk_size, normalize=False)
    tr, ir, _ = naive_ranks(images.astype(np.float64) @ texts.T.astype(np.float64), ids, langs, LANGS)
    np.testing.assert_array_equal(ranks.tr_ranks, tr)
    np.testing.assert_array_equal(ranks.ir_ranks, ir)


@pytest.mark.parametrize("shift", [0.0, 1e-9])
def test_blocked_ranks_take_one_pass_and_recount_captions_whose_gold_differs(shift):
    """In blocks, IR is counted in the image pass against golds computed beforehand; were those to differ in
    their last bits from the block's own (here: a score function that shifts the full-gallery blocks by a
    hair), the captions are recounted from text blocks and the ranks still match the naive loop."""
    rng = np.random.default_rng(8)
    _, ids, langs = _random_problem(8, n_images=19)
    images = torch.tensor(rng.integers(-2, 3, size=(19, 5)), dtype=torch.float64)
    texts = torch.tensor(rng.integers(-2, 3, size=(len(ids), 5)), dtype=torch.float64)
    tr, ir, _ = naive_ranks((images @ texts.T).numpy(), ids, langs, LANGS)
    galleries = []

    def score_fn(query, gallery):
        kind = "images" if gallery.data_ptr() == images.data_ptr() else f"{gallery.shape[0]} texts"
        galleries.append(kind)
        return query @ gallery.T + (shift if kind == f"{len(ids)} texts" else 0.0)

    ranks = compute_retrieval_ranks(images, texts, ids, langs, normalize=False, score_fn=score_fn, chunk_size=4)
    np.testing.assert_array_equal(ranks.tr_ranks, tr)
    np.testing.assert_array_equal(ranks.ir_ranks, ir)
    assert galleries.count(f"{len(ids)} texts") == -(-19 // 4)  # one pass of image blocks against all texts
    text_blocks = galleries.count("images")  # caption queries against all images: only to recount
    assert text_blocks == (0 if shift == 0.0 else -(-len(ids) // 4))


def test_embeddings_cosine_float64_match_naive_and_block_budget():
    rng = np.random.default_rng(6)
    _, ids, langs = _random_problem(6, n_images=31)
    images = torch.tensor(rng.normal(size=(31, 8)))
    texts = torch.tensor(rng.normal(size=(len(ids), 8)))
    scores = (torch.nn.functional.normalize(images, dim=-1) @ torch.nn.functional.normalize(texts, dim=-1).T).numpy()
    tr, ir, _ = naive_ranks(scores, ids, langs, LANGS)
    for kwargs in ({}, {"max_block_elements": 50}):
        ranks = compute_retrieval_ranks(images, texts, torch.tensor(ids), langs, **kwargs)
        np.testing.assert_array_equal(ranks.tr_ranks, tr)
        np.testing.assert_array_equal(ranks.ir_ranks, ir)


def test_perfect_and_reversed_retrieval_metrics():
    n = 12
    ids = np.repeat(np.arange(n), 2)
    langs = ["en", "de"] * n
    perfect = np.full((n, 2 * n), -1.0)
    perfect[ids, np.arange(2 * n)] = 1.0
    metrics = retrieval_metrics(ranks_from_scores(perfect, ids, langs))
    assert metrics["mean_recall"] == 100.0
    assert metrics["mrv"] == {"TR": 0.0, "IR": 0.0}
    # German always ranks the gold item last, English first: variance (n-1)^2/4 per instance
    skewed = perfect.copy()
    de_cols = np.arange(1, 2 * n, 2)
    skewed[:, de_cols] = 0.5
    skewed[ids[de_cols], de_cols] = 0.0
    ranks = ranks_from_scores(skewed, ids, langs)
    np.testing.assert_array_equal(ranks.tr_ranks[:, ranks.languages.index("de")], n)
    metrics = retrieval_metrics(ranks)
    assert metrics["mrv"]["TR"] == pytest.approx((n - 1) ** 2 / 4)
    assert metrics["recall"]["TR"]["de"]["R@10"] == 0.0 and metrics["recall"]["TR"]["en"]["R@1"] == 100.0
    std = retrieval_metrics(ranks, mrv_variant="std")
    assert std["mrv"]["TR"] == pytest.approx((n - 1) / 2) and std["mrv_variant"] == "std"
    assert metrics["chance"]["IR"]["R@1"] == pytest.approx(100.0 / n)
    assert metrics["chance"]["TR"]["R@5"] == pytest.approx(500.0 / n)


def test_flatten_metrics_keys():
    scores, ids, langs = _random_problem(7)
    metrics = retrieval_metrics(ranks_from_scores(scores, ids, langs))
    flat = flatten_metrics(metrics)
    assert flat["tr_r1_en"] == metrics["recall"]["TR"]["en"]["R@1"]
    assert flat["ir_r5_de"] == metrics["recall"]["IR"]["de"]["R@5"]
    assert flat["tr_r10_avg"] == metrics["recall_avg"]["TR"]["R@10"]
    assert flat["mean_recall"] == metrics["mean_recall"]
    assert flat["mrv_tr"] == metrics["mrv"]["TR"] and flat["mrv_ir"] == metrics["mrv"]["IR"]
    assert all(isinstance(v, float) for v in flat.values())


def test_single_language_gives_recall_and_no_mrv():
    ids = np.arange(5)
    metrics = retrieval_metrics(ranks_from_scores(np.eye(5), ids, ["en"] * 5))
    assert metrics["mean_recall"] == 100.0
    assert metrics["mrv"] == {"TR": None, "IR": None}


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"text_image_ids": [0, 9]}, ValueError, "outside"),
        ({"text_languages": ["en"]}, ValueError, "text_languages"),
        ({"languages": ["fr"]}, ValueError, "have no text"),
        ({"image_embeds": np.full((3, 4), np.nan)}, ValueError, "NaN"),
        ({"image_embeds": np.ones((3, 5))}, ValueError, "dim"),
        ({"text_image_ids": [0.0, 1.0]}, TypeError, "integers"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
    ],
)
def test_bad_inputs_are_clear_errors(kwargs, error, message):
    args = {
        "image_embeds": np.ones((3, 4)),
        "text_embeds": np.ones((2, 4)),
        "text_image_ids": [0, 1],
        "text_languages": ["en", "de"],
    }
    args.update(kwargs)
    with pytest.raises(error, match=message):
        compute_retrieval_ranks(**args)


# ---------------------------------------------------------------------------------------------- stage 2


def naive_rerank(stage1, itm, ids, langs, tr1, ir1, k):
    tr = tr1.copy()
    n, t = stage1.shape
    for li, lang in enumerate(LANGS):
        cols = np.array([c for c in range(t) if langs[c] == lang])
        for i in range(n):
            if math.isnan(tr1[i, li]):
                continue
            top = cols[np.argsort(-stage1[i, cols], kind="stable")[:k]]
            golds = [c for c in top if ids[c] == i]
            if golds:
                tr[i, li] = _naive_rank(itm[i, top], ids[top] == i)
    ir = ir1.copy()
    for c in range(t):
        top = np.argsort(-stage1[:, c], kind="stable")[:k]
        if ids[c] in top:
            ir[c] = _naive_rank(itm[top, c], top == ids[c])
    return tr, ir


@pytest.mark.parametrize("k", [1, 3, 50])
def test_rerank_matches_naive(k):
    scores, ids, langs = _random_problem(8, ties=False)
    itm = np.round(np.random.default_rng(9).normal(size=scores.shape), 1)
    ranks = ranks_from_scores(scores, ids, langs, top_k=k, chunk_size=5)
    calls = []

    def pair_scores(image_idx, text_idx):
        calls.append(len(image_idx))
        return torch.tensor(itm[image_idx, text_idx])

    reranked = rerank_ranks(ranks, pair_scores, batch_size=16)
    tr, ir = naive_rerank(scores, itm, ids, langs, ranks.tr_ranks, ranks.ir_ranks, k)
    np.testing.assert_array_equal(reranked.tr_ranks, tr)
    np.testing.assert_array_equal(reranked.ir_ranks, ir)
    assert max(calls) <= max(16, k)
    # re-scoring with the stage-1 scores themselves changes nothing
    same = rerank_ranks(ranks, lambda i, t: scores[i, t])
    np.testing.assert_array_equal(same.tr_ranks, ranks.tr_ranks)
    np.testing.assert_array_equal(same.ir_ranks, ranks.ir_ranks)


def test_rerank_needs_topk():
    scores, ids, langs = _random_problem(10)
    with pytest.raises(ValueError, match="top_k"):
        rerank_ranks(ranks_from_scores(scores, ids, langs), lambda i, t: np.zeros(len(i)))


# ------------------------------------------------------------------------------------- with a model


def test_evaluate_retrieval_with_fake_model_matches_direct_computation():
    dataset = _tiny_dataset()
    model, processor = FakeModel(), FakeProcessor()
    metrics, ranks = evaluate_retrieval(model, processor, dataset, batch_size=4, progress=False)
    with torch.no_grad():
        pil = [image.convert("RGB") for image in dataset["image"]]
        image_embeds = model.get_image_features(**processor(images=pil)).pooler_output
        texts, ids, langs = [], [], []
        for i, caps in enumerate(dataset["captions"]):
            for cap in caps:
                texts.append(cap["text"])
                ids.append(i)
                langs.append(cap["language"])
        text_embeds = model.get_text_features(**processor(text=texts))
    direct = compute_retrieval_ranks(image_embeds, text_embeds, np.array(ids), langs)
    np.testing.assert_array_equal(ranks.tr_ranks, direct.tr_ranks)
    np.testing.assert_array_equal(ranks.ir_ranks, direct.ir_ranks)
    mixed = metrics.pop("mixed")  # the mixed-language pool, from the same features
    direct_mixed = mixed_pool_metrics(compute_mixed_pool_ranks(image_embeds, text_embeds, np.array(ids), langs))
    offset, direct_offset = mixed.pop("offset"), direct_mixed.pop("offset")  # means of floats: rounding may differ
    assert mixed == direct_mixed
    assert offset["spread_non_matching"] == pytest.approx(direct_offset["spread_non_matching"])
    assert metrics == retrieval_metrics(direct)
    assert metrics["languages"] == ["de", "en", "ja"] and metrics["num_texts"] == len(texts)
    assert model.training  # training mode restored

    sub, _ = evaluate_retrieval(model, processor, dataset, languages=["en", "ja"], progress=False)
    assert sub["languages"] == ["en", "ja"]


def test_evaluate_retrieval_rerank_uses_itm_head():
    dataset = _tiny_dataset()
    model, processor = FakeModel(fusion_layers=1), FakeProcessor()
    metrics, ranks = evaluate_retrieval(model, processor, dataset, batch_size=4, rerank_top_k=3, progress=False)
    stage1_metrics, stage1 = evaluate_retrieval(model, processor, dataset, batch_size=4, progress=False)
    with torch.no_grad():
        pil = [image.convert("RGB") for image in dataset["image"]]
        tokens = model.get_image_tokens(**processor(images=pil))
        texts = [cap["text"] for caps in dataset["captions"] for cap in caps]

        def pair_scores(i, t):
            enc = processor(text=[texts[j] for j in t])
            return model.itm_scores(tokens[torch.as_tensor(i)], enc["input_ids"], enc["attention_mask"])

        expected = rerank_ranks(
            compute_retrieval_ranks(
                model.get_image_features(**processor(images=pil)).pooler_output,
                model.get_text_features(**processor(text=texts)),
                stage1.text_image_ids,
                stage1.text_languages,
                top_k=3,
            ),
            pair_scores,
        )
    np.testing.assert_array_equal(ranks.tr_ranks, expected.tr_ranks)
    np.testing.assert_array_equal(ranks.ir_ranks, expected.ir_ranks)
    assert not np.array_equal(ranks.ir_ranks, stage1.ir_ranks) or not np.array_equal(ranks.tr_ranks, stage1.tr_ranks)
    assert metrics["languages"] == stage1_metrics["languages"]

    with pytest.raises(ValueError, match="fusion"):
        evaluate_retrieval(FakeModel(fusion_layers=0), processor, dataset, rerank_top_k=3, progress=False)


# ------------------------------------------------------------------------------- the command-line script


def _script():
    path = Path(__file__).resolve().parents[1] / "hub_scripts" / "evaluate_model.py"
    spec = importlib.util.spec_from_file_location("evaluate_model_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_evaluate_model_script_writes_json_png_and_table(tmp_path, monkeypatch, capsys):
    script = _script()
    dataset = _tiny_dataset()
    monkeypatch.setattr(script, "load_model", lambda model_dir, device: (FakeModel(), FakeProcessor()))
    monkeypatch.setattr(script, "load_dataset_arg", lambda *args: dataset)
    out = tmp_path / "out"
    assert script.main(["fake-model", "--dataset", "tiny", "--output-dir", str(out), "--no-progress", "--batch-size", "4"]) == 0
    results = json.loads((out / "eval_results.json").read_text())
    expected, _ = evaluate_retrieval(FakeModel(), FakeProcessor(), dataset, batch_size=4, progress=False)
    assert results == json.loads(json.dumps({**expected, "dataset": "tiny", "split": "test", "model": "fake-model",
                                             "rerank_top_k": 0}))
    png = (out / "eval_report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    printed = capsys.readouterr().out
    assert "TR R@1" in printed and "MRV (variance)" in printed and "avg" in printed


def test_report_handles_a_single_language(tmp_path):
    from modeling_ccr.retrieval_report import format_table, save_report_plot

    ranks = ranks_from_scores(np.eye(4), np.arange(4), ["en"] * 4)
    metrics = retrieval_metrics(ranks)
    assert "n/a (one language)" in format_table(metrics)
    assert save_report_plot(metrics, ranks, tmp_path / "r.png").stat().st_size > 0


def test_benchmark_quick_runs_and_agrees_with_the_naive_loop():
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_retrieval.py"
    proc = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert "identical TR ranks: True, identical IR ranks: True, same MRV: True" in proc.stdout
    assert lines[-1].startswith("speedup_vs_naive=") and float(lines[-1].split("=")[1]) > 0
