"""Zero-shot image classification on EmojiCCR with transformers' own pipeline, per language.

Each test image is classified against the names of *all* test emoji in one language (the first caption of each
emoji in that language: its CLDR name), through ``pipeline("zero-shot-image-classification", model=...,
trust_remote_code=True)`` exactly as a user calls it. Top-1 / top-5 accuracy per language, next to chance
(k / number of candidate names), for two hypothesis templates: ``{}`` (the bare name, as trained) and a short
template written in each language. Images go in twice: as the dataset gives them (RGBA; the pipeline's
``load_image`` turns transparent pixels black) and composited onto white (what ``CCRProcessor`` does).

    python hub_scripts/zero_shot_eval.py outputs/emoji-ccr/model          # writes <model>/zero_shot_results.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm.auto import tqdm  # noqa: E402

from modeling_ccr.cli import check_model_source, run_cli  # noqa: E402
from modeling_ccr.dataset_schema import select_languages  # noqa: E402
from modeling_ccr.emoji_dataset import EMOJI_CCR_LANGUAGES, load_emoji_ccr  # noqa: E402
from modeling_ccr.processing_ccr import load_image  # noqa: E402

# "An emoji: {}" in each language: a hypothesis template in the language of the labels.
LANGUAGE_TEMPLATES = {
    "en": "an emoji of {}",
    "de": "ein Emoji: {}",
    "fr": "un emoji : {}",
    "cs": "emoji: {}",
    "zh": "{}的表情符号",
    "ja": "{}の絵文字",
}
TOP_K = (1, 5)


def emoji_names(dataset: Any, language: str) -> list[str | None]:
    """Per row, the emoji's first caption in `language` (its CLDR name), or None when it has none."""
    names = []
    for captions in dataset.select_columns(["captions"])["captions"]:
        names.append(next((c["text"] for c in captions if c["language"] == language), None))
    return names


def classify(classifier: Any, images: list, names: list[str | None], template: str, desc: str) -> dict[str, float]:
    """Top-k accuracy of the pipeline over the images that have a name; labels = the distinct names."""
    labels = sorted({n for n in names if n is not None})
    hits = dict.fromkeys(TOP_K, 0)
    rows = [i for i, n in enumerate(names) if n is not None]
    for i in tqdm(rows, desc=desc, leave=False):
        ranked = [r["label"] for r in classifier(images[i], candidate_labels=labels, hypothesis_template=template)]
        for k in TOP_K:
            hits[k] += names[i] in ranked[:k]
    result = {f"top{k}": 100.0 * hits[k] / len(rows) for k in TOP_K}
    result.update({f"chance_top{k}": 100.0 * min(k, len(labels)) / len(labels) for k in TOP_K})
    result.update(images=len(rows), labels=len(labels), template=template)
    return result


def run(model: str, split: str, languages: list[str], device: str | None = None) -> dict[str, Any]:
    from transformers import pipeline

    classifier = pipeline("zero-shot-image-classification", model=model, trust_remote_code=True, device=device)
    dataset = load_emoji_ccr(split)
    raw = list(dataset["image"])
    image_sets = {"as_given": raw, "on_white": [load_image(image) for image in raw]}
    results: dict[str, Any] = {"model": model, "dataset": "emoji_ccr", "split": split, "results": {}}
    for language in languages:
        names = emoji_names(dataset, language)
        templates = {"bare_name": "{}", "language_template": LANGUAGE_TEMPLATES.get(language, "{}")}
        per_language = results["results"].setdefault(language, {})
        for images_name, images in image_sets.items():
            for template_name, template in templates.items():
                per_language[f"{images_name}/{template_name}"] = classify(
                    classifier, images, names, template, f"{language} {images_name} {template_name}"
                )
    return results


def format_table(results: dict[str, Any], setting: str) -> str:
    lines = [f"setting: {setting}", "| language | top-1 % | top-5 % | chance top-1 / top-5 % | labels | template |",
             "|---|---|---|---|---|---|"]
    for language, settings in results["results"].items():
        r = settings[setting]
        lines.append(f"| {language} | {r['top1']:.1f} | {r['top5']:.1f} | {r['chance_top1']:.1f} / "
                     f"{r['chance_top5']:.1f} | {r['labels']} | `{r['template']}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a saved model folder or Hub repo id")
    parser.add_argument("--split", default="test")
    parser.add_argument("--languages", nargs="+", default=list(EMOJI_CCR_LANGUAGES))
    parser.add_argument("--device", default=None)
    parser.add_argument("--output", default=None, help="default: <model>/zero_shot_results.json (./ for a repo id)")
    args = parser.parse_args(argv)
    check_model_source(args.model)
    select_languages(EMOJI_CCR_LANGUAGES, args.languages, "EmojiCCR")
    load_emoji_ccr(args.split)  # an unknown split fails here, before the model is loaded
    results = run(args.model, args.split, args.languages, args.device)
    for setting in next(iter(results["results"].values())):
        print(format_table(results, setting) + "\n")
    local = Path(args.model)
    output = Path(args.output) if args.output else (local if local.is_dir() else Path(".")) / "zero_shot_results.json"
    output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
