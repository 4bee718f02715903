"""The named tower presets of train.py: each builds a CCRModel that encodes, trains one step and round-trips."""

from __future__ import annotations

import pytest
import torch

from modeling_ccr.configuration_ccr import CCRConfig
from modeling_ccr.freezing import freeze_tower
from modeling_ccr.modeling_ccr import CCRModel
from modeling_ccr.presets import resolve_tower, text_presets, vision_presets

IMAGE_SIZE = 64


@pytest.mark.parametrize("name", sorted(vision_presets(IMAGE_SIZE)))
def test_each_vision_preset_encodes_learns_and_reloads(name: str, tmp_path) -> None:
    vision, pretrained = resolve_tower(name, vision_presets(IMAGE_SIZE), "vision")
    text, _ = resolve_tower("tiny-bert", text_presets(vocab_size=50, max_length=10), "text")
    assert pretrained is None
    torch.manual_seed(0)
    model = CCRModel(CCRConfig.from_vision_text_configs(vision, text, projection_dim=16))
    pixels = torch.rand(3, 3, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1
    input_ids = torch.randint(5, 50, (6, 7))
    outputs = model(pixel_values=pixels, input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                    text_image_ids=torch.tensor([0, 0, 1, 1, 2, 2]), return_loss=True)
    assert outputs.image_embeds.shape == (3, 16) and torch.isfinite(outputs.loss)
    outputs.loss.backward()
    vision_grads = [p.grad for p in model.vision_model.parameters() if p.requires_grad]
    assert all(g is not None for g in vision_grads), f"{name}: a vision parameter got no gradient"

    model.eval()
    model.save_pretrained(tmp_path)
    reloaded = CCRModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.get_image_features(pixels), model.get_image_features(pixels))


@pytest.mark.parametrize("name", sorted(vision_presets(IMAGE_SIZE)))
def test_each_vision_preset_freezes_all_but_its_last_stage(name: str) -> None:
    vision, _ = resolve_tower(name, vision_presets(IMAGE_SIZE), "vision")
    from transformers import AutoModel

    tower = AutoModel.from_config(vision)
    total = sum(p.numel() for p in tower.parameters())
    assert 0 < freeze_tower(tower, unfrozen_layers=1) < total
    assert freeze_tower(tower) == 0 and not any(p.requires_grad for p in tower.parameters())


def test_an_unknown_preset_names_the_choices() -> None:
    with pytest.raises(ValueError, match="tiny-resnet"):
        resolve_tower("tiny vgg", vision_presets(IMAGE_SIZE), "vision")


@pytest.mark.parametrize("image_size", [16, 32])
def test_the_tiny_resnet_trains_on_a_batch_of_one_small_image(image_size: int) -> None:
    """Its stages stop at a 2x2 map, so BatchNorm has more than one value per channel even for one image."""
    vision, _ = resolve_tower("tiny-resnet", vision_presets(image_size), "vision")
    text, _ = resolve_tower("tiny-bert", text_presets(vocab_size=50, max_length=10), "text")
    model = CCRModel(CCRConfig.from_vision_text_configs(vision, text, projection_dim=16)).train()
    input_ids = torch.randint(5, 50, (2, 7))
    outputs = model(pixel_values=torch.rand(1, 3, image_size, image_size), input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids), text_image_ids=torch.tensor([0, 0]), return_loss=True)
    assert torch.isfinite(outputs.loss)
