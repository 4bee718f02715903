"""One training run per output folder: train.py's ``--output_dir`` is never shared by two runs.

A run folder holds ``run.json`` (the run's identity: a hash of the arguments that decide what is trained), the
``model/`` folder, ``checkpoints/`` and ``runs/``; every checkpoint also records the identity (``ccr_run.json``).
Reusing a folder that holds a run needs ``--overwrite_output_dir`` (everything of the old run is removed first)
or ``--resume_from_checkpoint`` with the *same* arguments; a checkpoint of another run is never resumed.
Temporary ``.model-*`` folders a kill left behind during the final write are removed at the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

RUN_FILE = "run.json"
CHECKPOINT_RUN_FILE = "ccr_run.json"
STAGING_PREFIX = ".model-"
# What a run writes into its folder: the only names overwriting removes.
RUN_ENTRIES = ("model", "checkpoints", "runs", RUN_FILE)
# What makes a folder hold a run worth protecting: a model or a checkpoint (a run stopped before either left
# only its run.json and logs, and the folder is simply taken over).
HELD_ENTRIES = ("model", "checkpoints")

# The training arguments that decide the trajectory (with all model arguments and the training data's):
# the rest (output paths, logging, evaluation, epochs to go) may change when a run is resumed.
TRAINING_IDENTITY_FIELDS = (
    "loss_type", "itc_weight", "itm_weight", "mlm_weight", "mlm_probability", "captions_per_language",
    "itc_divide_by_k", "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
    "lr_scheduler_type", "warmup_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "seed",
    "bf16", "fp16", "precision", "image_augmentation", "freeze_vision", "freeze_text", "unfrozen_layers",
    "contrastive_accumulation_steps",
)
DATA_IDENTITY_FIELDS = ("dataset", "image_root", "languages", "train_split", "max_train_samples", "streaming",
                        "shuffle_buffer", "language_coverage")


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def run_arguments(model_args: Any, data_args: Any, training_args: Any) -> dict[str, Any]:
    """The arguments that identify a run (see ``TRAINING_IDENTITY_FIELDS``), as plain JSON values."""
    values = {f"model.{k}": _plain(v) for k, v in sorted(vars(model_args).items())}
    values.update({f"data.{k}": _plain(getattr(data_args, k, None)) for k in DATA_IDENTITY_FIELDS})
    values.update({f"training.{k}": _plain(getattr(training_args, k, None)) for k in TRAINING_IDENTITY_FIELDS})
    return values


def run_identity(arguments: dict[str, Any]) -> str:
    """A short hash of :func:`run_arguments`."""
    return hashlib.sha256(json.dumps(arguments, sort_keys=True).encode()).hexdigest()[:16]


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _differences(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shown = ", ".join(f"{k.split('.', 1)[-1]} {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:4])
    return shown + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


def remove_staging_folders(run_dir: Path) -> list[Path]:
    """Remove the ``.model-*`` folders an interrupted final write left in ``run_dir``; returns them."""
    if not run_dir.is_dir():
        return []
    stale = [path for path in run_dir.iterdir() if path.name.startswith(STAGING_PREFIX) and path.is_dir()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def check_run_folder(run_dir: Path, arguments: dict[str, Any], *, resume: bool, overwrite: bool) -> None:
    """Refuse a folder that holds another run (nothing is written or removed here; see :func:`claim_run_folder`)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"--output_dir {run_dir} is a file, not a folder")
    held = [name for name in HELD_ENTRIES if (run_dir / name).is_dir() and any((run_dir / name).iterdir())]
    if not held or overwrite:
        return
    if not resume:
        raise FileExistsError(
            f"--output_dir {run_dir} already holds a run ({', '.join(held)}): pass --overwrite_output_dir to replace "
            "it, --resume_from_checkpoint last to continue it, or choose another folder"
        )
    recorded = _read_json(run_dir / RUN_FILE)
    if recorded is None:
        raise ValueError(f"cannot resume in {run_dir}: it has no readable {RUN_FILE} (a run of an older version or "
                         "of another tool); start a new run with --overwrite_output_dir or another --output_dir")
    if recorded.get("run_id") != run_identity(arguments):
        raise ValueError(f"cannot resume in {run_dir}: it holds a run with other arguments "
                         f"({_differences(recorded.get('arguments') or {}, arguments)}); resume with the same "
                         "arguments, or start a new run with --overwrite_output_dir or another --output_dir")


def check_checkpoint_run(checkpoint: str | os.PathLike, arguments: dict[str, Any]) -> None:
    """Refuse to resume from a checkpoint another run wrote (its ``ccr_run.json``, else its run folder's
    ``run.json``, must carry this run's identity)."""
    path = Path(checkpoint)
    recorded = _read_json(path / CHECKPOINT_RUN_FILE) or _read_json(path.parent.parent / RUN_FILE)
    if recorded is None:
        raise ValueError(f"checkpoint {path} records no run identity ({CHECKPOINT_RUN_FILE}): it was not written by "
                         "train.py's run with these arguments, and is not resumed")
    if recorded.get("run_id") != run_identity(arguments):
        raise ValueError(f"checkpoint {path} belongs to another run "
                         f"({_differences(recorded.get('arguments') or {}, arguments)}): it is not resumed")


def claim_run_folder(run_dir: Path, arguments: dict[str, Any], *, overwrite: bool) -> None:
    """Make ``run_dir`` this run's: the old run's entries removed when ``overwrite``, staging leftovers removed,
    ``run.json`` written (after :func:`check_run_folder` passed)."""
    if overwrite:
        for name in RUN_ENTRIES:
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    remove_staging_folders(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"run_id": run_identity(arguments), "arguments": arguments}
    (run_dir / RUN_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")


class RunIdentityCallback(TrainerCallback):
    """Writes the run's identity into each checkpoint Trainer saves (``ccr_run.json``)."""

    def __init__(self, arguments: dict[str, Any]) -> None:
        self.record = {"run_id": run_identity(arguments), "arguments": arguments}

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            (folder / CHECKPOINT_RUN_FILE).write_text(json.dumps(self.record, sort_keys=True) + "\n", encoding="utf-8")
        return control
