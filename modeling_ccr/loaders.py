"""Loaders from the upstream file formats of CCR benchmarks into the canonical dataset form.

Every loader returns a ``datasets.Dataset`` with ``CCR_FEATURES`` (one row per image: ``image``,
``image_id``, ``captions`` = list of ``{language, text}``). Images are stored as file paths (or bytes
when the upstream file embeds them) and decoded lazily; their existence is checked at load time.
Errors name the file and line (or JSON entry) at fault.

Formats: IGLUE xFlickr&CO (``annotations/<lang>/<split>.jsonl``), IGLUE WIT
(``annotations/<split>_<lang>.jsonl``), Multi30K (``data/task1/raw/<split>.<lang>[.gz]`` +
``data/task1/image_splits/<split>.txt``), COCO-style JSON as the paper's code uses (``<lang>.<split>.json``),
plain CSV / JSONL, image folders with ``metadata.csv|jsonl``, and Parquet files in the canonical form.
:func:`load_ccr_dataset` detects which one a path holds.
"""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import io
import json
import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
from datasets import Dataset

from .dataset_schema import CCR_FEATURES, canonical_language, captions_in, filter_languages
from .dataset_schema import select_languages as _select_languages

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")

__all__ = [
    "HELD_OUT_FRACTIONS",
    "HELD_OUT_SEED",
    "has_own_splits",
    "held_out_record",
    "load_ccr_dataset",
    "load_ccr_split",
    "load_coco_json",
    "load_csv",
    "load_image_folder",
    "load_jsonl",
    "load_multi30k",
    "load_parquet",
    "load_wit",
    "load_xflickrco",
]


# ---------------------------------------------------------------------------------------------- helpers


def _check_language(language: Any, where: str) -> str:
    """The canonical code (``dataset_schema.canonical_language``); a ValueError names ``where``."""
    try:
        return canonical_language(language)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def _inside(root: Path, relative: str, where: str) -> Path:
    """``root / relative``, refusing absolute paths and paths that leave ``root`` (``../``): a dataset file
    must not make the loader read files outside its image folder. Symbolic links inside ``root`` are
    followed (a mounted image folder is common)."""
    if not relative or Path(relative).is_absolute() or relative.startswith(("/", "\\")) or (
            len(relative) > 1 and relative[1] == ":"):
        raise ValueError(f"{where}: image path {relative!r} is absolute; image paths must be relative to the image "
                         f"root {root}")
    if os.path.normpath(relative).replace("\\", "/").split("/")[0] == "..":
        raise ValueError(f"{where}: image path {relative!r} leaves the image root {root}")
    return root / relative


def _image_file(root: Path, relative: str, where: str) -> str:
    """The resolved path of an image file that exists, stays under ``root`` and opens as an image."""
    from PIL import Image, UnidentifiedImageError

    path = _inside(root, relative, where)
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image file {path} does not exist (image root {root})")
    try:
        with Image.open(path):  # parses the header only
            pass
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(f"{where}: image file {path} is not a readable image ({error})") from None
    return str(path.resolve())


