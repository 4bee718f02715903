"""Multilingual image search over your own collection: a FAISS index kept in a ``datasets.Dataset``.

``build_index`` encodes a gallery with a CCR model (images, and captions when the gallery has them) into
datasets with an ``embedding`` column of L2-normalised vectors, adds a FAISS inner-product index over that
column (``Dataset.add_faiss_index``; inner product of unit vectors = cosine similarity) and writes it with
``save_to_disk`` / ``save_faiss_index``. ``GallerySearch`` loads such a folder and answers text -> image,
image -> image and image -> captions queries.

Index kinds: ``flat`` (exact; the default), ``ivf`` and ``hnsw`` (approximate, for galleries of ~10^5
images and more; see ``benchmarks/bench_search.py`` for their recall and speed).

Folder layout (written to a hidden temporary sibling and renamed into place, so a killed run never leaves a
folder that looks complete)::

    index_info.json      model, kind, dimension, counts, languages, search parameters
    images/              datasets.Dataset: image_id, image, embedding     (+ images.faiss)
    captions/            datasets.Dataset: image_id, language, text, embedding   (+ captions.faiss; optional)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict, Image, Value, concatenate_datasets, load_from_disk

from . import retrieval
from .dataset_schema import CCR_FEATURES
from .loaders import _IMAGE_EXTENSIONS, load_ccr_dataset

INDEX_KINDS = ("flat", "ivf", "hnsw")
INFO_FILE = "index_info.json"
FORMAT_VERSION = 1
COLUMN = "embedding"
DEFAULT_NPROBE = 32  # IVF lists visited per query
DEFAULT_EF_SEARCH = 128  # HNSW candidate list size per query
HNSW_NEIGHBOURS = 32


# ------------------------------------------------------------------------------------------ FAISS index


@dataclass
class IndexSpec:
    """How the vectors are indexed: ``kind`` and the search-time parameter of the approximate kinds."""

    kind: str = "flat"
    nlist: int | None = None  # IVF: number of lists (default ~ 2 sqrt(N), a power of two)
    nprobe: int = DEFAULT_NPROBE
    ef_search: int = DEFAULT_EF_SEARCH

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {self.kind!r}; expected one of {INDEX_KINDS}")
        if self.nprobe < 1 or self.ef_search < 1 or (self.nlist is not None and self.nlist < 1):
            raise ValueError("nlist, nprobe and ef_search must be >= 1")

    def factory(self, num_vectors: int) -> tuple[str, int | None]:
        """FAISS index-factory string and the number of vectors to train it on (None: no training)."""
        if self.kind == "flat":
            return "Flat", None
        if self.kind == "hnsw":
            return f"HNSW{HNSW_NEIGHBOURS},Flat", None
        nlist = self.nlist or max(1, 2 ** round(math.log2(2 * math.sqrt(num_vectors))))
        if num_vectors < nlist:
            raise ValueError(f"an IVF index with {nlist} lists needs at least {nlist} vectors, got {num_vectors}; "
                             "use --index-kind flat for small galleries")
        # FAISS's k-means samples at most 256 points per centroid; 64 are plenty for coarse lists.
        return f"IVF{nlist},Flat", min(num_vectors, 64 * nlist)


def add_embedding_index(dataset: Dataset, spec: IndexSpec, column: str = COLUMN) -> None:
    """``dataset.add_faiss_index`` over ``column`` (unit vectors) with the inner-product metric, then set the
    search parameters. IVF lists are trained on a seeded random sample of the rows, so builds repeat."""
    import faiss

    factory, train_size = spec.factory(len(dataset))
    index = faiss.index_factory(len(dataset[0][column]), factory, faiss.METRIC_INNER_PRODUCT)
    if train_size is not None:
        faiss.extract_index_ivf(index).cp.niter = 10  # coarse lists: 10 k-means rounds are enough, 25 is slow
        sample = np.random.default_rng(0).choice(len(dataset), size=train_size, replace=False)
        vectors = dataset.select(np.sort(sample)).with_format("numpy", columns=[column])[column]
        index.train(np.ascontiguousarray(vectors, dtype=np.float32))
    dataset.add_faiss_index(column=column, custom_index=index, batch_size=65536)
    set_search_parameters(dataset.get_index(column).faiss_index, spec)


def set_search_parameters(index: Any, spec: IndexSpec) -> None:
    """nprobe (IVF) / efSearch (HNSW): how much of the index one query visits."""
    import faiss

    if spec.kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = spec.nprobe
    elif spec.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = spec.ef_search


# ------------------------------------------------------------------------------------------- galleries


def load_model(name: str, device: str = "cpu") -> tuple[Any, Any]:
    """Model and processor the way a user loads them: AutoModel / AutoProcessor with trust_remote_code."""
    from transformers import AutoModel, AutoProcessor

    path = Path(name)
    if not path.exists() and (name.startswith((".", "/")) or name.count("/") > 1):
        raise FileNotFoundError(f"model folder {name} does not exist")
    model = AutoModel.from_pretrained(name, trust_remote_code=True).to(device).eval()
    processor = AutoProcessor.from_pretrained(name, trust_remote_code=True)
    return model, processor


def _image_column(dataset: Dataset, where: str) -> str:
    if "image" in dataset.column_names:
        return "image"
    for name, feature in dataset.features.items():
        if isinstance(feature, Image):
            return name
    raise ValueError(f"{where} has no image column (a datasets Image feature); columns: {dataset.column_names}")


def gallery_from_dataset(dataset: Dataset, where: str = "the dataset") -> Dataset:
    """Any ``datasets.Dataset`` with an Image column -> ``image``, ``image_id`` (and ``captions`` when it has
    canonical CCR captions). Ids are ``image_id`` or ``id`` when present, else the row number."""
    image_column = _image_column(dataset, where)
    keep = {image_column: "image"}
    for name in ("image_id", "id"):
        if name in dataset.column_names:
            keep[name] = "image_id"
            break
    if "captions" in dataset.column_names:
        if dataset.features["captions"] != CCR_FEATURES["captions"]:
            raise ValueError(f"{where}: its 'captions' column is {dataset.features['captions']}; expected a list of "
                             "{language, text} records (the canonical CCR form), or no 'captions' column")
        keep["captions"] = "captions"
    gallery = dataset.select_columns(list(keep)).rename_columns({k: v for k, v in keep.items() if k != v})
    if "image_id" not in gallery.column_names:
        gallery = gallery.add_column("image_id", [str(i) for i in range(len(gallery))])
    elif gallery.features["image_id"].dtype != "string":
        gallery = gallery.cast_column("image_id", Value("string"))
    ids = gallery["image_id"]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{where}: image_id {duplicate!r} occurs more than once; ids must be unique")
    if len(gallery) == 0:
        raise ValueError(f"{where} has no image")
    return gallery.cast_column("image", Image())


def _plain_image_folder(folder: Path) -> Dataset:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"{folder}: no image files ({', '.join(_IMAGE_EXTENSIONS)}) and no dataset metadata")
    ids = [str(p.relative_to(folder).with_suffix("")) for p in files]
    return Dataset.from_dict({"image": [str(p) for p in files], "image_id": ids}).cast_column("image", Image())


def load_gallery(gallery: str | Path | None = None, split: str | None = None) -> Dataset:
    """The images to index.

    ``None``: every EmojiCCR image (all splits). A folder written by ``Dataset.save_to_disk`` (a
    ``DatasetDict``: ``split``, or all splits), any format ``modeling_ccr.loaders`` reads, or a plain folder
    of image files (ids = file paths without extension)."""
    if gallery is None:
        from .emoji_dataset import load_emoji_ccr

        splits = load_emoji_ccr()
        return gallery_from_dataset(concatenate_datasets([s.select_columns(["image", "image_id", "captions"])
                                                          for s in splits.values()]), "EmojiCCR")
    path = Path(gallery)
    if not path.exists():
        raise FileNotFoundError(f"gallery {path} does not exist")
    if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        loaded = load_from_disk(str(path))
        if isinstance(loaded, DatasetDict):
            if split is not None and split not in loaded:
                raise ValueError(f"{path}: no split {split!r} (splits: {list(loaded)})")
            parts = [loaded[split]] if split is not None else list(loaded.values())
            loaded = concatenate_datasets(parts)
        return gallery_from_dataset(loaded, str(path))
    try:
        return gallery_from_dataset(load_ccr_dataset(path, split=split), str(path))
    except ValueError as error:
        if path.is_dir() and "unknown format" in str(error):
            return gallery_from_dataset(_plain_image_folder(path), str(path))
        raise


# ----------------------------------------------------------------------------------------------- encoding


def _normalised(features: torch.Tensor) -> np.ndarray:
    features = torch.nn.functional.normalize(features.float(), dim=-1)
    return np.ascontiguousarray(features.numpy(), dtype=np.float32)


def encode_images(model: Any, processor: Any, images: Sequence[Any] | Dataset, batch_size: int = 64,
                  progress: bool = False) -> np.ndarray:
    """(N, D) float32 unit vectors of ``images`` (see :func:`modeling_ccr.retrieval.encode_images`)."""
    return _normalised(retrieval.encode_images(model, processor, images, batch_size, progress))


def encode_texts(model: Any, processor: Any, texts: Sequence[str], batch_size: int = 256,
                 progress: bool = False) -> np.ndarray:
    """(T, D) float32 unit vectors of ``texts``."""
    return _normalised(retrieval.encode_texts(model, processor, texts, batch_size, progress))


def _caption_rows(gallery: Dataset) -> dict[str, list]:
    rows: dict[str, list] = {"image_id": [], "language": [], "text": []}
    if "captions" not in gallery.column_names:
        return rows
    for image_id, captions in zip(gallery["image_id"], gallery["captions"]):
        for caption in captions or []:
            rows["image_id"].append(image_id)
            rows["language"].append(caption["language"])
            rows["text"].append(caption["text"])
    return rows


# ------------------------------------------------------------------------------------------------ building


def build_index(
    model: Any,
    processor: Any,
    gallery: Dataset,
    out_dir: str | Path,
    spec: IndexSpec | None = None,
    model_name: str | None = None,
    batch_size: int = 64,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Encode ``gallery`` (``image``, ``image_id``, optional ``captions``), index it and write ``out_dir``.

    Everything is written into a temporary sibling folder that is renamed to ``out_dir`` only when complete.
    ``model_name`` (a folder or repo id) is recorded so that ``GallerySearch.load`` can encode queries."""
    spec = spec or IndexSpec()
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (pass overwrite=True / --overwrite to replace it)")
    gallery = gallery_from_dataset(gallery, "the gallery")
    model.eval()
    image_vectors = encode_images(model, processor, gallery, batch_size, progress)
    caption_rows = _caption_rows(gallery)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        images = gallery.select_columns(["image_id", "image"]).add_column(COLUMN, list(image_vectors))
        specs = {"images": _save_indexed(images, staging, "images", spec)}
        languages: list[str] = []
        if caption_rows["text"]:
            caption_vectors = encode_texts(model, processor, caption_rows["text"], batch_size=4 * batch_size,
                                           progress=progress)
            captions = Dataset.from_dict({**caption_rows, COLUMN: list(caption_vectors)})
            specs["captions"] = _save_indexed(captions, staging, "captions", spec)
            languages = sorted(set(caption_rows["language"]))
        info = {
            "format_version": FORMAT_VERSION,
            "model": _model_reference(model_name),
            "dim": int(image_vectors.shape[1]),
            "num_images": len(images),
            "num_captions": len(caption_rows["text"]),
            "languages": languages,
            "index": {name: asdict(used) for name, used in specs.items()},
            "metric": "inner product of L2-normalised embeddings (cosine similarity)",
        }
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _model_reference(model_name: str | None) -> str | None:
    if model_name is None:
        return None
    return str(Path(model_name).resolve()) if Path(model_name).exists() else model_name


