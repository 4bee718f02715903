"""CCRCollator and the step's draws: training batches (captions sampled per language), evaluation layout,
bad rows, CMLM inputs on collated batches."""

from __future__ import annotations

import pytest
import torch

from modeling_ccr.collator import CCRCollator, sample_captions
from modeling_ccr.masking import add_mlm_inputs

LANGUAGES = ["de", "en", "fr"]


def test_training_batch_samples_one_caption_per_language(tiny_data):
    dataset, processor = tiny_data
    full = CCRCollator(processor, LANGUAGES)([dataset[i] for i in range(4)])
    assert len(full["text_image_ids"]) == sum(len(dataset[i]["captions"]) for i in range(4))
    torch.manual_seed(0)
    batch = sample_captions(full, captions_per_language=1)
    ids, languages = batch["text_image_ids"].tolist(), batch["text_language_ids"].tolist()
    assert batch["pixel_values"].shape[0] == 4
    assert len(ids) == batch["input_ids"].shape[0]
    for image in range(4):
        mine = [languages[j] for j in range(len(ids)) if ids[j] == image]
        assert sorted(mine) == sorted(set(mine))  # at most one caption per language
        expected = {LANGUAGES.index(c["language"]) for c in dataset[image]["captions"]}
        assert set(mine) == expected  # images keep exactly the languages they have (image 1 has no fr)


def test_evaluation_batch_keeps_every_caption_per_image(tiny_data):
    dataset, processor = tiny_data
    rows = [dataset[i] for i in range(3)]
    batch = CCRCollator(processor, LANGUAGES, for_evaluation=True)(rows)
    assert batch["input_ids"].shape[:2] == (3, 4)
    counts = (batch["text_language_ids"] != -100).sum(1).tolist()
    assert counts == [len(row["captions"]) for row in rows]


def test_collator_rejects_bad_rows(tiny_data):
    dataset, processor = tiny_data
    row = dict(dataset[0])
    with pytest.raises(ValueError, match="no caption"):
        CCRCollator(processor, LANGUAGES)([{**row, "captions": []}])
    with pytest.raises(ValueError, match="'xx'"):
        CCRCollator(processor, LANGUAGES)([{**row, "captions": [{"language": "xx", "text": "hi"}]}])


def test_mlm_labels_only_where_masked(tiny_data):
    dataset, processor = tiny_data
    torch.manual_seed(0)
    batch = add_mlm_inputs(CCRCollator(processor, LANGUAGES)([dataset[i] for i in range(6)]), processor.tokenizer, 0.5)
    assert batch["mlm_input_ids"].shape == batch["input_ids"].shape
    changed = batch["mlm_input_ids"] != batch["input_ids"]
    predicted = batch["mlm_labels"] != -100
    assert predicted.any()
    assert not (changed & ~predicted).any()
    assert torch.equal(batch["mlm_labels"][predicted], batch["input_ids"][predicted])


def test_batches_equal_the_processors_output_also_from_the_token_cache(tiny_data, monkeypatch):
    """Each distinct caption is tokenized once; a batch is what ``processor(images=, captions=)`` gives, every epoch,
    long captions truncated the same way; a full cache stops growing and still collates."""
    import modeling_ccr.collator as collator_module

    dataset, processor = tiny_data
    rows = [dataset[i] for i in range(4)]
    rows[2] = {**rows[2], "captions": [*rows[2]["captions"], {"language": "en", "text": " ".join(["a dog runs"] * 40)}]}
    want = processor(images=[row["image"] for row in rows], captions=[[c["text"] for c in row["captions"]] for row in rows])
    collate = CCRCollator(processor, LANGUAGES)
    for _ in range(2):  # the second batch comes from the cache
        got = collate(rows)
        for key in ("pixel_values", "input_ids", "attention_mask", "text_image_ids"):
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)
    assert len(collate._token_ids) == len({c["text"] for row in rows for c in row["captions"]})
    monkeypatch.setattr(collator_module, "TOKEN_CACHE_SIZE", 0)
    full = CCRCollator(processor, LANGUAGES)
    torch.testing.assert_close(full(rows)["input_ids"], want["input_ids"], rtol=0, atol=0)
    assert full._token_ids == {}
