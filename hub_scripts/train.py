#!/usr/bin/env python
"""Train a CCR model with 1-to-K contrastive learning (or a baseline), evaluate it, and write a
Hub-ready model folder.

With no arguments it is the project's main job: a small model trained from scratch on the embedded
EmojiCCR data (six languages), evaluated on its held-out test split. Every option: ``--help``.

Output (``--output_dir``, default ``outputs/emoji-ccr``):
    model/        Hub-ready folder: config.json with auto_map, model.safetensors, the remote-code files,
                  tokenizer, processor_config.json, README.md (model card), eval_results.json, report.png
    checkpoints/  Trainer checkpoints (resume with --resume_from_checkpoint last)
    runs/         TensorBoard logs
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import AutoImageProcessor, AutoTokenizer, HfArgumentParser, ViTImageProcessorPil  # noqa: E402
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from modeling_ccr import CCRConfig, CCRModel, CCRProcessor  # noqa: E402
from modeling_ccr.dataset_schema import check_ccr_dataset, dataset_languages  # noqa: E402
from modeling_ccr.objectives import check_objective  # noqa: E402
from modeling_ccr.presets import resolve_tower, text_presets, vision_presets  # noqa: E402
from modeling_ccr.trainer import CCRTrainer, CCRTrainingArguments, last_complete_checkpoint  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ModelArguments:
    vision_model: str = field(
        default="tiny-vit",
        metadata={"help": "Vision tower: a preset (tiny-vit, tiny-swin, tiny-clip-vision), a pretrained model "
                  "folder or Hub id (weights loaded), or a config.json (random init)."},
    )
    text_model: str = field(
        default="tiny-bert",
        metadata={"help": "Text tower: a preset (tiny-bert, tiny-xlmr), a pretrained model folder or Hub id, or a config.json."},
    )
    tokenizer: str | None = field(
        default=None,
        metadata={"help": "Tokenizer folder or Hub id. Default: the text tower's when it is pretrained, else one "
                  "trained on the training captions."},
    )
    vocab_size: int = field(default=8000, metadata={"help": "Vocabulary size of a tokenizer trained on the data."})
    max_text_length: int = field(default=16, metadata={"help": "Captions are truncated to this many tokens."})
    image_size: int = field(default=64, metadata={"help": "Input resolution of preset vision towers."})
    projection_dim: int = field(default=256, metadata={"help": "Dimension of the shared embedding space."})
    num_fusion_layers: int = field(
        default=0, metadata={"help": "Fusion layers for MITM and CMLM; 0 trains a pure dual encoder (ITC only)."}
    )


@dataclass
class DataArguments:
    dataset: str = field(
        default="emoji",
        metadata={"help": "'emoji' for the embedded EmojiCCR data, or a path to IGLUE xFlickr&CO / WIT, Multi30K, "
                  "COCO-format JSON, or plain CSV/JSONL/image-folder data (format detected)."},
    )
    image_root: str | None = field(default=None, metadata={"help": "Folder the dataset's image paths are relative to."})
    languages: str | None = field(
        default=None, metadata={"help": "Comma-separated languages to keep (default: all in the training split)."}
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str = field(default="validation", metadata={"help": "Split evaluated during training ('' to skip)."})
    test_split: str = field(default="test", metadata={"help": "Split of the final evaluation."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation images."})
    rerank_top_k: int = field(
        default=0, metadata={"help": "Final evaluation: re-score each query's top k with the ITM head (fusion models)."}
    )


@dataclass
class TrainScriptArguments(CCRTrainingArguments):
    """CCRTrainingArguments with the main job's defaults."""

    output_dir: str = field(default="outputs/emoji-ccr", metadata={"help": "Where the run writes everything."})
    num_train_epochs: float = field(default=40.0, metadata={"help": "Training epochs."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Images per batch and device."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Images per evaluation batch and device."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak learning rate (AdamW)."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up: steps, or a fraction of all steps if < 1."})
    lr_scheduler_type: SchedulerType | str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    logging_steps: float = field(default=20, metadata={"help": "Log every N steps."})
    eval_strategy: IntervalStrategy | str = field(default="epoch", metadata={"help": "When to evaluate on --eval_split: no, steps, epoch."})
    save_strategy: SaveStrategy | str = field(default="epoch", metadata={"help": "When to write a checkpoint: no, steps, epoch."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep only the newest N checkpoints."})
    report_to: None | str | list[str] = field(default="tensorboard", metadata={"help": "Loggers: tensorboard, none, ..."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "Data loading worker processes."})
    seed: int = field(default=42, metadata={"help": "Random seed (model init, sampling, masking)."})
    disable_tqdm: bool | None = field(default=False, metadata={"help": "Hide progress bars."})
    precision: str = field(
        default="auto",
        metadata={"help": "auto (bf16 mixed precision where the CPU/GPU multiplies bf16 natively, else fp32), bf16 or "
                  "fp32. --bf16 forces bf16 too."},
    )

    def __post_init__(self) -> None:
        from modeling_ccr.precision import resolve_precision

        on_cpu = self.use_cpu or not torch.cuda.is_available()
        if not self.bf16:
            self.bf16, self.precision_note = resolve_precision(self.precision, "cpu" if on_cpu else "cuda")
        else:
            self.precision_note = "precision: bf16 (--bf16)"
        if self.bf16 and on_cpu:
            self.use_cpu = True  # Trainer's bf16 on a machine without a GPU
        super().__post_init__()


def parse_arguments(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainScriptArguments]:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainScriptArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if model_args.num_fusion_layers < 0:
        parser.error("--num_fusion_layers must be >= 0")
    if model_args.max_text_length < 4:
        parser.error("--max_text_length must be >= 4")
    return model_args, data_args, training_args


def load_splits(data_args: DataArguments) -> dict[str, object]:
    """Load the train / eval / test splits; an unknown path or format fails here, before any training."""
    names = [data_args.train_split, data_args.eval_split, data_args.test_split]
    if data_args.dataset == "emoji":
        from modeling_ccr.emoji_dataset import load_emoji_ccr

        splits = {name: load_emoji_ccr(name) for name in names if name}
    else:
        from modeling_ccr.loaders import load_ccr_dataset

        if not os.path.exists(data_args.dataset):
            raise FileNotFoundError(f"dataset path {data_args.dataset} does not exist")
        splits = {
            name: load_ccr_dataset(data_args.dataset, split=name, image_root=data_args.image_root)
            for name in names
            if name
        }
    if data_args.languages:
        keep = {language.strip() for language in data_args.languages.split(",") if language.strip()}
        splits = {
            name: split.map(lambda row: {"captions": [c for c in row["captions"] if c["language"] in keep]})
            .filter(lambda row: len(row["captions"]) > 0)
            for name, split in splits.items()
        }
    limits = {data_args.train_split: data_args.max_train_samples, data_args.eval_split: data_args.max_eval_samples}
    for name, limit in limits.items():
        if name and limit:
            splits[name] = splits[name].select(range(min(limit, len(splits[name]))))
    for name, split in splits.items():
        check_ccr_dataset(split, name=f"split {name!r}")
    return splits


def build_processor(model_args: ModelArguments, train_split, vision_path: str | None, text_path: str | None):
    if model_args.tokenizer or text_path:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer or text_path)
        tokenizer.model_max_length = model_args.max_text_length
    else:
        from modeling_ccr.tokenizer_training import train_tokenizer

        texts = [caption["text"] for captions in train_split["captions"] for caption in captions]
        tokenizer = train_tokenizer(texts, vocab_size=model_args.vocab_size, model_max_length=model_args.max_text_length)
    if vision_path:
        image_processor = AutoImageProcessor.from_pretrained(vision_path, use_fast=False)
    else:
        size = model_args.image_size
        image_processor = ViTImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return CCRProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_model(model_args: ModelArguments, tokenizer, vision_config, vision_path, text_config, text_path) -> CCRModel:
    options = dict(projection_dim=model_args.projection_dim, num_fusion_layers=model_args.num_fusion_layers)
    if vision_path or text_path:
        return CCRModel.from_vision_text_pretrained(vision_path or vision_config, text_path or text_config, **options)
    text_config.vocab_size = len(tokenizer)
    text_config.pad_token_id = tokenizer.pad_token_id
    # Towers trained from scratch learn much faster from mean-pooled tokens than from an untrained [CLS].
    options.update(text_pooling="mean", vision_pooling="mean", mask_token_id=tokenizer.mask_token_id)
    return CCRModel(CCRConfig.from_vision_text_configs(vision_config, text_config, **options))


DEMO_IMAGE_ID, DEMO_QUERIES = "1f34e", ("roter Apfel", "pomme rouge", "红苹果", "red apple", "červené jablko", "赤いリンゴ")


def demo_queries(model, processor) -> dict[str, int]:
    """Rank of the red apple emoji among all EmojiCCR images (every split) for queries in several languages."""
    from datasets import concatenate_datasets

    from modeling_ccr.emoji_dataset import load_emoji_ccr

    gallery = concatenate_datasets([split.select_columns(["image", "image_id"]) for split in load_emoji_ccr().values()])
    with torch.no_grad():
        images = torch.cat([
            model.get_image_features(**processor(images=gallery[start:start + 256]["image"]))
            for start in range(0, len(gallery), 256)
        ])
        texts = model.get_text_features(**processor(text=list(DEMO_QUERIES)))
    scores = torch.nn.functional.normalize(texts, dim=-1) @ torch.nn.functional.normalize(images, dim=-1).T
    gold = gallery["image_id"].index(DEMO_IMAGE_ID)
    ranks = {query: int((scores[i] > scores[i, gold]).sum()) + 1 for i, query in enumerate(DEMO_QUERIES)}
    return {"gallery_size": len(gallery), **ranks}


def write_model_folder(model, processor, metrics: dict, ranks, destination: Path) -> None:
    """Write the Hub-ready folder to a temporary sibling, then move it into place: never half-written."""
    from modeling_ccr.publishing import render_model_card
    from modeling_ccr.retrieval_report import save_report_plot

    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".model-", dir=destination.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / "eval_results.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
        save_report_plot(metrics, ranks, staging / "report.png")
        render_model_card(staging, template=REPO_ROOT / "MODEL_CARD.md", model_name=destination.parent.name).save(
            staging / "README.md"
        )
        if destination.exists():
            shutil.rmtree(destination)
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@dataclass
class PreparedRun:
    """Everything checked and built before training starts."""

    model_args: ModelArguments
    data_args: DataArguments
    training_args: TrainScriptArguments
    run_dir: Path
    splits: dict
    languages: list[str]
    vision: tuple
    text: tuple


def prepare(argv: list[str] | None = None) -> PreparedRun:
    """Parse and check the arguments, load the data and resolve the towers: every input error fails here."""
    model_args, data_args, training_args = parse_arguments(argv)
    run_dir = Path(training_args.output_dir)
    training_args.output_dir = str(run_dir / "checkpoints")
    training_args.logging_dir = str(run_dir / "runs")
    if training_args.resume_from_checkpoint in ("last", "True", "true"):
        training_args.resume_from_checkpoint = last_complete_checkpoint(training_args.output_dir)
    splits = load_splits(data_args)
    languages = dataset_languages(splits[data_args.train_split])
    check_objective(training_args.loss_type, languages)
    vision = resolve_tower(model_args.vision_model, vision_presets(model_args.image_size), "vision")
    text = resolve_tower(model_args.text_model, text_presets(model_args.vocab_size, model_args.max_text_length + 2), "text")
    return PreparedRun(model_args, data_args, training_args, run_dir, splits, languages, vision, text)


def run(prepared: PreparedRun) -> dict:
    """Train, evaluate on the test split, write the Hub-ready folder; returns the evaluation results."""
    model_args, data_args, training_args = prepared.model_args, prepared.data_args, prepared.training_args
    hf_logging.set_verbosity_warning()
    print(training_args.precision_note, flush=True)
    (vision_config, vision_path), (text_config, text_path) = prepared.vision, prepared.text
    train_split = prepared.splits[data_args.train_split]
    torch.manual_seed(training_args.seed)
    processor = build_processor(model_args, train_split, vision_path, text_path)
    model = build_model(model_args, processor.tokenizer, vision_config, vision_path, text_config, text_path)
    eval_split = prepared.splits.get(data_args.eval_split) if data_args.eval_split else None
    if eval_split is None:
        training_args.eval_strategy = "no"
    trainer = CCRTrainer(
        model=model,
        args=training_args,
        train_dataset=train_split,
        eval_dataset=eval_split,
        processing_class=processor,
        languages=prepared.languages,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    from modeling_ccr.retrieval import evaluate_retrieval
    from modeling_ccr.retrieval_report import format_table

    model.eval()
    with trainer.evaluation_autocast():
        metrics, ranks = evaluate_retrieval(
            model, processor, prepared.splits[data_args.test_split], batch_size=training_args.per_device_eval_batch_size,
            languages=prepared.languages, rerank_top_k=data_args.rerank_top_k,
        )
    metrics = {
        "model": "CCR-1toK " + ("dual encoder" if model_args.num_fusion_layers == 0 else "with fusion layers"),
        "dataset": "EmojiCCR" if data_args.dataset == "emoji" else data_args.dataset,
        "split": data_args.test_split,
        "loss_type": training_args.loss_type,
        "seed": training_args.seed,
        **metrics,
    }
    if data_args.dataset == "emoji":
        metrics["demo_red_apple_rank"] = demo_queries(model, processor)
    if trainer.is_world_process_zero():
        write_model_folder(model, processor, metrics, ranks, prepared.run_dir / "model")
        print(format_table(metrics))
        if "demo_red_apple_rank" in metrics:
            demo = dict(metrics["demo_red_apple_rank"])
            size = demo.pop("gallery_size")
            print(f"\nrank of the red apple emoji among all {size} EmojiCCR images: "
                  + ", ".join(f"{query!r} {rank}" for query, rank in demo.items()))
        print(f"\nHub-ready model folder: {prepared.run_dir / 'model'}")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    try:
        prepared = prepare(argv)
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    return run(prepared)


if __name__ == "__main__":
    main()
