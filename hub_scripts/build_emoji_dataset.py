"""Build the embedded EmojiCCR dataset (data/emoji_ccr/) from two pinned npm packages.

Images: the 64 px Noto Emoji PNGs of ``emoji-datasource-google``; texts: the human-written CLDR names
(``tts``) and keywords (``default``) of ``cldr-annotations-full`` in en, de, fr, cs, zh, ja.

    python hub_scripts/build_emoji_dataset.py                 # fetch with `npm pack`, write data/emoji_ccr/
    python hub_scripts/build_emoji_dataset.py --npm-cache DIR # use the .tgz files already in DIR
    python hub_scripts/build_emoji_dataset.py --check         # rebuild in a temp dir, compare with data/

The tarballs are checked against the registry's sha512 integrity pinned below, rows are ordered and the
parquet files written with fixed options, so the output is byte-for-byte the same on every run with the
same pyarrow version (pyarrow writes its version into each parquet footer: see PYARROW_VERSION).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from datasets import Features, Value  # noqa: E402
from tqdm import tqdm  # noqa: E402

from modeling_ccr.dataset_schema import CCR_FEATURES  # noqa: E402


@dataclass(frozen=True)
class NpmPackage:
    """An exact npm release with the registry's sha512 integrity of its tarball."""

    name: str
    version: str
    integrity: str

    @property
    def tarball_name(self) -> str:
        return f"{self.name}-{self.version}.tgz"


EMOJI_PACKAGE = NpmPackage(
    "emoji-datasource-google",
    "16.0.0",
    "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
)
CLDR_PACKAGE = NpmPackage(
    "cldr-annotations-full",
    "48.2.0",
    "sha512-DV7A+rEcgUSNTRsVGNGqBZRmAkGfwhGHO5Q1dRwzBoBnVrHWp804JP7/QJdEc66iHmx3+zLWVIMCFLm0lW7PUQ==",
)
LANGUAGES = ("en", "de", "fr", "cs", "zh", "ja")
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = {"validation": 0.1, "test": 0.1}
SEED = 0
# Well-known emoji kept in the training split so that demo queries ("roter Apfel", "pomme rouge", "红苹果")
# have a concept the model has seen. Everything else is placed by the seeded split alone.
PINNED_TO_TRAIN = ("1f34e", "1f34c", "1f436", "1f431", "1f697", "2764-fe0f")
# Skin-tone swatches (category "Component") are modifiers, not concepts.
EXCLUDED_CATEGORIES = ("Component",)
KEYWORD_SEPARATOR = " | "
PYARROW_VERSION = "26.0.1"
PARQUET_OPTIONS = {
    "compression": "zstd",
    "compression_level": 9,
    "row_group_size": 256,
    "use_dictionary": False,
    "write_statistics": False,
    "store_schema": True,
    "version": "2.6",
    "data_page_version": "1.0",
}
EMOJI_FEATURES = Features(
    {
        **CCR_FEATURES,
        "emoji": Value("string"),
        "category": Value("string"),
        "subcategory": Value("string"),
    }
)
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "emoji_ccr"


# ----------------------------------------------------------------------------------------------- fetching
def verify_integrity(path: Path, package: NpmPackage) -> None:
    """Raise ``ValueError`` unless ``path`` has the registry's pinned sha512 for ``package``."""
    digest = "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()
    if digest != package.integrity:
        raise ValueError(f"{path} is not {package.name}@{package.version}: integrity {digest} != {package.integrity}")


def fetch_tarball(package: NpmPackage, cache_dir: Path | None, work_dir: Path) -> Path:
    """The verified tarball of ``package``: from ``cache_dir`` when it has it, else via ``npm pack``."""
    if cache_dir is not None and (cache_dir / package.tarball_name).is_file():
        path = cache_dir / package.tarball_name
    else:
        target = cache_dir if cache_dir is not None else work_dir
        target.mkdir(parents=True, exist_ok=True)
        spec = f"{package.name}@{package.version}"
        print(f"npm pack {spec}", file=sys.stderr)
        subprocess.run(["npm", "pack", spec, "--silent"], cwd=target, check=True, stdout=subprocess.DEVNULL)
        path = target / package.tarball_name
    verify_integrity(path, package)
    return path


