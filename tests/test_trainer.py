"""CCRTrainer: collation, each objective trains, retrieval evaluation, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_ccr_dataset, tiny_model, tiny_processor
from safetensors.torch import load_file

from modeling_ccr.collator import CCRCollator, add_mlm_inputs, sample_captions
from modeling_ccr.objectives import LOSS_TYPES, contrastive_objective
from modeling_ccr.trainer import (
    CCRTrainer,
    CCRTrainingArguments,
    is_complete_checkpoint,
    last_complete_checkpoint,
)

TESTS = Path(__file__).resolve().parent
LANGUAGES = ["de", "en", "fr"]


@pytest.fixture(scope="module")
def data():
    dataset = tiny_ccr_dataset()
    return dataset, tiny_processor(dataset)


def _args(tmp_path, **overrides) -> CCRTrainingArguments:
    options = dict(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=12, per_device_eval_batch_size=5,
        learning_rate=3e-3, max_steps=25, logging_steps=1, save_strategy="no", report_to="none", seed=0,
        disable_tqdm=True, use_cpu=True, warmup_steps=0,
    )
    options.update(overrides)
    return CCRTrainingArguments(**options)


def test_training_batch_samples_one_caption_per_language(data):
    dataset, processor = data
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


def test_evaluation_batch_keeps_every_caption_per_image(data):
    dataset, processor = data
    rows = [dataset[i] for i in range(3)]
    batch = CCRCollator(processor, LANGUAGES, for_evaluation=True)(rows)
    assert batch["input_ids"].shape[:2] == (3, 4)
    counts = (batch["text_language_ids"] != -100).sum(1).tolist()
    assert counts == [len(row["captions"]) for row in rows]


def test_collator_rejects_bad_rows(data):
    dataset, processor = data
    row = dict(dataset[0])
    with pytest.raises(ValueError, match="no caption"):
        CCRCollator(processor, LANGUAGES)([{**row, "captions": []}])
    with pytest.raises(ValueError, match="'xx'"):
        CCRCollator(processor, LANGUAGES)([{**row, "captions": [{"language": "xx", "text": "hi"}]}])


def test_mlm_labels_only_where_masked(data):
    dataset, processor = data
    torch.manual_seed(0)
    batch = add_mlm_inputs(CCRCollator(processor, LANGUAGES)([dataset[i] for i in range(6)]), processor.tokenizer, 0.5)
    changed = batch["mlm_input_ids"] != batch["input_ids"]
    predicted = batch["mlm_labels"] != -100
    assert predicted.any()
    assert not (changed & ~predicted).any()
    assert torch.equal(batch["mlm_labels"][predicted], batch["input_ids"][predicted])


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_each_objective_trains_with_falling_loss(tmp_path, data, loss_type):
    dataset, processor = data
    model = tiny_model(processor, seed=0)
    trainer = CCRTrainer(
        model=model, args=_args(tmp_path, loss_type=loss_type), train_dataset=dataset, processing_class=processor
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses


def test_baselines_are_different_objectives(data):
    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(12, 8), dim=-1)
    text_image_ids = torch.arange(4).repeat_interleave(3)
    language_ids = torch.tensor([0, 1, 2] * 4)
    tau = torch.tensor(0.07)
    values = {
        loss_type: contrastive_objective(loss_type, image, text, text_image_ids, language_ids, tau, pivot_language_id=1)
        for loss_type in LOSS_TYPES
    }
    assert len({round(float(v), 5) for v in values.values()}) == len(LOSS_TYPES), values
    with pytest.raises(ValueError, match="English"):
        contrastive_objective("pivot", image, text, text_image_ids, language_ids, tau, pivot_language_id=None)
    no_english_for_last = language_ids.clone()
    no_english_for_last[10] = 0
    with pytest.raises(ValueError, match="English caption for every image"):
        contrastive_objective("pivot", image, text, text_image_ids, no_english_for_last, tau, pivot_language_id=1)


def test_pivot_trainer_needs_english(tmp_path, data):
    dataset, processor = data
    with pytest.raises(ValueError, match="English"):
        CCRTrainer(
            model=tiny_model(processor), args=_args(tmp_path, loss_type="pivot"), train_dataset=dataset,
            processing_class=processor, languages=["de", "fr"],
        )


def test_unknown_loss_type_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown loss_type 'bogus'"):
        _args(tmp_path, loss_type="bogus")


def test_evaluate_reports_retrieval_metrics(tmp_path, data):
    dataset, processor = data
    trainer = CCRTrainer(
        model=tiny_model(processor, seed=0), args=_args(tmp_path, max_steps=30), train_dataset=dataset,
        eval_dataset=dataset, processing_class=processor,
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    for language in LANGUAGES:
        for direction in ("tr", "ir"):
            assert 0.0 <= after[f"eval_{direction}_r1_{language}"] <= 100.0
    assert after["eval_mrv_tr"] >= 0 and after["eval_mrv_ir"] >= 0
    assert after["eval_mean_recall"] > before["eval_mean_recall"]


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    worker = [sys.executable, str(TESTS / "_train_worker.py")]
    subprocess.run([*worker, str(tmp_path / "full"), str(tmp_path / "full.safetensors")], env=env, check=True,
                   capture_output=True, timeout=300)

    run = tmp_path / "killed"
    process = subprocess.Popen([*worker, str(run), str(tmp_path / "killed.safetensors")],
                               env={**env, "SLOW_STEPS": "0.5"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not is_complete_checkpoint(str(run / "checkpoint-4")):
        assert process.poll() is None, "the worker ended before it could be killed"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed.safetensors").exists()

    # A checkpoint the kill interrupted mid-write: newest by name, but it must never be resumed.
    torn = run / "checkpoint-7"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"\x00" * 10)
    (torn / "trainer_state.json").write_text('{"global_step": 7, "log_hist')
    assert last_complete_checkpoint(str(run)) is not None
    assert Path(last_complete_checkpoint(str(run))).name != "checkpoint-7"

    subprocess.run([*worker, str(run), str(tmp_path / "killed.safetensors"), "resume"], env=env, check=True,
                   capture_output=True, timeout=300)
    full, resumed = load_file(tmp_path / "full.safetensors"), load_file(tmp_path / "killed.safetensors")
    assert full.keys() == resumed.keys()
    for name in full:
        assert torch.equal(full[name], resumed[name]), name
    state = json.loads((run / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8


def test_final_evaluation_agrees_with_trainer_evaluation_on_transparent_images(tmp_path, data):
    """evaluate_retrieval (train.py's final evaluation) and CCRTrainer.evaluate see the same images: RGBA images
    go through the processor (transparency onto white) in both — a bare convert('RGB') once made them differ."""
    from PIL import Image

    from modeling_ccr.retrieval import evaluate_retrieval, flatten_metrics

    dataset, processor = data

    def transparent(row):
        rgba = row["image"].convert("RGBA")
        pixels = rgba.load()
        for x in range(rgba.width):
            for y in range(rgba.height):
                if pixels[x, y][:3] == (255, 255, 255):
                    pixels[x, y] = (0, 0, 0, 0)  # transparent black, as emoji PNGs store their background
        return {"image": rgba}

    rgba_dataset = dataset.map(transparent)
    assert isinstance(rgba_dataset[0]["image"], Image.Image) and rgba_dataset[0]["image"].mode == "RGBA"
    model = tiny_model(processor, seed=0)
    trainer = CCRTrainer(model=model, args=_args(tmp_path, max_steps=15), train_dataset=rgba_dataset,
                         eval_dataset=rgba_dataset, processing_class=processor)
    trainer.train()
    from_trainer = trainer.evaluate()
    metrics, _ = evaluate_retrieval(model, processor, rgba_dataset, languages=LANGUAGES, progress=False)
    for key, value in flatten_metrics(metrics).items():
        assert from_trainer[f"eval_{key}"] == pytest.approx(value, abs=1e-6), key
