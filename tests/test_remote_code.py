"""A saved folder loads through the Auto classes with trust_remote_code, in a fresh process without the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch
from conftest import caption_batch, make_model, make_processor
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoProcessor

REMOTE_FILES = ("configuration_ccr.py", "modeling_ccr.py", "processing_ccr.py", "sentence_transformers_ccr.py")

FRESH_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys
    assert importlib.util.find_spec("modeling_ccr") is None, "the package must not be importable here"
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel, AutoProcessor

    folder, inputs, out = sys.argv[1], sys.argv[2], sys.argv[3]
    spec = json.load(open(inputs))
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    images = [Image.open(p) for p in spec["images"]]
    batch = processor(images=images, captions=spec["captions"])
    with torch.no_grad():
        image_features = model.get_image_features(batch["pixel_values"])
        text_features = model.get_text_features(batch["input_ids"], batch["attention_mask"])
        output = model(**batch, return_loss=True)
    save_file(
        {
            "image_features": image_features.contiguous(),
            "text_features": text_features.contiguous(),
            "pixel_values": batch["pixel_values"].contiguous(),
            "input_ids": batch["input_ids"].contiguous(),
            "text_image_ids": batch["text_image_ids"].contiguous(),
            "loss_itc": output.loss_itc.reshape(1),
        },
        out,
    )
    print(json.dumps({
        "config": type(config).__name__, "model": type(model).__name__, "processor": type(processor).__name__,
        "model_module": type(model).__module__, "image_processor": type(processor.image_processor).__name__,
    }))
    """
)


def _save(tmp_path):
    model = make_model(num_fusion_layers=1).eval()
    processor = make_processor()
    folder = tmp_path / "ccr-model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor, folder


def test_saved_folder_layout(tmp_path):
    _, _, folder = _save(tmp_path)
    names = set(os.listdir(folder))
    assert set(REMOTE_FILES) <= names
    assert "model.safetensors" in names and not any(n.endswith(".bin") for n in names)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_ccr.CCRConfig",
        "AutoModel": "modeling_ccr.CCRModel",
        "AutoModelForZeroShotImageClassification": "modeling_ccr.CCRModel",
    }
    assert "temperature" not in config
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_ccr.CCRProcessor"
    # remote code imports only torch / transformers / each other (PIL and numpy for images in the processor)
    for name in REMOTE_FILES:
        source = (folder / name).read_text()
        for line in source.splitlines():
            if line.startswith(("import ", "from ")):
                module = line.split()[1]
                assert module.split(".")[0] in {
                    "torch", "transformers", "os", "io", "json", "shutil", "dataclasses", "typing", "collections",
                    "__future__", "numpy", "PIL", "",
                } or module.startswith("."), (name, line)


def test_outputs_equal_after_reload_in_process(tmp_path):
    model, processor, folder = _save(tmp_path)
    images, captions = caption_batch(3)
    batch = processor(images=images, captions=captions)
    loaded = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    loaded_processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(loaded_processor).__name__ == "CCRProcessor"
    batch2 = loaded_processor(images=images, captions=captions)
    assert torch.equal(batch["input_ids"], batch2["input_ids"])
    assert torch.equal(batch["pixel_values"], batch2["pixel_values"])
    with torch.no_grad():
        before = model(**batch)
        after = loaded(**batch)
        torch.testing.assert_close(after.image_embeds, before.image_embeds, rtol=0, atol=1e-6)
        torch.testing.assert_close(after.text_embeds, before.text_embeds, rtol=0, atol=1e-6)
        tokens = model.get_image_tokens(batch["pixel_values"])
        ids, mask = batch["input_ids"][:3], batch["attention_mask"][:3]
        torch.testing.assert_close(
            loaded.itm_scores(loaded.get_image_tokens(batch["pixel_values"]), ids, mask),
            model.itm_scores(tokens, ids, mask),
            rtol=0,
            atol=1e-6,
        )
    assert float(loaded.temperature.detach()) == float(model.temperature.detach())
    assert AutoConfig.from_pretrained(folder, trust_remote_code=True).num_fusion_layers == 1


def test_fresh_isolated_process_loads_with_trust_remote_code(tmp_path):
    model, processor, folder = _save(tmp_path)
    images, captions = caption_batch(3)
    image_paths = []
    for i, image in enumerate(images):
        path = tmp_path / f"image{i}.png"
        image.save(path)
        image_paths.append(str(path))
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"images": image_paths, "captions": captions}))
    out = tmp_path / "out.safetensors"
    script = tmp_path / "fresh.py"
    script.write_text(FRESH_SCRIPT)
    workdir = tmp_path / "empty"
    workdir.mkdir()

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_MODULES_CACHE=str(tmp_path / "modules"),
        HF_HOME=str(tmp_path / "hf_home"),
        TOKENIZERS_PARALLELISM="false",
    )
    result = subprocess.run(
        [sys.executable, "-I", str(script), str(folder), str(inputs), str(out)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["config"] == "CCRConfig" and info["model"] == "CCRModel" and info["processor"] == "CCRProcessor"
    assert info["model_module"].startswith("transformers_modules.")  # really the copied remote code
    assert info["image_processor"] == "ViTImageProcessorPil"
    assert "torchvision" not in result.stderr.lower()
    assert os.path.isdir(tmp_path / "modules")

    fresh = load_file(str(out))
    batch = processor(images=images, captions=captions)
    assert torch.equal(fresh["input_ids"], batch["input_ids"])
    assert torch.equal(fresh["text_image_ids"], batch["text_image_ids"])
    torch.testing.assert_close(fresh["pixel_values"], batch["pixel_values"], rtol=0, atol=1e-6)
    with torch.no_grad():
        image_features = model.get_image_features(batch["pixel_values"])
        text_features = model.get_text_features(batch["input_ids"], batch["attention_mask"])
        loss_itc = model(**batch, return_loss=True).loss_itc
    assert (fresh["image_features"] - image_features).abs().max() <= 1e-6
    assert (fresh["text_features"] - text_features).abs().max() <= 1e-6
    assert abs(float(fresh["loss_itc"]) - float(loss_itc)) <= 1e-5
