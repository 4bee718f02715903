"""Loaders: tiny fixtures written in the exact upstream formats, and clear errors naming file and line."""

import base64
import csv
import gzip
import hashlib
import io
import json
from pathlib import Path

import pytest
from datasets import Dataset
from PIL import Image

from modeling_ccr.dataset_schema import CCR_FEATURES, check_ccr_dataset, dataset_languages
from modeling_ccr.loaders import (
    detect_format,
    load_ccr_dataset,
    load_coco_json,
    load_multi30k,
    load_wit,
    load_xflickrco,
)


def _png(path: Path, colour=None) -> Path:
    """A 2x2 PNG; its colour derives from the file name, so different files never have identical bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = colour or tuple(hashlib.sha256(path.name.encode()).digest()[:3])
    Image.new("RGB", (2, 2), colour).save(path)
    return path


def _png_bytes(colour=(10, 200, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def _captions(dataset, image_id):
    row = dataset[dataset["image_id"].index(image_id)]
    return sorted((c["language"], c["text"]) for c in row["captions"])


def _check(dataset, n_rows, languages):
    assert isinstance(dataset, Dataset) and dataset.features == CCR_FEATURES
    check_ccr_dataset(dataset)
    assert len(dataset) == n_rows
    assert dataset_languages(dataset) == languages
    assert dataset[0]["image"].size == (2, 2)  # decodes lazily, on access


# -------------------------------------------------------------------------------------------- xFlickr&CO


@pytest.fixture
def xflickrco(tmp_path):
    root = tmp_path / "xFlickrCO"
    for name in ("1007129816.jpg", "1009434119.jpg", "COCO_val2014_000000000042.jpg"):
        _png(root / "images" / name)
    _jsonl(root / "annotations" / "en" / "test.jsonl", [
        {"sentences": ["A man with pierced ears is wearing glasses and an orange hat."], "id": "1007129816", "img_path": "1007129816.jpg"},
        {"sentences": ["A black and white dog is running in a grassy garden."], "id": "1009434119", "img_path": "1009434119.jpg"},
        {"sentences": ["A bus parked on a street."], "id": "42", "img_path": "COCO_val2014_000000000042.jpg"},
    ])
    _jsonl(root / "annotations" / "ja" / "test.jsonl", [
        {"sentences": ["耳ピアスをした男が、メガネをかけてオレンジ色の帽子をかぶっている。"], "id": "1007129816", "img_path": "1007129816.jpg"},
        {"sentences": ["黒と白の犬が、草で覆われた庭を走っている。"], "id": "1009434119", "img_path": "1009434119.jpg"},
    ])
    _jsonl(root / "annotations" / "de" / "test.jsonl", [
        {"sentences": ["Ein Bus parkt auf einer Straße."], "id": "42", "img_path": "COCO_val2014_000000000042.jpg"},
    ])
    _jsonl(root / "annotations" / "de" / "train_5.jsonl", [
        {"sentences": ["ein hund trinkt aus einen wasseranschluss"], "id": "1009434119", "img_path": "1009434119.jpg"},
    ])
    return root


def test_xflickrco_merges_languages_by_id(xflickrco):
    dataset = load_xflickrco(xflickrco, image_root=xflickrco / "images")
    _check(dataset, 3, ["de", "en", "ja"])
    assert [lang for lang, _ in _captions(dataset, "1007129816")] == ["en", "ja"]
    assert _captions(dataset, "42") == [("de", "Ein Bus parkt auf einer Straße."), ("en", "A bus parked on a street.")]
    train = load_ccr_dataset(xflickrco, split="train_5")
    _check(train, 1, ["de"])
    only = load_ccr_dataset(xflickrco, languages=["ja"])
    _check(only, 2, ["ja"])


def test_xflickrco_errors_name_file_and_line(xflickrco):
    (xflickrco / "images" / "1009434119.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"en/test\.jsonl:2: image file .*1009434119\.jpg does not exist"):
        load_xflickrco(xflickrco, languages=["en"])
    with pytest.raises(ValueError, match=r"unknown language\(s\) \['fr'\].*available: \['de', 'en', 'ja'\]"):
        load_xflickrco(xflickrco, languages=["fr"])
    _png(xflickrco / "images" / "1009434119.jpg")
    path = xflickrco / "annotations" / "en" / "test.jsonl"
    path.write_text(path.read_text() + '{"sentences": ["x"], "img_path": "1007129816.jpg"}\n')
    with pytest.raises(ValueError, match=r"en/test\.jsonl:4: malformed row, missing field 'id'"):
        load_xflickrco(xflickrco, languages=["ja", "en"])
    path.write_text('{"sentences": "not a list", "id": 1, "img_path": "1007129816.jpg"}\n{broken\n')
    with pytest.raises(ValueError, match=r"test\.jsonl:1: malformed row, field 'sentences' should be list"):
        load_xflickrco(xflickrco, languages=["en"])
    path.write_text('{"sentences": ["ok"], "id": 1, "img_path": "1007129816.jpg"}\n{broken\n')
    with pytest.raises(ValueError, match=r"test\.jsonl:2: malformed row, not valid JSON"):
        load_xflickrco(xflickrco, languages=["en"])


def test_same_id_with_two_images_is_an_error(xflickrco):
    _jsonl(xflickrco / "annotations" / "ja" / "test.jsonl", [
        {"sentences": ["バス"], "id": "42", "img_path": "1007129816.jpg"},
    ])
    with pytest.raises(ValueError, match=r"ja/test\.jsonl:1: image id '42' points to"):
        load_xflickrco(xflickrco)


# -------------------------------------------------------------------------------------------------- WIT


def _wit_row(idx, url_name, caption, lang, wit_ix):
    return {
        "image_idx": idx,
        "image_url": f"https://upload.wikimedia.org/wikipedia/commons/5/57/{url_name}",
        "meta_url": f"http://commons.wikimedia.org/wiki/File:{url_name}",
        "caption_reference_description": caption,
        "language": lang,
        "page_url": f"https://{lang}.wikipedia.org/wiki/Page",
        "wit_ix": wit_ix,
    }


def test_wit_iglue_format(tmp_path):
    root = tmp_path / "wit"
    _png(root / "images" / "Karviná-ORP.png")
    _png(root / "images" / "216.jpg")
    _jsonl(root / "annotations" / "test_bg.jsonl", [
        _wit_row(37, "Karvin%C3%A1-ORP.png", "Административно деление на окръга", "bg", "wit-test_8"),
        _wit_row(216, "Eleonore.jpg", "Елеонора Шарлота от Курландия", "bg", "wit-test_50"),
        _wit_row(216, "Eleonore.jpg", "Елеонора Шарлота (1686 – 1748)", "bg", "wit-test_50"),
        _wit_row(300, "Empty.jpg", "", "bg", "wit-test_51"),  # empty caption: skipped like the reference code
    ])
    _jsonl(root / "annotations" / "test_en.jsonl", [
        _wit_row(37, "Karvin%C3%A1-ORP.png", "Administrative division of the district", "en", "wit-test_8"),
        {**_wit_row(999, "Inline.jpg", "an image shipped inline", "en", "wit-test_99"),
         "image_content": base64.b64encode(_png_bytes()).decode()},
    ])
    dataset = load_ccr_dataset(root)
    assert detect_format(root) == "wit"
    _check(dataset, 3, ["bg", "en"])
    karvina = dataset[dataset["image_id"].index("/wikipedia/commons/5/57/Karvin%C3%A1-ORP.png")]
    assert sorted(c["language"] for c in karvina["captions"]) == ["bg", "en"]
    eleonore = [row for row in dataset if row["image_id"].endswith("Eleonore.jpg")][0]
    assert len(eleonore["captions"]) == 2
    inline = [row for row in dataset if row["image_id"].endswith("Inline.jpg")][0]
    assert inline["image"].size == (2, 2)
    single = load_ccr_dataset(root / "annotations" / "test_en.jsonl", image_root=root / "images")
    _check(single, 2, ["en"])

    _jsonl(root / "annotations" / "test_bg.jsonl", [_wit_row(1, "Missing.jpg", "липсва", "bg", "wit-test_1")])
    with pytest.raises(FileNotFoundError, match=r"test_bg\.jsonl:1: no image file for"):
        load_wit(root, languages=["bg"])
    _jsonl(root / "annotations" / "test_bg.jsonl", [_wit_row(216, "Eleonore.jpg", "текст", "en", "wit-test_1")])
    with pytest.raises(ValueError, match=r"test_bg\.jsonl:1: row language 'en' differs"):
        load_wit(root, languages=["bg"])


# --------------------------------------------------------------------------------------------- Multi30K


@pytest.fixture
def multi30k(tmp_path):
    root = tmp_path / "multi30k"
    task = root / "data" / "task1"
    names = ["1000092795.jpg", "10002456.jpg", "1000268201.jpg"]
    for name in names:
        _png(tmp_path / "flickr30k-images" / name)
    (task / "image_splits").mkdir(parents=True)
    (task / "image_splits" / "test_2016_flickr.txt").write_text("\n".join(names) + "\n")
    (task / "raw").mkdir()
    (task / "raw" / "test_2016_flickr.en").write_text(
        "Two young guys with shaggy hair look at their hands.\nSeveral men in hard hats are operating a pulley.\n"
        "A child in a pink dress is climbing up stairs.\n"
    )
    with gzip.open(task / "raw" / "test_2016_flickr.de.gz", "wt", encoding="utf-8") as handle:
        handle.write("Zwei junge weiße Männer sind im Freien.\nMehrere Männer mit Schutzhelmen.\nEin Kind in einem rosa Kleid.\n")
    (task / "raw" / "test_2016_flickr.lc.norm.tok.en").write_text("ignored\n")  # not a raw language file
    return root, tmp_path / "flickr30k-images"


def test_multi30k(multi30k):
    root, images = multi30k
    dataset = load_ccr_dataset(root, image_root=images)
    assert detect_format(root) == "multi30k"
    _check(dataset, 3, ["de", "en"])
    assert _captions(dataset, "10002456.jpg") == [
        ("de", "Mehrere Männer mit Schutzhelmen."), ("en", "Several men in hard hats are operating a pulley."),
    ]
    raw = root / "data" / "task1" / "raw" / "test_2016_flickr.en"
    raw.write_text("only one line\n")
    with pytest.raises(ValueError, match=r"test_2016_flickr\.en has 1 lines but .*test_2016_flickr\.txt lists 3"):
        load_multi30k(root, image_root=images)
    (images / "10002456.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"test_2016_flickr\.txt:2: image file .*10002456\.jpg"):
        load_multi30k(root, image_root=images, languages=["de"])


# ----------------------------------------------------------------------------------------- COCO-style


def test_coco_json_train_and_eval_forms(tmp_path):
    folder = tmp_path / "mscoco"
    _png(tmp_path / "images" / "val2014" / "COCO_val2014_000000000042.jpg")
    _png(tmp_path / "images" / "val2014" / "COCO_val2014_000000000073.jpg")
    (folder).mkdir()
    (folder / "en.test.json").write_text(json.dumps([
        {"image": "val2014/COCO_val2014_000000000042.jpg", "caption": ["A bus.", "A big bus."], "image_id": 42},
        {"image": "val2014/COCO_val2014_000000000073.jpg", "caption": ["A motorcycle."], "image_id": 73},
    ]))
    (folder / "zh.test.json").write_text(json.dumps([
        {"image": "val2014/COCO_val2014_000000000042.jpg", "caption": ["一辆公共汽车。"], "image_id": 42},
    ], ensure_ascii=False))
    (folder / "ja.train.json").write_text(json.dumps([
        {"caption": "バス", "image": "val2014/COCO_val2014_000000000042.jpg", "image_id": 42},
        {"caption": "大きなバス", "image": "val2014/COCO_val2014_000000000042.jpg", "image_id": 42},
        {"caption": "バイク", "image": "val2014/COCO_val2014_000000000073.jpg", "image_id": 73},
    ], ensure_ascii=False))
    test = load_ccr_dataset(folder, image_root=tmp_path / "images")
    assert detect_format(folder) == "coco"
    _check(test, 2, ["en", "zh"])
    assert _captions(test, "42") == [("en", "A big bus."), ("en", "A bus."), ("zh", "一辆公共汽车。")]
    train = load_coco_json(folder, split="train", image_root=tmp_path / "images")
    _check(train, 2, ["ja"])
    assert len(_captions(train, "42")) == 2
    (folder / "zh.test.json").write_text(json.dumps([{"image": "val2014/COCO_val2014_000000000042.jpg"}]))
    with pytest.raises(ValueError, match=r"zh\.test\.json: entry 0: malformed row, missing field 'caption'"):
        load_coco_json(folder, image_root=tmp_path / "images")


# ---------------------------------------------------------------------------------------- plain formats


def test_csv_jsonl_folder_and_parquet(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    with open(tmp_path / "pairs.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "text", "language"])
        writer.writerows([["a.png", "a red square", "en"], ["a.png", "ein rotes Quadrat", "de"], ["b.png", "another", "en"]])
    from_csv = load_ccr_dataset(tmp_path / "pairs.csv")
    _check(from_csv, 2, ["de", "en"])
    _jsonl(tmp_path / "rows.jsonl", [
        {"image": "a.png", "image_id": "A", "captions": [{"language": "en", "text": "red"}, {"language": "fr", "text": "rouge"}]},
        {"image": "b.png", "text": "blue", "language": "en"},
    ])
    from_jsonl = load_ccr_dataset(tmp_path / "rows.jsonl")
    _check(from_jsonl, 2, ["en", "fr"])
    assert _captions(from_jsonl, "A") == [("en", "red"), ("fr", "rouge")]

    folder = tmp_path / "folder"
    _png(folder / "x.png")
    _jsonl(folder / "metadata.jsonl", [{"file_name": "x.png", "text": "x marks", "language": "en"}])
    assert detect_format(folder) == "imagefolder"
    _check(load_ccr_dataset(folder), 1, ["en"])

    parquet_dir = tmp_path / "canonical"
    parquet_dir.mkdir()
    from_csv.to_parquet(str(parquet_dir / "test.parquet"))
    from_parquet = load_ccr_dataset(parquet_dir, languages=["de"])
    _check(from_parquet, 1, ["de"])


def test_plain_format_errors(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "bad.csv").write_text("image,text,language\na.png,fine,en\na.png,bad code,english!\n")
    with pytest.raises(ValueError, match=r"bad\.csv:3: unknown language code 'english!'"):
        load_ccr_dataset(tmp_path / "bad.csv")
    (tmp_path / "missing.csv").write_text("image,text,language\nnope.png,text,en\n")
    with pytest.raises(FileNotFoundError, match=r"missing\.csv:2: image file .*nope\.png does not exist"):
        load_ccr_dataset(tmp_path / "missing.csv")
    (tmp_path / "nofield.jsonl").write_text('{"image": "a.png", "language": "en"}\n')
    with pytest.raises(ValueError, match=r"nofield\.jsonl:1: malformed row, needs one of the fields \['text', 'caption'\]"):
        load_ccr_dataset(tmp_path / "nofield.jsonl")
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="unknown format"):
        load_ccr_dataset(tmp_path / "stuff")
    with pytest.raises(ValueError, match="unknown format"):
        load_ccr_dataset(tmp_path / "stuff" / "notes.txt")


# ------------------------------------------------------------------------------ registry and languages


def test_every_format_is_one_registry_entry_and_unknown_paths_list_them(tmp_path):
    from modeling_ccr.loaders import FORMATS

    assert len({f.name for f in FORMATS}) == len(FORMATS)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown format") as error:
        detect_format(tmp_path / "notes.txt")
    for fmt in FORMATS:
        assert fmt.description in str(error.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_ccr_dataset(tmp_path / "missing")


def test_language_filter_is_shared_by_loaders_and_train_splits(xflickrco):
    from modeling_ccr.dataset_schema import filter_languages

    full = load_xflickrco(xflickrco)
    ja = filter_languages(full, ["ja"])
    _check(ja, 2, ["ja"])
    assert ja["image_id"] == load_xflickrco(xflickrco, languages=["ja"])["image_id"]
    with pytest.raises(ValueError, match=r"unknown language\(s\) \['xx'\]"):
        filter_languages(full, ["xx"], name="split 'train'")
    assert len(filter_languages(full, ["ja", "xx"], strict=False)) == 2  # a split may lack a language
    with pytest.raises(ValueError, match="no image with a caption"):
        filter_languages(full, ["xx"], strict=False)