def read_members(tarball: Path, wanted) -> dict[str, bytes]:
    """Contents of the members of ``tarball`` whose name (without the ``package/`` prefix) passes ``wanted``."""
    out: dict[str, bytes] = {}
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            name = member.name.removeprefix("package/")
            if member.isfile() and wanted(name):
                out[name] = archive.extractfile(member).read()
    return out


def load_sources(emoji_tgz: Path, cldr_tgz: Path, languages: Iterable[str] = LANGUAGES):
    """(emoji.json records, {unified-lowercase: png bytes}, {language: CLDR annotations dict})."""
    languages = tuple(languages)
    emoji_files = read_members(
        emoji_tgz, lambda n: n == "emoji.json" or (n.startswith("img/google/64/") and n.endswith(".png"))
    )
    records = json.loads(emoji_files.pop("emoji.json"))
    images = {Path(name).stem.lower(): data for name, data in emoji_files.items()}
    wanted = {f"annotations/{lang}/annotations.json": lang for lang in languages}
    cldr_files = read_members(cldr_tgz, lambda n: n in wanted)
    missing = sorted(set(wanted) - set(cldr_files))
    if missing:
        raise ValueError(f"{cldr_tgz.name} has no {missing}")
    annotations = {
        wanted[name]: json.loads(data)["annotations"]["annotations"] for name, data in cldr_files.items()
    }
    return records, images, annotations


# ----------------------------------------------------------------------------------------------- building
def _chars(unified: str) -> str:
    return "".join(chr(int(part, 16)) for part in unified.split("-"))


def find_annotation(record: Mapping, annotations: Mapping[str, Mapping]) -> Mapping | None:
    """CLDR entry of an emoji.json record: CLDR keys emoji with or without the FE0F variation selector."""
    keys = [_chars(record["unified"])]
    if record.get("non_qualified"):
        keys.append(_chars(record["non_qualified"]))
    keys.append(keys[0].replace("\ufe0f", ""))
    for key in keys:
        entry = annotations.get(key)
        if entry and entry.get("tts") and entry["tts"][0].strip():
            return entry
    return None


def emoji_captions(entries: Mapping[str, Mapping], languages: Iterable[str]) -> list[dict[str, str]]:
    """Per language: the CLDR name first, then the keywords joined by " | " (unless that equals the name)."""
    captions = []
    for lang in languages:
        name = entries[lang]["tts"][0].strip()
        captions.append({"language": lang, "text": name})
        keywords = [k.strip() for k in entries[lang].get("default", []) if k.strip()]
        joined = KEYWORD_SEPARATOR.join(keywords)
        if joined and joined.casefold() != name.casefold():
            captions.append({"language": lang, "text": joined})
    return captions


def build_rows(
    records: list[Mapping],
    images: Mapping[str, bytes],
    annotations: Mapping[str, Mapping],
    languages: Iterable[str] = LANGUAGES,
) -> list[dict]:
    """One row per base emoji that has a Noto image and a CLDR name in every language, in emoji.json order."""
    languages = tuple(languages)
    rows = []
    for record in sorted(records, key=lambda r: (r["sort_order"], r["unified"])):
        image_id = record["unified"].lower()
        if record["category"] in EXCLUDED_CATEGORIES or image_id not in images:
            continue
        entries = {lang: find_annotation(record, annotations[lang]) for lang in languages}
        if any(entry is None for entry in entries.values()):
            continue
        rows.append(
            {
                "image": {"bytes": images[image_id], "path": None},
                "image_id": image_id,
                "captions": emoji_captions(entries, languages),
                "emoji": _chars(record["unified"]),
                "category": record["category"],
                "subcategory": record["subcategory"],
            }
        )
    return rows


def _split_key(seed: int, image_id: str) -> str:
    return hashlib.sha256(f"{seed}:{image_id}".encode()).hexdigest()


def split_rows(rows: list[dict], seed: int = SEED, pinned: Iterable[str] = PINNED_TO_TRAIN) -> dict[str, list[dict]]:
    """Split by emoji, stratified by category: per category, round(10 %) to validation and to test.

    The order inside a category comes from sha256(seed:image_id), which no library version can change;
    pinned emoji are never drawn for validation/test. Each split keeps the input row order.
    """
    pinned = set(pinned)
    by_category: dict[str, list[dict]] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row)
    assigned: dict[str, str] = {}
    for category in sorted(by_category):
        members = by_category[category]
        pool = sorted((r["image_id"] for r in members if r["image_id"] not in pinned), key=lambda i: _split_key(seed, i))
        start = 0
        for split in ("test", "validation"):
            count = min(math.floor(len(members) * SPLIT_FRACTIONS[split] + 0.5), len(pool) - start)
            for image_id in pool[start : start + count]:
                assigned[image_id] = split
            start += count
    splits: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for row in rows:
        splits[assigned.get(row["image_id"], "train")].append(row)
    return splits


