"""The canonical in-memory form of a CCR dataset, shared by every loader.

One row per image: ``image`` (a ``datasets.Image``), ``image_id`` (string) and ``captions``, a list of
``{"language", "text"}`` records (any number per language, any subset of languages).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from datasets import Dataset, Features, Image, List, Value

CCR_FEATURES = Features(
    {
        "image": Image(),
        "image_id": Value("string"),
        "captions": List({"language": Value("string"), "text": Value("string")}),
    }
)


def check_ccr_dataset(dataset: Dataset, name: str = "dataset") -> None:
    """Raise ``ValueError`` naming the problem if ``dataset`` is not in the canonical form."""
    missing = [column for column in CCR_FEATURES if column not in dataset.column_names]
    if missing:
        raise ValueError(f"{name} is missing the column(s) {missing}; expected image, image_id, captions")
    for row_index, captions in enumerate(dataset["captions"]):
        if not captions:
            raise ValueError(f"{name}: row {row_index} (image_id={dataset[row_index]['image_id']!r}) has no caption")


def dataset_languages(dataset: Dataset) -> list[str]:
    """Sorted list of the languages that occur in ``dataset``'s captions."""
    return sorted({caption["language"] for captions in dataset["captions"] for caption in captions})


def select_languages(available: Iterable[str], languages: Sequence[str] | None, what: str) -> list[str]:
    """The languages to keep: all of ``available`` (sorted) when ``languages`` is None, else ``languages``,
    each of which must be available (a ValueError names the unknown ones)."""
    available = sorted(set(available))
    if not available:
        raise ValueError(f"no language found in {what}")
    if languages is None:
        return available
    unknown = [lang for lang in languages if lang not in available]
    if unknown:
        raise ValueError(f"unknown language(s) {unknown} for {what}; available: {available}")
    return list(languages)


def captions_in(captions: Iterable[dict], languages: Iterable[str] | None) -> list[dict]:
    """The captions whose language is in ``languages`` (all when None): the one language filter."""
    wanted = None if languages is None else set(languages)
    return [caption for caption in captions if wanted is None or caption["language"] in wanted]


def filter_languages(dataset: Dataset, languages: Sequence[str] | None, name: str = "dataset",
                     strict: bool = True) -> Dataset:
    """``dataset`` with only the captions in ``languages`` and only the images that keep one. ``strict``:
    every requested language must occur (else a ValueError names it); otherwise absent ones are ignored."""
    if languages is None:
        return dataset
    if strict:
        languages = select_languages(dataset_languages(dataset), languages, name)
    kept = dataset.map(lambda row: {"captions": captions_in(row["captions"], languages)})
    kept = kept.filter(lambda row: len(row["captions"]) > 0)
    if len(kept) == 0:
        raise ValueError(f"{name} holds no image with a caption in {sorted(languages)}")
    return kept


LANGUAGE_COVERAGES = ("full", "partial")


def restrict_language_coverage(dataset: Dataset, coverage: str, seed: int, name: str = "dataset") -> Dataset:
    """``dataset`` with the captions of only some languages per image, as real collections have them.

    ``full``: unchanged. ``partial``: each image keeps a random subset of its K languages (all its captions
    in those): first a size drawn uniformly from 1..K, then that many of its languages, both from a
    generator seeded with ``seed`` and the row index, so the subsets are fixed for a seed (the same for every
    objective trained with it) and independent of the other rows."""
    if coverage not in LANGUAGE_COVERAGES:
        raise ValueError(f"language coverage {coverage!r} is not one of {list(LANGUAGE_COVERAGES)}")
    if coverage == "full":
        return dataset
    import numpy as np

    def keep_some(row: dict, index: int) -> dict:
        languages = sorted({caption["language"] for caption in row["captions"]})
        rng = np.random.default_rng([seed, index])
        size = int(rng.integers(1, len(languages) + 1))
        kept = set(rng.choice(languages, size=size, replace=False).tolist())
        return {"captions": [caption for caption in row["captions"] if caption["language"] in kept]}

    if not len(dataset):
        raise ValueError(f"{name} is empty")
    return dataset.map(keep_some, with_indices=True)
