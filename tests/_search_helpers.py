"""A tiny CCR model trained for real, in seconds, on a small EmojiCCR gallery that holds the red apple."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from datasets import Dataset

from modeling_ccr.emoji_dataset import load_emoji_ccr
from modeling_ccr.trainer import CCRTrainer, CCRTrainingArguments

RED_APPLE = "1f34e"
GALLERY_SIZE = 24


def small_emoji_gallery() -> Dataset:
    """The fruit of EmojiCCR's training split (red apple, green apple, pear, ... the hard neighbours of the
    query "roter Apfel"), filled up with the first other emoji to GALLERY_SIZE images."""
    train = load_emoji_ccr("train").select_columns(["image", "image_id", "captions", "subcategory"])
    subcategories = train["subcategory"]
    fruit = [i for i, name in enumerate(subcategories) if name == "food-fruit"]
    others = [i for i, name in enumerate(subcategories) if name != "food-fruit"][: GALLERY_SIZE - len(fruit)]
    gallery = train.select(sorted(fruit + others)).remove_columns(["subcategory"])
    assert RED_APPLE in gallery["image_id"]
    return gallery


def train_tiny_model(out_dir: Path, gallery: Dataset, steps: int = 300, learning_rate: float = 3e-3) -> Path:
    """Train the tiny dual encoder of the trainer tests on ``gallery`` with CCRTrainer and save it (model and
    processor) the Hub way, loadable with AutoModel / AutoProcessor and trust_remote_code."""
    from conftest import tiny_model, tiny_processor

    processor = tiny_processor(gallery)
    model = tiny_model(processor, seed=0)
    args = CCRTrainingArguments(
        output_dir=str(out_dir / "run"), per_device_train_batch_size=len(gallery), learning_rate=learning_rate,
        max_steps=steps, logging_steps=steps, save_strategy="no", report_to="none", seed=0, disable_tqdm=True,
        use_cpu=True, warmup_steps=0, dataloader_num_workers=0,
    )
    CCRTrainer(model=model, args=args, train_dataset=gallery, processing_class=processor).train()
    model_dir = out_dir / "model"
    model.eval().save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    return model_dir


@functools.lru_cache(maxsize=1)
def trained_search_model() -> tuple[Path, Path]:
    """(model folder, gallery folder) trained once per test process and shared by the search, demo and app
    tests; the gallery is saved with ``save_to_disk``, one of the formats build_index.py reads."""
    root = Path(tempfile.mkdtemp(prefix="ccr-search-tests-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    gallery = small_emoji_gallery()
    gallery.save_to_disk(str(root / "gallery"))
    return train_tiny_model(root, gallery), root / "gallery"
