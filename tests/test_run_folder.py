"""modeling_ccr.run_folder: one run per output folder, checkpoints that name their run, staging leftovers."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from modeling_ccr.run_folder import (
    RunIdentityCallback,
    check_checkpoint_run,
    check_run_folder,
    claim_run_folder,
    run_identity,
)

ARGS = {"model.projection_dim": 16, "training.learning_rate": 5e-4, "training.seed": 42}
OTHER = {**ARGS, "training.seed": 7}


def test_a_fresh_or_foreign_folder_is_accepted_and_claimed(tmp_path):
    run_dir = tmp_path / "run"
    check_run_folder(run_dir, ARGS, resume=False, overwrite=False)
    (tmp_path / "notes.txt").write_text("the user's own file")
    check_run_folder(tmp_path, ARGS, resume=False, overwrite=False)  # no run in it: fine
    claim_run_folder(run_dir, ARGS, overwrite=False)
    assert json.loads((run_dir / "run.json").read_text())["run_id"] == run_identity(ARGS)


def test_a_folder_holding_a_run_is_refused_unless_overwritten(tmp_path):
    claim_run_folder(tmp_path, ARGS, overwrite=False)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").write_bytes(b"old")
    (tmp_path / "keep.txt").write_text("not the run's")
    with pytest.raises(FileExistsError, match="already holds a run .*--overwrite_output_dir"):
        check_run_folder(tmp_path, ARGS, resume=False, overwrite=False)
    assert (tmp_path / "model" / "model.safetensors").exists()  # refusing removed nothing
    check_run_folder(tmp_path, OTHER, resume=False, overwrite=True)
    claim_run_folder(tmp_path, OTHER, overwrite=True)
    assert not (tmp_path / "model").exists() and (tmp_path / "keep.txt").exists()
    assert json.loads((tmp_path / "run.json").read_text())["run_id"] == run_identity(OTHER)


def test_resume_only_with_the_same_arguments(tmp_path):
    claim_run_folder(tmp_path, ARGS, overwrite=False)
    (tmp_path / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    check_run_folder(tmp_path, ARGS, resume=True, overwrite=False)
    with pytest.raises(ValueError, match="other arguments .*seed 42 -> 7"):
        check_run_folder(tmp_path, OTHER, resume=True, overwrite=False)


def test_a_checkpoint_of_another_run_is_never_resumed(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    with pytest.raises(ValueError, match="records no run identity"):
        check_checkpoint_run(checkpoint, ARGS)
    callback = RunIdentityCallback(ARGS)
    state = SimpleNamespace(global_step=4, is_world_process_zero=True)
    callback.on_save(SimpleNamespace(output_dir=str(checkpoint.parent)), state, None)
    check_checkpoint_run(checkpoint, ARGS)
    with pytest.raises(ValueError, match="belongs to another run"):
        check_checkpoint_run(checkpoint, OTHER)


def test_a_run_stopped_before_any_checkpoint_does_not_hold_the_folder(tmp_path):
    claim_run_folder(tmp_path, ARGS, overwrite=False)
    (tmp_path / "runs").mkdir()
    check_run_folder(tmp_path, OTHER, resume=False, overwrite=False)


def test_staging_leftovers_are_removed_when_the_folder_is_claimed(tmp_path):
    (tmp_path / ".model-abc123").mkdir()
    (tmp_path / ".model-abc123" / "config.json").write_text("{}")
    claim_run_folder(tmp_path, ARGS, overwrite=False)
    assert not (tmp_path / ".model-abc123").exists()
