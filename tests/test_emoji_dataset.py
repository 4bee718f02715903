"""EmojiCCR: the committed parquet files, their loader, and the build script on synthetic inputs (offline)."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import re
import sys
import tarfile
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict
from PIL import Image

from modeling_ccr.dataset_schema import check_ccr_dataset, dataset_languages
from modeling_ccr.emoji_dataset import (
    EMOJI_CCR_DIR,
    EMOJI_CCR_FEATURES,
    EMOJI_CCR_LANGUAGES,
    EMOJI_CCR_SPLITS,
    emoji_training_texts,
    load_emoji_ccr,
)

REPO = Path(__file__).resolve().parents[1]


def _load_build_script():
    spec = importlib.util.spec_from_file_location("build_emoji_dataset", REPO / "hub_scripts" / "build_emoji_dataset.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build = _load_build_script()


@pytest.fixture(scope="module")
def emoji() -> DatasetDict:
    return load_emoji_ccr()


# ------------------------------------------------------------------------------------- committed data
def test_schema_and_splits(emoji):
    assert isinstance(emoji, DatasetDict) and tuple(emoji) == EMOJI_CCR_SPLITS
    for name, split in emoji.items():
        assert split.features == EMOJI_CCR_FEATURES, name
        check_ccr_dataset(split, name)
        assert dataset_languages(split) == sorted(EMOJI_CCR_LANGUAGES)
    assert len(emoji["train"]) > 1000 and len(emoji["validation"]) > 100 and len(emoji["test"]) > 100


def test_every_row_has_every_language_name_first(emoji):
    for split in emoji.values():
        for image_id, captions in zip(split["image_id"], split["captions"]):
            languages = [c["language"] for c in captions]
            assert set(languages) == set(EMOJI_CCR_LANGUAGES), image_id
            assert all(c["text"].strip() for c in captions), image_id
            # per language: the name, optionally followed by the keywords joined with " | "
            for lang in EMOJI_CCR_LANGUAGES:
                texts = [c["text"] for c in captions if c["language"] == lang]
                assert 1 <= len(texts) <= 2 and " | " not in texts[0], (image_id, texts)


def test_splits_are_disjoint_by_emoji_and_stratified(emoji):
    ids = {name: set(split["image_id"]) for name, split in emoji.items()}
    assert all(len(ids[name]) == len(emoji[name]) for name in ids), "duplicate image_id inside a split"
    assert not ids["train"] & ids["validation"]
    assert not ids["train"] & ids["test"]
    assert not ids["validation"] & ids["test"]
    categories = set(emoji["train"]["category"])
    for name in ("validation", "test"):
        for category in categories:
            total = sum(split["category"].count(category) for split in (emoji[s] for s in EMOJI_CCR_SPLITS))
            share = emoji[name]["category"].count(category) / total
            assert abs(share - 0.1) <= 0.5 / total + 1e-9, (name, category, share)


def test_images_decode(emoji):
    for image in emoji["test"]["image"]:
        assert isinstance(image, Image.Image) and image.size == (64, 64)
    first = emoji["train"][0]["image"]
    first.load()
    assert first.mode in ("RGBA", "RGB", "P")


def test_red_apple_in_train_with_names(emoji):
    train = emoji["train"]
    index = train["image_id"].index("1f34e")
    row = train[index]
    assert row["emoji"] == "🍎" and row["category"] == "Food & Drink"
    names = {}
    for caption in row["captions"]:
        names.setdefault(caption["language"], caption["text"])
    assert names["en"] == "red apple"
    assert names["de"] == "roter Apfel"
    assert names["fr"] == "pomme rouge"
    assert names["zh"] == "红苹果"
    assert "1f34e" not in emoji["test"]["image_id"]


def test_single_split_and_training_texts(emoji):
    test = load_emoji_ccr("test")
    assert isinstance(test, Dataset) and test["image_id"] == emoji["test"]["image_id"]
    texts = emoji_training_texts(emoji)
    assert len(texts) == sum(len(c) for c in emoji["train"]["captions"])
    assert "红苹果" in texts and "roter Apfel" in texts
    test_only = set(emoji["test"]["image_id"])
    assert not test_only & set(emoji["train"]["image_id"])
    assert emoji_training_texts(emoji["train"], languages=["zh"]) == [
        c["text"] for cs in emoji["train"]["captions"] for c in cs if c["language"] == "zh"
    ]


def test_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown EmojiCCR split"):
        load_emoji_ccr("dev")
    with pytest.raises(FileNotFoundError, match="build_emoji_dataset"):
        load_emoji_ccr("train", data_dir=tmp_path)
    with pytest.raises(TypeError):
        emoji_training_texts(["a", "b"])


def test_loading_writes_nothing_into_the_repo(emoji):
    assert sorted(p.name for p in EMOJI_CCR_DIR.iterdir()) == [
        "LICENSE-CLDR.txt", "SOURCES.md", "test.parquet", "train.parquet", "validation.parquet"
    ]


def test_committed_files_small_and_hashes_recorded():
    sizes = sum(p.stat().st_size for p in EMOJI_CCR_DIR.iterdir())
    assert sizes <= 15 * 1024 * 1024
    sources = (EMOJI_CCR_DIR / "SOURCES.md").read_text(encoding="utf-8")
    recorded = dict(re.findall(r"\| (\w+\.parquet) \| `([0-9a-f]{64})` \|", sources))
    assert sorted(recorded) == ["test.parquet", "train.parquet", "validation.parquet"]
    for name, digest in recorded.items():
        assert hashlib.sha256((EMOJI_CCR_DIR / name).read_bytes()).hexdigest() == digest, name
    assert "Apache License 2.0" in sources and "Unicode-3.0" in sources


# --------------------------------------------------------------------- build script, synthetic inputs
def _png(color: tuple[int, int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (4, 4), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _synthetic_sources():
    """12 emoji in 2 categories, one missing its Czech name, one FE0F-qualified, plus a skin-tone swatch."""
    records, images = [], {}
    for i in range(12):
        unified = f"1F{0x400 + i:03X}"
        records.append(
            {"unified": unified, "non_qualified": None, "sort_order": 12 - i, "category": "A" if i < 8 else "B",
             "subcategory": "s"}
        )
        images[unified.lower()] = _png((i * 20, 0, 0, 255))
    records.append({"unified": "2764-FE0F", "non_qualified": "2764", "sort_order": 100, "category": "B",
                    "subcategory": "heart"})
    images["2764-fe0f"] = _png((255, 0, 0, 255))
    records.append({"unified": "1F3FB", "non_qualified": None, "sort_order": 101, "category": "Component",
                    "subcategory": "skin-tone"})
    images["1f3fb"] = _png((250, 220, 200, 255))
    annotations = {}
    for lang in ("en", "zh"):
        entries = {}
        for record in records:
            key = "".join(chr(int(p, 16)) for p in record["unified"].split("-")).replace("\ufe0f", "")
            entries[key] = {"tts": [f"{lang} {record['unified']}"], "default": [f"{lang} kw1", f"{lang} kw2"]}
        annotations[lang] = entries
    del annotations["zh"][chr(0x1F40B)]  # no Chinese name: the row must be dropped
    annotations["en"][chr(0x1F400)]["default"] = ["en 1F400"]  # keywords equal to the name: no 2nd caption
    return records, images, annotations


def test_build_rows_rules():
    records, images, annotations = _synthetic_sources()
    rows = build.build_rows(records, images, annotations, languages=("en", "zh"))
    ids = [row["image_id"] for row in rows]
    assert "1f40b" not in ids and "1f3fb" not in ids  # missing language, skin-tone swatch
    assert "2764-fe0f" in ids and ids[:2] == ["1f40a", "1f409"]  # FE0F matched; emoji.json sort order
    apple_like = rows[ids.index("1f400")]["captions"]
    assert apple_like == [
        {"language": "en", "text": "en 1F400"},
        {"language": "zh", "text": "zh 1F400"},
        {"language": "zh", "text": "zh kw1 | zh kw2"},
    ]


def test_split_rows_disjoint_stratified_pinned():
    records, images, annotations = _synthetic_sources()
    rows = build.build_rows(records, images, annotations, languages=("en", "zh"))
    splits = build.split_rows(rows, seed=0, pinned=("1f401",))
    ids = {name: [r["image_id"] for r in split] for name, split in splits.items()}
    assert sorted(sum(ids.values(), [])) == sorted(r["image_id"] for r in rows)
    assert "1f401" in ids["train"]
    assert [r["category"] for r in splits["test"]].count("A") == 1  # round(8 * 10 %)
    other = build.split_rows(rows, seed=1, pinned=())
    assert any(ids[n] != [r["image_id"] for r in other[n]] for n in ids)  # the seed matters


def test_build_is_byte_for_byte_deterministic(tmp_path):
    records, images, annotations = _synthetic_sources()
    hashes = []
    for run in ("a", "b"):
        rows = build.build_rows(records, images, annotations, languages=("en", "zh"))
        splits = build.split_rows(rows, seed=0)
        hashes.append(build.write_dataset(splits, tmp_path / run, seed=0, cldr_license=b"licence"))
        assert sorted(p.name for p in (tmp_path / run).iterdir()) == [
            "LICENSE-CLDR.txt", "SOURCES.md", "test.parquet", "train.parquet", "validation.parquet"
        ]
    assert hashes[0] == hashes[1]
    for name in ("SOURCES.md", "train.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    loaded = load_emoji_ccr(data_dir=tmp_path / "a")
    assert loaded["train"].features == EMOJI_CCR_FEATURES
    assert sum(len(s) for s in loaded.values()) == 12  # 11 complete emoji + the heart


def test_tarball_reading_and_integrity(tmp_path):
    records, images, annotations = _synthetic_sources()

    def tgz(path: Path, files: dict[str, bytes]) -> Path:
        with tarfile.open(path, "w:gz") as archive:
            for name, data in files.items():
                info = tarfile.TarInfo(f"package/{name}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        return path

    emoji_tgz = tgz(tmp_path / "e.tgz", {"emoji.json": json.dumps(records).encode(),
                                         **{f"img/google/64/{k.upper()}.png": v for k, v in images.items()}})
    cldr_tgz = tgz(tmp_path / "c.tgz", {
        f"annotations/{lang}/annotations.json": json.dumps({"annotations": {"annotations": a}}).encode()
        for lang, a in annotations.items()
    })
    got_records, got_images, got_annotations = build.load_sources(emoji_tgz, cldr_tgz, languages=("en", "zh"))
    assert got_records == records and got_images == images and got_annotations == annotations
    with pytest.raises(ValueError, match="has no"):
        build.load_sources(emoji_tgz, cldr_tgz, languages=("en", "fr"))
    with pytest.raises(ValueError, match="integrity"):
        build.verify_integrity(emoji_tgz, build.EMOJI_PACKAGE)
