"""CCRTrainer: each objective trains, one objective computed once per step, the CMLM rate that runs is the one
saved, retrieval evaluation, resume after a kill."""

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
from conftest import tiny_model
from safetensors.torch import load_file

from modeling_ccr.collator import CCRCollator
from modeling_ccr.objectives import LOSS_TYPES
from modeling_ccr.trainer import (
    CCRTrainer,
    CCRTrainingArguments,
    NonFiniteLossError,
    is_complete_checkpoint,
    last_complete_checkpoint,
)

TESTS = Path(__file__).resolve().parent
LANGUAGES = ["de", "en", "fr"]


def _args(tmp_path, **overrides) -> CCRTrainingArguments:
    options = dict(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=12, per_device_eval_batch_size=5,
        learning_rate=3e-3, max_steps=25, logging_steps=1, save_strategy="no", report_to="none", seed=0,
        disable_tqdm=True, use_cpu=True, warmup_steps=0,
    )
    options.update(overrides)
    return CCRTrainingArguments(**options)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_each_objective_trains_with_falling_loss(tmp_path, tiny_data, loss_type):
    dataset, processor = tiny_data
    model = tiny_model(processor, seed=0)
    trainer = CCRTrainer(
        model=model, args=_args(tmp_path, loss_type=loss_type), train_dataset=dataset, processing_class=processor
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses


def test_pivot_trainer_needs_english(tmp_path, tiny_data):
    dataset, processor = tiny_data
    with pytest.raises(ValueError, match="English"):
        CCRTrainer(
            model=tiny_model(processor), args=_args(tmp_path, loss_type="pivot"), train_dataset=dataset,
            processing_class=processor, languages=["de", "fr"],
        )


def test_a_learning_rate_that_makes_the_loss_nan_stops_training_naming_the_step(tmp_path, tiny_data):
    dataset, processor = tiny_data
    trainer = CCRTrainer(model=tiny_model(processor, seed=0), args=_args(tmp_path, learning_rate=1e30, max_grad_norm=0),
                         train_dataset=dataset, processing_class=processor)
    with pytest.raises(NonFiniteLossError, match=r"at step \d+ \(learning rate .*try a lower --learning_rate"):
        trainer.train()


def test_a_full_disk_while_saving_leaves_no_half_written_checkpoint(tmp_path, tiny_data, monkeypatch):
    import errno

    dataset, processor = tiny_data
    model = tiny_model(processor, seed=0)

    def full_disk(folder, *args, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / "model.safetensors"))

    monkeypatch.setattr(model, "save_pretrained", full_disk)
    args = _args(tmp_path, max_steps=2, save_strategy="steps", save_steps=1)
    trainer = CCRTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
    with pytest.raises(OSError) as info:
        trainer.train()
    assert info.value.errno == errno.ENOSPC
    assert not [name for name in os.listdir(args.output_dir) if name.startswith("checkpoint-")]


def test_resume_true_without_a_checkpoint_is_an_error(tmp_path, tiny_data):
    dataset, processor = tiny_data
    trainer = CCRTrainer(model=tiny_model(processor), args=_args(tmp_path), train_dataset=dataset,
                         processing_class=processor)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint in .* to resume from"):
        trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 0


@pytest.mark.parametrize(("option", "value", "message"), [
    ("num_train_epochs", 0, "--num_train_epochs must be a number > 0"),
    ("per_device_train_batch_size", 0, "--per_device_train_batch_size must be >= 1"),
    ("max_steps", 0, "--max_steps must be > 0"),
    ("learning_rate", float("nan"), "--learning_rate must be a number > 0"),
])
def test_numbers_that_cannot_train_are_refused(tmp_path, option, value, message):
    overrides = {"max_steps": -1} if option == "num_train_epochs" else {}
    with pytest.raises(ValueError, match=message):
        _args(tmp_path, **{**overrides, option: value})


def test_unknown_loss_type_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown loss_type 'bogus'"):
        _args(tmp_path, loss_type="bogus")


def test_evaluate_reports_retrieval_metrics(tmp_path, tiny_data):
    dataset, processor = tiny_data
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


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-augmented"])
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, bf16):
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "BF16": "1" if bf16 else "0"}
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


def test_final_evaluation_agrees_with_trainer_evaluation_on_transparent_images(tmp_path, tiny_data):
    """evaluate_retrieval (train.py's final evaluation) and CCRTrainer.evaluate see the same images: RGBA images
    go through the processor (transparency onto white) in both — a bare convert('RGB') once made them differ."""
    from PIL import Image

    from modeling_ccr.retrieval import evaluate_retrieval, flatten_metrics

    dataset, processor = tiny_data

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


