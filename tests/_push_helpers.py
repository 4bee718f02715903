"""Fixtures for the publishing tests: folders to publish and a fresh Python process to load them from.

Why a fresh process: a Hub user does not have this package. `python -I` from an empty folder, without
PYTHONPATH, cannot import `modeling_ccr`, so whatever loads there came from the (fake) Hub.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_test_push_token_0123456789"  # the fake Hub's only valid token (user "ns")
USER = "ns"


def eval_results(languages=("en", "de", "zh")) -> dict:
    """An eval_results.json payload in the layout of modeling_ccr/results.py (what retrieval_metrics writes)."""
    recall = {d: {lang: {"R@1": 10.0 + i, "R@5": 40.0 + i, "R@10": 60.0 + i} for i, lang in enumerate(languages)}
              for d in ("TR", "IR")}
    return {
        "languages": list(languages), "num_images": 30, "num_texts": 90,
        "recall": recall,
        "recall_avg": {d: {"R@1": 11.0, "R@5": 41.0, "R@10": 61.0} for d in ("TR", "IR")},
        "mean_recall": 37.67, "mrv": {"TR": 1.25, "IR": 2.5}, "mrv_variant": "variance",
        "chance": {d: {"R@1": 3.3, "R@5": 16.7, "R@10": 33.3} for d in ("TR", "IR")},
        "dataset": "emoji_ccr", "split": "test", "model": "tiny",
    }


def write_plain_model_folder(folder: Path) -> Path:
    """A complete model folder: a tiny model's config.json and weights, the rest plain files: for the fast checks."""
    import shutil
    import tempfile

    from conftest import make_model

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as saved:
        make_model(projection_dim=8).save_pretrained(saved)
        for name in ("config.json", "model.safetensors"):
            shutil.copy(Path(saved) / name, folder / name)
    (folder / "configuration_ccr.py").write_text("class CCRConfig:\n    pass\n")
    (folder / "modeling_ccr.py").write_text("from .configuration_ccr import CCRConfig\n\n\nclass CCRModel:\n    pass\n")
    (folder / "processing_ccr.py").write_text("class CCRProcessor:\n    pass\n")
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0"}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 16}))
    (folder / "processor_config.json").write_text(json.dumps(
        {"auto_map": {"AutoProcessor": "processing_ccr.CCRProcessor"}, "processor_class": "CCRProcessor",
         "image_processor": {"image_processor_type": "ViTImageProcessor", "size": {"height": 16, "width": 16}}}))
    (folder / "eval_results.json").write_text(json.dumps(eval_results()))
    (folder / "training_args.bin").write_bytes(b"\x80\x04pickle")
    (folder / "checkpoint-10").mkdir(exist_ok=True)
    (folder / "checkpoint-10" / "model.safetensors").write_bytes(b"old")
    return folder


METRIC_SCRIPT = '''\
"""A small evaluate module used only by the tests: mean over rows of the population variance of ranks."""

import datasets
import evaluate

from .ranks_core import row_variance_mean


class MRV(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="test MRV",
            citation="",
            inputs_description="ranks: one row of per-language ranks per instance",
            features=datasets.Features({"ranks": datasets.Sequence(datasets.Value("float64"))}),
        )

    def _compute(self, ranks):
        return {"mrv": row_variance_mean(ranks)}
'''

METRIC_CORE = '''\
def row_variance_mean(rows):
    """Mean over rows of the population variance of each row (pure Python)."""
    out = []
    for row in rows:
        mean = sum(row) / len(row)
        out.append(sum((x - mean) ** 2 for x in row) / len(row))
    return sum(out) / len(out)
'''


def write_test_metric_folder(root: Path) -> Path:
    """An evaluate module folder `mrv/` whose helper module is a symlink to a file outside the folder,
    like evaluate_metrics/mrv/mrv_core.py -> modeling_ccr/mrv_core.py."""
    folder = root / "mrv"
    folder.mkdir(parents=True)
    (folder / "mrv.py").write_text(METRIC_SCRIPT)
    (root / "shared_core.py").write_text(METRIC_CORE)
    (folder / "ranks_core.py").symlink_to(Path("..") / "shared_core.py")
    (folder / "README.md").write_text("---\ntitle: MRV\ntags:\n- evaluate\n---\n\n# MRV (test module)\n")
    (folder / "requirements.txt").write_text("evaluate\ndatasets\n")
    return folder


