"""Fixtures of the core tests: tiny towers, a tokenizer trained in the test, tiny CCR models and processors."""

from __future__ import annotations

import functools

import torch
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
