"""Named tower configurations for training from scratch, and resolution of tower arguments.

A tower argument is either a preset name below, a folder holding a pretrained transformers model
(weights are loaded), or a folder / ``config.json`` holding only a config (random initialisation).
"""

from __future__ import annotations

import os

from transformers import (
    AutoConfig,
    BertConfig,
    CLIPVisionConfig,
    ConvNextConfig,
    PretrainedConfig,
    ResNetConfig,
    SwinConfig,
    ViTConfig,
    XLMRobertaConfig,
)


def vision_presets(image_size: int) -> dict[str, PretrainedConfig]:
    """Small vision towers sized for ``image_size`` pixel inputs (the main job uses 64 px emoji)."""
    patch = max(4, image_size // 8)
    stages = max(1, min(4, (image_size // 8).bit_length()))  # 64 px: 4 stages, a 2x2 map; 32 px: 3; 16 px: 2
    return {
        "tiny-vit": ViTConfig(
            image_size=image_size, patch_size=patch, hidden_size=128, num_hidden_layers=3,
            num_attention_heads=4, intermediate_size=512, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        ),
        "tiny-swin": SwinConfig(
            image_size=image_size, patch_size=4, embed_dim=48, depths=[2, 2], num_heads=[3, 6], window_size=4,
        ),
        "tiny-clip-vision": CLIPVisionConfig(
            image_size=image_size, patch_size=patch, hidden_size=128, num_hidden_layers=3,
            num_attention_heads=4, intermediate_size=512,
        ),
        # Convolutional towers: their locality prior learns more from a thousand images than a ViT's patches.
        # Stages (each halves the map after the stem's /4) stop while the map is >= 2x2: BatchNorm needs more than
        # one value per channel, also for a batch of one image.
        "tiny-resnet": ResNetConfig(
            embedding_size=32, hidden_sizes=[32, 64, 128, 256][:stages], depths=[1] * stages, layer_type="basic",
        ),
        "tiny-convnext": ConvNextConfig(patch_size=4, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1]),
    }


def text_presets(vocab_size: int, max_length: int) -> dict[str, PretrainedConfig]:
    """Small text towers; ``vocab_size`` must match the tokenizer."""
    common = dict(
        vocab_size=vocab_size, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=512, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    )
    return {
        "tiny-bert": BertConfig(max_position_embeddings=max_length, **common),
        "tiny-xlmr": XLMRobertaConfig(max_position_embeddings=max_length + 2, pad_token_id=0, **common),
    }


def resolve_tower(argument: str, presets: dict[str, PretrainedConfig], kind: str) -> tuple[PretrainedConfig, str | None]:
    """Return ``(config, pretrained_path)``: the path is set when ``argument`` names pretrained weights."""
    if argument in presets:
        return presets[argument], None
    if os.path.isfile(argument) and argument.endswith(".json"):
        return AutoConfig.from_pretrained(os.path.dirname(argument) or ".", **_config_file(argument)), None
    if os.path.isdir(argument):
        if not os.path.isfile(os.path.join(argument, "config.json")):
            raise ValueError(f"{kind} tower folder {argument} has no config.json")
        config = AutoConfig.from_pretrained(argument)
        has_weights = any(
            name.endswith((".safetensors", ".bin")) for name in os.listdir(argument)
        )
        return config, argument if has_weights else None
    try:  # a Hub repository id, e.g. "FacebookAI/xlm-roberta-base"
        return AutoConfig.from_pretrained(argument), argument
    except (OSError, ValueError) as error:
        raise ValueError(
            f"unknown {kind} tower {argument!r}: give a preset ({', '.join(presets)}), a pretrained model folder, "
            f"a config.json or a reachable Hub model id ({error.__class__.__name__}: {str(error).splitlines()[0]})"
        ) from None


def _config_file(path: str) -> dict[str, str]:
    """AutoConfig reads ``config.json`` from a folder; a differently named file is passed explicitly."""
    name = os.path.basename(path)
    return {} if name == "config.json" else {"config_file_name": name}
