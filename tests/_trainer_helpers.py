"""A tiny real CCR dataset (coloured shapes captioned in three languages) and a tiny model for trainer tests."""

from __future__ import annotations

import numpy as np
from datasets import Dataset
from PIL import Image, ImageDraw
from transformers import BertConfig, ViTConfig, ViTImageProcessorPil

from modeling_ccr import CCRConfig, CCRModel, CCRProcessor
from modeling_ccr.dataset_schema import CCR_FEATURES
from modeling_ccr.tokenizer_training import train_tokenizer

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
    import torch

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
