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
    run.json      the run's identity (the arguments that decide what is trained); a folder holding a run is
                  reused only with --overwrite_output_dir, or resumed with the same arguments
"""

from __future__ import annotations

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
from modeling_ccr.cli import run_cli  # noqa: E402
from modeling_ccr.dataset_schema import (  # noqa: E402
    check_ccr_dataset,
    dataset_languages,
    filter_languages,
    restrict_language_coverage,
)
from modeling_ccr.objectives import check_objective  # noqa: E402
from modeling_ccr.presets import resolve_tower, text_presets, vision_presets  # noqa: E402
from modeling_ccr.recipes import (  # noqa: E402
    BEHAVIOUR_FIELDS,
    CCRK_COMPOSITION,
    RECIPES,
    STAGES,
    TRAINER_OWNED_FIELDS,
    parse_config_overrides,
    recipe_config,
    stage_settings,
)
from modeling_ccr.results import RetrievalResults, dataset_name  # noqa: E402
from modeling_ccr.run_folder import (  # noqa: E402
    STAGING_PREFIX,
    RunIdentityCallback,
    check_checkpoint_run,
    check_run_folder,
    claim_run_folder,
    run_arguments,  # noqa: E402
)
from modeling_ccr.trainer import (  # noqa: E402
    CCRTrainer,
    CCRTrainingArguments,
    is_complete_checkpoint,
    last_complete_checkpoint,
)


@dataclass
class ModelArguments:
    vision_model: str = field(
        default="tiny-resnet",
        metadata={"help": "Vision tower: a preset (tiny-vit, tiny-swin, tiny-clip-vision, tiny-resnet, tiny-convnext), "
                  "a pretrained model folder or Hub id (weights loaded), or a config.json (random init)."},
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
    max_text_length: int = field(
        default=32, metadata={"help": "Captions are truncated to this many tokens (at 32, 81 %% of EmojiCCR's captions fit whole)."}
    )
    image_size: int = field(default=64, metadata={"help": "Input resolution of preset vision towers."})
    projection_dim: int = field(default=256, metadata={"help": "Dimension of the shared embedding space."})
    num_fusion_layers: int = field(
        default=0, metadata={"help": "Fusion layers for MITM and CMLM; 0 trains a pure dual encoder (ITC only)."}
    )
    recipe: str = field(
        default="package",
        metadata={"help": f"Model and objective settings: {', '.join(RECIPES)}. 'ccrk' = the authors' released code "
                  "(MITM sampling, span masking, MLP ITM head, raw-logit re-ranking, ITC / K); see "
                  "docs/ccrk_differences.md. Options given explicitly win."},
    )
    stage: str = field(
        default="single",
        metadata={"help": f"Stage of the two-stage recipe: {', '.join(STAGES)}. pretrain = 1-to-K + MITM + CMLM; "
                  "finetune = pairwise soft-label ITC + ITM from --init_from, evaluated with re-ranking (top 16)."},
    )
    init_from: str | None = field(
        default=None, metadata={"help": "A model folder to start from (the pretrain stage's <output_dir>/model)."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "CCRConfig fields for a new model, after --recipe, e.g. 'positive_sampling=softmax,"
                  "itm_head_type=linear' (one behaviour of a recipe switched back, for ablations)."},
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
    streaming: bool = field(
        default=False, metadata={"help": "Stream --dataset with datasets' load_dataset(streaming=True) (a Hub id or "
                                 "a local dataset); tar shards (--dataset 'shards/{00000..00099}.tar') always stream."}
    )
    eval_dataset: str | None = field(
        default=None, metadata={"help": "When training from a stream: the evaluation and test data ('emoji', any "
                                "format above, or a small shard pattern)."}
    )
    shuffle_buffer: int = field(default=1000, metadata={"help": "Stream: samples per shuffle block and reader."})
    language_coverage: str = field(
        default="full", metadata={"help": "Training split only: 'full' keeps every caption; 'partial' keeps for each "
                                  "image a random, fixed (--seed) subset of 1..K of its languages.",
                                  "choices": ["full", "partial"]}
    )


@dataclass
class TrainScriptArguments(CCRTrainingArguments):
    """CCRTrainingArguments with the main job's defaults."""

    output_dir: str = field(default="outputs/emoji-ccr", metadata={"help": "Where the run writes everything."})
    num_train_epochs: float = field(default=30.0, metadata={"help": "Training epochs."})
    image_augmentation: bool = field(
        default=True, metadata={"help": "Random colour, stroke and scale changes of training images (robustness to "
                                "other drawing styles); --no_image_augmentation turns it off."},
    )
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Images per batch and device."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Images per evaluation batch and device."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate (AdamW)."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Warm-up: steps, or a fraction of all steps if < 1."})
    lr_scheduler_type: SchedulerType | str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    logging_steps: float = field(default=20, metadata={"help": "Log every N steps."})
    eval_strategy: IntervalStrategy | str = field(default="steps", metadata={"help": "When to evaluate on --eval_split: no, steps, epoch."})
    eval_steps: float | None = field(
        default=0.2, metadata={"help": "With --eval_strategy steps: every N steps, or a fraction of all steps if < 1 "
                               "(the main job: 5 evaluations; each costs about a second)."}
    )
    save_strategy: SaveStrategy | str = field(default="steps", metadata={"help": "When to write a checkpoint: no, steps, epoch."})
    save_steps: float = field(
        default=0.2, metadata={"help": "With --save_strategy steps: every N steps, or a fraction of all steps if < 1."}
    )
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep only the newest N checkpoints."})
    report_to: None | str | list[str] = field(default="tensorboard", metadata={"help": "Loggers: tensorboard, none, ..."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "Data loading worker processes."})
    seed: int = field(default=42, metadata={"help": "Random seed (model init, sampling, masking)."})
    disable_tqdm: bool | None = field(default=False, metadata={"help": "Hide progress bars."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace the run --output_dir holds (its model, checkpoints and logs); "
                                 "without it a folder holding another run is refused."}
    )

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
        if on_cpu:
            self.dataloader_pin_memory = False  # nothing to pin for; torch warns at every loader otherwise
        super().__post_init__()


