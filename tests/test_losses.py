"""one_to_k_contrastive_loss against a plain per-image loop over the formula of shared/DESIGN.md."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from modeling_ccr import one_to_k_contrastive_loss
from modeling_ccr.modeling_ccr import gather_for_contrastive


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
    image, text = _embeds(2, 3)
    ids = torch.tensor([0, 1, 1])
    out = gather_for_contrastive(image, text, ids)
    assert out[0] is image and out[1] is text and out[2] is ids