def _read_text(path: Path) -> str:
    """The file's text; not UTF-8 (or a broken .gz) is a ValueError naming the file and line. A UTF-8 byte
    order mark (spreadsheet exports) is dropped."""
    try:
        data = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as error:
        raise ValueError(f"{path}: cannot read the file ({error})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        hint = " (it looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ValueError(f"{path}:{line}: the file is not UTF-8 text{hint} (byte {error.start}: {error.reason}); "
                         "re-save it as UTF-8") from None


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    for line_no, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{line_no}: malformed row, not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{line_no}: malformed row, expected a JSON object, got {type(row).__name__}")
        yield line_no, row


def _field(row: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in row:
        raise ValueError(f"{where}: malformed row, missing field {key!r} (has {sorted(row)})")
    value = row[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ValueError(f"{where}: malformed row, field {key!r} should be {names}, got {type(value).__name__}")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: malformed row, caption {value!r} is not a non-empty string")
    return value.strip()


class _Instances:
    """Collects captions per image, checking that an id always names the same image.

    One image file is one gallery entry: rows naming the same resolved file (``a.png``, ``./a.png``, a
    symbolic link to it) are merged, under their explicit ``image_id`` when one gives it; two different
    explicit ids for one file are refused. Different files with identical bytes stay separate entries (the
    benchmark's own definition) and a warning names them: each caps the other's rank at 2 under the tie rule."""

    def __init__(self) -> None:
        self._rows: dict[str, dict[str, Any]] = {}  # every id or name a row was given -> the row
        self._by_image: dict[str, dict[str, Any]] = {}  # resolved image path -> the row

    def add(self, key: str, image: Any, captions: list[dict[str, str]], where: str, explicit_id: bool = True) -> None:
        row = self._rows.get(key)
        if row is not None and row["image"] != image:
            raise ValueError(f"{where}: image id {key!r} points to {image!r} but {row['where']} gave {row['image']!r}")
        if row is None and isinstance(image, str) and image in self._by_image:
            row = self._by_image[image]
            if explicit_id and row["explicit_id"]:
                raise ValueError(f"{where}: image ids {key!r} and {row['image_id']!r} ({row['where']}) name the same "
                                 f"image file {image}; one image needs one id")
            if explicit_id:  # an explicit id names the merged entry
                row.update(image_id=key, explicit_id=True)
            self._rows[key] = row
        if row is None:
            row = {"image": image, "image_id": key, "captions": [], "where": where, "explicit_id": explicit_id}
            self._rows[key] = row
            if isinstance(image, str):
                self._by_image[image] = row
        row["captions"].extend(captions)

    def rows(self) -> list[dict[str, Any]]:
        return list({id(row): row for row in self._rows.values()}.values())

    def to_dataset(self, languages: Sequence[str] | None, what: str) -> Dataset:
        columns: dict[str, list] = {"image": [], "image_id": [], "captions": []}
        kept = []
        for row in self.rows():
            captions = captions_in(row["captions"], languages)
            if not captions:
                continue
            kept.append(row)
            image = row["image"]
            columns["image"].append({"bytes": image, "path": None} if isinstance(image, bytes) else image)
            columns["image_id"].append(row["image_id"])
            columns["captions"].append(captions)
        if not columns["image_id"]:
            raise ValueError(f"{what} holds no image with a caption in {sorted(languages) if languages else 'any language'}")
        _warn_identical_images(kept, what)
        return Dataset.from_dict(columns, features=CCR_FEATURES)


def _warn_identical_images(rows: list[dict[str, Any]], what: str) -> None:
    """Warn, naming them, about different gallery entries whose image bytes are identical. Only files of
    equal size are read and hashed, so the check costs a stat per file."""
    by_size: defaultdict[int, list[dict]] = defaultdict(list)
    for row in rows:
        image = row["image"]
        by_size[len(image) if isinstance(image, bytes) else os.path.getsize(image)].append(row)
    by_hash: defaultdict[str, list[str]] = defaultdict(list)
    for group in by_size.values():
        for row in group if len(group) > 1 else ():
            image = row["image"]
            data = image if isinstance(image, bytes) else Path(image).read_bytes()
            by_hash[hashlib.sha256(data).hexdigest()].append(f"{row['image_id']!r} ({row['where']})")
    duplicates = [names for names in by_hash.values() if len(names) > 1]
    if duplicates:
        shown = "; ".join(" = ".join(names) for names in duplicates[:5])
        warnings.warn(f"{what}: {len(duplicates)} image(s) appear under several ids with identical bytes, kept as "
                      f"separate gallery entries (each caps the other's rank at 2): {shown}", stacklevel=3)


def _by_language(files: dict[str, Path], what: str) -> dict[str, Path]:
    """``files`` keyed by canonical language code (``EN/`` and ``en/`` would be one language twice: refused)."""
    out: dict[str, Path] = {}
    for code, path in files.items():
        language = _check_language(code, str(path))
        if language in out:
            raise ValueError(f"{what}: {out[language]} and {path} are both language {language!r}; keep one")
        out[language] = path
    return out


def _default_image_root(image_root: str | Path | None, root: Path, what: str) -> Path:
    if image_root is not None:
        path = Path(image_root)
        if not path.is_dir():
            raise FileNotFoundError(f"image root {path} is not a directory")
        return path
    for candidate in (root / "images", root):
        if candidate.is_dir() and any(p.suffix.lower() in _IMAGE_EXTENSIONS for p in candidate.iterdir()):
            return candidate
    raise ValueError(f"{what}: the images are distributed separately; pass image_root=<folder with the image files>")


# ------------------------------------------------------------------------------------------ IGLUE xFlickr&CO


def load_xflickrco(
    root: str | Path, split: str = "test", languages: Sequence[str] | None = None, image_root: str | Path | None = None
) -> Dataset:
    """IGLUE xFlickr&CO: ``<root>/annotations/<lang>/<split>.jsonl`` (``split`` = ``test``, ``train_100``, ...),
    rows ``{"sentences": [...], "id": ..., "img_path": ...}``; images under ``image_root``. Rows with the same
    ``id`` in several languages become one instance."""
    root = Path(root)
    annotations = _annotations(root)
    files = {d.name: d / f"{split}.jsonl" for d in annotations.iterdir() if d.is_dir() and (d / f"{split}.jsonl").is_file()}
    what = f"xFlickr&CO split {split!r} in {annotations}"
    files = _by_language(files, what)
    selected = _select_languages(files, languages, what)
    images = _default_image_root(image_root, root, what)
    instances = _Instances()
    for lang in selected:
        for line_no, row in _read_jsonl(files[lang]):
            where = f"{files[lang]}:{line_no}"
            sentences = _field(row, "sentences", list, where)
            key = str(_field(row, "id", (str, int), where))
            image = _image_file(images, _field(row, "img_path", str, where), where)
            instances.add(key, image, [{"language": lang, "text": _text(s, where)} for s in sentences], where)
    return instances.to_dataset(selected, what)


# ------------------------------------------------------------------------------------------------ IGLUE WIT


def _wit_image(row: dict, images: Path | None, where: str) -> Any:
    if isinstance(row.get("image_content"), str):
        try:
            return base64.b64decode(row["image_content"], validate=True)
        except ValueError:
            raise ValueError(f"{where}: malformed row, image_content is not valid base64") from None
    if images is None:
        raise ValueError(f"{where}: the row has no image_content; pass image_root=<folder with the WIT images>")
    url_name = Path(unquote(urlparse(row["image_url"]).path)).name
    candidates = [url_name]
    for key in ("image_idx", "wit_ix"):
        if key in row:
            candidates += [f"{row[key]}{ext}" for ext in ("",) + _IMAGE_EXTENSIONS]
    for name in candidates:
        if name and _inside(images, name, where).is_file():
            return _image_file(images, name, where)
    raise FileNotFoundError(f"{where}: no image file for {row['image_url']!r} in {images} (tried {candidates[:3]}...)")


def load_wit(
    root: str | Path, split: str = "test", languages: Sequence[str] | None = None, image_root: str | Path | None = None
) -> Dataset:
    """IGLUE WIT: ``<root>/annotations/<split>_<lang>.jsonl`` rows with ``image_url``,
    ``caption_reference_description``, ``language`` (and ``image_idx``, ``wit_ix``, ...). The image is the
    row's base64 ``image_content`` if present, else a file in ``image_root`` named after the URL's file
    name (or ``<image_idx>.<ext>`` / ``<wit_ix>.<ext>``). Rows with an empty caption are skipped (as the
    reference code does); rows sharing an image URL become one instance."""
    root = Path(root)
    annotations = _annotations(root)
    files = {p.stem[len(split) + 1 :]: p for p in sorted(annotations.glob(f"{split}_*.jsonl"))}
    what = f"WIT split {split!r} in {annotations}"
    files = _by_language(files, what)
    selected = _select_languages(files, languages, what)
    images = None
    if image_root is not None or (root / "images").is_dir():
        images = _default_image_root(image_root, root, what)
    instances = _Instances()
    for lang in selected:
        for line_no, row in _read_jsonl(files[lang]):
            where = f"{files[lang]}:{line_no}"
            url = _field(row, "image_url", str, where)
            caption = row.get("caption_reference_description")
            if caption is None or (isinstance(caption, str) and not caption.strip()):
                continue
            row_lang = _check_language(row.get("language", lang), where)
            if row_lang != lang:
                raise ValueError(f"{where}: row language {row_lang!r} differs from the file's language {lang!r}")
            key = urlparse(url).path
            instances.add(key, _wit_image(row, images, where), [{"language": lang, "text": _text(caption, where)}], where)
    return instances.to_dataset(selected, what)


# --------------------------------------------------------------------------------------------------- Multi30K


def _read_lines(path: Path) -> list[str]:
    text = _read_text(path)
    return [line.rstrip("\r") for line in text.removesuffix("\n").split("\n")] if text else []


def load_multi30k(
    root: str | Path,
    split: str = "test_2016_flickr",
    languages: Sequence[str] | None = None,
    image_root: str | Path | None = None,
) -> Dataset:
    """Multi30K task 1: ``data/task1/raw/<split>.<lang>`` (or ``.gz``), one caption per line, aligned with
    ``data/task1/image_splits/<split>.txt`` (one image file name per line)."""
    root = Path(root)
    task = root / "data" / "task1" if (root / "data" / "task1").is_dir() else root
    split_file = task / "image_splits" / f"{split}.txt"
    if not split_file.is_file():
        raise FileNotFoundError(f"Multi30K image list {split_file} does not exist")
    files: dict[str, Path] = {}
    for path in sorted((task / "raw").glob(f"{split}.*")):
        lang = path.name[len(split) + 1 :].removesuffix(".gz")
        if "." not in lang:
            files.setdefault(lang, path)
    what = f"Multi30K split {split!r} in {task}"
    files = _by_language(files, what)
    selected = _select_languages(files, languages, what)
    images = _default_image_root(image_root, root, what)
    names = _read_lines(split_file)
    instances = _Instances()
    image_paths = []
    for line_no, name in enumerate(names, start=1):
        if not name.strip():
            raise ValueError(f"{split_file}:{line_no}: empty image name")
        image_paths.append(_image_file(images, name.strip(), f"{split_file}:{line_no}"))
    for lang in selected:
        lines = _read_lines(files[lang])
        if len(lines) != len(names):
            raise ValueError(f"{files[lang]} has {len(lines)} lines but {split_file} lists {len(names)} images")
        for line_no, (name, path, text) in enumerate(zip(names, image_paths, lines), start=1):
            where = f"{files[lang]}:{line_no}"
            instances.add(name.strip(), path, [{"language": lang, "text": _text(text, where)}], where, explicit_id=False)
    return instances.to_dataset(selected, what)


# ----------------------------------------------------------------------------------------- COCO-style JSON


def _coco_files(path: Path, split: str) -> dict[str, Path]:
    if path.is_file():
        return {path.name.split(".")[0]: path}
    return {p.name.split(".")[0]: p for p in sorted(path.glob(f"*.{split}.json"))}


def load_coco_json(
    path: str | Path, split: str = "test", languages: Sequence[str] | None = None, image_root: str | Path | None = None
) -> Dataset:
    """COCO-style JSON as the paper's code uses, one file per language: ``<lang>.<split>.json``.

    Train files are lists of ``{"caption": str, "image": path, "image_id": ...}``; val/test files lists of
    ``{"image": path, "caption": [str, ...]}`` (``image_id`` optional). Instances are keyed by ``image_id``
    when present, else by the image path. ``image_root`` defaults to the JSON files' folder."""
    path = Path(path)
    files = _coco_files(path, split)
    what = f"COCO-style JSON {path}" + ("" if path.is_file() else f" (split {split!r})")
    files = _by_language(files, what)
    selected = _select_languages(files, languages, what)
    folder = path.parent if path.is_file() else path
    images = Path(image_root) if image_root is not None else folder
    instances = _Instances()
    for lang in selected:
        try:
            entries = json.loads(_read_text(files[lang]))
        except json.JSONDecodeError as err:
            raise ValueError(f"{files[lang]}:{err.lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(entries, list):
            raise ValueError(f"{files[lang]}: expected a JSON list of entries, got {type(entries).__name__}")
        for number, entry in enumerate(entries):
            where = f"{files[lang]}: entry {number}"
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: malformed entry, expected an object, got {type(entry).__name__}")
            image_name = _field(entry, "image", str, where)
            captions = _field(entry, "caption", (str, list), where)
            captions = [captions] if isinstance(captions, str) else captions
            explicit = entry.get("image_id") is not None
            key = str(_field(entry, "image_id", (str, int), where)) if explicit else image_name
            image = _image_file(images, image_name, where)
            instances.add(key, image, [{"language": lang, "text": _text(c, where)} for c in captions], where, explicit)
    return instances.to_dataset(selected, what)


# ------------------------------------------------------------------------------------------------------ plain

_IMAGE_KEYS = ("image", "file_name", "image_path")
_TEXT_KEYS = ("text", "caption")
_LANG_KEYS = ("language", "lang")


def _first(row: dict, keys: Sequence[str], where: str) -> Any:
    for key in keys:
        if row.get(key) not in (None, ""):
            return row[key]
    raise ValueError(f"{where}: malformed row, needs one of the fields {list(keys)} (has {sorted(row)})")


def _add_plain_row(instances: _Instances, row: dict, images: Path, where: str) -> None:
    image_name = _first(row, _IMAGE_KEYS, where)
    if not isinstance(image_name, str):
        raise ValueError(f"{where}: malformed row, the image field should be a file path")
    image = _image_file(images, image_name, where)
    explicit = row.get("image_id") not in (None, "")
    key = str(_field(row, "image_id", (str, int), where)) if explicit else image_name
    if isinstance(row.get("captions"), list):
        captions = []
        for caption in row["captions"]:
            if not isinstance(caption, dict):
                raise ValueError(f"{where}: malformed row, captions must be {{language, text}} objects")
            captions.append({
                "language": _check_language(_first(caption, _LANG_KEYS, where), where),
                "text": _text(_first(caption, _TEXT_KEYS, where), where),
            })
    else:
        captions = [{
            "language": _check_language(_first(row, _LANG_KEYS, where), where),
            "text": _text(_first(row, _TEXT_KEYS, where), where),
        }]
    instances.add(key, image, captions, where, explicit)


def load_csv(
    path: str | Path, languages: Sequence[str] | None = None, image_root: str | Path | None = None
) -> Dataset:
    """CSV with a header and one caption per row: ``image`` (or ``file_name``), ``text`` (or ``caption``),
    ``language``, optional ``image_id``. Image paths are relative to ``image_root`` (default: the CSV's folder)."""
    path = Path(path)
    images = Path(image_root) if image_root is not None else path.parent
    instances = _Instances()
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    try:
        if not reader.fieldnames:
            raise ValueError(f"{path}: empty CSV (a header row is needed)")
        for row in reader:
            if None in row:
                raise ValueError(f"{path}:{reader.line_num}: malformed row, more fields than the header has")
            _add_plain_row(instances, row, images, f"{path}:{reader.line_num}")
    except csv.Error as error:
        raise ValueError(f"{path}:{reader.line_num}: malformed CSV ({error})") from None
    return instances.to_dataset(_available(instances, languages, str(path)), str(path))


def load_jsonl(
    path: str | Path, languages: Sequence[str] | None = None, image_root: str | Path | None = None
) -> Dataset:
    """JSONL, either one caption per row (``image``, ``text``, ``language``, optional ``image_id``) or one
    instance per row (``image``, optional ``image_id``, ``captions``: ``[{language, text}, ...]``)."""
    path = Path(path)
    images = Path(image_root) if image_root is not None else path.parent
    instances = _Instances()
    for line_no, row in _read_jsonl(path):
        _add_plain_row(instances, row, images, f"{path}:{line_no}")
    return instances.to_dataset(_available(instances, languages, str(path)), str(path))


def _available(instances: _Instances, languages: Sequence[str] | None, what: str) -> list[str]:
    present = {c["language"] for row in instances._rows.values() for c in row["captions"]}
    return _select_languages(present, languages, what)


def load_image_folder(
    folder: str | Path, languages: Sequence[str] | None = None, image_root: str | Path | None = None
) -> Dataset:
    """A folder of images with ``metadata.csv`` or ``metadata.jsonl`` (the Hugging Face imagefolder
    convention: ``file_name`` plus ``text``/``language`` or ``captions``)."""
    folder = Path(folder)
    root = image_root if image_root is not None else folder
    if (folder / "metadata.jsonl").is_file():
        return load_jsonl(folder / "metadata.jsonl", languages, root)
    if (folder / "metadata.csv").is_file():
        return load_csv(folder / "metadata.csv", languages, root)
    raise ValueError(f"{folder}: an image folder needs metadata.csv or metadata.jsonl")


def _canonical_captions(captions: Any, where: str) -> list[dict[str, str]]:
    """A row's captions checked (non-empty strings, known language codes) and put in canonical form."""
    if not isinstance(captions, list) or not captions:
        raise ValueError(f"{where}: malformed row, captions should be a non-empty list, got {captions!r}")
    out = []
    for caption in captions:
        if not isinstance(caption, dict):
            raise ValueError(f"{where}: malformed row, captions must be {{language, text}} objects, got {caption!r}")
        out.append({"language": _check_language(caption.get("language"), where),
                    "text": _text(caption.get("text"), where)})
    return out


def load_parquet(path: str | Path, split: str | None = None, languages: Sequence[str] | None = None) -> Dataset:
    """Parquet in the canonical form (a file, or a folder with ``<split>.parquet``). Null or empty texts are
    refused naming the row; language codes are put in canonical form."""
    from .dataset_schema import check_ccr_dataset

    path = Path(path)
    if path.is_dir():
        file = path / f"{split or 'test'}.parquet"
        if not file.is_file():
            found = sorted(p.stem for p in path.glob("*.parquet"))
            raise ValueError(f"{path}: no split {split or 'test'!r} (found {found})")
        path = file
    try:
        dataset = Dataset.from_parquet(str(path))
    except Exception as error:  # pyarrow / datasets raise their own types for a file that is not Parquet
        raise ValueError(f"{path}: not a readable Parquet file ({type(error).__name__}: {error})") from None
    missing = [column for column in CCR_FEATURES if column not in dataset.column_names]
    if missing:
        raise ValueError(f"{path} is missing the column(s) {missing}; expected image, image_id, captions")
    ids = dataset["image_id"]
    captions = [_canonical_captions(row, f"{path}: row {index} (image_id={ids[index]!r})")
                for index, row in enumerate(dataset["captions"])]
    if captions != dataset["captions"]:
        dataset = dataset.remove_columns("captions").add_column("captions", captions)
    try:
        dataset = dataset.cast(CCR_FEATURES) if dataset.features != CCR_FEATURES else dataset
    except Exception as error:  # an image or image_id column of another type
        raise ValueError(f"{path}: the columns do not have the canonical types ({error})") from None
    check_ccr_dataset(dataset, str(path))
    return filter_languages(dataset, languages, str(path))


# --------------------------------------------------------------------------------------------- detection


def _first_json_row(path: Path) -> dict:
    for _, row in _read_jsonl(path):
        return row
    return {}


def _is_multi30k(path: Path) -> bool:
    return path.is_dir() and (
        (path / "data" / "task1" / "raw").is_dir() or ((path / "raw").is_dir() and (path / "image_splits").is_dir())
    )


def _annotations(path: Path) -> Path:
    return path / "annotations" if (path / "annotations").is_dir() else path


def _is_xflickrco(path: Path) -> bool:
    if not path.is_dir():
        return False
    for sub in sorted(p for p in _annotations(path).iterdir() if p.is_dir()):
        jsonl = sorted(sub.glob("*.jsonl"))
        if jsonl and "sentences" in _first_json_row(jsonl[0]):
            return True
    return False


def _is_wit(path: Path) -> bool:
    candidates = [path] if path.is_file() and path.suffix.lower() == ".jsonl" else (
        sorted(_annotations(path).glob("*_*.jsonl")) if path.is_dir() else [])
    return any("caption_reference_description" in _first_json_row(file) for file in candidates)


def _load_wit(path: Path, split: str | None, languages: Sequence[str] | None, image_root: Any) -> Dataset:
    if path.is_file():  # <split>_<lang>.jsonl
        split_name, _, lang = path.stem.rpartition("_")
        return load_wit(path.parent, split_name, [lang] if languages is None else languages, image_root)
    return load_wit(path, split or "test", languages, image_root)


@dataclass(frozen=True)
class _Format:
    """One supported format: how to recognise it at a path and how to load it (one entry per format)."""

    name: str
    description: str
    detects: Callable[[Path], bool]
    load: Callable[[Path, str | None, Sequence[str] | None, Any], Dataset]


def _file_with(suffix: str) -> Callable[[Path], bool]:
    return lambda path: path.is_file() and path.suffix.lower() == suffix


FORMATS: tuple[_Format, ...] = (  # tried in this order; the first that recognises the path loads it
    _Format("multi30k", "Multi30K (data/task1)", _is_multi30k,
            lambda p, split, langs, root: load_multi30k(p, split or "test_2016_flickr", langs, root)),
    _Format("xflickrco", "an IGLUE xFlickr&CO folder", _is_xflickrco,
            lambda p, split, langs, root: load_xflickrco(p, split or "test", langs, root)),
    _Format("wit", "an IGLUE WIT folder or <split>_<lang>.jsonl", _is_wit, _load_wit),
    _Format("coco", "COCO-style <lang>.<split>.json files",
            lambda p: _file_with(".json")(p) or (p.is_dir() and any(p.glob("*.*.json"))),
            lambda p, split, langs, root: load_coco_json(p, split or "test", langs, root)),
    _Format("imagefolder", "an image folder with metadata.csv/jsonl",
            lambda p: p.is_dir() and ((p / "metadata.csv").is_file() or (p / "metadata.jsonl").is_file()),
            lambda p, split, langs, root: load_image_folder(p, langs, root)),
    _Format("csv", "a .csv file", _file_with(".csv"), lambda p, split, langs, root: load_csv(p, langs, root)),
    _Format("jsonl", "a .jsonl file", _file_with(".jsonl"), lambda p, split, langs, root: load_jsonl(p, langs, root)),
    _Format("parquet", "Parquet (a file, or a folder of <split>.parquet)",
            lambda p: _file_with(".parquet")(p) or (p.is_dir() and any(p.glob("*.parquet"))),
            lambda p, split, langs, root: load_parquet(p, split, langs)),
)


def _format_of(path: str | Path) -> _Format:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    for fmt in FORMATS:
        if fmt.detects(path):
            return fmt
    raise ValueError(f"{path}: unknown format; expected " + ", ".join(f.description for f in FORMATS))


def detect_format(path: str | Path) -> str:
    """Name of the format ``path`` holds (one of :data:`FORMATS`: xflickrco, wit, multi30k, coco, csv, jsonl,
    imagefolder, parquet). Raises ``ValueError`` ("unknown format") otherwise."""
    return _format_of(path).name


def load_ccr_dataset(
    path: str | Path,
    split: str | None = None,
    image_root: str | Path | None = None,
    languages: Sequence[str] | None = None,
) -> Dataset:
    """Load any supported format (see :func:`detect_format`) into the canonical CCR dataset.

    ``split`` defaults to ``test`` (``test_2016_flickr`` for Multi30K); it is ignored for single files."""
    return _format_of(path).load(Path(path), split, languages, image_root)


# ------------------------------------------------------------------------------------ single-file splits

HELD_OUT_SEED = 0
HELD_OUT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
_SPLIT_PARTS = (*HELD_OUT_FRACTIONS, "all")


def has_own_splits(path: str | Path) -> bool:
    """Whether the dataset at ``path`` comes in named splits (an IGLUE / Multi30K folder, a folder of
    ``<lang>.<split>.json`` or ``<split>.parquet``). A single file or an image folder has none."""
    path = Path(path)
    fmt = _format_of(path)
    if fmt.name in ("csv", "jsonl", "imagefolder"):
        return False
    return not path.is_file()


def _held_out_part(dataset: Dataset, part: str, seed: int, what: str) -> Dataset:
    """One part of a seeded split of ``dataset`` by image: ``HELD_OUT_FRACTIONS`` of the images, drawn in a
    permutation of the sorted image ids, so that the parts do not depend on the row order."""
    if part == "all":
        return dataset
    n = len(dataset)
    held = {name: max(1, round(fraction * n)) for name, fraction in HELD_OUT_FRACTIONS.items() if name != "train"}
    if n - sum(held.values()) < 1:
        raise ValueError(f"{what} has {n} images: too few to hold out a validation and a test split; give a dataset "
                         "with its own splits")
    ids = dataset["image_id"]
    order = sorted(range(n), key=ids.__getitem__)
    shuffled = [order[i] for i in np.random.default_rng(seed).permutation(n)]
    bounds = {"test": (0, held["test"]), "validation": (held["test"], held["test"] + held["validation"]),
              "train": (held["test"] + held["validation"], n)}
    lo, hi = bounds[part]
    return dataset.select(sorted(shuffled[lo:hi]))


def load_ccr_split(
    path: str | Path,
    split: str,
    image_root: str | Path | None = None,
    languages: Sequence[str] | None = None,
    seed: int = HELD_OUT_SEED,
) -> tuple[Dataset, str | None]:
    """One split of the dataset at ``path`` and, for a dataset without splits, a line saying how it was made.

    A dataset with its own splits loads ``split`` as :func:`load_ccr_dataset` does (the note is None). A
    single file (CSV, JSONL, one COCO json, an image folder, one Parquet file) has no split, so training,
    validating and testing on it would report training images as test figures: ``split`` must then be
    ``train``, ``validation`` or ``test`` (a seeded held-out part, ``HELD_OUT_FRACTIONS`` of the images, the
    same for every caller with the same seed) or ``all`` (the whole file, which is never labelled a test)."""
    if has_own_splits(path):
        return load_ccr_dataset(path, split=split, image_root=image_root, languages=languages), None
    if split not in _SPLIT_PARTS:
        raise ValueError(f"{path} is a single dataset without splits; its split must be one of {list(_SPLIT_PARTS)} "
                         f"(a seeded held-out part, or the whole file), not {split!r}")
    dataset = load_ccr_dataset(path, image_root=image_root)  # carved before any language filter: one split
    part = filter_languages(_held_out_part(dataset, split, seed, str(path)), languages, f"{path} ({split})")
    if split == "all":
        return part, f"{path} has no splits: using all its {len(part)} images (not a held-out test)"
    shares = ", ".join(f"{name} {fraction:.0%}" for name, fraction in HELD_OUT_FRACTIONS.items())
    return part, (f"{path} has no splits: split {split!r} is {len(part)} of its {len(dataset)} images, a held-out "
                  f"part of a seeded split by image (seed {seed}: {shares})")


def held_out_record(path: str | Path, sizes: dict[str, int], seed: int = HELD_OUT_SEED) -> dict[str, Any] | None:
    """What ``eval_results.json`` records about a split carved by :func:`load_ccr_split` (None when the
    dataset at ``path`` has its own splits)."""
    if not Path(path).exists() or has_own_splits(path):
        return None
    return {"source": f"carved from {Path(path).name}, a dataset without splits", "seed": seed,
            "fractions": dict(HELD_OUT_FRACTIONS), "images": dict(sizes)}

