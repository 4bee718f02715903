"""``CCRTrainer``: a ``transformers.Trainer`` for CCR models, with the paper's objective and its baselines.

What it adds to Trainer and nothing more:
- the loss (:func:`ccr_training_loss`): the contrastive objective named by ``--loss_type`` (1-to-K or a
  baseline, :mod:`modeling_ccr.objectives`) computed once per step over the global batch (one all-gather), plus
  MITM and CMLM from the model's forward;
- evaluation as retrieval: Recall@1/5/10 per language and direction, mean recall, MRV_TR and MRV_IR,
  computed by :mod:`modeling_ccr.retrieval` from the embeddings Trainer's loop gathers;
- resuming only from complete checkpoints (a checkpoint a killed process left half-written is skipped).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import EvalPrediction, Trainer, TrainingArguments

from .augmentation import ImageAugmentation
from .collator import CCRCollator, sample_captions
from .contrastive_accumulation import accumulated_contrastive_step
from .freezing import freeze_towers
from .masking import IGNORE_INDEX, add_mlm_inputs
from .mixed_pool import compute_mixed_pool_ranks, mixed_pool_metrics
from .modeling_ccr import CCROutput
from .objectives import check_objective, contrastive_objective, objectives_help, pivot_language_id
from .retrieval import compute_retrieval_ranks, flatten_metrics, retrieval_metrics
from .streaming import CCRStream, prepare_stream_training, stream_dataloader

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def check_training_numbers(args: TrainingArguments) -> None:
    """Refuse the numbers ``TrainingArguments`` lets through but that cannot train: a batch of 0, 0 or negative
    epochs (an untrained model written as if trained), a ``max_steps`` other than -1 (unset) or > 0, a learning
    rate that is not a positive number. The message names the option."""
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.max_steps != -1 and args.max_steps <= 0:
        raise ValueError(f"--max_steps must be > 0 (or -1, the default: train --num_train_epochs), got {args.max_steps}")
    if args.max_steps == -1 and not (math.isfinite(args.num_train_epochs) and args.num_train_epochs > 0):
        raise ValueError(f"--num_train_epochs must be a number > 0 (or set --max_steps), got {args.num_train_epochs}")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise ValueError(f"--learning_rate must be a number > 0, got {args.learning_rate}")


@dataclass
class CCRTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the CCR objective."""

    loss_type: str = field(
        default="one_to_k",
        metadata={"help": f"Contrastive objective. {objectives_help()}."},
    )
    itc_weight: float | None = field(default=None, metadata={"help": "Weight of the ITC loss (default: the model config's)."})
    itm_weight: float | None = field(default=None, metadata={"help": "Weight of the MITM loss (default: the model config's)."})
    mlm_weight: float | None = field(default=None, metadata={"help": "Weight of the CMLM loss (default: the model config's)."})
    mlm_probability: float | None = field(
        default=None,
        metadata={"help": "Token masking rate for CMLM (models with fusion layers); 0 = no CMLM. Written to the model "
                  "config (default: the model config's, 0.15)."},
    )
    captions_per_language: int = field(
        default=1, metadata={"help": "Captions sampled per image and language at each training step."}
    )
    itc_divide_by_k: bool = field(
        default=False,
        metadata={"help": "Divide the whole 1-to-K loss by K as the authors' released code does (default: the paper's formula)."},
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator needs the image and captions columns."}
    )
    image_augmentation: bool = field(
        default=False,
        metadata={"help": "Randomly change the colour, stroke and scale of training images each step "
                  "(modeling_ccr.augmentation), for robustness to images drawn in another style."},
    )
    freeze_vision: bool = field(default=False, metadata={"help": "Freeze the vision tower (open_clip's --lock-image)."})
    freeze_text: bool = field(default=False, metadata={"help": "Freeze the text tower (open_clip's --lock-text)."})
    unfrozen_layers: int = field(
        default=0, metadata={"help": "Keep the last N layers of each frozen tower trainable (with its final norm)."}
    )
    contrastive_accumulation_steps: int = field(
        default=1,
        metadata={"help": "Cut each batch into N micro-batches and contrast the embeddings of all N at once "
                  "(GradCache): the gradients of the whole batch with the memory of one micro-batch."},
    )

    def __post_init__(self) -> None:
        check_objective(self.loss_type)
        if self.captions_per_language < 1:
            raise ValueError(f"captions_per_language must be >= 1, got {self.captions_per_language}")
        if self.contrastive_accumulation_steps < 1:
            raise ValueError(f"contrastive_accumulation_steps must be >= 1, got {self.contrastive_accumulation_steps}")
        if self.unfrozen_layers < 0:
            raise ValueError(f"unfrozen_layers must be >= 0, got {self.unfrozen_layers}")
        if self.unfrozen_layers and not (self.freeze_vision or self.freeze_text):
            raise ValueError("unfrozen_layers applies to a frozen tower: add --freeze_vision and/or --freeze_text")
        if self.mlm_probability is not None and not 0.0 <= self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in [0, 1), got {self.mlm_probability}")
        for name in ("itc_weight", "itm_weight", "mlm_weight"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        check_training_numbers(self)
        super().__post_init__()


def is_complete_checkpoint(path: str) -> bool:
    """Trainer writes ``trainer_state.json`` last: a checkpoint is complete when that file parses and
    names the checkpoint's own step (a process killed while saving leaves it missing or truncated)."""
    match = _CHECKPOINT.match(os.path.basename(os.path.normpath(path)))
    try:
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, json.JSONDecodeError):
        return False
    return match is not None and state.get("global_step") == int(match.group(1))


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest complete ``checkpoint-N`` folder of ``output_dir``, or None."""
    if not os.path.isdir(output_dir):
        return None
    steps = sorted(
        (int(match.group(1)), name)
        for name in os.listdir(output_dir)
        if (match := _CHECKPOINT.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    )
    for _, name in reversed(steps):
        path = os.path.join(output_dir, name)
        if is_complete_checkpoint(path):
            return path
    return None


class NonFiniteLossError(ArithmeticError):
    """The training loss became NaN or infinite; training stops at that step instead of going on with NaN weights."""


class RetrievalMetrics:
    """``compute_metrics`` for CCRTrainer: retrieval metrics from the embeddings of the evaluation loop.

    Predictions are ``(image_embeds (N, D), text_embeds (N, W, D))`` and label ids the per-slot language
    ids ``(N, W)``, ``-100`` where an image has fewer captions (see ``CCRCollator(for_evaluation=True)``).
    """

    def __init__(self, languages: list[str], chunk_size: int = 1024) -> None:
        self.languages = list(languages)
        self.chunk_size = chunk_size

    def __call__(self, prediction: EvalPrediction) -> dict[str, float]:
        image_embeds, text_embeds = prediction.predictions
        language_ids = np.asarray(prediction.label_ids)
        valid = language_ids != IGNORE_INDEX
        image_rows, _ = np.nonzero(valid)
        arguments = (
            torch.as_tensor(image_embeds),
            torch.as_tensor(text_embeds[valid]),
            torch.as_tensor(image_rows),
            [self.languages[index] for index in language_ids[valid]],
        )
        ranks = compute_retrieval_ranks(*arguments, languages=self.languages, chunk_size=self.chunk_size)
        metrics = retrieval_metrics(ranks)
        mixed = compute_mixed_pool_ranks(*arguments, languages=self.languages, chunk_size=self.chunk_size)
        metrics["mixed"] = mixed_pool_metrics(mixed)
        return flatten_metrics(metrics)


def ccr_training_loss(
    model: Any,
    inputs: dict[str, torch.Tensor],
    loss_type: str = "one_to_k",
    pivot_language_id: int | None = None,
    unwrapped: Any = None,
) -> CCROutput:
    """One training step's outputs, ``loss`` and ``loss_itc`` set: the work of each part done once.

    The model's forward (``model``, possibly wrapped for DDP) encodes the batch and computes MITM / CMLM
    (``compute_itc=False``); the contrastive objective ``loss_type`` is then computed once, over the embeddings of
    every process (one all-gather, :func:`modeling_ccr.objectives.contrastive_objective`), and the three are
    weighted by the model config. ``inputs`` are a collated batch (``text_image_ids``, ``text_language_ids``, and
    ``mlm_input_ids`` / ``mlm_labels`` for CMLM); ``unwrapped`` is the bare ``CCRModel`` (default: ``model``).
    """
    unwrapped = model if unwrapped is None else unwrapped
    inputs = dict(inputs)
    language_ids = inputs.pop("text_language_ids")
    outputs = model(**inputs, return_loss=True, compute_itc=False)
    config = unwrapped.config
    loss_itc = contrastive_objective(
        loss_type, outputs.image_embeds, outputs.text_embeds, inputs["text_image_ids"].to(outputs.image_embeds.device),
        language_ids, unwrapped.temperature, pivot_language_id, divide_by_k=config.itc_divide_by_k,
        gather=config.gather_across_processes,
    )
    loss = unwrapped.weighted_loss(loss_itc, outputs.loss_itm, outputs.loss_mlm)
    return dataclasses.replace(outputs, loss=loss, loss_itc=loss_itc)


def _refuse_batch_norm(model: torch.nn.Module, steps: int) -> None:
    """Accumulated negatives need examples encoded independently: BatchNorm normalises each micro-batch by its own
    statistics (and its no-graph pass would update the running statistics twice), so the gradients would not be
    those of one large batch."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            raise ValueError(
                f"contrastive_accumulation_steps={steps} needs towers without BatchNorm ({name} is a "
                f"{type(module).__name__}): each micro-batch would be normalised by its own statistics, so the "
                "gradients would not be those of one large batch; use a LayerNorm tower (e.g. the tiny-convnext "
                "preset, ConvNeXt, ViT) or --contrastive_accumulation_steps 1"
            )