def fresh_env(hub_url: str, home: Path, token: str | None = TOKEN) -> dict[str, str]:
    """Environment of a user's machine: only the Hub endpoint, a private HF_HOME and the token."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "HF_HOME": str(home / "hf"),
           "HF_ENDPOINT": hub_url, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_UPDATE_DOWNLOAD_COUNTS": "0",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def run_fresh(code: str, hub_url: str, workdir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `code` with `python -I` in the empty folder `workdir` (no PYTHONPATH: modeling_ccr not importable)."""
    workdir.mkdir(parents=True, exist_ok=True)
    prelude = textwrap.dedent("""\
        import importlib.util, sys
        assert importlib.util.find_spec("modeling_ccr") is None, "modeling_ccr must not be importable here"
        """)
    return subprocess.run([sys.executable, "-I", "-c", prelude + textwrap.dedent(code)], cwd=workdir,
                          env=fresh_env(hub_url, workdir), capture_output=True, text=True, timeout=timeout)


def run_push_cli(args: list[str], hub_url: str, home: Path, token: str | None = TOKEN,
                 timeout: float = 300) -> subprocess.CompletedProcess:
    """Run hub_scripts/push.py as a user would (its own process, HF_ENDPOINT pointing at the fake Hub)."""
    return subprocess.run([sys.executable, str(REPO_ROOT / "hub_scripts" / "push.py"), *args], cwd=REPO_ROOT,
                          env=fresh_env(hub_url, home, token), capture_output=True, text=True, timeout=timeout)


CAPTIONS = ["a red apple", "ein roter Apfel", "一个红苹果", "a dog in the park", "ein Hund im Park",
            "公园里的狗", "a smiling face", "ein lächelndes Gesicht", "笑脸"]
QUERIES = ["a red apple", "ein Hund im Park", "笑脸", "a smiling dog"]
IMAGE_CODE = """\
from PIL import Image
images = [Image.new("RGB", (40, 36), (200, 30, 30)), Image.new("RGB", (32, 48), (30, 160, 60)),
          Image.linear_gradient("L").resize((33, 35)).convert("RGB")]
"""


def write_real_model_folder(folder: Path):
    """A tiny CCRModel + CCRProcessor (tokenizer trained here) saved like hub_scripts/train.py saves one:
    save_pretrained, eval_results.json, README.md rendered from the template. Returns (model, processor)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, PreTrainedTokenizerFast, ViTConfig, ViTImageProcessorPil

    from modeling_ccr import CCRConfig, CCRModel, CCRProcessor
    from modeling_ccr.publishing import render_model_card

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(CAPTIONS, trainer=trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                        sep_token="[SEP]", mask_token="[MASK]", model_max_length=16)
    small = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 24}
    config = CCRConfig.from_vision_text_configs(
        ViTConfig(image_size=16, patch_size=8, **small),
        BertConfig(vocab_size=len(tokenizer), max_position_embeddings=32, pad_token_id=0, **small),
        projection_dim=8)
    torch.manual_seed(0)
    model = CCRModel(config).eval()
    processor = CCRProcessor(image_processor=ViTImageProcessorPil(size={"height": 16, "width": 16}),
                             tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "eval_results.json").write_text(json.dumps(eval_results()))
    render_model_card(folder).save(folder / "README.md")
    return model, processor


def embed(model, processor) -> dict[str, list]:
    """Image and query embeddings of the fixed inputs, as lists (what the fresh process prints)."""
    import torch

    scope: dict = {}
    exec(IMAGE_CODE, scope)
    with torch.no_grad():
        img = model.get_image_features(processor(images=scope["images"])["pixel_values"])
        batch = processor(text=QUERIES)
        txt = model.get_text_features(batch["input_ids"], batch["attention_mask"])
    return {"image": img.tolist(), "text": txt.tolist()}
