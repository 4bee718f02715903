"""Shared test fixtures: tiny towers, tokenizers, processors and CCR models built locally, and a tiny real dataset.

Two families of factories, both tiny and deterministic:
- :func:`make_model` / :func:`make_config` / :func:`make_processor`: models of any tower pair (ViT, Swin, CLIP,
  SigLIP vision; XLM-R, BERT text) over a WordPiece tokenizer trained on a few multilingual strings
  (model, processor and remote-code tests);
- :func:`tiny_ccr_dataset` / :func:`tiny_processor` / :func:`tiny_model`: a real CCR dataset (coloured shapes
  captioned in en/de/fr, some images lacking a language) with a tokenizer trained on its captions and a model
  sized for it (trainer, collator and distributed tests; the subprocess workers import them too).

Tests import the functions (``from conftest import make_model``: pytest loads this file as the module
``conftest``); the ``tiny_data`` fixture gives the dataset and its processor once per module. Benchmark smoke
tests carry the ``bench`` marker (``pytest -m "not bench"`` runs the unit tests alone).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image, ImageDraw
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    CLIPVisionConfig,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
    SwinConfig,
    ViTConfig,
    ViTImageProcessorPil,
    XLMRobertaConfig,
)

from modeling_ccr import CCRConfig, CCRModel, CCRProcessor
from modeling_ccr.dataset_schema import CCR_FEATURES
from modeling_ccr.tokenizer_training import train_tokenizer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bench: smoke tests of the benchmarks/ scripts (quick mode, no timing asserted)")


IMAGE_SIZE = 32
HIDDEN = 32
MAX_POSITIONS = 40

CORPUS = [
    "a red apple on a table",
    "ein roter Apfel auf einem Tisch",
    "une pomme rouge sur une table",
    "桌子上的红苹果",
    "テーブルの上の赤いリンゴ",
    "a dog runs in the park",
    "ein Hund rennt im Park",
    "un chien court dans le parc",
    "公园里跑的狗",
    "公園を走る犬",
    "a smiling face with sunglasses",
    "lächelndes Gesicht mit Sonnenbrille",
    "visage souriant avec lunettes de soleil",
]


@functools.lru_cache(maxsize=1)
def _tokenizer_object() -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tok.decoder = decoders.WordPiece()
    return tok


def make_tokenizer(model_max_length: int = 24) -> PreTrainedTokenizerFast:
    """A tiny WordPiece tokenizer trained on a few multilingual strings, BERT-style special tokens."""
    return PreTrainedTokenizerFast(
        tokenizer_object=_tokenizer_object(),
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
    )


def vision_config(kind: str = "vit"):
    common = {"hidden_size": HIDDEN, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 37}
    if kind == "vit":
        return ViTConfig(image_size=IMAGE_SIZE, patch_size=8, **common)
    if kind == "swin":  # no CLS token: mean-pooled
        return SwinConfig(image_size=IMAGE_SIZE, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=2)
    if kind == "clip":
        return CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=8, **common)
    if kind == "siglip":
        return SiglipVisionConfig(image_size=IMAGE_SIZE, patch_size=8, **common)
    raise ValueError(kind)


def text_config(kind: str = "xlmr", vocab_size: int | None = None):
    vocab_size = vocab_size or len(make_tokenizer())
    common = {
        "vocab_size": vocab_size,
        "hidden_size": HIDDEN,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        "max_position_embeddings": MAX_POSITIONS,
        "pad_token_id": 0,
    }
    if kind == "xlmr":
        return XLMRobertaConfig(**common)
    if kind == "bert":
        return BertConfig(**common)
    raise ValueError(kind)


def make_config(vision: str = "vit", text: str = "xlmr", **kwargs) -> CCRConfig:
    kwargs.setdefault("projection_dim", 16)
    kwargs.setdefault("mask_token_id", make_tokenizer().mask_token_id)
    return CCRConfig.from_vision_text_configs(vision_config(vision), text_config(text), **kwargs)


def make_model(vision: str = "vit", text: str = "xlmr", seed: int = 0, **kwargs) -> CCRModel:
    torch.manual_seed(seed)
    return CCRModel(make_config(vision, text, **kwargs))


def make_processor(max_length: int | None = None) -> CCRProcessor:
    image_processor = ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return CCRProcessor(image_processor=image_processor, tokenizer=make_tokenizer(), max_length=max_length)


def caption_batch(n_images: int = 3):
    """Images and caption groups with missing languages (image i gets 1 + i % 3 captions)."""
    from PIL import Image

    images = [Image.new("RGB", (40 + 3 * i, 36), (40 * i % 255, 90, 200)) for i in range(n_images)]
    captions = [[CORPUS[(5 * i + j) % len(CORPUS)] for j in range(1 + i % 3)] for i in range(n_images)]
    return images, captions


# ---- the tiny real dataset and a model sized for it

COLOURS = {
    "red": ((220, 30, 30), "rot", "rouge"),
    "green": ((30, 180, 30), "grün", "vert"),
    "blue": ((30, 30, 220), "blau", "bleu"),
    "yellow": ((230, 220, 30), "gelb", "jaune"),
}
SHAPES = {"square": ("Quadrat", "carré"), "circle": ("Kreis", "cercle"), "triangle": ("Dreieck", "triangle")}


def _draw(colour: tuple[int, int, int], shape: str, size: int = 32) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    box = (6, 6, size - 6, size - 6)
    if shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "circle":
        draw.ellipse(box, fill=colour)
    else:
        draw.polygon([(size // 2, 4), (size - 4, size - 4), (4, size - 4)], fill=colour)
    return image


def tiny_ccr_dataset(missing_languages: bool = True) -> Dataset:
    """12 images (4 colours x 3 shapes), captions in en/de/fr; some images lack a language."""
    rows = []
    for colour_index, (colour, (rgb, de_colour, fr_colour)) in enumerate(COLOURS.items()):
        for shape_index, (shape, (de_shape, fr_shape)) in enumerate(SHAPES.items()):
            captions = [
                {"language": "en", "text": f"a {colour} {shape}"},
                {"language": "de", "text": f"ein {de_colour} {de_shape}"},
                {"language": "fr", "text": f"un {fr_shape} {fr_colour}"},
                {"language": "en", "text": f"{shape} coloured {colour}"},
            ]
            if missing_languages and (colour_index + shape_index) % 4 == 1:
                captions = [c for c in captions if c["language"] != "fr"]
            rows.append({"image": _draw(rgb, shape), "image_id": f"{colour}-{shape}", "captions": captions})
    return Dataset.from_list(rows, features=CCR_FEATURES)


def tiny_processor(dataset: Dataset | None = None) -> CCRProcessor:
    dataset = dataset if dataset is not None else tiny_ccr_dataset()
    texts = [caption["text"] for captions in dataset["captions"] for caption in captions]
    tokenizer = train_tokenizer(texts, vocab_size=200, model_max_length=16)
    image_processor = ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return CCRProcessor(image_processor=image_processor, tokenizer=tokenizer)


def tiny_model(processor: CCRProcessor, num_fusion_layers: int = 0, seed: int = 0, **config_kwargs) -> CCRModel:
    """A tiny ViT + BERT model sized for ``processor``'s tokenizer, without dropout (trainer tests)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    vision = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    text = BertConfig(
        vocab_size=len(processor.tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=24, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        pad_token_id=processor.tokenizer.pad_token_id,
    )
    # Towers trained from scratch learn far faster from mean-pooled tokens than from an untrained [CLS].
    config_kwargs = {"text_pooling": "mean", "vision_pooling": "mean", **config_kwargs}
    config = CCRConfig.from_vision_text_configs(
        vision, text, projection_dim=16, num_fusion_layers=num_fusion_layers, **config_kwargs
    )
    return CCRModel(config)


@pytest.fixture(scope="module")
def tiny_data() -> tuple[Dataset, CCRProcessor]:
    """The tiny CCR dataset and a processor whose tokenizer was trained on its captions."""
    dataset = tiny_ccr_dataset()
    return dataset, tiny_processor(dataset)
