"""The model card (README.md of a model repository), rendered from the MODEL_CARD.md template with the
figures of the folder's eval_results.json.

Works offline and imports nothing that uploads: train.py renders the card of every model folder it
writes, push.py renders it again with the repository id.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .folder_checks import check_eval_results
from .results import DIRECTIONS, EMOJI_DATASET_NAME, RetrievalResults, render_table
from .shipped_files import shipped_path

DEFAULT_TEMPLATE = shipped_path("MODEL_CARD.md")
PAPER = "Nie et al., Improving the Consistency in Cross-Lingual Cross-Modal Retrieval with 1-to-K Contrastive Learning, KDD 2024"
PAPER_URL = "https://arxiv.org/abs/2406.18254"
_DIRECTION_NAMES = {"TR": "image-to-text", "IR": "text-to-image"}


def model_index(results: RetrievalResults) -> list[EvalResult]:
    """The card's model-index: Recall@K per language and direction, MRV per direction, mean recall."""
    dataset = results.dataset or "emoji_ccr"
    common = dict(task_type="image-text-retrieval", task_name="Cross-lingual image-text retrieval",
                  dataset_type=dataset, dataset_split=results.split)
    out = []
    for lang in results.languages:
        for direction in DIRECTIONS:
            for k, value in results.recall[direction][lang].items():
                out.append(EvalResult(**common, dataset_name=f"{dataset} ({lang})", dataset_config=lang,
                                      metric_type=f"{direction.lower()}_recall@{k.split('@')[-1]}",
                                      metric_name=f"{direction} {k} ({_DIRECTION_NAMES[direction]}, {lang})",
                                      metric_value=float(value)))
    for direction in DIRECTIONS:
        out.append(EvalResult(**common, dataset_name=f"{dataset} (all languages)",
                              metric_type=f"mrv_{direction.lower()}",
                              metric_name=f"MRV {direction} ({results.mrv_variant})",
                              metric_value=float(results.mrv[direction])))
    out.append(EvalResult(**common, dataset_name=f"{dataset} (all languages)", metric_type="mean_recall",
                          metric_name="mean recall", metric_value=float(results.mean_recall)))
    return out


def mixed_pool_table(results: RetrievalResults) -> str | None:
    """The card's row for the mixed-language pool (None for results without one)."""
    mixed = results.mixed
    if not mixed:
        return None
    share, offset = mixed["language_share"], mixed["offset"]
    header = [*(f"TR {k}" for k in mixed["recall"]), "MRV_TR_mixed", f"top-{share['top_k']} share by language (pool)",
              "offset spread (matching / non-matching)"]

    def number(value: float | None, digits: int) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    row = [*(f"{v:.2f}" for v in mixed["recall"].values()), number(mixed["mrv_tr"], 1),
           ", ".join(f"{lang} {share['top'][lang]:.1f}% ({share['pool'][lang]:.1f}%)" for lang in share["top"]),
           f"{number(offset['spread_matching'], 3)} / {number(offset['spread_non_matching'], 3)}"]
    return render_table(header, [row], markdown=True)


def load_card_results(folder: Path) -> RetrievalResults:
    """The folder's eval_results.json, checked for what the card shows (a ValueError names the problem)."""
    path = folder / "eval_results.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"cannot render the model card of {folder}: eval_results.json is missing or invalid") from None
    problems = check_eval_results(data)
    if problems:
        raise ValueError(f"cannot render the model card of {folder}: " + "; ".join(problems))
    return RetrievalResults.from_json(data)


def _card_datasets(dataset: str | None) -> list[str] | None:
    """The card's `datasets:` entry: the embedded EmojiCCR, or a Hub dataset id; a local path is left out."""
    if dataset in (None, EMOJI_DATASET_NAME, "emoji_ccr", "emoji"):
        return ["emoji_ccr"]
    return [dataset] if re.fullmatch(r"[\w.-]+/[\w.-]+", dataset) and not Path(dataset).exists() else None


def render_model_card(
    model_dir: str | Path,
    template: str | Path | None = None,
    repo_id: str | None = None,
    revision: str | None = None,
    training_data: str | None = None,
    model_name: str | None = None,
) -> ModelCard:
    """Render the model card (README.md) of a saved model folder from the MODEL_CARD.md template.

    The YAML header carries a model-index with Recall@K per language and direction, mean recall and MRV
    from eval_results.json, so the Hub shows them; the body gets the same numbers as a table.
    `template` defaults to the MODEL_CARD.md shipped with the package. `repo_id`/`revision` fill the
    loading snippet (placeholders when unknown); `training_data` (markdown) replaces the EmojiCCR
    description; `model_name` defaults to the repo name, else the folder name (pass it when rendering in a
    staging folder). A `report.png` in the folder is shown under the results.
    """
    folder = Path(model_dir)
    template = Path(template) if template is not None else DEFAULT_TEMPLATE
    if not template.is_file():
        raise FileNotFoundError(f"model card template not found: {template}")
    results = load_card_results(folder)
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    model_name = model_name or (repo_id or folder.resolve().name).split("/")[-1]
    card_data = ModelCardData(
        language=results.languages,
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        tags=["ccr", "cross-lingual", "multilingual", "image-text-retrieval", "1-to-k-contrastive",
              "mrv", "custom_code", "zero-shot-image-classification", "sentence-transformers", "clip"],
        datasets=_card_datasets(results.dataset),
        metrics=["recall", "mrv"],
        model_name=model_name,
        eval_results=model_index(results),
    )
    vision = config.get("vision_config") or {}
    text = config.get("text_config") or {}
    return ModelCard.from_template(
        card_data,
        template_path=str(template),
        model_name=model_name,
        repo_id=repo_id or "NAMESPACE/NAME",
        revision=revision or "<commit hash printed by push.py>",
        languages=", ".join(results.languages),
        num_languages=len(results.languages),
        dataset=results.dataset or "emoji_ccr",
        split=results.split or "test",
        num_images=results.num_images,
        num_texts=results.num_texts,
        results_table=results.recall_table(markdown=True),
        mean_recall=f"{results.mean_recall:.2f}",
        mrv_tr=f"{results.mrv['TR']:.3f}",
        mrv_ir=f"{results.mrv['IR']:.3f}",
        mrv_variant=results.mrv_variant,
        mixed_table=mixed_pool_table(results),
        vision_model_type=vision.get("model_type", "unknown"),
        text_model_type=text.get("model_type", "unknown"),
        projection_dim=config.get("projection_dim", "unknown"),
        num_fusion_layers=config.get("num_fusion_layers", 0),
        paper=PAPER,
        paper_url=PAPER_URL,
        training_data=training_data,
        report_image="report.png" if (folder / "report.png").is_file() else None,
    )
