"""The canonical in-memory form of a CCR dataset, shared by every loader.

One row per image: ``image`` (a ``datasets.Image``), ``image_id`` (string) and ``captions``, a list of
``{"language", "text"}`` records (any number per language, any subset of languages).
"""

from __future__ import annotations

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
