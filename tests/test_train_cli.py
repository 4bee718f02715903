"""hub_scripts/train.py: documented options, early clear errors, and one end-to-end run of the main job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modeling_ccr.objectives import LOSS_TYPES

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "hub_scripts" / "train.py"


def _run(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TRAIN), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def test_help_documents_every_option():
    completed = _run("--help")
    assert completed.returncode == 0, completed.stderr
    for option in ("--loss_type", "--itc_weight", "--itm_weight", "--mlm_weight", "--mlm_probability",
                   "--captions_per_language", "--dataset", "--vision_model", "--text_model", "--num_fusion_layers",
                   "--output_dir", "--resume_from_checkpoint", "--rerank_top_k", "--itc_divide_by_k", "--precision",
                   "--image_augmentation", "--freeze_vision", "--freeze_text", "--unfrozen_layers",
                   "--contrastive_accumulation_steps"):
        assert option in completed.stdout, option
    for objective in LOSS_TYPES:  # the objectives of the registry, not a copy of the help text
        assert objective in completed.stdout, objective


def test_bad_option_is_rejected_before_training(tmp_path):
    completed = _run("--loss_type", "bogus", "--output_dir", str(tmp_path / "out"))
    assert completed.returncode != 0
    assert "unknown loss_type 'bogus'" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "out").exists()
    completed = _run("--no_such_option", "1")
    assert completed.returncode != 0 and "no_such_option" in completed.stderr and "Traceback" not in completed.stderr


def test_unknown_dataset_format_is_a_clear_error(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("nothing a loader knows\n")
    completed = _run("--dataset", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"))
    assert completed.returncode != 0
    assert "format" in completed.stderr and "Traceback" not in completed.stderr
    assert not (tmp_path / "out").exists()
    completed = _run("--dataset", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "out"))
    assert completed.returncode != 0 and "does not exist" in completed.stderr


def test_unknown_language_is_a_clear_error_before_training(tmp_path):
    completed = _run("--languages", "en,xx", "--output_dir", str(tmp_path / "out"))
    assert completed.returncode != 0
    assert "unknown language(s) ['xx']" in completed.stderr and "Traceback" not in completed.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_each_precision_trains_evaluates_and_writes_the_folder(tmp_path, precision):
    """Both precisions run on any machine (auto picks one of them by hardware): bf16 trains and encodes under
    autocast, and the ranking and the mixed pool still get fp32 scores."""
    out = tmp_path / "run"
    completed = _run("--output_dir", str(out), "--precision", precision, "--max_train_samples", "16", "--max_steps",
                     "2", "--per_device_train_batch_size", "8", "--eval_strategy", "no", "--save_strategy", "no",
                     "--max_eval_samples", "24", "--test_split", "validation", "--disable_tqdm", "true")
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"precision: {precision} (asked for)" in completed.stdout
    results = json.loads((out / "model" / "eval_results.json").read_text())
    assert results["mixed"]["recall"]["R@1"] >= 0 and results["mrv"]["TR"] >= 0


@pytest.mark.slow
def test_main_job_writes_a_loadable_hub_folder(tmp_path):
    """The main command, on a reduced budget: trains on EmojiCCR, evaluates, writes the Hub-ready folder."""
    out = tmp_path / "run"
    completed = _run("--output_dir", str(out), "--num_train_epochs", "1", "--max_train_samples", "256",
                     "--max_eval_samples", "64", "--disable_tqdm", "true", timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    model_dir = out / "model"
    names = set(os.listdir(model_dir))
    for required in ("config.json", "model.safetensors", "configuration_ccr.py", "modeling_ccr.py", "processing_ccr.py",
                     "processor_config.json", "tokenizer.json", "README.md", "eval_results.json", "report.png"):
        assert required in names, required
    config = json.loads((model_dir / "config.json").read_text())
    assert {"AutoConfig", "AutoModel"} <= set(config["auto_map"])
    results = json.loads((model_dir / "eval_results.json").read_text())
    assert set(results["languages"]) == {"cs", "de", "en", "fr", "ja", "zh"}
    assert set(results["demo_red_apple_rank"]) >= {"roter Apfel", "pomme rouge", "红苹果", "gallery_size"}
    assert "mean_recall" in results and results["mrv"]["TR"] >= 0
    # the keys evaluate_model.py writes, with the same dataset name
    assert {"model", "dataset", "split", "rerank_top_k", "chance", "recall_avg"} <= set(results)
    assert results["dataset"] == "EmojiCCR"
    card = (model_dir / "README.md").read_text()
    assert "model-index" in card

    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModel, AutoProcessor
        model = AutoModel.from_pretrained({str(model_dir)!r}, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained({str(model_dir)!r}, trust_remote_code=True)
        assert type(processor).__name__ == "CCRProcessor", type(processor)
        inputs = processor(text=["roter Apfel", "pomme rouge", "红苹果"])
        with torch.no_grad():
            features = model.get_text_features(**inputs)
        assert features.shape[0] == 3 and torch.isfinite(features).all()
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    empty = tmp_path / "empty"
    empty.mkdir()
    loaded = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd=empty, env=env)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "ok", loaded.stderr[-3000:]


def _train_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_script", TRAIN)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_disk_full_during_the_final_write_keeps_the_old_model_and_no_staging_folder(tmp_path):
    import errno
    from types import SimpleNamespace

    def full_disk(folder):
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / "model.safetensors"))

    destination = tmp_path / "run" / "model"
    destination.mkdir(parents=True)
    (destination / "config.json").write_text("{}")
    with pytest.raises(OSError) as info:
        _train_module().write_model_folder(SimpleNamespace(save_pretrained=full_disk), None, None, None, destination)
    assert info.value.errno == errno.ENOSPC
    assert sorted(os.listdir(tmp_path / "run")) == ["model"]  # no .model-* left behind
    assert os.listdir(destination) == ["config.json"]  # the previous model untouched