@pytest.mark.parametrize("loss_type, formula_calls", [("one_to_k", 1), ("one_to_one", 1), ("per_language", 3)])
def test_one_objective_per_step_with_one_gather(tmp_path, tiny_data, monkeypatch, loss_type, formula_calls):
    """A step computes the named objective once (not 1-to-K as well) through one dispatch and one gather."""
    import modeling_ccr.modeling_ccr as modeling
    import modeling_ccr.objectives as objectives

    dataset, processor = tiny_data
    calls = {"gather": 0, "formula": 0}
    gather, formula = objectives.gather_for_contrastive, modeling.one_to_k_loss_from_logits

    def counted_gather(*args, **kwargs):
        calls["gather"] += 1
        return gather(*args, **kwargs)

    def counted_formula(*args, **kwargs):
        calls["formula"] += 1
        return formula(*args, **kwargs)

    monkeypatch.setattr(objectives, "gather_for_contrastive", counted_gather)
    monkeypatch.setattr(modeling, "one_to_k_loss_from_logits", counted_formula)
    model = tiny_model(processor, num_fusion_layers=1)
    trainer = CCRTrainer(model=model, args=_args(tmp_path, loss_type=loss_type), train_dataset=dataset,
                         processing_class=processor)
    batch = CCRCollator(processor, LANGUAGES)([dataset[i] for i in range(6)])
    torch.manual_seed(0)
    loss, outputs = trainer.compute_loss(model, batch, return_outputs=True)
    assert calls == {"gather": 1, "formula": formula_calls}
    assert outputs.loss_itm is not None and outputs.loss_mlm is not None
    torch.testing.assert_close(loss, outputs.loss_itc + outputs.loss_itm + outputs.loss_mlm)


def test_mlm_probability_that_runs_is_the_one_saved(tmp_path, tiny_data):
    dataset, processor = tiny_data
    model = tiny_model(processor, num_fusion_layers=1)
    trainer = CCRTrainer(model=model, args=_args(tmp_path, mlm_probability=0.3), train_dataset=dataset,
                         processing_class=processor)
    assert model.config.mlm_probability == 0.3
    batch = CCRCollator(processor, LANGUAGES)([dataset[i] for i in range(12)])
    torch.manual_seed(0)
    drawn = trainer._draw_step_inputs(batch)
    assert (drawn["mlm_labels"] != -100).any()
    model.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["mlm_probability"] == 0.3
    # without the argument the model config's rate stays
    other = tiny_model(processor, num_fusion_layers=1, mlm_probability=0.2)
    CCRTrainer(model=other, args=_args(tmp_path), train_dataset=dataset, processing_class=processor)
    assert other.config.mlm_probability == 0.2


def test_mlm_probability_zero_trains_without_cmlm(tmp_path, tiny_data):
    dataset, processor = tiny_data
    model = tiny_model(processor, num_fusion_layers=1)
    trainer = CCRTrainer(model=model, args=_args(tmp_path, mlm_probability=0.0), train_dataset=dataset,
                         processing_class=processor)
    batch = CCRCollator(processor, LANGUAGES)([dataset[i] for i in range(6)])
    torch.manual_seed(0)
    loss, outputs = trainer.compute_loss(model, batch, return_outputs=True)
    assert outputs.loss_mlm is None and outputs.loss_itm is not None
    torch.testing.assert_close(loss, outputs.loss_itc + outputs.loss_itm)
    assert model.config.mlm_probability == 0.0


def test_bf16_training_keeps_fp32_weights_and_finite_losses(tmp_path, tiny_data):
    dataset, processor = tiny_data
    model = tiny_model(processor, num_fusion_layers=1, seed=0)
    args = _args(tmp_path, bf16=True, max_steps=8, image_augmentation=True, eval_strategy="steps", eval_steps=8)
    trainer = CCRTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset, processing_class=processor)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    evaluation = [entry for entry in trainer.state.log_history if "eval_mean_recall" in entry]
    assert evaluation and 0.0 <= evaluation[-1]["eval_mean_recall"] <= 100.0


def test_bf16_eval_ranks_agree_with_fp32(tmp_path, tiny_data):
    """Evaluation under --bf16 encodes in bf16: the retrieval metrics stay those of fp32 up to a few queries."""
    dataset, processor = tiny_data
    model = tiny_model(processor, seed=0)
    results = {}
    for bf16 in (False, True):
        trainer = CCRTrainer(model=model, args=_args(tmp_path, bf16=bf16), eval_dataset=dataset,
                             processing_class=processor, languages=LANGUAGES)
        results[bf16] = trainer.evaluate()
    assert abs(results[True]["eval_mean_recall"] - results[False]["eval_mean_recall"]) <= 10.0


@pytest.mark.parametrize("frozen", ["vision", "text"])
def test_frozen_tower_gets_no_gradient_no_optimizer_state_and_is_saved(tmp_path, tiny_data, frozen):
    from modeling_ccr import CCRModel

    dataset, processor = tiny_data
    model = tiny_model(processor, seed=0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = _args(tmp_path, max_steps=3, freeze_vision=frozen == "vision", freeze_text=frozen == "text")
    trainer = CCRTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
    trainer.train()
    tower = f"{frozen}_model."
    for name, parameter in model.named_parameters():
        if name.startswith(tower):
            assert not parameter.requires_grad and parameter.grad is None, name
            assert torch.equal(parameter, before[name]), name
        else:
            assert parameter.requires_grad, name
    assert not torch.equal(model.visual_projection.weight, before["visual_projection.weight"])
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(id(p) in optimised for p in trainer.optimizer.state)
    model.save_pretrained(tmp_path / "saved")
    reloaded = CCRModel.from_pretrained(tmp_path / "saved")
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name


def test_unfrozen_layers_needs_a_frozen_tower(tmp_path):
    with pytest.raises(ValueError, match="unfrozen_layers applies to a frozen tower"):
        _args(tmp_path, unfrozen_layers=1)
