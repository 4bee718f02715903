"""Retrieval results as one typed object: what ``retrieval_metrics`` computes, what ``eval_results.json``
holds, what the printed table, the model card's model-index and the objectives comparison read.

``RetrievalResults.to_json()`` gives the dict written to ``eval_results.json`` (the layout is unchanged:
``languages``, ``num_images``, ``num_texts``, ``recall`` {TR, IR} -> language -> ``R@k``, ``recall_avg``,
``mean_recall``, ``mrv`` {TR, IR}, ``mrv_variant``, ``mrv_num_instances``, ``chance``, ``mixed`` (the
mixed-language pool, see ``mixed_pool.mixed_pool_metrics``; absent in older files), then what was
evaluated: ``model``, ``dataset``, ``split``, ``rerank_top_k``, ``loss_type``, ``seed``; any other key is
kept in ``extra``). ``from_json`` reads that layout, older files without the optional keys included.
Tables, plain text or markdown, are drawn by :func:`render_table` alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .mrv_core import compute_mrv

DIRECTIONS = ("TR", "IR")
EMOJI_DATASET_NAME = "EmojiCCR"
_RUN_KEYS = ("model", "dataset", "split", "rerank_top_k", "loss_type", "seed")


def dataset_name(dataset: str) -> str:
    """The name results record for a ``--dataset`` argument (``emoji`` is the embedded EmojiCCR)."""
    return EMOJI_DATASET_NAME if dataset == "emoji" else str(dataset)


@dataclass
class RetrievalResults:
    """Recall@K (percent) per direction and language, their averages, mean recall, MRV, chance level, and
    what was evaluated (``None`` = not recorded)."""

    languages: list[str]
    num_images: int | None
    num_texts: int | None
    recall: dict[str, dict[str, dict[str, float]]]
    recall_avg: dict[str, dict[str, float]]
    mean_recall: float
    mrv: dict[str, float | None]
    mrv_variant: str = "variance"
    mrv_num_instances: dict[str, int] | None = None
    chance: dict[str, dict[str, float]] | None = None
    mixed: dict[str, Any] | None = None
    model: str | None = None
    dataset: str | None = None
    split: str | None = None
    rerank_top_k: int | None = None
    loss_type: str | None = None
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ks(self) -> list[str]:
        """The recall cut-offs, as keys: ``["R@1", "R@5", "R@10"]``."""
        return list(next(iter(self.recall["TR"].values())).keys())

    # -- JSON ---------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The ``eval_results.json`` dict (unrecorded run fields left out)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra":
                continue
            if value is not None or f.name not in _RUN_KEYS + ("mrv_num_instances", "chance", "mixed"):
                out[f.name] = value
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any] | str | Path) -> RetrievalResults:
        """Read an ``eval_results.json`` dict (or the file at a path); a malformed one is a ValueError listing
        its problems. ``recall_avg`` and ``mean_recall`` are derived when an older file lacks them."""
        if isinstance(data, (str, Path)):
            path = Path(data)
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                raise ValueError(f"{path}: not a readable eval_results.json ({error})") from None
        problems = validate_results_json(data)
        if problems:
            raise ValueError("; ".join(problems))
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {key: data[key] for key in known if key in data}
        values["languages"] = list(data["languages"])
        values.setdefault("num_images", None)
        values.setdefault("num_texts", None)
        recall = data["recall"]
        if not isinstance(data.get("recall_avg"), dict):
            values["recall_avg"] = {
                d: {k: float(np.mean([recall[d][lang][k] for lang in data["languages"]])) for k in recall[d][data["languages"][0]]}
                for d in DIRECTIONS
            }
        if not isinstance(data.get("mean_recall"), (int, float)):
            values["mean_recall"] = float(np.mean([v for d in values["recall_avg"].values() for v in d.values()]))
        values.setdefault("mrv", {"TR": None, "IR": None})
        return cls(**values, extra={key: value for key, value in data.items() if key not in known})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    # -- views --------------------------------------------------------------------------------------

    def flat(self) -> dict[str, float]:
        """Flat scalar view for loggers: ``tr_r1_en``, ``ir_r5_de``, ``tr_r1_avg``, ``mean_recall``, ``mrv_tr``..."""
        flat: dict[str, float] = {}
        for direction, per_lang in self.recall.items():
            for lang, values in per_lang.items():
                for key, value in values.items():
                    flat[f"{direction.lower()}_r{key[2:]}_{lang}"] = value
        for direction, values in self.recall_avg.items():
            for key, value in values.items():
                flat[f"{direction.lower()}_r{key[2:]}_avg"] = value
        flat["mean_recall"] = self.mean_recall
        for direction, value in self.mrv.items():
            flat[f"mrv_{direction.lower()}"] = math.nan if value is None else value
        if self.mixed:
            for key, value in self.mixed["recall"].items():
                flat[f"mixed_r{key[2:]}"] = value
            flat["mrv_tr_mixed"] = math.nan if self.mixed["mrv_tr"] is None else self.mixed["mrv_tr"]
            flat["mixed_share_max_excess"] = self.mixed["language_share"]["max_excess"]
            for key in ("spread_matching", "spread_non_matching"):
                value = self.mixed["offset"][key]
                flat[f"mixed_offset_{key[7:]}"] = math.nan if value is None else value
        return flat

    def recall_table(self, markdown: bool = False) -> str:
        """Recall@K per language (rows), TR then IR (columns), then the average and the chance rows."""
        ks = self.ks
        header = ["language" if markdown else "lang"] + [f"{d} {k}" for d in DIRECTIONS for k in ks]
        rows = [[lang] + [f"{self.recall[d][lang][k]:.2f}" for d in DIRECTIONS for k in ks] for lang in self.languages]
        summary = [["**average**" if markdown else "avg"] + [f"{self.recall_avg[d][k]:.2f}" for d in DIRECTIONS for k in ks]]
        if self.chance:
            summary.append(["chance"] + [f"{self.chance[d][k]:.2f}" for d in DIRECTIONS for k in ks])
        return render_table(header, rows + summary, markdown=markdown, rule_before=len(rows))

    def summary_text(self) -> str:
        """The printed report: the recall table, the sizes and mean recall, and MRV."""

        def fmt(value: float | None) -> str:
            return "n/a (one language)" if value is None else f"{value:.2f}"

        lines = [
            self.recall_table(),
            "",
            f"images {self.num_images}, texts {self.num_texts}, mean recall {self.mean_recall:.2f}",
            f"MRV ({self.mrv_variant}): TR {fmt(self.mrv['TR'])}, IR {fmt(self.mrv['IR'])}  (lower = more consistent)",
        ]
        if self.mixed:
            lines.append(self.mixed_text())
        return "\n".join(lines)

    def mixed_text(self) -> str:
        """The mixed-language pool in a few lines: recall, MRV_TR_mixed, top-k language share, offset."""
        mixed = self.mixed
        share, offset = mixed["language_share"], mixed["offset"]
        mrv = "n/a" if mixed["mrv_tr"] is None else f"{mixed['mrv_tr']:.2f}"
        recall = ", ".join(f"{k} {v:.2f}" for k, v in mixed["recall"].items())

        def spread(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.3f}"

        return "\n".join([
            f"mixed-language pool (all captions): TR {recall}; MRV_TR_mixed {mrv}",
            f"  top-{share['top_k']} language share (pool share): "
            + ", ".join(f"{lang} {share['top'][lang]:.1f}% ({share['pool'][lang]:.1f}%)" for lang in share["top"]),
            f"  language offset: spread of mean matching similarity {spread(offset['spread_matching'])}, "
            f"of mean non-matching {spread(offset['spread_non_matching'])}",
        ])


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False,
                 rule_before: int | None = None) -> str:
    """The one table renderer: a markdown table, or plain text with right-aligned columns, a rule under the
    header and another before row ``rule_before`` (e.g. the summary rows)."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(str(r[i])) for r in [*rows, header]) for i in range(len(header))]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
    rule = "  ".join("-" * w for w in widths)
    if rule_before is not None and 0 < rule_before < len(rows):
        lines.insert(1 + rule_before, rule)
    lines.insert(1, rule)
    return "\n".join(lines)