class CCRTrainer(Trainer):
    """Trainer for ``CCRModel`` on canonical CCR datasets (image + captions in several languages).

    Args beyond ``Trainer``'s:
        languages: the language codes of the data; defaults to those of ``train_dataset``.
        data_collator / eval_data_collator: default to :class:`CCRCollator` built from
            ``processing_class`` (a ``CCRProcessor``) and the arguments.
    """

    def __init__(
        self,
        model=None,
        args: CCRTrainingArguments | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        languages: list[str] | None = None,
        data_collator=None,
        eval_data_collator=None,
        compute_metrics=None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            raise ValueError("CCRTrainer needs CCRTrainingArguments (args=...)")
        if not isinstance(args, CCRTrainingArguments):
            raise TypeError(f"args must be CCRTrainingArguments, got {type(args).__name__}")
        if languages is None and isinstance(train_dataset, CCRStream):
            raise ValueError("pass languages=... when training from a stream (its languages cannot be read ahead)")
        if languages is None:
            if train_dataset is None:
                raise ValueError("pass languages=... when there is no train_dataset to read them from")
            from .dataset_schema import dataset_languages

            languages = dataset_languages(train_dataset)
        self.languages = list(languages)
        self._apply_weights(model, args)
        if model is not None and (args.freeze_vision or args.freeze_text):
            freeze_towers(model, args.freeze_vision, args.freeze_text, args.unfrozen_layers)
        if model is not None and args.contrastive_accumulation_steps > 1:
            _refuse_batch_norm(model, args.contrastive_accumulation_steps)
        self.image_augmentation = ImageAugmentation() if args.image_augmentation else None
        if data_collator is None:
            if processing_class is None:
                raise ValueError("pass processing_class=<CCRProcessor> or a data_collator")
            data_collator = CCRCollator(processing_class, self.languages)
        if eval_data_collator is None and processing_class is not None:
            eval_data_collator = CCRCollator(processing_class, self.languages, for_evaluation=True)
        self.eval_data_collator = eval_data_collator
        if compute_metrics is None and eval_dataset is not None:
            compute_metrics = RetrievalMetrics(self.languages)
        check_objective(args.loss_type, self.languages)
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            data_collator=data_collator,
            compute_metrics=compute_metrics,
            **kwargs,
        )
        # The loss is a mean over the batch already; Trainer scales it for gradient accumulation.
        self.model_accepts_loss_kwargs = False
        self.label_names = ["text_language_ids"]
        if isinstance(train_dataset, CCRStream):
            prepare_stream_training(self)

    def get_train_dataloader(self):
        """A stream (:class:`~modeling_ccr.streaming.CCRStream`) gets a loader that records its position."""
        if isinstance(self.train_dataset, CCRStream):
            return stream_dataloader(self)
        return super().get_train_dataloader()

    @staticmethod
    def _apply_weights(model, args: CCRTrainingArguments) -> None:
        """The objective's settings given as arguments go into the model config: what runs is what is saved."""
        for name in ("itc_weight", "itm_weight", "mlm_weight", "mlm_probability"):
            value = getattr(args, name)
            if value is not None:
                setattr(model.config, name, value)
        model.config.itc_divide_by_k = args.itc_divide_by_k

    def _draw_step_inputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This step's random choices: captions per image and language, and CMLM masks (see collator.py)."""
        inputs = sample_captions(inputs, self.args.captions_per_language)
        if self.image_augmentation is not None:
            inputs = {**inputs, "pixel_values": self.image_augmentation(inputs["pixel_values"])}
        config = self.accelerator.unwrap_model(self.model).config
        if config.num_fusion_layers > 0 and config.mlm_weight > 0 and config.mlm_probability > 0:
            if self.processing_class is None:
                raise ValueError("CMLM masking needs processing_class=<CCRProcessor> (for the tokenizer)")
            inputs = add_mlm_inputs(inputs, self.processing_class.tokenizer, config.mlm_probability, config)
        return inputs

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        inputs = self._draw_step_inputs(inputs)
        pivot = pivot_language_id(self.languages)
        outputs = ccr_training_loss(model, inputs, self.args.loss_type, pivot, self.accelerator.unwrap_model(model))
        if model.training and not bool(torch.isfinite(outputs.loss.detach())):
            raise NonFiniteLossError(
                f"the training loss became {outputs.loss.item()} at step {self.state.global_step + 1} (learning rate "
                f"{self._get_learning_rate() if self.lr_scheduler is not None else self.args.learning_rate:.3g}): "
                "training stopped before the weights were spoiled; try a lower --learning_rate"
            )
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        """Trainer's step, or with ``--contrastive_accumulation_steps N`` the GradCache step
        (:mod:`modeling_ccr.contrastive_accumulation`), which runs its own backward passes."""
        if self.args.contrastive_accumulation_steps == 1:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self._draw_step_inputs(self._prepare_inputs(inputs))
        with self.compute_loss_context_manager():
            loss = accumulated_contrastive_step(
                model, inputs, self.args.contrastive_accumulation_steps, self.args.loss_type,
                pivot_language_id(self.languages), self.accelerator.unwrap_model(model),
                backward=self.accelerator.backward, no_sync=self.accelerator.no_sync,
                loss_scale=1.0 / self.current_gradient_accumulation_steps,
            )
        return loss / self.current_gradient_accumulation_steps

    def evaluation_autocast(self):
        """bf16 autocast for evaluation encoding under ``--bf16`` (training's forward gets it from accelerate)."""
        if not self.args.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.args.device.type, dtype=torch.bfloat16)

    def get_eval_dataloader(self, eval_dataset=None):
        """Evaluation batches keep every caption (``eval_data_collator``), unlike training batches."""
        train_collator = self.data_collator
        if self.eval_data_collator is not None:
            self.data_collator = self.eval_data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def prediction_step(self, model, inputs, prediction_loss_only: bool, ignore_keys=None):
        """Embeddings of the batch's images and of its captions laid out per image (no loss)."""
        inputs = self._prepare_inputs(inputs)
        language_ids = inputs["text_language_ids"]
        if prediction_loss_only:
            return None, None, None
        unwrapped = self.accelerator.unwrap_model(model)
        valid = language_ids != IGNORE_INDEX
        with torch.no_grad(), self.evaluation_autocast():
            image_embeds = unwrapped.get_image_features(pixel_values=inputs["pixel_values"]).float()
            flat = unwrapped.get_text_features(
                input_ids=inputs["input_ids"][valid], attention_mask=inputs["attention_mask"][valid]
            ).float()
        text_embeds = flat.new_zeros((*language_ids.shape, flat.shape[-1]))
        text_embeds[valid] = flat
        return None, (image_embeds, text_embeds), language_ids

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        """Like ``Trainer.train``; ``resume_from_checkpoint=True`` takes the newest *complete* checkpoint and is an
        error when there is none (as in ``Trainer``: asking to resume never silently starts from scratch)."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise FileNotFoundError(
                    f"no complete checkpoint in {self.args.output_dir} to resume from; train without "
                    "resume_from_checkpoint to start from the beginning"
                )
            self._discard_incomplete_checkpoints()
        elif isinstance(resume_from_checkpoint, str) and not is_complete_checkpoint(resume_from_checkpoint):
            raise ValueError(
                f"{resume_from_checkpoint} is not a complete checkpoint (trainer_state.json missing or truncated): "
                "it was probably being written when the run stopped"
            )
        return super().train(resume_from_checkpoint=resume_from_checkpoint or None, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        """Trainer's, but a failed write (a full disk) leaves no half-written checkpoint for a resume to trip over."""
        try:
            super()._save_checkpoint(model, trial)
        except OSError:
            self._discard_incomplete_checkpoints()
            raise

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Load a checkpoint's weights through ``from_pretrained``, strictly.

        ``Trainer`` loads the raw state dict with ``strict=False``; transformers 5 saves some towers (ViT, ...)
        under their original key names and renames them only inside ``from_pretrained``, so the raw load
        silently skips those towers and a resumed run goes on from freshly initialised layers.
        """
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        loaded = type(target).from_pretrained(resume_from_checkpoint, config=target.config)
        target.load_state_dict(loaded.state_dict(), strict=True)

    def _load_best_model(self) -> None:
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or self.state.best_model_checkpoint is None:
            return super()._load_best_model()
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def _discard_incomplete_checkpoints(self) -> None:
        if self.args.should_save:
            discard_incomplete_checkpoints(self.args.output_dir)


def discard_incomplete_checkpoints(output_dir: str) -> None:
    """Remove the ``checkpoint-N`` folders of ``output_dir`` that are not complete (a kill or a full disk while
    saving); complete ones are kept."""
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if _CHECKPOINT.match(name) and os.path.isdir(path) and not is_complete_checkpoint(path):
            logger.warning("removing incomplete checkpoint %s", path)
            shutil.rmtree(path, ignore_errors=True)
