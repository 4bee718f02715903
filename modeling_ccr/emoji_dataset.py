"""EmojiCCR, the small cross-lingual image-text dataset that ships in ``data/emoji_ccr/``.

Noto Emoji images with their human-written Unicode CLDR names and keywords in en, de, fr, cs, zh, ja
(built by ``hub_scripts/build_emoji_dataset.py``; sources and licences in ``data/emoji_ccr/SOURCES.md``).
It is what the main command and the tests train on, so it must load offline and without writing into
the repository: ``datasets`` prepares it in its own cache (``HF_DATASETS_CACHE``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from datasets import Dataset, DatasetDict, Features, Value, load_dataset

from .dataset_schema import CCR_FEATURES
from .shipped_files import shipped_path

EMOJI_CCR_DIR = shipped_path("data/emoji_ccr")
EMOJI_CCR_SPLITS = ("train", "validation", "test")
EMOJI_CCR_LANGUAGES = ("en", "de", "fr", "cs", "zh", "ja")
EMOJI_CCR_FEATURES = Features(
    {
        **CCR_FEATURES,
        "emoji": Value("string"),
        "category": Value("string"),
        "subcategory": Value("string"),
    }
)


def load_emoji_ccr(split: str | None = None, data_dir: str | Path | None = None) -> Dataset | DatasetDict:
    """EmojiCCR as a ``Dataset`` for one split, or a ``DatasetDict`` of all three when ``split`` is None.

    Columns: ``image``, ``image_id``, ``captions`` (the canonical CCR form) plus ``emoji``, ``category``
    and ``subcategory``. ``data_dir`` defaults to the shipped ``data/emoji_ccr`` (in the installed package,
    or at the top of a source checkout).
    """
    if split is not None and split not in EMOJI_CCR_SPLITS:
        raise ValueError(f"unknown EmojiCCR split {split!r}; expected one of {EMOJI_CCR_SPLITS} or None")
    folder = Path(data_dir) if data_dir is not None else EMOJI_CCR_DIR
    wanted = EMOJI_CCR_SPLITS if split is None else (split,)
    files = {name: folder / f"{name}.parquet" for name in wanted}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"EmojiCCR parquet file(s) missing: {missing}. Rebuild them with "
            "`python hub_scripts/build_emoji_dataset.py` (needs the npm registry)."
        )
    loaded = load_dataset(
        "parquet",
        data_files={name: str(path) for name, path in files.items()},
        features=EMOJI_CCR_FEATURES,
    )
    return loaded[split] if split is not None else loaded


def emoji_training_texts(dataset: Dataset | DatasetDict, languages: Iterable[str] | None = None) -> list[str]:
    """All caption texts of ``dataset`` (its ``train`` split when given a ``DatasetDict``), in row order.

    Meant for training a tokenizer on the training captions only, so validation/test text stays unseen.
    """
    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            raise ValueError(f"DatasetDict has no 'train' split (splits: {list(dataset)})")
        dataset = dataset["train"]
    if not isinstance(dataset, Dataset):
        raise TypeError(f"expected a datasets.Dataset or DatasetDict, got {type(dataset).__name__}")
    if "captions" not in dataset.column_names:
        raise ValueError("dataset has no 'captions' column; expected the canonical CCR form")
    keep = set(languages) if languages is not None else None
    return [
        caption["text"]
        for captions in dataset.select_columns(["captions"])["captions"]
        for caption in captions
        if keep is None or caption["language"] in keep
    ]