def parse_arguments(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainScriptArguments]:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainScriptArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if model_args.num_fusion_layers < 0:
        raise ValueError("--num_fusion_layers must be >= 0")
    if model_args.max_text_length < 4:
        raise ValueError("--max_text_length must be >= 4")
    positive = {"image_size": model_args.image_size, "projection_dim": model_args.projection_dim,
                "vocab_size": model_args.vocab_size, "max_train_samples": data_args.max_train_samples,
                "max_eval_samples": data_args.max_eval_samples, "shuffle_buffer": data_args.shuffle_buffer}
    for name, value in positive.items():
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    overrides = parse_config_overrides(model_args.config_overrides)  # bad fields fail before anything is built
    fixed = sorted(set(overrides) - BEHAVIOUR_FIELDS) if model_args.init_from else []
    if fixed:
        raise ValueError(f"--config_overrides {', '.join(fixed)}: the --init_from checkpoint fixes the model's shape; "
                         f"only {', '.join(sorted(BEHAVIOUR_FIELDS))} can change")
    if data_args.rerank_top_k < 0:
        raise ValueError(f"--rerank_top_k must be >= 0, got {data_args.rerank_top_k}")
    if data_args.languages is not None and not [x for x in data_args.languages.split(",") if x.strip()]:
        raise ValueError(f"--languages must name at least one language, got {data_args.languages!r}")
    if training_args.overwrite_output_dir and training_args.resume_from_checkpoint:
        raise ValueError("--overwrite_output_dir and --resume_from_checkpoint contradict each other: choose one")
    apply_recipe_and_stage(model_args, data_args, training_args, _given_options(sys.argv[1:] if argv is None else argv))
    return model_args, data_args, training_args