def validate_results_json(data: Any) -> list[str]:
    """Problems with an ``eval_results.json`` payload (the layout in this module's docstring)."""
    if not isinstance(data, dict):
        return ["eval_results.json: expected a JSON object"]
    problems = []
    languages = data.get("languages")
    if not (isinstance(languages, list) and languages and all(isinstance(x, str) for x in languages)):
        return ["eval_results.json: 'languages' must be a non-empty list of language codes"]
    recall = data.get("recall")
    for direction in DIRECTIONS:
        table = recall.get(direction) if isinstance(recall, dict) else None
        if not isinstance(table, dict):
            problems.append(f"eval_results.json: no recall.{direction} table")
            continue
        for lang in languages:
            row = table.get(lang)
            if not (isinstance(row, dict) and row and all(isinstance(v, (int, float)) for v in row.values())):
                problems.append(f"eval_results.json: recall.{direction}.{lang} must map 'R@k' to numbers")
    return problems


# ------------------------------------------------------------------------------------------- from ranks


def _nan_to_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _chance_recall(gallery: int, positives: np.ndarray, ks: Sequence[int]) -> list[float]:
    """Expected recall@k of a random ranking, for each k: P(one of m positives among the first k of
    ``gallery``), averaged over the queries (``positives`` holds each query's m)."""
    queries = np.bincount(positives.astype(np.int64))
    m = np.flatnonzero(queries).astype(np.float64)
    queries = queries[queries > 0]
    if not gallery or not len(m):
        return [0.0 if len(m) else math.nan for _ in ks]
    j = np.arange(min(max(ks), gallery))
    miss = np.cumprod(np.clip((gallery - m[:, None] - j) / (gallery - j), 0.0, None), axis=1)
    hits = 1.0 - miss[:, [min(k, gallery) - 1 for k in ks]]  # (distinct m, len(ks))
    return [float(v) for v in 100.0 * (queries @ hits) / queries.sum()]


