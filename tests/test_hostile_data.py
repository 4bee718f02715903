"""Hostile dataset files: each is refused with a ValueError / TypeError / FileNotFoundError naming the file (and
row), merged or warned about as documented in docs/hostile_input.md, never a silent wrong dataset and never
another exception type. The fixed cases first, then property-based malformed files (hypothesis)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from modeling_ccr.collator import CCRCollator
from modeling_ccr.dataset_schema import canonical_language, check_ccr_dataset, dataset_languages
from modeling_ccr.loaders import held_out_record, load_ccr_dataset, load_ccr_split

ROOT = Path(__file__).resolve().parents[1]
CLEAR = (ValueError, TypeError, FileNotFoundError)


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2), tuple(hashlib.sha256(str(path).encode()).digest()[:3])).save(path)
    return path


def _csv(path: Path, rows: list[str]) -> Path:
    path.write_text("image,text,language\n" + "".join(row + "\n" for row in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- image paths


@pytest.mark.parametrize("image", ["../secret.png", "sub/../../secret.png", "ABSOLUTE"])
def test_image_paths_that_leave_the_root_are_refused(tmp_path, image):
    secret = _png(tmp_path / "secret.png")
    data = tmp_path / "data"
    _png(data / "sub" / "a.png")
    image = str(secret) if image == "ABSOLUTE" else image
    path = _csv(data / "rows.csv", ["sub/a.png,fine,en", f"{image},leak,en"])
    with pytest.raises(ValueError, match=r"rows\.csv:3: image path .* (leaves the image root|is absolute)"):
        load_ccr_dataset(path)


def test_a_wit_url_cannot_name_a_file_outside_the_image_root(tmp_path):
    _png(tmp_path / "secret.png")
    _png(tmp_path / "wit" / "images" / "other.png")
    row = {"image_url": "https://x.org/%2E%2E%2F%2E%2E%2Fsecret.png", "caption_reference_description": "a", "language": "en"}
    (tmp_path / "wit" / "annotations").mkdir()
    (tmp_path / "wit" / "annotations" / "test_en.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(FileNotFoundError, match="test_en.jsonl:1: no image file"):
        load_ccr_dataset(tmp_path / "wit")


def test_one_file_under_several_names_is_one_gallery_entry(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    os.symlink(tmp_path / "a.png", tmp_path / "link.png")
    dataset = load_ccr_dataset(_csv(tmp_path / "rows.csv", ["a.png,one,en", "./a.png,two,en", "link.png,drei,de",
                                                            "b.png,other,en"]))
    assert len(dataset) == 2
    first = dataset[dataset["image_id"].index("a.png")]
    assert sorted(c["text"] for c in first["captions"]) == ["drei", "one", "two"]


def test_two_explicit_ids_for_one_file_are_refused(tmp_path):
    _png(tmp_path / "a.png")
    rows = [{"image": "a.png", "image_id": "1", "text": "x", "language": "en"},
            {"image": "./a.png", "image_id": "2", "text": "y", "language": "en"}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"rows\.jsonl:2: image ids '2' and '1' .* name the same image file"):
        load_ccr_dataset(tmp_path / "rows.jsonl")


def test_identical_bytes_under_two_files_are_kept_and_warned_about(tmp_path):
    Image.new("RGB", (2, 2), (1, 2, 3)).save(tmp_path / "a.png")
    Image.new("RGB", (2, 2), (1, 2, 3)).save(tmp_path / "copy.png")
    _png(tmp_path / "c.png")
    with pytest.warns(UserWarning, match=r"1 image\(s\) appear under several ids with identical bytes.*'a.png'.*'copy.png'"):
        dataset = load_ccr_dataset(_csv(tmp_path / "rows.csv", ["a.png,x,en", "copy.png,y,en", "c.png,z,en"]))
    assert len(dataset) == 3


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n garbage"])
def test_a_bad_image_file_is_named_at_load_time(tmp_path, content):
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(ValueError, match=r"rows\.csv:2: image file .*bad\.png is not a readable image"):
        load_ccr_dataset(_csv(tmp_path / "rows.csv", ["bad.png,x,en"]))


def test_a_truncated_image_is_named_when_encoded(tmp_path):
    from conftest import make_model, make_processor

    from modeling_ccr.retrieval import encode_images

    good = _png(tmp_path / "good.png")
    big = tmp_path / "big.png"
    Image.effect_noise((64, 64), 50).convert("RGB").save(big)
    big.write_bytes(big.read_bytes()[:200])  # the header opens, the pixels do not decode
    dataset = Dataset.from_dict({"image": [str(good), str(big)], "image_id": ["g", "b"]}).cast_column(
        "image", __import__("datasets").Image())
    with pytest.raises(ValueError, match=r"image in row 1 \(image_id='b', .*big\.png\) does not decode"):
        encode_images(make_model(), make_processor(), dataset, batch_size=2)


# ---------------------------------------------------------------------------------------------- languages


@pytest.mark.parametrize(("code", "canonical"), [
    ("en", "en"), ("EN", "en"), ("en_US", "en"), ("en-us", "en"), (" de ", "de"), ("sr-Latn", "sr-Latn"),
    ("zh", "zh"), ("zh-CN", "zh"), ("zh-Hans", "zh"), ("zh-TW", "zh-Hant"), ("zh_hk", "zh-Hant"), ("eng", "eng"),
])
def test_canonical_language(code, canonical):
    assert canonical_language(code) == canonical


@pytest.mark.parametrize("code", ["", "e", "english!", "12", None, 3, "en--us"])
def test_unknown_language_codes_are_refused(code):
    with pytest.raises(ValueError, match="unknown language code"):
        canonical_language(code)


def test_en_EN_and_en_US_are_one_language_in_loaders_filter_collator_and_checks(tmp_path):
    from conftest import make_processor

    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    dataset = load_ccr_dataset(_csv(tmp_path / "rows.csv", ["a.png,one,EN", "a.png,two,en_US", "b.png,drei,de-DE"]),
                               languages=["en", "DE"])
    assert dataset_languages(dataset) == ["de", "en"]
    collator = CCRCollator(make_processor(), languages=["EN", "de_AT"])
    batch = collator([{"image": Image.new("RGB", (8, 8)), "image_id": "x",
                       "captions": [{"language": "en-GB", "text": "a"}, {"language": "de", "text": "b"}]}])
    assert batch["text_language_ids"].tolist() == [0, 1]
    with pytest.raises(ValueError, match="name the same language twice"):
        CCRCollator(make_processor(), languages=["en", "EN"])
    raw = Dataset.from_dict({"image": [None], "image_id": ["x"], "captions": [[{"language": "EN", "text": "a"}]]})
    with pytest.raises(ValueError, match=r"row 0 \(image_id='x'\): language code 'EN' is not canonical \(use 'en'"):
        check_ccr_dataset(raw)


def test_two_language_folders_for_one_language_are_refused(tmp_path):
    _png(tmp_path / "x" / "images" / "a.png")
    for lang in ("en", "EN"):
        path = tmp_path / "x" / "annotations" / lang / "test.jsonl"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"sentences": ["a"], "id": "1", "img_path": "a.png"}) + "\n")
    with pytest.raises(ValueError, match="are both language 'en'; keep one"):
        load_ccr_dataset(tmp_path / "x")


# --------------------------------------------------------------------------------------- texts, encodings


@pytest.mark.parametrize("text", [None, 5, "", "  "])
def test_null_or_non_string_texts_in_parquet_are_refused_naming_the_row(tmp_path, text):
    _png(tmp_path / "a.png")
    rows = {"image": [str(tmp_path / "a.png")] * 2, "image_id": ["ok", "bad"],
            "captions": [[{"language": "en", "text": "fine"}], [{"language": "en", "text": text}]]}
    if isinstance(text, int):
        rows["captions"][1][0]["text"] = None  # a column holds one type; a number arrives as a null string
    Dataset.from_dict(rows).to_parquet(tmp_path / "data.parquet")
    with pytest.raises(ValueError, match=r"data\.parquet: row 1 \(image_id='bad'\): malformed row, caption"):
        load_ccr_dataset(tmp_path / "data.parquet")


@pytest.mark.parametrize("row", [{"text": None}, {"text": 5}, {"text": ["a"]}, {"image_id": [1]}, {"image_id": True}])
def test_null_or_non_string_fields_in_jsonl_are_refused_naming_the_row(tmp_path, row):
    _png(tmp_path / "a.png")
    (tmp_path / "rows.jsonl").write_text(json.dumps({"image": "a.png", "language": "en", "text": "t", **row}) + "\n")
    with pytest.raises(ValueError, match=r"rows\.jsonl:1: (malformed row|.*needs one of)"):
        load_ccr_dataset(tmp_path / "rows.jsonl")


@pytest.mark.parametrize("name", ["rows.csv", "rows.jsonl", "en.test.json"])
@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_non_utf8_files_are_a_value_error_naming_the_file(tmp_path, name, encoding):
    _png(tmp_path / "a.png")
    content = {"rows.csv": "image,text,language\na.png,café,en\n",
               "rows.jsonl": json.dumps({"image": "a.png", "text": "café", "language": "en"}, ensure_ascii=False),
               "en.test.json": json.dumps([{"image": "a.png", "caption": ["café"]}], ensure_ascii=False)}[name]
    (tmp_path / name).write_bytes(content.encode(encoding))
    with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')}:\d+: the file is not UTF-8 text"):
        load_ccr_dataset(tmp_path / name)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "rows.csv").write_bytes("image,text,language\na.png,café,en\n".encode("utf-8-sig"))
    assert load_ccr_dataset(tmp_path / "rows.csv")[0]["captions"] == [{"language": "en", "text": "café"}]


# ------------------------------------------------------------------------------------ single-file splits


def _rows(tmp_path: Path, n: int) -> Path:
    for i in range(n):
        _png(tmp_path / f"{i}.png")
    return _csv(tmp_path / "rows.csv", [f"{i}.png,caption {i},en" for i in range(n)])


def test_a_single_file_is_carved_into_disjoint_seeded_parts(tmp_path):
    path = _rows(tmp_path, 20)
    parts = {name: load_ccr_split(path, name) for name in ("train", "validation", "test")}
    ids = {name: set(dataset["image_id"]) for name, (dataset, _) in parts.items()}
    assert [len(ids[n]) for n in ("train", "validation", "test")] == [16, 2, 2]
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["validation"]) and not (ids["test"] & ids["validation"])
    assert "held-out part of a seeded split" in parts["test"][1]
    assert set(load_ccr_split(path, "test")[0]["image_id"]) == ids["test"]  # the same for every caller
    everything, note = load_ccr_split(path, "all")
    assert len(everything) == 20 and "not a held-out test" in note
    with pytest.raises(ValueError, match="without splits; its split must be one of"):
        load_ccr_split(path, "dev")
    with pytest.raises(ValueError, match="too few to hold out"):
        load_ccr_split(_rows(tmp_path / "tiny", 2), "test")
    assert held_out_record(path, {"test": 2})["images"] == {"test": 2}


def test_train_py_never_tests_on_its_training_rows(tmp_path):
    path = _rows(tmp_path, 20)
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'hub_scripts')!r})\n"
              "from train import DataArguments, load_splits\n"
              f"splits = load_splits(DataArguments(dataset={str(path)!r}))\n"
              "ids = {name: set(split['image_id']) for name, split in splits.items()}\n"
              "assert not ids['train'] & ids['test'] and not ids['train'] & ids['validation'], ids\n"
              "print(sorted((name, len(v)) for name, v in ids.items()))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "[('test', 2), ('train', 16), ('validation', 2)]" in result.stdout
    assert "has no splits: split 'test' is 2 of its 20 images" in result.stdout


# ------------------------------------------------------------------ property-based: generated malformed files

_VALID = {
    "rows.csv": "image,text,language\na.png,a red apple,en\na.png,ein Apfel,de\n",
    "rows.jsonl": '{"image": "a.png", "text": "a red apple", "language": "en"}\n'
                  '{"image": "a.png", "captions": [{"language": "de", "text": "ein Apfel"}]}\n',
    "en.test.json": '[{"image": "a.png", "caption": ["a red apple", "an apple"]}]',
}


@st.composite
def malformed(draw):
    """A valid file broken one way: random bytes, truncated, a byte flipped, a field renamed or retyped."""
    name = draw(st.sampled_from(sorted(_VALID)))
    data = _VALID[name].encode()
    kind = draw(st.sampled_from(["bytes", "truncate", "flip", "rename", "retype", "encoding"]))
    if kind == "bytes":
        data = draw(st.binary(min_size=0, max_size=64))
    elif kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "flip":
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]
    elif kind == "rename":
        field = draw(st.sampled_from(["image", "text", "language", "caption"]))
        data = data.replace(field.encode(), b"nope", 1)
    elif kind == "retype":
        old, new = draw(st.sampled_from([(b'"en"', b"7"), (b'"a red apple"', b"null"), (b'"a.png"', b"[1]"),
                                         (b",en", b",12"), (b"a.png,", b"../a.png,")]))
        data = data.replace(old, new, 1)
    else:
        data = _VALID[name].replace("apple", "äpfel").encode(draw(st.sampled_from(["latin-1", "utf-16", "cp1252"])))
    return name, data


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=malformed())
def test_malformed_files_are_clear_errors_naming_the_file_or_load_exactly(tmp_path, case):
    """Every malformed file either loads to exactly what its text says (a flipped byte inside a caption is
    still a caption) or is a clear error naming the file; never another exception type."""
    name, data = case
    folder = tmp_path / hashlib.sha256(data + name.encode()).hexdigest()[:16]
    folder.mkdir(exist_ok=True)
    _png(folder / "a.png")
    (folder / name).write_bytes(data)
    try:
        dataset = load_ccr_dataset(folder / name)
    except CLEAR as error:
        assert name in str(error) or str(folder) in str(error), str(error)
        return
    check_ccr_dataset(dataset)  # whatever loads is canonical: non-empty texts, canonical languages
    texts = [c["text"] for captions in dataset["captions"] for c in captions]
    decoded = data.decode("utf-8-sig")
    assert all(text in decoded or json.dumps(text, ensure_ascii=False)[1:-1] in decoded for text in texts)