def _given_options(argv: list[str]) -> set[str]:
    """Names of the options written on the command line (``--name value`` or ``--name=value``)."""
    return {arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--")}


def apply_recipe_and_stage(model_args: ModelArguments, data_args: DataArguments, training_args, given: set[str]) -> None:
    """Write ``--recipe`` / ``--stage`` settings into the arguments, except those given explicitly."""
    stage = stage_settings(model_args.stage)
    config = recipe_config(model_args.recipe)
    for name, value in stage.items():
        target = data_args if name == "rerank_top_k" else training_args
        if name not in given:
            setattr(target, name, value)
    for name in TRAINER_OWNED_FIELDS:  # training arguments the trainer writes into the config
        if name in config and name not in given:
            setattr(training_args, name, config[name])
    if model_args.stage == "finetune" and not model_args.init_from:
        raise ValueError("--stage finetune starts from a pre-trained model: give --init_from <pretrain output>/model")
    if model_args.stage == "pretrain" and model_args.num_fusion_layers < 1 and not model_args.init_from:
        raise ValueError("--stage pretrain trains MITM and CMLM: give --num_fusion_layers >= 1")


def load_stream_splits(data_args: DataArguments, seed: int) -> dict[str, object]:
    """A stream to train on (tar shards or a streamed ``datasets`` dataset) and in-memory eval / test splits."""
    from modeling_ccr.streaming import open_stream

    if not data_args.eval_dataset:
        raise ValueError("training from a stream needs --eval_dataset (the evaluation and test data)")
    if data_args.max_train_samples:
        raise ValueError("--max_train_samples does not apply to a stream; bound training with --max_steps")
    if data_args.language_coverage != "full":
        raise ValueError("--language_coverage partial applies to in-memory datasets, not to a stream")
    languages = [lang.strip() for lang in data_args.languages.split(",")] if data_args.languages else None
    stream = open_stream(data_args.dataset, data_args.streaming, data_args.train_split, languages, seed,
                         data_args.shuffle_buffer)
    evaluation = DataArguments(dataset=data_args.eval_dataset, image_root=data_args.image_root,
                               languages=",".join(sorted(stream.languages)), train_split="",
                               eval_split=data_args.eval_split, test_split=data_args.test_split,
                               max_eval_samples=data_args.max_eval_samples)
    return {data_args.train_split: stream, **load_splits(evaluation)}


def load_splits(data_args: DataArguments, seed: int = 0) -> dict[str, object]:
    """Load the train / eval / test splits; an unknown path or format fails here, before any training."""
    from modeling_ccr.shards import is_shard_pattern

    if data_args.train_split and (data_args.streaming or is_shard_pattern(data_args.dataset)):
        return load_stream_splits(data_args, seed)
    names = [data_args.train_split, data_args.eval_split, data_args.test_split]
    if data_args.dataset == "emoji":
        from modeling_ccr.emoji_dataset import load_emoji_ccr

        splits = {name: load_emoji_ccr(name) for name in names if name}
    elif is_shard_pattern(data_args.dataset):
        from modeling_ccr.streaming import TarShards, materialize

        shards = materialize(TarShards.from_spec(data_args.dataset))
        splits = {name: shards for name in names if name}
    else:
        from modeling_ccr.loaders import has_own_splits, load_ccr_split

        if not os.path.exists(data_args.dataset):
            raise FileNotFoundError(f"dataset path {data_args.dataset} does not exist")
        own, splits = has_own_splits(data_args.dataset), {}
        for name, part in zip(names, ("train", "validation", "test")):
            if name:  # a dataset without splits: a seeded held-out part per role, never the same images twice
                splits[name], note = load_ccr_split(data_args.dataset, name if own else part, image_root=data_args.image_root)
                if note:
                    print(note)
    if data_args.languages:
        keep = [language.strip() for language in data_args.languages.split(",") if language.strip()]
        # Every requested language must be in the training split; the others may lack some.
        splits = {
            name: filter_languages(split, keep, name=f"split {name!r}", strict=name == data_args.train_split)
            for name, split in splits.items()
        }
    limits = {data_args.train_split: data_args.max_train_samples, data_args.eval_split: data_args.max_eval_samples}
    for name, limit in limits.items():
        if name and limit:
            splits[name] = splits[name].select(range(min(limit, len(splits[name]))))
    if data_args.train_split:
        splits[data_args.train_split] = restrict_language_coverage(
            splits[data_args.train_split], data_args.language_coverage, seed, name=f"split {data_args.train_split!r}")
    for name, split in splits.items():
        check_ccr_dataset(split, name=f"split {name!r}")
    return splits


def build_processor(model_args: ModelArguments, train_split, vision_path: str | None, text_path: str | None):
    if model_args.tokenizer or text_path:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer or text_path)
        tokenizer.model_max_length = model_args.max_text_length
    else:
        from modeling_ccr.streaming import CCRStream, peek_texts
        from modeling_ccr.tokenizer_training import train_tokenizer

        if isinstance(train_split, CCRStream):
            texts = peek_texts(train_split)
        else:
            texts = [caption["text"] for captions in train_split["captions"] for caption in captions]
        tokenizer = train_tokenizer(texts, vocab_size=model_args.vocab_size, model_max_length=model_args.max_text_length)
    if vision_path:
        image_processor = AutoImageProcessor.from_pretrained(vision_path, use_fast=False)
    else:
        size = model_args.image_size
        image_processor = ViTImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return CCRProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _recipe_fields(model_args: ModelArguments) -> dict:
    """The recipe's config fields (less those the trainer writes from its arguments), then --config_overrides."""
    fields = {k: v for k, v in recipe_config(model_args.recipe).items() if k not in TRAINER_OWNED_FIELDS}
    return {**fields, **parse_config_overrides(model_args.config_overrides)}


