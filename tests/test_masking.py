"""The CMLM masking rule (modeling_ccr/masking.py), the only one: what is masked, how, and with which generator."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tokenizer

from modeling_ccr.masking import IGNORE_INDEX, add_mlm_inputs, mask_tokens


def _batch(n: int = 64):
    tokenizer = make_tokenizer()
    encoded = tokenizer(["a red apple on a table", "ein Hund rennt im Park", "公园里跑的狗"] * n, padding=True,
                        return_tensors="pt")
    return tokenizer, {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def test_never_masks_special_tokens_or_padding_and_labels_only_where_chosen():
    tokenizer, batch = _batch()
    torch.manual_seed(0)
    out = add_mlm_inputs(batch, tokenizer, 0.5)
    chosen = out["mlm_labels"] != IGNORE_INDEX
    special = torch.isin(batch["input_ids"], torch.tensor(tokenizer.all_special_ids)) | (batch["attention_mask"] == 0)
    assert chosen.any()
    assert not (chosen & special).any()
    assert torch.equal(out["mlm_labels"][chosen], batch["input_ids"][chosen])
    changed = out["mlm_input_ids"] != batch["input_ids"]
    assert not (changed & ~chosen).any()
    assert torch.equal(out["input_ids"], batch["input_ids"])  # the batch's own texts are left alone


def test_bert_split_of_the_chosen_tokens():
    """Of the chosen tokens about 80 % become [MASK], 10 % a random token, 10 % stay (fixed seed, 30k tokens)."""
    input_ids = torch.randint(5, 300, (300, 100), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    masked, labels = mask_tokens(input_ids, torch.zeros_like(input_ids, dtype=torch.bool), 4, 300, 0.3)
    chosen = labels != IGNORE_INDEX
    assert abs(chosen.float().mean().item() - 0.3) < 0.01
    as_mask = (masked == 4) & chosen
    kept = (masked == input_ids) & chosen
    assert abs(as_mask.sum().item() / chosen.sum().item() - 0.8) < 0.02
    assert abs(kept.sum().item() / chosen.sum().item() - 0.1) < 0.02  # (a random token may equal the original)


def test_probability_zero_masks_nothing_and_bad_inputs_are_clear_errors():
    tokenizer, batch = _batch(2)
    out = add_mlm_inputs(batch, tokenizer, 0.0)
    assert (out["mlm_labels"] == IGNORE_INDEX).all() and torch.equal(out["mlm_input_ids"], batch["input_ids"])
    with pytest.raises(ValueError, match=r"mlm_probability must be in \[0, 1\)"):
        add_mlm_inputs(batch, tokenizer, 1.0)
    with pytest.raises(ValueError, match="shape of input_ids"):
        mask_tokens(batch["input_ids"], batch["attention_mask"][:1], 4, 300, 0.2)


def test_draws_replay_from_torchs_global_generator():
    """Re-seeding the global generator (what Trainer's resume restores) replays the same masks."""
    tokenizer, batch = _batch(4)
    torch.manual_seed(5)
    first = add_mlm_inputs(batch, tokenizer, 0.4)
    torch.manual_seed(5)
    second = add_mlm_inputs(batch, tokenizer, 0.4)
    assert torch.equal(first["mlm_input_ids"], second["mlm_input_ids"])
    assert torch.equal(first["mlm_labels"], second["mlm_labels"])
    third = add_mlm_inputs(batch, tokenizer, 0.4)
    assert not torch.equal(first["mlm_labels"], third["mlm_labels"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_tensors_mask_like_cpu_ones():
    tokenizer, batch = _batch(4)
    torch.manual_seed(3)
    cpu = add_mlm_inputs(batch, tokenizer, 0.4)
    torch.manual_seed(3)
    gpu = add_mlm_inputs({k: v.cuda() for k, v in batch.items()}, tokenizer, 0.4)
    assert gpu["mlm_labels"].is_cuda
    assert torch.equal(gpu["mlm_labels"].cpu(), cpu["mlm_labels"])
    assert torch.equal(gpu["mlm_input_ids"].cpu(), cpu["mlm_input_ids"])
