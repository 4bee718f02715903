"""``train.py --recipe`` / ``--stage`` (modeling_ccr/recipes.py): what each sets, that explicit options win, the
clear errors, and the two stages run end to end on a few EmojiCCR images (pretrain, then finetune from it)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_ccr.recipes import CCRK_CONFIG, parse_config_overrides

ROOT = Path(__file__).resolve().parents[1]


def _train_module():
    spec = importlib.util.spec_from_file_location("train_cli", ROOT / "hub_scripts" / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_cli"] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_recipe_and_stage_fill_the_arguments_and_explicit_options_win():
    train = _train_module()
    model_args, data_args, args = train.parse_arguments(
        ["--recipe", "ccrk", "--stage", "pretrain", "--num_fusion_layers", "1", "--output_dir", "/tmp/x"]
    )
    assert args.loss_type == "one_to_k" and args.mlm_weight == 1.0 and args.itm_weight == 1.0
    assert args.mlm_probability == CCRK_CONFIG["mlm_probability"] and args.itc_divide_by_k is True
    assert train._recipe_fields(model_args)["positive_sampling"] == "ccrk"
    _, data_args, args = train.parse_arguments(
        ["--recipe", "ccrk", "--stage", "finetune", "--init_from", "m", "--mlm_probability", "0.2",
         "--rerank_top_k", "4", "--output_dir", "/tmp/x"]
    )
    assert args.loss_type == "pairwise_soft" and args.mlm_weight == 0.0
    assert args.mlm_probability == 0.2 and data_args.rerank_top_k == 4  # given explicitly: kept
    _, data_args, args = train.parse_arguments(["--output_dir", "/tmp/x"])  # the main job: nothing changes
    assert args.loss_type == "one_to_k" and args.mlm_probability is None and data_args.rerank_top_k == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--stage", "finetune"], "--init_from"),
        (["--stage", "pretrain"], "--num_fusion_layers"),
        (["--recipe", "x-vlm"], "unknown recipe"),
        (["--stage", "warmup"], "unknown stage"),
    ],
)
def test_bad_recipe_or_stage_is_a_clear_error(argv, message):
    with pytest.raises(ValueError, match=message):
        _train_module().parse_arguments([*argv, "--output_dir", "/tmp/x"])


def test_config_overrides_are_typed_fields_that_win_over_the_recipe():
    assert parse_config_overrides(" positive_sampling=softmax , mlm_max_masks=5,itm_weight=0.5") == {
        "positive_sampling": "softmax", "mlm_max_masks": 5, "itm_weight": 0.5}
    assert parse_config_overrides(None) == parse_config_overrides(" ") == {}
    train = _train_module()
    model_args, _, _ = train.parse_arguments(
        ["--recipe", "ccrk", "--config_overrides", "itm_head_type=linear", "--output_dir", "/tmp/x"])
    fields = train._recipe_fields(model_args)
    assert fields["itm_head_type"] == "linear" and fields["positive_sampling"] == "ccrk"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ("positive_sampling", "is not name=value"),
        ("positive_sampling=", "is not name=value"),
        ("no_such_field=1", "no_such_field=1: key no_such_field"),
        ("mlm_max_masks=many", "mlm_max_masks=many: invalid literal"),
        ("mlm_masking=random", "mlm_masking must be one of"),
        ("mlm_probability=0.2", "give --mlm_probability instead"),
    ],
)
def test_bad_config_overrides_are_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        parse_config_overrides(overrides)


def test_a_shape_override_with_init_from_is_refused():
    train = _train_module()
    for shape in ("itm_head_type=mlp", "num_fusion_layers=3"):
        with pytest.raises(ValueError, match="the --init_from checkpoint fixes the model's shape"):
            train.parse_arguments(["--init_from", "m", "--config_overrides", shape, "--output_dir", "x"])
    model_args, _, _ = train.parse_arguments(["--init_from", "m", "--config_overrides", "itm_weight=2", "--output_dir", "x"])
    assert train._recipe_fields(model_args) == {"itm_weight": 2.0}  # applied to the loaded model's config


def test_two_stages_run_end_to_end(tmp_path):
    """Pretrain (1-to-K + MITM + CMLM, ccrk recipe) on 16 images, then finetune from it; the saved configs and
    results say what ran (a few seconds each)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    common = ["--max_train_samples", "16", "--max_steps", "2", "--per_device_train_batch_size", "8",
              "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
              "--recipe", "ccrk", "--test_split", "validation"]
    pre = tmp_path / "pre"
    subprocess.run([sys.executable, str(ROOT / "hub_scripts" / "train.py"), *common, "--stage", "pretrain",
                    "--num_fusion_layers", "1", "--config_overrides", "negative_sampling=softmax",
                    "--output_dir", str(pre)], check=True, env=env, capture_output=True)
    config = json.loads((pre / "model" / "config.json").read_text())
    assert config["itm_head_type"] == "mlp" and config["mlm_masking"] == "ccrk" and config["mlm_probability"] == 0.4
    assert config["negative_sampling"] == "softmax" and config["positive_sampling"] == "ccrk"  # the override won
    fine = tmp_path / "fine"
    subprocess.run([sys.executable, str(ROOT / "hub_scripts" / "train.py"), *common, "--stage", "finetune",
                    "--init_from", str(pre / "model"), "--rerank_top_k", "2", "--output_dir", str(fine)],
                   check=True, env=env, capture_output=True)
    results = json.loads((fine / "model" / "eval_results.json").read_text())
    assert results["loss_type"] == "pairwise_soft" and results["rerank_top_k"] == 2 and results["stage"] == "finetune"
    assert json.loads((fine / "model" / "config.json").read_text())["mlm_weight"] == 0.0