def load_initial_model(model_args: ModelArguments) -> tuple[CCRModel, CCRProcessor]:
    """``--init_from``: the model and processor of an earlier stage, with this run's recipe behaviours.

    The checkpoint fixes the shapes (the ITM head's too); only ``recipes.BEHAVIOUR_FIELDS`` are changed."""
    model = CCRModel.from_pretrained(model_args.init_from)
    for name, value in _recipe_fields(model_args).items():
        if name in BEHAVIOUR_FIELDS:
            setattr(model.config, name, value)
    return model, CCRProcessor.from_pretrained(model_args.init_from)


def build_model(model_args: ModelArguments, tokenizer, vision_config, vision_path, text_config, text_path) -> CCRModel:
    options = dict(projection_dim=model_args.projection_dim, num_fusion_layers=model_args.num_fusion_layers)
    options.update(_recipe_fields(model_args))
    if vision_path or text_path:
        if model_args.recipe == "ccrk" and text_path:
            options.update(CCRK_COMPOSITION)
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
    from modeling_ccr.ranking import compute_retrieval_ranks
    from modeling_ccr.retrieval import encode_images, encode_texts

    images = encode_images(model, processor, gallery, batch_size=256)
    texts = encode_texts(model, processor, list(DEMO_QUERIES))

    gold = gallery["image_id"].index(DEMO_IMAGE_ID)
    # Each query is a caption of the apple: its IR rank is the apple's rank among all images.
    ranks = compute_retrieval_ranks(images, texts, [gold] * len(DEMO_QUERIES), list(DEMO_QUERIES)).ir_ranks
    return {"gallery_size": len(gallery), **{query: int(rank) for query, rank in zip(DEMO_QUERIES, ranks)}}


def write_model_folder(model, processor, results: RetrievalResults, ranks, destination: Path) -> None:
    """Write the Hub-ready folder to a temporary sibling, then move it into place: never half-written."""
    from modeling_ccr.model_card import render_model_card
    from modeling_ccr.retrieval_report import save_report_plot

    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=destination.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        results.save(staging / "eval_results.json")
        save_report_plot(results.to_json(), ranks, staging / "report.png")
        render_model_card(staging, model_name=destination.parent.name).save(staging / "README.md")
        if destination.exists():
            shutil.rmtree(destination)
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _is_main_process() -> bool:
    """Process 0 of a torchrun launch (or a single process): the one that owns the run folder."""
    return int(os.environ.get("RANK", "0")) == 0


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
    arguments: dict = field(default_factory=dict)


def prepare(argv: list[str] | None = None) -> PreparedRun:
    """Parse and check the arguments, load the data and resolve the towers: every input error fails here."""
    model_args, data_args, training_args = parse_arguments(argv)
    run_dir = Path(training_args.output_dir)
    training_args.output_dir = str(run_dir / "checkpoints")
    training_args.logging_dir = str(run_dir / "runs")
    arguments = run_arguments(model_args, data_args, training_args)
    resume = training_args.resume_from_checkpoint
    if _is_main_process():  # the other processes of a distributed run would see the folder main has claimed
        check_run_folder(run_dir, arguments, resume=bool(resume), overwrite=training_args.overwrite_output_dir)
    if resume in ("last", "True", "true"):
        resume = last_complete_checkpoint(training_args.output_dir)
        if resume is None:
            raise FileNotFoundError(f"--resume_from_checkpoint last: no complete checkpoint in "
                                    f"{training_args.output_dir} (start without it to train from the beginning)")
    elif resume:
        if not os.path.isdir(resume):
            raise FileNotFoundError(f"--resume_from_checkpoint {resume} does not exist (give a checkpoint-N folder "
                                    "or 'last')")
        if not is_complete_checkpoint(resume):
            raise ValueError(f"--resume_from_checkpoint {resume} is not a complete checkpoint-N folder "
                             "(trainer_state.json missing or truncated)")
    if resume:
        check_checkpoint_run(resume, arguments)
    training_args.resume_from_checkpoint = resume
    tokenizer = model_args.tokenizer
    if tokenizer and tokenizer.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(tokenizer)):
        raise FileNotFoundError(f"--tokenizer {tokenizer} is not a folder")
    splits = load_splits(data_args, training_args.seed)
    train = splits[data_args.train_split]
    languages = sorted(train.languages) if hasattr(train, "languages") else dataset_languages(train)
    if hasattr(train, "languages") and training_args.max_steps <= 0:
        raise ValueError("training from a stream needs --max_steps (a stream has no length to count epochs by)")
    check_objective(training_args.loss_type, languages, data_args.language_coverage)
    vision = resolve_tower(model_args.vision_model, vision_presets(model_args.image_size), "vision")
    text = resolve_tower(model_args.text_model, text_presets(model_args.vocab_size, model_args.max_text_length + 2), "text")
    return PreparedRun(model_args, data_args, training_args, run_dir, splits, languages, vision, text, arguments)