def _save_indexed(dataset: Dataset, folder: Path, name: str, spec: IndexSpec) -> IndexSpec:
    """Write ``dataset`` and its index; a table too small for the IVF lists asked for is indexed flat."""
    if spec.kind == "ivf" and len(dataset) < (spec.nlist or 1):
        spec = IndexSpec()
    dataset.save_to_disk(str(folder / name))  # before the index: datasets refuses to save an indexed dataset
    add_embedding_index(dataset, spec)
    dataset.save_faiss_index(COLUMN, str(folder / f"{name}.faiss"))
    return spec


# ------------------------------------------------------------------------------------------------ search


@dataclass
class Hit:
    """One search result: 1-based ``rank``, the image ``id``, cosine ``score``; captions add language/text."""

    rank: int
    id: str
    score: float
    language: str | None = None
    text: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


class GallerySearch:
    """A saved index folder with the model that encodes the queries."""

    def __init__(self, folder: str | Path, model: Any = None, processor: Any = None, device: str = "cpu") -> None:
        folder = Path(folder)
        info_file = folder / INFO_FILE
        if not info_file.is_file():
            raise FileNotFoundError(f"{folder} is not a complete search index (no {INFO_FILE}); build one with "
                                    "hub_scripts/build_index.py")
        self.folder = folder
        self.info = json.loads(info_file.read_text(encoding="utf-8"))
        if self.info.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{folder}: index format {self.info.get('format_version')} is not {FORMAT_VERSION}")
        self.images = self._load("images")
        self.captions = self._load("captions") if self.info["num_captions"] else None
        if model is None:
            if not self.info.get("model"):
                raise ValueError(f"{folder} records no model; pass model and processor")
            model, processor = load_model(self.info["model"], device)
        self.model, self.processor = model.eval(), processor
        self._image_ids: list[str] = list(self.images["image_id"])
        self._captions_meta: tuple[list[str], list[str], list[str]] | None = None

    def _load(self, name: str) -> Dataset:
        dataset = load_from_disk(str(self.folder / name))
        dataset.load_faiss_index(COLUMN, str(self.folder / f"{name}.faiss"))
        set_search_parameters(dataset.get_index(COLUMN).faiss_index, IndexSpec(**self.info["index"][name]))
        return dataset

    def set_search_parameters(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Trade speed for recall on an approximate index (no effect on a flat one)."""
        for name in ("images", "captions"):
            dataset = getattr(self, name)
            if dataset is not None:
                spec = IndexSpec(**self.info["index"][name])
                spec.nprobe, spec.ef_search = nprobe or spec.nprobe, ef_search or spec.ef_search
                set_search_parameters(dataset.get_index(COLUMN).faiss_index, spec)

    def _caption_columns(self) -> tuple[list[str], list[str], list[str]]:
        if self._captions_meta is None:
            self._captions_meta = tuple(list(self.captions[name]) for name in ("image_id", "language", "text"))
        return self._captions_meta

    @property
    def languages(self) -> list[str]:
        return list(self.info["languages"])

    def __len__(self) -> int:
        return len(self.images)

    # queries -> unit vectors
    def encode_text(self, queries: Sequence[str]) -> np.ndarray:
        texts = [queries] if isinstance(queries, str) else list(queries)
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ValueError("a text query must be a non-empty string")
        return encode_texts(self.model, self.processor, texts)

    def encode_image(self, images: Any) -> np.ndarray:
        batch = images if isinstance(images, list) else [images]
        return encode_images(self.model, self.processor, batch)

    # searches
    def search_vectors(self, vectors: np.ndarray, k: int = 10, target: str = "images") -> list[list[Hit]]:
        """Top-``k`` of each query vector among the gallery's images or captions."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        dataset = self.images if target == "images" else self.captions
        if dataset is None:
            raise ValueError(f"{self.folder} has no captions (the gallery had none): image -> text search needs them")
        queries = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        scores, indices = dataset.get_index(COLUMN).search_batch(queries, k=min(k, len(dataset)))
        results = []
        for row_scores, row_indices in zip(scores, indices):
            found = [(float(s), int(i)) for s, i in zip(row_scores, row_indices) if i >= 0]
            if target == "images":
                results.append([Hit(r + 1, self._image_ids[i], s) for r, (s, i) in enumerate(found)])
            else:
                ids, languages, texts = self._caption_columns()
                results.append([Hit(r + 1, ids[i], s, languages[i], texts[i]) for r, (s, i) in enumerate(found)])
        return results

    def search_text(self, query: str, k: int = 10) -> list[Hit]:
        """Text (any language) -> images."""
        return self.search_vectors(self.encode_text(query), k)[0]

    def search_image(self, image: Any, k: int = 10) -> list[Hit]:
        """Image (PIL, path, array) -> similar images of the gallery."""
        return self.search_vectors(self.encode_image(image), k)[0]

    def search_captions(self, image: Any, k: int = 10, languages: Sequence[str] | None = None,
                        per_language: bool = False) -> list[Hit]:
        """Image -> the gallery's best captions, only in ``languages`` when given. ``per_language``: the best
        ``k`` of each language (ranks count within the language), else the best ``k`` overall."""
        if self.captions is None:
            raise ValueError(f"{self.folder} has no captions (the gallery had none): image -> text search needs them")
        wanted = set(self.languages if languages is None else languages)
        unknown = sorted(wanted - set(self.languages))
        if unknown:
            raise ValueError(f"no captions in {unknown}; the index has {self.languages}")
        query = self.encode_image(image)
        depth = k * (len(wanted) if per_language else 1) * (1 if wanted == set(self.languages) else 4)
        while True:  # search deeper until the filter leaves enough (or everything was searched)
            depth = min(depth, len(self.captions))
            kept, counts = [], dict.fromkeys(wanted, 0)
            for hit in self.search_vectors(query, depth, "captions")[0]:
                if hit.language in wanted and (counts[hit.language] < k if per_language else len(kept) < k):
                    counts[hit.language] += 1
                    rank = counts[hit.language] if per_language else len(kept) + 1
                    kept.append(Hit(rank, hit.id, hit.score, hit.language, hit.text))
            if depth == len(self.captions) or len(kept) == (k * len(wanted) if per_language else k):
                return kept
            depth *= 4

    def image(self, image_id: str) -> Any:
        """The stored image of ``image_id`` (a PIL image)."""
        return self.images[self._image_ids.index(image_id)]["image"]


def format_hits(hits: Sequence[Hit]) -> str:
    """Plain-text table: rank, id, score (and language, caption for caption hits)."""
    lines = []
    for hit in hits:
        line = f"{hit.rank:>4}  {hit.id:<24} {hit.score:8.4f}"
        if hit.text is not None:
            line += f"  [{hit.language}] {hit.text}"
        lines.append(line)
    return "\n".join(lines)
