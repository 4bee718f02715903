"""Frozen towers: which parameters stay trainable with --unfrozen_layers."""

from __future__ import annotations

import pytest
from conftest import text_config, vision_config

from modeling_ccr import CCRConfig, CCRModel
from modeling_ccr.freezing import freeze_tower, freeze_towers


def make_model() -> CCRModel:
    """A model whose towers have 2 layers each."""
    vision, text = vision_config("vit"), text_config("xlmr")
    vision.num_hidden_layers = text.num_hidden_layers = 2
    return CCRModel(CCRConfig.from_vision_text_configs(vision, text, projection_dim=8))


def _trainable(module) -> set[str]:
    return {name for name, p in module.named_parameters() if p.requires_grad}


def test_unfrozen_layers_keep_the_last_layers_and_what_follows():
    model = make_model()
    names = [name for name, _ in model.vision_model.named_parameters()]
    layers = len({name.split(".")[1] for name in names if name.startswith("layers.")})
    assert layers == 2
    freeze_towers(model, freeze_vision=True, unfrozen_layers=1)
    trainable = _trainable(model.vision_model)
    last = f"layers.{layers - 1}."
    assert trainable and all(name.startswith(last) or not name.startswith(("layers.", "embeddings.")) for name in trainable)
    assert {"layernorm.weight", "pooler.dense.weight"} <= trainable
    assert any(name.startswith(last) for name in trainable)
    assert not any(name.startswith("embeddings.") for name in trainable)
    assert all(p.requires_grad for p in model.text_model.parameters())
    assert model.visual_projection.weight.requires_grad and model.tau.requires_grad


def test_fully_frozen_tower_and_bad_counts():
    model = make_model()
    assert freeze_tower(model.text_model) == 0 and not _trainable(model.text_model)
    with pytest.raises(ValueError, match="has 2 layers"):
        freeze_tower(model.vision_model, unfrozen_layers=99)
    with pytest.raises(ValueError, match="unfrozen_layers applies to a frozen tower"):
        freeze_towers(model, unfrozen_layers=1)