def run(prepared: PreparedRun) -> dict:
    """Train, evaluate on the test split, write the Hub-ready folder; returns the evaluation results."""
    model_args, data_args, training_args = prepared.model_args, prepared.data_args, prepared.training_args
    hf_logging.set_verbosity_warning()
    print(training_args.precision_note, flush=True)
    (vision_config, vision_path), (text_config, text_path) = prepared.vision, prepared.text
    train_split = prepared.splits[data_args.train_split]
    torch.manual_seed(training_args.seed)
    if model_args.init_from:
        model, processor = load_initial_model(model_args)
    else:
        processor = build_processor(model_args, train_split, vision_path, text_path)
        model = build_model(model_args, processor.tokenizer, vision_config, vision_path, text_config, text_path)
    eval_split = prepared.splits.get(data_args.eval_split) if data_args.eval_split else None
    if eval_split is None:
        training_args.eval_strategy = "no"
    # The first write of the run, once everything is built: the folder becomes this run's (the old run is removed
    # only with --overwrite_output_dir).
    if _is_main_process():
        claim_run_folder(prepared.run_dir, prepared.arguments, overwrite=training_args.overwrite_output_dir)
    trainer = CCRTrainer(
        model=model,
        args=training_args,
        train_dataset=train_split,
        eval_dataset=eval_split,
        processing_class=processor,
        languages=prepared.languages,
        callbacks=[RunIdentityCallback(prepared.arguments)],
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    from modeling_ccr.retrieval import evaluate_retrieval

    model.eval()
    with trainer.evaluation_autocast():
        metrics, ranks = evaluate_retrieval(
            model, processor, prepared.splits[data_args.test_split], batch_size=training_args.per_device_eval_batch_size,
            languages=prepared.languages, rerank_top_k=data_args.rerank_top_k,
        )
    results = RetrievalResults.from_json(metrics)
    results.model = "CCR-1toK " + ("dual encoder" if model.fusion is None else "with fusion layers")
    results.dataset = dataset_name(data_args.dataset)
    results.split = data_args.test_split
    results.rerank_top_k = data_args.rerank_top_k
    results.loss_type = training_args.loss_type
    results.seed = training_args.seed
    if (source := data_args.eval_dataset or data_args.dataset) != "emoji":
        from modeling_ccr.loaders import held_out_record

        sizes = {name: len(split) for name, split in prepared.splits.items() if hasattr(split, "__len__")}
        if (record := held_out_record(source, sizes)) is not None:
            results.extra["held_out_split"] = record
    results.extra["recipe"], results.extra["stage"] = model_args.recipe, model_args.stage
    if not hasattr(train_split, "__len__"):  # a stream: bad samples it skipped (warnings name shard and key)
        from modeling_ccr.streaming import stream_skipped

        results.extra["skipped_samples"] = stream_skipped(trainer)
    if data_args.dataset == "emoji":
        results.extra["demo_red_apple_rank"] = demo_queries(model, processor)
    if trainer.is_world_process_zero():
        write_model_folder(model, processor, results, ranks, prepared.run_dir / "model")
        print(results.summary_text())
        if "demo_red_apple_rank" in results.extra:
            demo = dict(results.extra["demo_red_apple_rank"])
            size = demo.pop("gallery_size")
            print(f"\nrank of the red apple emoji among all {size} EmojiCCR images: "
                  + ", ".join(f"{query!r} {rank}" for query, rank in demo.items()))
        print(f"\nHub-ready model folder: {prepared.run_dir / 'model'}")
    return results.to_json()


def _leave_process_group() -> None:
    """Under torchrun/accelerate: wait for rank 0's writes, then leave the group together (a rank that exits
    alone makes gloo abort its peers)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> dict:
    """The command: every argument and data error fails in :func:`prepare`, before anything is built or written
    (``run_cli`` turns it into one line and exit status 2)."""
    results = run(prepare(argv))
    _leave_process_group()
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main))
