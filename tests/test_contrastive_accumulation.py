"""Accumulated negatives (GradCache): N micro-batches contrasted at once give the gradients of one big batch."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from modeling_ccr.collator import CCRCollator
from modeling_ccr.contrastive_accumulation import accumulated_contrastive_step, split_batch
from modeling_ccr.trainer import CCRTrainer, CCRTrainingArguments, ccr_training_loss

LANGUAGES = ["de", "en", "fr"]


def _grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss_type", ["one_to_k", "per_language"])
@pytest.mark.parametrize("steps", [2, 3])
def test_gradients_equal_one_batch_n_times_larger(tiny_data, loss_type, steps):
    dataset, processor = tiny_data
    batch = CCRCollator(processor, LANGUAGES)([dataset[i] for i in range(9)])
    assert len(set(torch.bincount(batch["text_image_ids"]).tolist())) > 1  # 1-to-K, varying K per image
    model = tiny_model(processor, seed=0)
    model.train()
    reference = ccr_training_loss(model, batch, loss_type).loss
    reference.backward()
    expected = _grads(model)
    model.zero_grad(set_to_none=True)
    loss = accumulated_contrastive_step(model, batch, steps, loss_type)
    assert loss.item() == pytest.approx(reference.item(), abs=1e-5)
    got = _grads(model)
    assert got.keys() == expected.keys() and "tau" in got
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-5, msg=name)


def test_fusion_losses_are_averaged_over_micro_batches(tiny_data):
    """With fusion layers the contrastive part is global and CMLM per micro-batch: the loss is finite and every
    trainable parameter gets a gradient."""
    dataset, processor = tiny_data
    batch = CCRCollator(processor, LANGUAGES)([dataset[i] for i in range(8)])
    batch["mlm_input_ids"] = batch["input_ids"].clone()
    batch["mlm_input_ids"][:, 1] = processor.tokenizer.mask_token_id
    batch["mlm_labels"] = torch.full_like(batch["input_ids"], -100)
    batch["mlm_labels"][:, 1] = batch["input_ids"][:, 1]
    model = tiny_model(processor, num_fusion_layers=1, seed=0)
    model.train()
    loss = accumulated_contrastive_step(model, batch, 2)
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_split_batch_keeps_every_text_with_its_image(tiny_data):
    dataset, processor = tiny_data
    batch = CCRCollator(processor, LANGUAGES)([dataset[i] for i in range(7)])
    chunks = split_batch(batch, 3)
    assert sum(chunk["pixel_values"].shape[0] for chunk, _ in chunks) == 7
    positions = torch.cat([texts for _, texts in chunks])
    assert torch.equal(positions.sort().values, torch.arange(len(batch["input_ids"])))
    for chunk, texts in chunks:
        assert torch.equal(chunk["input_ids"], batch["input_ids"][texts])
    with pytest.raises(ValueError, match="contrastive_accumulation_steps=8"):
        split_batch(batch, 8)


def test_trainer_trains_with_accumulated_negatives(tmp_path, tiny_data):
    dataset, processor = tiny_data
    model = tiny_model(processor, seed=0)
    args = CCRTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=12, max_steps=6, learning_rate=3e-3, report_to="none",
        save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=1, contrastive_accumulation_steps=3,
    )
    trainer = CCRTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    with pytest.raises(ValueError, match="contrastive_accumulation_steps"):
        CCRTrainingArguments(output_dir=str(tmp_path), contrastive_accumulation_steps=0)


def test_a_batch_norm_tower_is_refused_with_accumulated_negatives(tmp_path, tiny_data):
    """BatchNorm couples the examples of a micro-batch: the gradients could not be those of one large batch."""
    from transformers import AutoModel

    from modeling_ccr.presets import vision_presets

    dataset, processor = tiny_data
    model = tiny_model(processor, seed=0)
    model.vision_model = AutoModel.from_config(vision_presets(32)["tiny-resnet"])
    args = CCRTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                contrastive_accumulation_steps=2)
    with pytest.raises(ValueError, match=r"needs towers without BatchNorm \(vision_model\.embedder"):
        CCRTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
