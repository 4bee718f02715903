"""The contrastive objectives (modeling_ccr/objectives.py): each against a plain reference loop written here, the
registry and its one dispatch, the "pivot needs English" precondition, and the gather on one process.

The loops write the formulas out with Python scalars (no vectorisation, no shared code): the 1-to-K loss of the
paper (README, "The model"), and the baselines built from CLIP losses over subsets of the batch.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from modeling_ccr import one_to_k_contrastive_loss
from modeling_ccr.objectives import (
    LOSS_TYPES,
    OBJECTIVES,
    check_objective,
    contrastive_objective,
    gather_for_contrastive,
    objectives_help,
    pairwise_soft_label_loss,
    pivot_language_id,
)


def reference_loss(image_embeds, text_embeds, text_image_ids, temperature, divide_by_k=False):
    """The formula written out with Python loops (no vectorisation, no shared code)."""
    B, T = image_embeds.shape[0], text_embeds.shape[0]
    ids = [int(i) for i in text_image_ids]
    s = [[float(image_embeds[i] @ text_embeds[j]) / temperature for j in range(T)] for i in range(B)]
    i2t_terms = []
    for i in range(B):
        positives = [j for j in range(T) if ids[j] == i]
        if not positives:
            continue
        log_norm = math.log(sum(math.exp(s[i][jj]) for jj in range(T)))
        terms = [-(s[i][j] - log_norm) for j in positives]
        i2t_terms.append(sum(terms) if divide_by_k else sum(terms) / len(positives))
    t2i_terms = []
    for j in range(T):
        log_norm = math.log(sum(math.exp(s[ii][j]) for ii in range(B)))
        t2i_terms.append(-(s[ids[j]][j] - log_norm))
    l_i2t = sum(i2t_terms) / len(i2t_terms)
    l_t2i = sum(t2i_terms) / len(t2i_terms)
    if divide_by_k:
        k = max(ids.count(i) for i in range(B))
        return (l_i2t + l_t2i) / (2 * k)
    return (l_i2t + l_t2i) / 2


def _embeds(B, T, D=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(B, D, generator=g, dtype=dtype), dim=-1)
    text = F.normalize(torch.randn(T, D, generator=g, dtype=dtype), dim=-1)
    return image, text


CASES = {
    "equal_k": [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3],
    "missing_languages": [0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 1],
    "image_without_text": [0, 0, 2, 2, 2, 3],  # image 1 has no caption in the batch
    "shuffled": [2, 0, 1, 2, 0, 3, 1, 3],
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("divide_by_k", [False, True])
def test_matches_reference_loop(case, divide_by_k):
    ids = torch.tensor(CASES[case])
    image, text = _embeds(4, len(ids), seed=len(case))
    got = one_to_k_contrastive_loss(image, text, ids, 0.07, divide_by_k=divide_by_k)
    want = reference_loss(image.double(), text.double(), ids, 0.07, divide_by_k=divide_by_k)
    assert got.dim() == 0
    assert abs(float(got) - want) <= 1e-6 * max(1.0, abs(want))


def test_tensor_temperature_and_equal_k_divide_by_k_only_scales_t2i():
    ids = torch.tensor(CASES["equal_k"])
    image, text = _embeds(4, 12, seed=3)
    tau = torch.tensor(0.05)
    paper = one_to_k_contrastive_loss(image, text, ids, tau)
    authors = one_to_k_contrastive_loss(image, text, ids, tau, divide_by_k=True)
    logits = image @ text.t() / tau
    l_t2i = F.cross_entropy(logits.t(), ids)
    l_i2t = 2 * paper - l_t2i
    torch.testing.assert_close(authors, (l_i2t + l_t2i / 3) / 2, rtol=1e-6, atol=1e-6)


def test_k_equals_one_is_the_clip_loss():
    image, text = _embeds(5, 5, seed=4)
    logits = image @ text.t() / 0.1
    labels = torch.arange(5)
    clip = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    torch.testing.assert_close(one_to_k_contrastive_loss(image, text, labels, 0.1), clip)


@pytest.mark.parametrize("divide_by_k", [False, True])
def test_gradcheck_float64(divide_by_k):
    image, text = _embeds(3, 7, D=5, seed=5, dtype=torch.float64)
    ids = torch.tensor([0, 2, 2, 0, 0, 2, 0])  # image 1 without text, unequal K
    image.requires_grad_(True)
    text.requires_grad_(True)
    tau = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, t: one_to_k_contrastive_loss(a, b, ids, t, divide_by_k=divide_by_k), (image, text, tau)
    )


def test_small_gradient_step_lowers_the_loss():
    image, text = _embeds(3, 6, seed=6)
    text.requires_grad_(True)
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = one_to_k_contrastive_loss(image, text, ids, 0.07)
    loss.backward()
    with torch.no_grad():
        stepped = one_to_k_contrastive_loss(image, text - 1e-3 * text.grad, ids, 0.07)
    assert stepped.item() < loss.item()


@pytest.mark.parametrize(
    "ids, error, match",
    [
        (torch.tensor([0, 1, 3]), ValueError, r"\[0, 3\)"),
        (torch.tensor([0, -1, 1]), ValueError, r"\[0, 3\)"),
        (torch.tensor([0.0, 1.0, 2.0]), TypeError, "integer"),
        (torch.tensor([0, 1]), ValueError, r"shape \(3,\)"),
        ([0, 1, 2], TypeError, "torch.Tensor"),
    ],
)
def test_bad_text_image_ids(ids, error, match):
    image, text = _embeds(3, 3)
    with pytest.raises(error, match=match):
        one_to_k_contrastive_loss(image, text, ids, 0.07)


def test_bad_embedding_shapes():
    image, text = _embeds(3, 3)
    with pytest.raises(ValueError, match="embedding sizes differ"):
        one_to_k_contrastive_loss(image, text[:, :4], torch.arange(3), 0.07)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        one_to_k_contrastive_loss(image[0], text, torch.arange(3), 0.07)


def test_gather_is_identity_without_distributed():
    """(The gather across processes itself: tests/test_distributed.py.)"""
    image, text = _embeds(2, 3)
    ids = torch.tensor([0, 1, 1])
    out = gather_for_contrastive(image, text, ids)
    assert out[0] is image and out[1] is text and out[2] is ids


# ---------------------------------------------------------------------------------------------------- the baselines
# Batch of 4 images, captions in 3 languages (0, 1 = English as pivot, 2); image 3 lacks language 2, image 0 has two
# captions in language 0.
BASELINE_IDS = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
BASELINE_LANGUAGES = [0, 0, 1, 2, 0, 1, 2, 0, 1, 2, 1, 0]
PIVOT = 1


def _baseline_batch(seed=7):
    image, text = _embeds(4, len(BASELINE_IDS), seed=seed, dtype=torch.float64)
    return image, text, torch.tensor(BASELINE_IDS), torch.tensor(BASELINE_LANGUAGES)


def _subset_reference(image_embeds, text_embeds, ids, texts, temperature):
    """The 1-to-K reference loop on the given texts and the images they describe (renumbered)."""
    images = sorted({ids[j] for j in texts})
    return reference_loss(
        image_embeds[images], text_embeds[texts], [images.index(ids[j]) for j in texts], temperature
    )


def test_one_to_one_matches_reference_loop():
    """One caption per image: the one whose uniform draw (torch.rand over the batch's texts) is the largest."""
    image, text, ids, languages = _baseline_batch()
    torch.manual_seed(11)
    got = contrastive_objective("one_to_one", image, text, ids, languages, 0.07)
    torch.manual_seed(11)
    draws = torch.rand(len(BASELINE_IDS)).tolist()
    kept = []
    for i in range(4):
        mine = [j for j in range(len(BASELINE_IDS)) if BASELINE_IDS[j] == i]
        kept.append(max(mine, key=lambda j: draws[j]))
    want = _subset_reference(image, text, BASELINE_IDS, sorted(kept), 0.07)
    assert abs(float(got) - want) <= 1e-9 * max(1.0, abs(want))
    # with one caption per image there is nothing to draw: the CLIP loss
    single = contrastive_objective("one_to_one", image, text[:4], torch.arange(4), torch.zeros(4, dtype=torch.long), 0.07)
    assert abs(float(single) - reference_loss(image, text[:4], torch.arange(4), 0.07)) <= 1e-9


def _pairwise_soft_reference(image_embeds, text_embeds, ids, temperature):
    """X-VLM's soft-label ITC over pairs (pair a: image_embeds[a], text_embeds[a]), written out with loops."""
    P = len(ids)
    s = [[float(image_embeds[a] @ text_embeds[b]) / temperature for b in range(P)] for a in range(P)]
    i2t = t2i = 0.0
    for a in range(P):
        same = [b for b in range(P) if ids[b] == ids[a]]
        row_norm = math.log(sum(math.exp(s[a][b]) for b in range(P)))
        col_norm = math.log(sum(math.exp(s[b][a]) for b in range(P)))
        i2t += -sum(s[a][b] - row_norm for b in same) / len(same)
        t2i += -sum(s[b][a] - col_norm for b in same) / len(same)
    return (i2t / P + t2i / P) / 2


def test_pairwise_soft_labels_spread_over_pairs_of_the_same_image():
    torch.manual_seed(4)
    image = F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    ids = torch.tensor([0, 1, 0, 2, 1])  # pairs 0 and 2 (and 1 and 4) show the same image
    got = pairwise_soft_label_loss(image[ids], text, ids, 0.07)
    want = _pairwise_soft_reference(image[ids], text, ids.tolist(), 0.07)
    assert abs(float(got) - want) <= 1e-9 * max(1.0, abs(want))


def test_pairwise_soft_objective_draws_one_pair_per_image_like_one_to_one():
    """One caption per image, drawn as one_to_one draws it; with distinct images the soft labels are one-hot, so
    the loss is one_to_one's CLIP loss of the same draw."""
    image, text, ids, languages = _baseline_batch()
    torch.manual_seed(11)
    got = contrastive_objective("pairwise_soft", image, text, ids, languages, 0.07)
    torch.manual_seed(11)
    draws = torch.rand(len(BASELINE_IDS)).tolist()
    kept = [max((j for j in range(len(BASELINE_IDS)) if BASELINE_IDS[j] == i), key=lambda j: draws[j]) for i in range(4)]
    want = _pairwise_soft_reference(image[[BASELINE_IDS[j] for j in kept]], text[kept], [BASELINE_IDS[j] for j in kept], 0.07)
    assert abs(float(got) - want) <= 1e-9 * max(1.0, abs(want))
    torch.manual_seed(11)
    assert abs(float(contrastive_objective("one_to_one", image, text, ids, languages, 0.07)) - float(got)) <= 1e-9


def test_per_language_matches_reference_loop():
    image, text, ids, languages = _baseline_batch()
    got = contrastive_objective("per_language", image, text, ids, languages, 0.07)
    per_language = []
    for language in sorted(set(BASELINE_LANGUAGES)):
        texts = [j for j in range(len(BASELINE_IDS)) if BASELINE_LANGUAGES[j] == language]
        per_language.append(_subset_reference(image, text, BASELINE_IDS, texts, 0.07))
    want = sum(per_language) / len(per_language)
    assert abs(float(got) - want) <= 1e-9 * max(1.0, abs(want))


def test_pivot_matches_reference_loop():
    """CLIP(image, English) and, with each image's first English caption as its anchor, every other caption against
    the anchors (the anchors play the images' role); the two averaged."""
    image, text, ids, languages = _baseline_batch()
    got = contrastive_objective("pivot", image, text, ids, languages, 0.07, pivot_language_id=PIVOT)
    english = [j for j in range(len(BASELINE_IDS)) if BASELINE_LANGUAGES[j] == PIVOT]
    image_text = _subset_reference(image, text, BASELINE_IDS, english, 0.07)
    anchors = {}
    for j in english:
        anchors.setdefault(BASELINE_IDS[j], j)
    anchor_images = sorted(anchors)
    others = [j for j in range(len(BASELINE_IDS)) if BASELINE_LANGUAGES[j] != PIVOT]
    text_text = reference_loss(
        text[[anchors[i] for i in anchor_images]], text[others], [anchor_images.index(BASELINE_IDS[j]) for j in others],
        0.07,
    )
    want = (image_text + text_text) / 2
    assert abs(float(got) - want) <= 1e-9 * max(1.0, abs(want))


@pytest.mark.parametrize("divide_by_k", [False, True])
def test_one_to_k_through_the_dispatch_is_the_formula(divide_by_k):
    image, text, ids, languages = _baseline_batch()
    got = contrastive_objective("one_to_k", image, text, ids, languages, 0.07, divide_by_k=divide_by_k)
    want = reference_loss(image, text, ids, 0.07, divide_by_k=divide_by_k)
    assert abs(float(got) - want) <= 1e-9 * max(1.0, abs(want))


def test_baselines_are_different_objectives():
    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(12, 8), dim=-1)
    text_image_ids = torch.arange(4).repeat_interleave(3)
    language_ids = torch.tensor([0, 1, 2] * 4)
    tau = torch.tensor(0.07)
    # pairwise_soft is left out: on a batch of distinct images it is one_to_one's loss (see its own test).
    baselines = [name for name in LOSS_TYPES if name != "pairwise_soft"]
    values = {
        loss_type: contrastive_objective(loss_type, image, text, text_image_ids, language_ids, tau, pivot_language_id=1)
        for loss_type in baselines
    }
    assert len({round(float(v), 5) for v in values.values()}) == len(baselines), values
    with pytest.raises(ValueError, match="English"):
        contrastive_objective("pivot", image, text, text_image_ids, language_ids, tau, pivot_language_id=None)
    no_english_for_last = language_ids.clone()
    no_english_for_last[10] = 0
    with pytest.raises(ValueError, match="English caption for every image"):
        contrastive_objective("pivot", image, text, text_image_ids, no_english_for_last, tau, pivot_language_id=1)


