"""The authors' code behaviours (config fields and the ``ccrk`` recipe), each against a NumPy re-derivation of
their formula written here: MITM sampling distributions, span masking counts and spans, the MLP ITM head and
the re-ranking score, the CMLM head from the text checkpoint's LM head; and that the defaults did not move."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from conftest import make_config, make_model, make_tokenizer, text_config

from modeling_ccr import CCRConfig, CCRModel
from modeling_ccr.masking import IGNORE_INDEX, add_mlm_inputs, span_mask_positions
from modeling_ccr.modeling_ccr import hard_negative_probabilities, hardest_positive_probabilities
from modeling_ccr.recipes import CCRK_CONFIG, recipe_config, stage_settings


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sim_and_positives(seed: int = 0):
    rng = np.random.default_rng(seed)
    sim = rng.normal(size=(4, 10)) * 5.0
    owner = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    positive = owner[None, :] == np.arange(4)[:, None]
    return sim, positive


# ------------------------------------------------------------------------------------------- (2) hardest positive
def test_ccrk_hardest_positive_is_m_minus_p_over_the_positives():
    sim, positive = _sim_and_positives()
    p = _softmax(sim)  # each image's i2t softmax over all texts
    weights = np.where(positive, p.max() - p + 1e-5, 0.0)  # M: the largest probability of the whole matrix
    want = weights / weights.sum(axis=1, keepdims=True)
    got = hardest_positive_probabilities(torch.tensor(sim), torch.tensor(positive), "ccrk").double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_package_hardest_positive_is_the_softmax_of_minus_s():
    sim, positive = _sim_and_positives()
    want = np.where(positive, _softmax(np.where(positive, -sim, -np.inf)), 0.0)
    package = hardest_positive_probabilities(torch.tensor(sim), torch.tensor(positive), "softmax").double().numpy()
    np.testing.assert_allclose(package, want, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------- (3) hard negatives
def test_ccrk_hard_negatives_softmax_over_all_plus_1e5_positives_zeroed():
    sim, positive = _sim_and_positives(1)
    weights = np.where(positive, 0.0, _softmax(sim) + 1e-5)
    want = weights / weights.sum(axis=1, keepdims=True)
    got = hard_negative_probabilities(torch.tensor(sim), torch.tensor(positive), "ccrk").double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)
    package = hard_negative_probabilities(torch.tensor(sim), torch.tensor(positive), "softmax").double().numpy()
    np.testing.assert_allclose(package, np.where(positive, 0.0, _softmax(np.where(positive, -np.inf, sim))),
                               rtol=1e-5, atol=1e-8)


def test_draws_follow_the_probability_vector():
    """The trainer's draw (torch.multinomial on these rows) reproduces the vector's frequencies."""
    sim, positive = _sim_and_positives(2)
    probabilities = hard_negative_probabilities(torch.tensor(sim), torch.tensor(positive), "ccrk")
    torch.manual_seed(0)
    draws = CCRModel._sample(probabilities[:1].expand(20000, -1).contiguous())
    frequencies = np.bincount(draws.numpy(), minlength=10) / 20000
    np.testing.assert_allclose(frequencies, probabilities[0].double().numpy(), atol=0.015)
    with pytest.raises(ValueError, match="negative_sampling"):
        hard_negative_probabilities(torch.tensor(sim), torch.tensor(positive), "uniform")


# ---------------------------------------------------------------------------------------------- (4) span masking
def _authors_masking_numpy(n_tokens: int, maskable: list[int], rate, max_masks, span_prb, max_span, rng) -> set[int]:
    """X-VLM's TextMaskingGenerator (the authors' CMLM masking) re-derived with a NumPy generator."""
    wanted = min(max_masks, max(1, int(round(n_tokens * rate))))
    picked: set[int] = set()
    for start in rng.permutation(maskable):
        if len(picked) >= wanted:
            break
        if start in picked:
            continue
        span = int(rng.integers(2, max_span + 1)) if max_span >= 2 and rng.random() < span_prb else 1
        for position in range(start, start + span):
            if position not in maskable:
                break
            picked.add(position)
    if len(picked) > wanted:
        picked = set(rng.permutation(sorted(picked))[:wanted].tolist())
    return picked


def _runs(positions) -> list[int]:
    """Lengths of the runs of consecutive positions."""
    runs: list[int] = []
    last = None
    for p in sorted(positions):
        if last is not None and p == last + 1:
            runs[-1] += 1
        else:
            runs.append(1)
        last = p
    return runs


@pytest.mark.parametrize("n_real", [3, 8, 20, 38])
def test_ccrk_masking_count_is_exact_and_spans_match_the_authors(n_real):
    """n = [CLS] + n_real tokens + [SEP]: exactly min(12, round(0.4 n)) chosen (capped by what is maskable);
    the run-length distribution of the chosen positions matches the NumPy re-derivation."""
    rows, width = 400, n_real + 4
    special = torch.ones(rows, width, dtype=torch.bool)
    special[:, 1 : n_real + 1] = False  # [CLS] at 0, [SEP] at n_real + 1, then padding
    lengths = torch.full((rows,), n_real + 2)
    torch.manual_seed(0)
    chosen = span_mask_positions(special, lengths, 0.4, 12, 0.2, 3)
    wanted = min(12, max(1, round(0.4 * (n_real + 2))), n_real)
    assert (chosen.sum(1) == wanted).all()
    assert not (chosen & special).any()
    rng = np.random.default_rng(0)
    reference = [_authors_masking_numpy(n_real + 2, list(range(1, n_real + 1)), 0.4, 12, 0.2, 3, rng) for _ in range(rows)]
    assert all(len(r) == wanted for r in reference)
    ours = Counter(run for row in chosen for run in _runs(torch.nonzero(row).squeeze(1).tolist()))
    theirs = Counter(run for r in reference for run in _runs(r))
    total_ours, total_theirs = sum(ours.values()), sum(theirs.values())
    for length in set(ours) | set(theirs):
        assert abs(ours[length] / total_ours - theirs[length] / total_theirs) < 0.06, (length, ours, theirs)


def test_ccrk_masking_spans_only_with_span_probability():
    special = torch.zeros(200, 30, dtype=torch.bool)
    torch.manual_seed(1)
    singles = span_mask_positions(special, torch.full((200,), 30), 0.4, 12, 0.0, 3)
    always = span_mask_positions(special, torch.full((200,), 30), 0.4, 12, 1.0, 3)
    assert (singles.sum(1) == 12).all() and (always.sum(1) == 12).all()
    mean_run = lambda m: np.mean([r for row in m for r in _runs(torch.nonzero(row).squeeze(1).tolist())])  # noqa: E731
    assert mean_run(always) > 2.0 > mean_run(singles)


def test_add_mlm_inputs_follows_the_config_rule():
    tokenizer = make_tokenizer()
    encoded = tokenizer(["a red apple on a table", "ein Hund rennt im Park"] * 8, padding=True, return_tensors="pt")
    batch = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    config = make_config(**CCRK_CONFIG)
    torch.manual_seed(0)
    out = add_mlm_inputs(batch, tokenizer, config.mlm_probability, config)
    chosen = out["mlm_labels"] != IGNORE_INDEX
    lengths = batch["attention_mask"].sum(1)
    maskable = lengths - 2
    want = torch.minimum(torch.clamp((lengths * 0.4).round(), min=1).long().clamp(max=12), maskable)
    assert torch.equal(chosen.sum(1), want)
    torch.manual_seed(0)
    bernoulli = add_mlm_inputs(batch, tokenizer, 0.4, make_config())
    assert not torch.equal(bernoulli["mlm_labels"], out["mlm_labels"])


# ------------------------------------------------------------------------------------- (5) ITM head and re-ranking
def _fused_cls(model: CCRModel, input_ids, image_tokens) -> np.ndarray:
    mask = torch.ones_like(input_ids)
    with torch.no_grad():
        hidden = model.text_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return model.fusion(hidden, mask, image_tokens)[:, 0].double().numpy()


@pytest.mark.parametrize("itm_score", ["positive_logit", "logit_diff"])
def test_mlp_itm_head_and_rerank_score_match_numpy(itm_score):
    model = make_model(num_fusion_layers=1, itm_head_type="mlp", itm_score=itm_score).eval()
    head = model.fusion.itm_head
    assert [type(m).__name__ for m in head] == ["Linear", "LayerNorm", "GELU", "Linear"]
    torch.manual_seed(3)
    input_ids = torch.randint(5, 100, (4, 7))
    tokens = model.get_image_tokens(torch.randn(4, 3, 32, 32))
    x = _fused_cls(model, input_ids, tokens)
    w1, b1 = head[0].weight.double().detach().numpy(), head[0].bias.double().detach().numpy()
    h = x @ w1.T + b1
    h = (h - h.mean(1, keepdims=True)) / np.sqrt(h.var(1, keepdims=True) + head[1].eps)
    h = h * head[1].weight.double().detach().numpy() + head[1].bias.double().detach().numpy()
    from scipy.special import erf

    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    logits = h @ head[3].weight.double().detach().numpy().T + head[3].bias.double().detach().numpy()
    want = logits[:, 1] if itm_score == "positive_logit" else logits[:, 1] - logits[:, 0]
    with torch.no_grad():
        got = model.itm_scores(tokens, input_ids).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------- CMLM head from LM head
def test_mlm_head_starts_from_the_text_checkpoints_lm_head(tmp_path):
    from conftest import vision_config
    from transformers import BertForMaskedLM, ViTModel

    torch.manual_seed(0)
    lm = BertForMaskedLM(text_config("bert"))
    lm.save_pretrained(tmp_path / "text")
    ViTModel(vision_config()).save_pretrained(tmp_path / "vision")
    model = CCRModel.from_vision_text_pretrained(
        str(tmp_path / "vision"), str(tmp_path / "text"), num_fusion_layers=1, mlm_head_from_text_lm=True
    )
    head, theirs = model.fusion.mlm_head, lm.cls.predictions
    assert torch.equal(head.dense.weight, theirs.transform.dense.weight)
    assert torch.equal(head.norm.weight, theirs.transform.LayerNorm.weight)
    assert torch.equal(head.decoder.weight, theirs.decoder.weight)
    assert torch.equal(head.decoder.bias, theirs.decoder.bias)
    fresh = CCRModel.from_vision_text_pretrained(str(tmp_path / "vision"), str(tmp_path / "text"), num_fusion_layers=1)
    assert not torch.equal(fresh.fusion.mlm_head.decoder.weight, theirs.decoder.weight)  # default: a new head


# ------------------------------------------------------------------------------------------------ defaults, recipe
def test_new_fields_default_to_the_previous_behaviour_and_bad_values_are_clear():
    config = CCRConfig()
    assert (config.positive_sampling, config.negative_sampling, config.mlm_masking) == ("softmax", "softmax", "bernoulli")
    assert (config.itm_head_type, config.itm_score, config.itc_divide_by_k) == ("linear", "logit_diff", False)
    with pytest.raises(ValueError, match="itm_head_type"):
        CCRConfig(itm_head_type="deep")
    with pytest.raises(ValueError, match="mlm_masking"):
        CCRConfig(mlm_masking="spans")


def test_old_fusion_checkpoint_loads_with_todays_behaviour():
    from pathlib import Path

    model = CCRModel.from_pretrained(Path(__file__).parent / "fixtures" / "ccr_v0_fusion")
    assert isinstance(model.fusion.itm_head, torch.nn.Linear)
    assert model.config.positive_sampling == "softmax" and model.config.itm_score == "logit_diff"


def test_ccrk_recipe_trains_a_step_and_saves_and_loads(tmp_path):
    model = make_model(num_fusion_layers=1, **CCRK_CONFIG)
    tokenizer = make_tokenizer()
    texts = ["a red apple", "ein roter Apfel", "a dog runs", "ein Hund rennt", "公园里跑的狗", "a smiling face"]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    batch = add_mlm_inputs({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]},
                           tokenizer, model.config.mlm_probability, model.config)
    torch.manual_seed(0)
    out = model(**batch, pixel_values=torch.randn(3, 3, 32, 32), text_image_ids=torch.tensor([0, 0, 1, 1, 1, 2]),
                return_loss=True)
    assert torch.isfinite(out.loss) and out.loss_itm is not None and out.loss_mlm is not None
    out.loss.backward()
    model.save_pretrained(tmp_path)
    again = CCRModel.from_pretrained(tmp_path)
    assert again.config.itm_head_type == "mlp" and again.config.mlm_masking == "ccrk"
    assert torch.equal(again.fusion.itm_head[0].weight, model.fusion.itm_head[0].weight)


def test_recipes_and_stages_are_named_and_unknown_names_are_clear():
    assert recipe_config("package") == {} and recipe_config("ccrk")["itm_head_type"] == "mlp"
    assert stage_settings("finetune")["loss_type"] == "pairwise_soft" and stage_settings("pretrain")["mlm_weight"] > 0
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_config("clip")
    with pytest.raises(ValueError, match="unknown stage"):
        stage_settings("warmup")