def write_parquet(rows: list[dict], path: Path) -> None:
    """Write ``rows`` with EMOJI_FEATURES' schema (and its "huggingface" metadata) using fixed options."""
    schema = EMOJI_FEATURES.arrow_schema
    table = pa.Table.from_pylist([EMOJI_FEATURES.encode_example(row) for row in rows], schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **PARQUET_OPTIONS)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sources_markdown(splits: Mapping[str, list[dict]], hashes: Mapping[str, str], seed: int) -> str:
    """SOURCES.md: provenance, licences, build recipe, counts and the sha256 of each parquet file."""
    lines = [
        "# EmojiCCR — sources and licences",
        "",
        "Generated by `hub_scripts/build_emoji_dataset.py`; do not edit by hand.",
        "",
        "## Sources",
        "",
        f"- **Images**: npm package `{EMOJI_PACKAGE.name}@{EMOJI_PACKAGE.version}` "
        f"(integrity `{EMOJI_PACKAGE.integrity}`), files `img/google/64/<unified>.png`: 64x64 RGBA PNGs of "
        "Google's **Noto Emoji** (v2.048 according to the package README), embedded unchanged.",
        "  The package's README states: \"Android/Google/Noto images, are available under the Apache "
        "License 2.0\" (https://github.com/googlefonts/noto-emoji, LICENSE). The package itself "
        "(emoji.json, from which the `category`/`subcategory` columns come) is MIT-licensed, "
        "Copyright (c) 2013 Cal Henderson.",
        f"- **Texts**: npm package `{CLDR_PACKAGE.name}@{CLDR_PACKAGE.version}` "
        f"(integrity `{CLDR_PACKAGE.integrity}`; CLDR 48), files `annotations/<lang>/annotations.json`: the "
        "human-written emoji names (`tts`) and keywords (`default`) of **Unicode CLDR**, not machine-translated.",
        "  Licence: Unicode License v3 (SPDX `Unicode-3.0`), Copyright © 2004-2026 Unicode, Inc. "
        "The copyright and permission notice is reproduced in `LICENSE-CLDR.txt` beside this file.",
        "",
        "## What a row is",
        "",
        "One row per base emoji (no skin-tone variants, no skin-tone swatches) that has a Noto image and a "
        f"CLDR name in every one of {', '.join(LANGUAGES)}. Emoji whose names CLDR only derives (most flags, "
        "many ZWJ sequences) are therefore absent.",
        "",
        "- `image`: the PNG bytes; `image_id`: the lowercase unified codepoint(s), e.g. `1f34e`;",
        "- `captions`: per language, first the CLDR name (e.g. `roter Apfel`), then the CLDR keywords joined "
        f"by `{KEYWORD_SEPARATOR}` (e.g. `Apfel | Frucht | Obst | rot | roter Apfel`), the latter omitted when "
        "it equals the name;",
        "- extra columns: `emoji` (the character sequence), `category`, `subcategory` (from emoji.json).",
        "",
        "## Splits",
        "",
        f"By emoji (no concept is in two splits), stratified by category: per category round(10 %) to "
        f"validation and round(10 %) to test, the order inside a category given by sha256(\"{seed}:<image_id>\") "
        f"(seed {seed}). Pinned to train for the demo queries: {', '.join(f'`{i}`' for i in PINNED_TO_TRAIN)} "
        "(red apple, banana, dog face, cat face, automobile, red heart).",
        "",
        "| split | emoji | captions | " + " | ".join(LANGUAGES) + " |",
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in LANGUAGES) + " |",
    ]
    for split in SPLITS:
        per_lang = Counter(c["language"] for row in splits[split] for c in row["captions"])
        total = sum(per_lang.values())
        lines.append(
            f"| {split} | {len(splits[split])} | {total} | " + " | ".join(str(per_lang[lang]) for lang in LANGUAGES) + " |"
        )
    lines += ["", "Captions per language count names and keyword captions together.", "", "| category | "
              + " | ".join(SPLITS) + " |", "| --- | " + " | ".join("---:" for _ in SPLITS) + " |"]
    categories = sorted({row["category"] for rows in splits.values() for row in rows})
    for category in categories:
        counts = [sum(row["category"] == category for row in splits[split]) for split in SPLITS]
        lines.append(f"| {category} | " + " | ".join(map(str, counts)) + " |")
    lines += [
        "",
        "## Rebuilding",
        "",
        "    python hub_scripts/build_emoji_dataset.py           # npm pack the two packages, rewrite this folder",
        "    python hub_scripts/build_emoji_dataset.py --check   # rebuild in a temp dir and compare bytes",
        "",
        f"The output is byte-for-byte reproducible with pyarrow {PYARROW_VERSION}: rows are in emoji.json "
        "order, parquet options are fixed (zstd level 9, 256-row groups, no statistics, no dictionary) and "
        "nothing time-dependent is written. Another pyarrow version writes its own version string into the "
        "parquet footer (and may encode pages differently), so the hashes below can change while the data "
        "stays the same.",
        "",
        "| file | sha256 |",
        "| --- | --- |",
    ]
    lines += [f"| {name} | `{digest}` |" for name, digest in sorted(hashes.items())]
    return "\n".join(lines) + "\n"