# ---------------------------------------------------------------------------------------------------- the registry
def test_registry_lists_every_objective_once():
    assert LOSS_TYPES == tuple(OBJECTIVES) == ("one_to_k", "one_to_one", "per_language", "pivot", "pairwise_soft")
    for name in LOSS_TYPES:
        assert f"{name}: " in objectives_help()


def test_check_objective_names_the_problem():
    check_objective("one_to_k", ["de", "fr"])
    check_objective("pivot", ["de", "en"])
    with pytest.raises(ValueError, match="unknown loss_type 'bogus'"):
        check_objective("bogus")
    with pytest.raises(ValueError, match=r"English \('en'\) captions: the data has \['de', 'fr'\]"):
        check_objective("pivot", ["de", "fr"])
    with pytest.raises(ValueError, match="unknown loss_type"):
        contrastive_objective("bogus", *_baseline_batch(), 0.07)
    assert pivot_language_id(["de", "en", "fr"]) == 1 and pivot_language_id(["de"]) is None


def test_every_objective_gets_gradients_to_both_sides():
    for loss_type in LOSS_TYPES:
        image, text, ids, languages = _baseline_batch()
        image.requires_grad_(True)
        text.requires_grad_(True)
        torch.manual_seed(0)
        contrastive_objective(loss_type, image, text, ids, languages, 0.07, pivot_language_id=PIVOT).backward()
        assert image.grad.abs().sum() > 0 and text.grad.abs().sum() > 0, loss_type