def results_from_ranks(ranks: Any, ks: Sequence[int] = (1, 5, 10), mrv_variant: str = "variance") -> RetrievalResults:
    """Recall@K per language and direction, averages, mean recall, MRV_TR / MRV_IR and chance level from a
    ``ranking.RetrievalRanks``. NaN values (e.g. MRV with a single language) become ``None``."""
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    recall: dict[str, dict[str, dict[str, float]]] = {"TR": {}, "IR": {}}
    chance: dict[str, dict[str, list[float]]] = {d: {f"R@{k}": [] for k in ks} for d in DIRECTIONS}
    codes = ranks.text_language_codes
    num_langs = len(ranks.languages)
    has_tr = ~np.isnan(ranks.tr_ranks)
    with np.errstate(invalid="ignore"):  # NaN (no caption) compares False and is not counted
        tr_hits = np.stack([(ranks.tr_ranks <= k).sum(axis=0) for k in ks], axis=1) / has_tr.sum(axis=0)[:, None]
    texts_per_language = np.bincount(codes, minlength=num_langs)
    ir_hits = np.stack(
        [np.bincount(codes, weights=ranks.ir_ranks <= k, minlength=num_langs) for k in ks], axis=1
    ) / texts_per_language[:, None]
    captions_per_image = np.bincount(
        codes * ranks.num_images + ranks.text_image_ids, minlength=num_langs * ranks.num_images
    ).reshape(num_langs, ranks.num_images)
    ir_chance = _chance_recall(ranks.num_images, np.ones(1), ks)
    for li, lang in enumerate(ranks.languages):
        recall["TR"][lang] = {f"R@{k}": float(100.0 * v) for k, v in zip(ks, tr_hits[li])}
        recall["IR"][lang] = {f"R@{k}": float(100.0 * v) for k, v in zip(ks, ir_hits[li])}
        positives = captions_per_image[li][has_tr[:, li]]
        for k, value in zip(ks, _chance_recall(int(texts_per_language[li]), positives, ks)):
            chance["TR"][f"R@{k}"].append(value)
        for k, value in zip(ks, ir_chance):  # one gold image among all images, the same for every language
            chance["IR"][f"R@{k}"].append(value)
    recall_avg = {
        d: {f"R@{k}": float(np.mean([recall[d][lang][f"R@{k}"] for lang in ranks.languages])) for k in ks}
        for d in DIRECTIONS
    }
    mrv_tr = compute_mrv(ranks.tr_ranks, mrv_variant)
    mrv_ir = compute_mrv(ranks.ir_rank_matrix(), mrv_variant)
    return RetrievalResults(
        languages=list(ranks.languages),
        num_images=ranks.num_images,
        num_texts=ranks.num_texts,
        recall=recall,
        recall_avg=recall_avg,
        mean_recall=float(np.mean([v for d in recall_avg.values() for v in d.values()])),
        mrv={"TR": _nan_to_none(mrv_tr["mrv"]), "IR": _nan_to_none(mrv_ir["mrv"])},
        mrv_variant=mrv_variant,
        mrv_num_instances={"TR": mrv_tr["num_instances"], "IR": mrv_ir["num_instances"]},
        chance={d: {key: float(np.mean(v)) for key, v in chance[d].items()} for d in DIRECTIONS},
    )


def retrieval_metrics(ranks: Any, ks: Sequence[int] = (1, 5, 10), mrv_variant: str = "variance") -> dict[str, Any]:
    """:func:`results_from_ranks` as the ``eval_results.json`` dict (``chance`` gives the recall a random
    ranking would get, for scale)."""
    return results_from_ranks(ranks, ks, mrv_variant).to_json()


def flatten_metrics(metrics: dict[str, Any] | RetrievalResults) -> dict[str, float]:
    """:meth:`RetrievalResults.flat` of a results dict or object."""
    return (metrics if isinstance(metrics, RetrievalResults) else RetrievalResults.from_json(metrics)).flat()