def write_dataset(splits: Mapping[str, list[dict]], out_dir: Path, seed: int, cldr_license: bytes) -> dict[str, str]:
    """Write the three parquet files, LICENSE-CLDR.txt and SOURCES.md; return {file name: sha256}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for split in tqdm(SPLITS, desc="writing parquet", file=sys.stderr):
        path = out_dir / f"{split}.parquet"
        write_parquet(splits[split], path)
        hashes[path.name] = sha256_file(path)
    (out_dir / "LICENSE-CLDR.txt").write_bytes(cldr_license)
    (out_dir / "SOURCES.md").write_text(sources_markdown(splits, hashes, seed), encoding="utf-8")
    return hashes


def build(out_dir: Path, npm_cache: Path | None = None, seed: int = SEED) -> dict[str, str]:
    """Fetch/verify the packages, build the rows and splits, write ``out_dir``; return the file hashes."""
    if pa.__version__ != PYARROW_VERSION:
        print(f"warning: pyarrow {pa.__version__} != {PYARROW_VERSION}; hashes will differ", file=sys.stderr)
    with tempfile.TemporaryDirectory() as work:
        emoji_tgz = fetch_tarball(EMOJI_PACKAGE, npm_cache, Path(work))
        cldr_tgz = fetch_tarball(CLDR_PACKAGE, npm_cache, Path(work))
        records, images, annotations = load_sources(emoji_tgz, cldr_tgz)
        cldr_license = read_members(cldr_tgz, lambda n: n == "LICENSE")["LICENSE"]
    rows = build_rows(records, images, annotations)
    splits = split_rows(rows, seed=seed)
    hashes = write_dataset(splits, out_dir, seed, cldr_license)
    for split in SPLITS:
        per_lang = Counter(c["language"] for row in splits[split] for c in row["captions"])
        print(f"{split}: {len(splits[split])} emoji, captions {dict(sorted(per_lang.items()))}", file=sys.stderr)
    return hashes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default data/emoji_ccr)")
    parser.add_argument("--npm-cache", type=Path, default=None, help="folder holding (or receiving) the .tgz files")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--check", action="store_true", help="rebuild in a temp dir and compare with --out")
    args = parser.parse_args(argv)
    if not args.check:
        for name, digest in build(args.out, args.npm_cache, args.seed).items():
            print(f"{digest}  {args.out / name}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "emoji_ccr"
        build(fresh, args.npm_cache, args.seed)
        names = sorted(p.name for p in fresh.iterdir())
        differing = [n for n in names if not (args.out / n).is_file() or sha256_file(fresh / n) != sha256_file(args.out / n)]
    if differing:
        print(f"differs from {args.out}: {differing}", file=sys.stderr)
        return 1
    print(f"{args.out}: all {len(names)} files identical to a fresh build")
    return 0


if __name__ == "__main__":
    sys.exit(main())
