"""CCRConfig: validation, serialisation, composite tower configs, the CMLM masking rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_config, text_config, vision_config
from transformers import CLIPConfig

from modeling_ccr import CCRConfig

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "ccr_v0_fusion"


def test_config_validation_and_serialisation(tmp_path):
    config = make_config(num_fusion_layers=2, itc_divide_by_k=True)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for generation_name in ("temperature", "top_k", "top_p"):
        assert generation_name not in saved
    assert saved["tau_init"] == 0.07 and saved["num_fusion_layers"] == 2 and saved["itc_divide_by_k"] is True
    loaded = CCRConfig.from_pretrained(tmp_path)
    assert loaded.vision_config.model_type == "vit" and loaded.text_config.model_type == "xlm-roberta"
    assert loaded.text_config.hidden_size == 32
    for bad in [{"tau_init": 0.9}, {"tau_min": 0.0}, {"num_fusion_layers": -1}, {"vision_pooling": "max"}]:
        with pytest.raises(ValueError):
            make_config(**bad)
    with pytest.raises(TypeError, match="vision_config"):
        CCRConfig(vision_config="vit")
    # a composite CLIP config gives its vision tower
    clip = CLIPConfig(vision_config=vision_config("clip").to_dict(), text_config={"vocab_size": 99})
    assert CCRConfig.from_vision_text_configs(clip, text_config()).vision_config.model_type == "clip_vision_model"


def test_mlm_probability_zero_means_no_cmlm_and_is_saved(tmp_path):
    config = make_config(num_fusion_layers=1, mlm_probability=0.0)
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["mlm_probability"] == 0.0
    assert CCRConfig.from_pretrained(tmp_path).mlm_probability == 0.0
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"mlm_probability must be in \[0, 1\)"):
            make_config(mlm_probability=bad)


def test_config_saved_by_an_earlier_version_loads():
    config = CCRConfig.from_pretrained(FIXTURE)
    assert config.num_fusion_layers == 1 and config.mlm_probability == 0.15 and config.mask_token_id == 4
    assert config.vision_config.model_type == "vit" and config.text_config.vocab_size == 16
