"""The canonical in-memory form of a CCR dataset, shared by every loader.

One row per image: ``image`` (a ``datasets.Image``), ``image_id`` (string) and ``captions``, a list of
``{"language", "text"}`` records (any number per language, any subset of languages). Texts are non-empty
strings and language codes are canonical (:func:`canonical_language`, the one place codes are normalised:
every loader, the language filter, the collator and the evaluation call it).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any

from datasets import Dataset, Features, Image, List, Value

CCR_FEATURES = Features(
    {
        "image": Image(),
        "image_id": Value("string"),
        "captions": List({"language": Value("string"), "text": Value("string")}),
    }
)


_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8})*$")
# A region that selects the written form: Chinese in Taiwan / Hong Kong / Macau is written in Traditional
# characters. Simplified is the default written form of ``zh`` in CCR benchmarks, so ``zh-Hans`` is ``zh``.
_REGION_SCRIPT = {("zh", "tw"): "Hant", ("zh", "hk"): "Hant", ("zh", "mo"): "Hant"}
_DEFAULT_SCRIPT = {"zh": "Hans"}


@functools.lru_cache(maxsize=4096)
def canonical_language(code: Any) -> str:
    """The canonical form of a language code, the only place codes are normalised.

    BCP-47 primary language subtag in lower case (``EN``, ``en``, ``en_US``, ``en-us`` -> ``en``); a script
    subtag is kept in title case (``sr-Latn``) unless it is the language's default (``zh-Hans`` -> ``zh``);
    regions and variants are dropped, except where the region selects the script (``zh-TW``, ``zh-HK``,
    ``zh-MO`` -> ``zh-Hant``). Three-letter codes are kept as they are (``eng`` is not mapped to ``en``).
    Raises ``ValueError`` for anything that is not a language code."""
    if not isinstance(code, str) or not _LANGUAGE.match(code.strip()):
        raise ValueError(f"unknown language code {code!r} (expected an ISO 639 code such as 'en' or 'zh-TW')")
    primary, *rest = re.split(r"[-_]", code.strip())
    primary = primary.lower()
    script = next((sub.title() for sub in rest if len(sub) == 4 and sub.isalpha()), None)
    if script is None:
        script = next((_REGION_SCRIPT[primary, sub.lower()] for sub in rest if (primary, sub.lower()) in _REGION_SCRIPT), None)
    if script is None or _DEFAULT_SCRIPT.get(primary) == script:
        return primary
    return f"{primary}-{script}"


def canonical_languages(languages: Sequence[str] | None) -> list[str] | None:
    """:func:`canonical_language` of each (None stays None); duplicates after normalising are dropped."""
    if languages is None:
        return None
    if isinstance(languages, str):
        raise TypeError(f"languages must be a list of codes, got the string {languages!r}")
    return list(dict.fromkeys(canonical_language(language) for language in languages))


def caption_problem(caption: Any) -> str | None:
    """Why ``caption`` is not a canonical ``{language, text}`` record (None when it is)."""
    if not isinstance(caption, dict) or "language" not in caption or "text" not in caption:
        return f"a caption must be a {{'language', 'text'}} record, got {caption!r}"
    text, language = caption["text"], caption["language"]
    if not isinstance(text, str) or not text.strip():
        return f"caption text {text!r} is not a non-empty string"
    try:
        canonical = canonical_language(language)
    except ValueError as error:
        return str(error)
    if canonical != language:
        return f"language code {language!r} is not canonical (use {canonical!r}; see canonical_language)"
    return None


def check_ccr_dataset(dataset: Dataset, name: str = "dataset") -> None:
    """Raise ``ValueError`` naming the row if ``dataset`` is not in the canonical form: the three columns, at
    least one caption per image, every caption a non-empty string with a canonical language code."""
    missing = [column for column in CCR_FEATURES if column not in dataset.column_names]
    if missing:
        raise ValueError(f"{name} is missing the column(s) {missing}; expected image, image_id, captions")
    for row_index, captions in enumerate(dataset["captions"]):
        if not isinstance(captions, list) or not captions:
            raise ValueError(f"{name}: row {row_index} (image_id={dataset[row_index]['image_id']!r}) has no caption "
                             f"list (got {captions!r})")
        for caption in captions:
            problem = caption_problem(caption)
            if problem:
                raise ValueError(f"{name}: row {row_index} (image_id={dataset[row_index]['image_id']!r}): {problem}")


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
    languages = canonical_languages(languages)
    unknown = [lang for lang in languages if lang not in available]
    if unknown:
        raise ValueError(f"unknown language(s) {unknown} for {what}; available: {available}")
    return list(languages)


def captions_in(captions: Iterable[dict], languages: Iterable[str] | None) -> list[dict]:
    """The captions whose language is in ``languages`` (all when None): the one language filter."""
    wanted = None if languages is None else set(canonical_languages(list(languages)))
    return [caption for caption in captions if wanted is None or caption["language"] in wanted]


def filter_languages(dataset: Dataset, languages: Sequence[str] | None, name: str = "dataset",
                     strict: bool = True) -> Dataset:
    """``dataset`` with only the captions in ``languages`` and only the images that keep one. ``strict``:
    every requested language must occur (else a ValueError names it); otherwise absent ones are ignored."""
    if languages is None:
        return dataset
    languages = canonical_languages(languages)
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
